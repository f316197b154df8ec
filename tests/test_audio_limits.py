"""Audio whose numbers would be silently wrong: files cut short in every format whose header states
the length (libsndfile reads what is there as if it were the whole), samples too large for the
computation, and features that come out NaN or inf. Each is skipped with its reason (exit 3);
nothing wrong is stored. The model runs for real (random weights, some set absurd on purpose)."""

from __future__ import annotations

import pickle
import re
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

import lighthubert
from cli_helpers import lhb, read_features
from helpers import frames_for
from lighthubert.checkpoint import save_atomic

RATE = 16000
NOISE = (np.random.default_rng(7).standard_normal(3 * RATE) * 0.1).astype(np.float32)
W64_DATA = b"data" + bytes.fromhex("f3acd3118cd100c04f8edb8a")
HEADERS = [("wav", "wav", "WAV", "PCM_16"), ("wavex", "wav", "WAVEX", "PCM_24"), ("rf64", "rf64", "RF64", "PCM_16"),
           ("w64", "w64", "W64", "FLOAT"), ("aiff", "aiff", "AIFF", "PCM_16"), ("aifc", "aifc", "AIFF", "ULAW"),
           ("au", "au", "AU", "PCM_16"), ("snd", "snd", "AU", "FLOAT"), ("sph", "sph", "NIST", "PCM_16"),
           ("timit", "wav", "NIST", "ULAW")]
"""(name, extension, libsndfile format, subtype): every format whose header lhb reads for the length
(ULAW in an AIFF file makes it AIFC; LDC's corpora such as TIMIT hold NIST SPHERE files named .wav)."""


def _placeholder(name: str, data: bytes) -> bytes:
    """``data`` with its length field set as a streaming writer leaves it (unknown or 0)."""
    b = bytearray(data)
    if name == "wav":
        struct.pack_into("<I", b, b.index(b"data") + 4, 0xFFFFFFFF)
    elif name == "au":
        struct.pack_into(">I", b, 8, 0xFFFFFFFF)  # AU_UNKNOWN_SIZE
    elif name == "aiff":
        struct.pack_into(">I", b, b.index(b"SSND") + 4, 0xFFFFFFFF)
    elif name == "w64":
        struct.pack_into("<Q", b, b.index(W64_DATA) + 16, 2**64 - 1)
    elif name == "rf64":
        struct.pack_into("<Q", b, b.index(b"ds64") + 16, 0)  # the 64-bit data size, not yet written
    return bytes(b)


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("W64", "w64")])
@pytest.mark.parametrize("subtype", ["IMA_ADPCM", "MS_ADPCM", "GSM610"])
def test_a_cut_compressed_wav_is_reported_in_samples(tmp_path, fmt, ext, subtype):
    """Before: a cut ADPCM or GSM file was said to declare 32 "samples" (its blocks) and to end after 15.
    The counts are now samples, as libsndfile counts them, the second within a block of what it reads.
    Also before: every GSM 6.10 WAV, whole or not, was skipped as "cannot decode: frames must be specified
    for non-seekable files" (libsndfile cannot seek in it)."""
    from lighthubert.audio import AudioError, load_audio

    whole, cut = tmp_path / f"whole.{ext}", tmp_path / f"cut.{ext}"
    sf.write(str(whole), NOISE, RATE, format=fmt, subtype=subtype)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(AudioError, match=f"^{re.escape(str(cut))}: truncated: ") as e:  # named, for a Python caller
        load_audio(cut)
    said = re.match(r"truncated: its header declares (\d+) samples at 16000 Hz but the file ends after (\d+) ", e.value.reason)
    again = pickle.loads(pickle.dumps(e.value))  # as a multiprocessing pool hands it back
    assert (str(again), again.path, again.reason) == (str(e.value), str(cut), e.value.reason)
    assert said, e.value
    declared, present = map(int, said.groups())
    assert declared == sf.info(str(whole)).frames >= len(NOISE)
    assert abs(present - sf.info(str(cut)).frames) <= 1024  # a block of 256-2048 bytes holds 320-2041 samples
    assert len(load_audio(whole)) == sf.info(str(whole)).frames  # whole, and read whole (GSM: block by block)


