"""Audio whose numbers would be silently wrong: files cut short in every format whose header states
the length (libsndfile reads what is there as if it were the whole). Each is skipped with its reason
(exit 3); nothing wrong is stored. The model runs for real (random weights)."""

from __future__ import annotations

import struct

import numpy as np
import soundfile as sf

from cli_helpers import lhb, read_features
from helpers import frames_for

RATE = 16000
NOISE = (np.random.default_rng(7).standard_normal(3 * RATE) * 0.1).astype(np.float32)
W64_DATA = b"data" + bytes.fromhex("f3acd3118cd100c04f8edb8a")
HEADERS = [("wav", "wav", "WAV", "PCM_16"), ("wavex", "wav", "WAVEX", "PCM_24"), ("rf64", "rf64", "RF64", "PCM_16"),
           ("w64", "w64", "W64", "FLOAT"), ("aiff", "aiff", "AIFF", "PCM_16"), ("aifc", "aifc", "AIFF", "ULAW"),
           ("au", "au", "AU", "PCM_16"), ("snd", "snd", "AU", "FLOAT")]
"""(name, extension, libsndfile format, subtype): every format whose header lhb reads for the length
(ULAW in an AIFF file makes it AIFC)."""


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