def test_files_cut_short_are_skipped_in_every_format_whose_header_states_the_length(tmp_path):
    """Before: only a cut RIFF/WAVE file was skipped; a cut AIFF, AU, W64 or RF64 file gave the features of
    its first third, stored as if whole. Whole files and streaming placeholders are still extracted."""
    folder = tmp_path / "in"
    folder.mkdir()
    cut_frames, placeholders = {}, []
    for name, ext, fmt, subtype in HEADERS:
        whole = folder / f"{name}_whole.{ext}"
        sf.write(str(whole), NOISE, RATE, format=fmt, subtype=subtype)
        data = whole.read_bytes()
        cut = folder / f"{name}_cut.{ext}"
        cut.write_bytes(data[: len(data) // 3])
        cut_frames[cut] = sf.info(str(cut)).frames  # what libsndfile reads of it
        if name in ("wav", "au", "aiff", "w64", "rf64"):
            stream = folder / f"{name}_stream.{ext}"
            stream.write_bytes(_placeholder(name, data)[: len(data) // 3])
            placeholders.append(f"{name}_stream")
    out = tmp_path / "feats.h5"
    run = lhb("extract", folder, out, "-c", "random:small", "-q", "--num-workers", "1")
    assert run.returncode == 3 and "Traceback" not in run.stderr, run
    feats = read_features(out)
    reasons = {s["key"]: s["reason"] for s in feats.skipped}
    for cut, present in cut_frames.items():
        reason = (f"truncated: its header declares {len(NOISE)} samples at {RATE} Hz but the file ends after "
                  f"{present} (an interrupted copy or download?)")
        assert reasons[cut.stem] == reason and f"{cut.name}: {reason}\n" in run.stderr, cut.name
    for key in placeholders:  # a length the writer could not fill in is not judged
        assert not reasons.get(key, "").startswith("truncated"), (key, reasons[key])
    assert {k for k in placeholders if k not in reasons} >= {"wav_stream", "au_stream", "aiff_stream", "w64_stream"}
    reference = feats.data["wav_whole"]
    assert reference.shape == (frames_for(len(NOISE)), 384)
    for name, _, _, subtype in HEADERS:
        got = feats.data[f"{name}_whole"]
        assert got.shape == reference.shape and np.isfinite(got).all(), name
        if subtype in ("PCM_16", "FLOAT", "PCM_24"):  # the same samples, give or take 16-bit rounding
            assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max(), name


def test_an_absurd_chunk_length_is_left_to_libsndfile(tmp_path):
    """A W64 chunk declaring 2**64-1 bytes before the data made the header walk's seek raise ValueError,
    and the file, which libsndfile reads whole, was skipped as "cannot decode: cannot fit 'int' into an
    offset-sized integer"."""
    from lighthubert.audio import load_audio

    whole = tmp_path / "a.w64"
    sf.write(str(whole), NOISE[:RATE], RATE, format="W64", subtype="PCM_16")
    data = whole.read_bytes()
    junk = b"junk" + W64_DATA[4:] + struct.pack("<Q", 2**64 - 1)
    at = data.index(W64_DATA)
    odd = tmp_path / "junk.w64"
    odd.write_bytes(data[:at] + junk + data[at:])
    assert sf.info(str(odd)).frames == RATE
    assert np.array_equal(load_audio(odd), load_audio(whole))


def test_samples_too_large_for_the_computation_are_skipped_with_a_true_reason(tmp_path):
    """Before: float samples of 1e18 gave features identical to those of silence (the standardisation's
    sum of squares overflowed float32), and a DOUBLE file of finite 1e300 samples was said to hold NaN or
    infinite ones. Float audio scaled like int32 (±2.1e9) is still taken."""
    folder = tmp_path / "in"
    folder.mkdir()
    unit = NOISE / np.abs(NOISE).max()
    sf.write(str(folder / "unit.wav"), unit, RATE, subtype="FLOAT")
    sf.write(str(folder / "int32.wav"), unit * np.float32(2**31 - 128), RATE, subtype="FLOAT")
    sf.write(str(folder / "e18.wav"), unit * np.float32(1e18), RATE, subtype="FLOAT")
    sf.write(str(folder / "e38.wav"), unit * np.float32(3e38), RATE, subtype="FLOAT")
    sf.write(str(folder / "e300.wav"), unit.astype(np.float64) * 1e300, RATE, subtype="DOUBLE")
    nan = unit.astype(np.float64)
    nan[100] = np.nan
    sf.write(str(folder / "nan.wav"), nan, RATE, subtype="DOUBLE")
    out = tmp_path / "feats.h5"
    run = lhb("extract", folder, out, "-c", "random:small", "-q", "--num-workers", "1")
    assert run.returncode == 3 and "Traceback" not in run.stderr, run
    feats = read_features(out)
    reasons = {s["key"]: s["reason"] for s in feats.skipped}
    large = "float audio is expected within about ±1 (values this large overflow the computation)"
    assert reasons == {"e18": f"samples as large as 1.0e+18: {large}", "e38": f"samples as large as 3.0e+38: {large}",
                       "e300": f"samples as large as 1.0e+300: {large}", "nan": "holds NaN or infinite samples"}
    assert sorted(feats.data) == ["int32", "unit"]
    ref = feats.data["unit"]  # the checkpoint standardises each utterance: the scale does not matter
    assert np.abs(feats.data["int32"] - ref).max() < 1e-3 * np.abs(ref).max()


def test_the_library_refuses_waveforms_too_large_for_the_computation(ckpts):
    ext = lighthubert.Extractor(ckpts["small"], "min", "cpu")
    with pytest.raises(ValueError, match=r"^waveform 1 holds samples as large as 1\.0e\+18: float audio is expected"):
        ext([NOISE, NOISE / np.abs(NOISE).max() * np.float32(1e18)])
    with pytest.raises(ValueError, match=r"^waveform 0 holds samples as large as 1\.0e\+300"):
        ext(np.full(1000, 1e300))
    scaled = ext(NOISE * np.float32(2e9 / np.abs(NOISE).max()))
    assert torch.isfinite(scaled).all() and torch.allclose(scaled, ext(NOISE), atol=1e-3)


def _edited(path, name: str, value: float, dtype: torch.dtype):
    """A random Small checkpoint with the weight ``name`` set to ``value`` everywhere, written to ``path``."""
    d = lighthubert.random_checkpoint("small", 3)
    d["model"][name] = torch.full(d["model"][name].shape, value, dtype=dtype)
    return save_atomic(d, path)


def test_features_that_come_out_not_finite_are_skipped_not_stored(tmp_path):
    """Before: NaN or inf features were stored and the run exited 0. Here a real forward pass makes them:
    a LayerNorm weight of 3e38 overflows float32, one of 6e4 gives features that float16 cannot hold."""
    wav = tmp_path / "a.wav"
    sf.write(str(wav), NOISE[:RATE], RATE, subtype="PCM_16")
    huge = _edited(tmp_path / "huge.pt", "encoder.layer_norm.weight", 3e38, torch.float32)
    run = lhb("extract", wav, tmp_path / "huge.h5", "-c", huge, "-q")
    assert run.returncode == 3, run
    assert run.err_lines == [f"skipped {wav}: its features are not finite (NaN or inf): the computation overflowed "
                             f"in float32 (look at the checkpoint's weights)"], run
    assert read_features(tmp_path / "huge.h5").data == {}

    big = _edited(tmp_path / "big.pt", "encoder.layers.0.final_layer_norm.weight", 6e4, torch.float16)
    run = lhb("extract", wav, tmp_path / "f16.h5", "-c", big, "-q", "--layers", "1", "--save-dtype", "float16")
    assert run.returncode == 3, run
    assert run.err_lines[-1].endswith("its features are not finite (NaN or inf): values past 65504 do not fit "
                                      "float16; store them with --save-dtype float32"), run
    assert read_features(tmp_path / "f16.h5").data == {}
    run = lhb("extract", wav, tmp_path / "f32.h5", "-c", big, "-q", "--layers", "1", "--save-dtype", "float32")
    assert run.returncode == 0, run  # the advice works: the same features fit float32
    assert np.abs(read_features(tmp_path / "f32.h5").data["a"]).max() > 65504


def test_a_flac_header_without_a_true_length_is_named(tmp_path):
    """A FLAC stream whose writer left the total at 0 ("unknown", which libsndfile gives as 2**63 - 1),
    or a header claiming far more samples than the file can hold. Before: "cannot decode: array is too
    big; arr.size * ...", or a MemoryError of 256 GiB (an internal error), and a plan of 1193 hours."""
    from lighthubert.audio import AudioError, audio_frames, load_audio

    whole = tmp_path / "whole.flac"
    sf.write(str(whole), NOISE, RATE)
    data = bytearray(whole.read_bytes())
    at = data.index(b"fLaC") + 8 + 13  # STREAMINFO: the 36-bit total is the low 4 bits here and the next 4 bytes
    unknown, huge = bytearray(data), bytearray(data)
    unknown[at] &= 0xF0
    unknown[at + 1:at + 5] = bytes(4)
    huge[at] |= 0x0F
    huge[at + 1:at + 5] = b"\xf0" * 4
    for name, b, reason in (("unknown", unknown, "its header gives no length"),
                            ("huge", huge, "its header gives 68,466,831,600 samples, more than the file can hold")):
        path = tmp_path / f"{name}.flac"
        path.write_bytes(bytes(b))
        with pytest.raises(AudioError, match=f"^{re.escape(str(path))}: {reason} .*; re-encode it to give it one$"):
            load_audio(path)
        assert audio_frames(path) is None  # "unknown" for planning, not 1193 hours
    assert audio_frames(whole) == (len(NOISE), RATE) and len(load_audio(whole)) == len(NOISE)


def test_a_wav_whose_length_was_never_filled_in_says_so(tmp_path):
    """A WAV whose data size a streaming writer left at 0, with the samples after it. Before: "no
    samples", though the file holds 32 KB of them."""
    from lighthubert.audio import AudioError, load_audio

    path = tmp_path / "rec.wav"
    sf.write(str(path), NOISE[:RATE], RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, data.index(b"data") + 4, 0)
    path.write_bytes(bytes(data))
    with pytest.raises(AudioError, match=f"^{re.escape(str(path))}: no samples \\(its header says none, yet the file holds {len(data):,} bytes: "
                       "a recording whose writer never filled in the length\\?\\)$"):
        load_audio(path)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), RATE)
    with pytest.raises(AudioError, match=f"^{re.escape(str(empty))}: no samples$"):  # a file that is only a header: just that
        load_audio(empty)
