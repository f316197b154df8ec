"""Hostile inputs found by an adversarial run: each is a clear refusal, a skip with its reason, or is
processed correctly; nothing hangs, nothing is silently lost, no memory is exhausted.

FIFOs and device nodes are made inside each test's own folder; a test that could hang on one runs
``lhb`` with a timeout."""

from __future__ import annotations

import io
import json
import re
import os
import shutil
import signal
import stat
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

import lighthubert

from cli_helpers import Run, _env, lhb_command, lhb_prefix, one_line
from helpers import SPEECH_DIR
from lighthubert.audio import AudioError, audio_frames, load_audio
from lighthubert.checkpoint import CheckpointError, load_checkpoint
from lighthubert.errors import SettingError
from lighthubert.inputs import InputError, Item, check_against, list_inputs
from lighthubert.model import ConfigError, ModelConfig, parse_conv_layers
from lighthubert.space import SubnetError, parse_subnet

UTT = SPEECH_DIR / "spk1" / "utt03.wav"  # 2.7 s of real speech at 16 kHz
FAST = ["-c", "(set by fast_checkpoint)", "--layers", "1", "--device", "cpu"]
"""The runs where the model is not the point: the Small min subnet as a compact checkpoint (it loads in
0.04 s, where random:small is built in about 2 s by every lhb process)."""
is_root = pytest.mark.skipif(os.geteuid() != 0, reason="making device nodes needs root")
needs_speech = pytest.mark.skipif(not UTT.is_file(), reason="needs the speech data")


@pytest.fixture(scope="module", autouse=True)
def fast_checkpoint(tmp_path_factory, ckpts) -> None:
    path = tmp_path_factory.mktemp("fast") / "small_min.pt"
    lighthubert.export_subnet(ckpts["small"], "min", path)
    FAST[1] = str(path)


def lhb(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``lhb`` with a hard timeout: a hang fails the test instead of blocking the suite."""
    try:
        return subprocess.run(lhb_prefix() + [str(a) for a in args], capture_output=True, text=True,
                              timeout=timeout, env=_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lhb {' '.join(map(str, args))} hung for {timeout} s")


@contextmanager
def within(seconds: int):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""
    def alarm(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def h5_keys(path: Path) -> dict[str, str]:
    """key -> its ``source`` attribute, read with plain h5py."""
    out: dict[str, str] = {}
    with h5py.File(path, "r") as f:
        f["features"].visititems(lambda n, o: out.__setitem__(n, o.attrs["source"]) if isinstance(o, h5py.Dataset) else None)
    return out


# ----------------------------------------------------------------------------- keys


def items(*keys: str) -> list[Item]:
    return [Item(k, Path(f"/x/{k}.wav"), f"list.txt:{i + 1}") for i, k in enumerate(keys)]


def test_keys_nesting_with_the_existing_output_are_refused_naming_both():
    with pytest.raises(InputError) as e:  # the file holds a/b and a/c; the new list has a
        check_against(items("x", "a"), ["a/b", "a/c"])
    assert "list.txt:2" in str(e.value) and "'a'" in str(e.value) and "'a/b'" in str(e.value)
    with pytest.raises(InputError) as e:  # the file holds a; the new list has a/b
        check_against(items("a/b"), ["a"])
    assert "'a/b'" in str(e.value) and "'a'" in str(e.value)
    with pytest.raises(InputError):
        check_against(items("a/b/c"), ["a"])
    check_against(items("a", "abc", "b"), ["a", "ab/c"])  # equal keys (resume skips them) or mere string prefixes


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f"])
def test_scp_keys_with_control_characters_are_refused(tmp_path, char):
    scp = tmp_path / "l.scp"
    scp.write_bytes(f"ok {UTT}\nk{char}a {UTT}\nk{char}b {UTT}\n".encode())
    with pytest.raises(InputError) as e:
        list_inputs(scp)
    assert f"{scp}:2" in str(e.value) and "control character" in str(e.value)
    assert "rename" not in str(e.value) and ".scp list" not in str(e.value)  # the keys are the user's already


def test_a_nul_in_an_scp_key_stops_the_command_before_anything(tmp_path):
    scp = tmp_path / "l.scp"
    scp.write_bytes(f"k\x00a {UTT}\nk\x00b {UTT}\n".encode())
    p = lhb("extract", scp, tmp_path / "o.h5", "-c", "random:small", timeout=120)
    assert p.returncode == 1 and f"{scp}:1" in one_line(p) and "U+0000" in p.stderr
    assert sorted(os.listdir(tmp_path)) == ["l.scp"]


@needs_speech
def test_folder_file_names_with_control_characters_are_refused(tmp_path):
    shutil.copy(UTT, tmp_path / "bad\nname.wav")
    with pytest.raises(InputError) as e:
        list_inputs(tmp_path)
    assert "control character U+000A" in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).endswith("keys must be printable text: rename the file, or give it a key of your own with "
                                 "a .scp list ('key path' lines)"), e.value


@needs_speech
def test_two_files_of_one_stem_say_how_to_tell_them_apart(tmp_path):
    shutil.copy(UTT, tmp_path / "dup.wav")
    shutil.copy(UTT, tmp_path / "dup.flac")
    with pytest.raises(InputError) as e:
        list_inputs(tmp_path)
    assert str(e.value) == (f"{tmp_path}/dup.wav: key 'dup' is also given by {tmp_path}/dup.flac; keys are paths "
                            "without the extension: rename one, or give keys of your own with a .scp list ('key path' lines)")
    # a non-UTF-8 byte is shown %XX: a name that holds those three characters looked the same, twice
    for f in tmp_path.iterdir():
        f.unlink()
    shutil.copy(UTT, os.fsencode(tmp_path) + b"/caf\xe9.wav")
    shutil.copy(UTT, tmp_path / "caf%E9.wav")
    with pytest.raises(InputError) as e:
        list_inputs(tmp_path)
    assert "key 'caf%E9' is also given by" in str(e.value)
    assert "b'caf%E9.wav'" in str(e.value).replace(repr(os.fsencode(tmp_path))[2:-1] + "/", "")
    assert "b'caf\\xe9.wav'" in str(e.value).replace(repr(os.fsencode(tmp_path))[2:-1] + "/", "")


# ----------------------------------------------------------------------------- folder walks


@needs_speech
def test_folder_with_link_loops_is_walked_once_per_real_folder(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    shutil.copy(UTT, root / "a.wav")
    shutil.copy(UTT, root / "sub" / "b.wav")
    (root / "sub" / "up").symlink_to("..")          # a loop back to the root
    (root / "self").symlink_to(".")                  # a loop onto itself
    (root / "sub" / "again").symlink_to(".")
    (root / "linked.wav").symlink_to(root / "a.wav")  # a link to a file is followed
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(UTT, outside / "c.wav")
    (root / "x1").symlink_to(outside)                # two links to one folder: walked once
    (root / "x2").symlink_to(outside)
    (root / "dangling.wav").symlink_to(tmp_path / "nothing.wav")
    with within(60):
        found = list_inputs(root)
    assert [it.key for it in found] == ["a", "dangling", "linked", "sub/b", "x1/c"]


@needs_speech
def test_a_folder_reached_directly_keeps_its_name_beside_a_link_to_it(tmp_path):
    """``a_latest -> real`` sorts before ``real``: the files keep the keys ``real/...`` (before, the link
    walked first took the folder, every key became ``a_latest/...``, and a --resume after adding the
    link stored each file a second time)."""
    root = tmp_path / "in"
    (root / "real" / "deeper").mkdir(parents=True)
    shutil.copy(UTT, root / "real" / "r.wav")
    shutil.copy(UTT, root / "real" / "deeper" / "d.wav")
    (root / "a_latest").symlink_to("real")
    (root / "real" / "b_link").symlink_to("deeper")
    only_linked = tmp_path / "elsewhere"
    only_linked.mkdir()
    shutil.copy(UTT, only_linked / "e.wav")
    (root / "0_ext").symlink_to(only_linked)  # reached only through a link: under the link's name
    assert [it.key for it in list_inputs(root)] == ["0_ext/e", "real/deeper/d", "real/r"]


@needs_speech
def test_fifo_device_low_rate_and_non_utf8_names_in_a_folder(tmp_path):
    """A FIFO and a device named *.wav are skipped with their reason (never opened, so nothing hangs);
    a 1 Hz file is refused before resampling; a non-UTF-8 name is extracted under an escaped key."""
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(UTT, root / "good.wav")
    os.mkfifo(root / "x.wav")
    if os.geteuid() == 0:
        os.mknod(root / "dev.wav", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # like /dev/zero, but here
    sf.write(root / "slow.wav", np.full(2000, 0.1, dtype=np.float32), 1)
    raw = os.fsencode(root) + b"/caf\xe9.wav"
    shutil.copy(UTT, raw)
    out = tmp_path / "o.h5"
    p = lhb("extract", root, out, *FAST, timeout=120)
    assert p.returncode == 3, p.stderr
    assert "x.wav: not a regular file (a FIFO)" in p.stderr
    assert "slow.wav: sample rate 1 Hz is outside the supported 1000-384000 Hz" in p.stderr
    if os.geteuid() == 0:
        assert "dev.wav: not a regular file (a character device)" in p.stderr
    got = h5_keys(out)
    assert sorted(got) == ["caf%E9", "good"]
    assert got["caf%E9"] == f"{root}/caf%E9.wav"
    with h5py.File(out) as f:
        assert np.array_equal(f["features/caf%E9"][()], f["features/good"][()])  # the same audio
        skipped = {s["key"]: s["reason"] for s in json.loads(f.attrs["skipped"])}
    assert skipped["x"].startswith("not a regular file") and "sample rate" in skipped["slow"]


def test_sample_rates_outside_the_range_are_refused_before_decoding(tmp_path):
    for rate in (1, 999, 400_000):
        path = tmp_path / f"r{rate}.wav"
        sf.write(path, np.zeros(4000, dtype=np.float32), rate)
        with pytest.raises(AudioError, match=f"sample rate {rate} Hz"):
            load_audio(path)
        assert audio_frames(path) is None  # the planner does not believe its header either
    path = tmp_path / "ok.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), 8000)
    assert load_audio(path).shape == (16000,)


def test_wav_length_fields_only_a_cut_file_is_refused(tmp_path):
    """A WAV whose data chunk runs past the end is skipped as truncated (libsndfile would read the
    part that is there as if it were all), but the placeholders streaming writers leave (0xFFFFFFFF,
    0x7FFFF000), trailing bytes after the data and a stereo WAVE_FORMAT_EXTENSIBLE file are read whole."""
    wave = (np.sin(np.arange(8000) / 7) / 2).astype(np.float32)
    sf.write(tmp_path / "whole.wav", np.stack([wave, -wave], 1), 16000, subtype="PCM_24")  # extensible, 6-byte blocks
    whole = (tmp_path / "whole.wav").read_bytes()
    data = whole.index(b"data")
    (tmp_path / "cut.wav").write_bytes(whole[:-7])  # 7 bytes short: 1 whole frame and part of another
    with pytest.raises(AudioError, match=r"cut.wav: truncated: its header declares 8000 samples at 16000 Hz but the file ends after 7998 "):
        load_audio(tmp_path / "cut.wav")
    for name, size in (("stream", 0xFFFFFFFF), ("sox", 0x7FFFF000)):
        (tmp_path / f"{name}.wav").write_bytes(whole[: data + 4] + size.to_bytes(4, "little") + whole[data + 8:])
    (tmp_path / "trailing.wav").write_bytes(whole + b"\0" * 1001)
    expected = load_audio(tmp_path / "whole.wav")
    for name in ("stream", "sox", "trailing"):
        assert np.array_equal(load_audio(tmp_path / f"{name}.wav"), expected), name


@needs_speech
@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile has no MP3 encoder")
@pytest.mark.parametrize("mode", ["CONSTANT", "VARIABLE"])
def test_a_cut_mp3_is_refused_only_when_its_header_states_its_length(tmp_path, mode):
    """An MP3 cut short (an interrupted copy) decoded as far as it went and was stored as if whole.
    When the file opens with a Xing/Info header stating its frame count (LAME's, written here by
    libsndfile), the shortfall is certain: skipped as truncated. Without one, libsndfile's length is
    only an estimate from the size and first bitrate (several times off for such a file), so a
    file without the header is never judged, cut or whole; it is decoded to its end (before, only as
    far as that estimate: here the last fifth of the speech was lost, without a word)."""
    from lighthubert.audio import mp3_declares_frames

    x, rate = sf.read(SPEECH_DIR / "spk3" / "utt02.wav", dtype="float32")  # about 10 s
    sf.write(tmp_path / "whole.mp3", x, rate, format="MP3", bitrate_mode=mode)
    whole = (tmp_path / "whole.mp3").read_bytes()
    assert mp3_declares_frames(tmp_path / "whole.mp3")
    assert load_audio(tmp_path / "whole.mp3").shape == (len(x),)
    (tmp_path / "cut.mp3").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AudioError, match=rf"cut.mp3: truncated: its header declares {len(x)} samples at {rate} Hz but the file ends after \d+ "):
        load_audio(tmp_path / "cut.mp3")
    tagged = b"ID3\x03\x00\x00\x00\x00\x02\x01" + bytes(257)  # an ID3v2 tag of 257 bytes before the frames
    (tmp_path / "tagged_cut.mp3").write_bytes(tagged + whole[: len(whole) // 2])
    with pytest.raises(AudioError, match="tagged_cut.mp3: truncated: "):
        load_audio(tmp_path / "tagged_cut.mp3")
    plain = whole.replace(b"Xing", b"XXXX", 1)  # the header frame becomes an ordinary (silent) frame
    assert plain != whole
    for name, data in (("plain.mp3", plain), ("plain_cut.mp3", plain[: len(plain) // 2])):
        (tmp_path / name).write_bytes(data)
        assert not mp3_declares_frames(tmp_path / name)
        assert sf.info(str(tmp_path / name)).frames < 0.9 * len(x) / (2 if "cut" in name else 1)  # the estimate
        got = len(load_audio(tmp_path / name))
        if name == "plain.mp3":  # every sample, plus the encoder's delay and padding the header no longer trims
            assert len(x) <= got <= len(x) + 2 * 1152, got
        else:
            assert 0.4 * len(x) <= got <= 0.6 * len(x), got
    (tmp_path / "joined.mp3").write_bytes(whole + whole)  # cat a.mp3 b.mp3: libsndfile stopped after a.mp3
    (tmp_path / "joined_tagged.mp3").write_bytes(whole + tagged + whole)
    for name in ("joined", "joined_tagged"):
        with pytest.raises(AudioError, match=f"{name}.mp3: another MP3 stream follows the one its Xing/Info header "
                                             "describes \\(MP3 files joined with cat\\?\\)"):
            load_audio(tmp_path / f"{name}.mp3")
    (tmp_path / "id3v1.mp3").write_bytes(whole + b"TAG" + bytes(125))  # a tag after the stream is not a stream
    assert load_audio(tmp_path / "id3v1.mp3").shape == (len(x),)


def test_fifo_audio_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.wav"
    os.mkfifo(fifo)
    with within(30):
        with pytest.raises(AudioError, match="not a regular file"):
            load_audio(fifo)
        assert audio_frames(fifo) is None


def test_list_lines_that_cannot_name_a_file_are_refused_with_their_line(tmp_path):
    """A .tsv row with an empty path ('<TAB>16000') was read as a file named '16000'; a NUL byte in a
    .scp path was a skipped input saying 'ValueError: embedded null byte'."""
    tsv = tmp_path / "a.tsv"
    tsv.write_text(f"{tmp_path}\nok.wav\t16000\n\t16000\n")
    with pytest.raises(InputError, match=re.escape(f"{tsv}:3: expected 'relative/path<TAB>num_samples'")):
        list_inputs(tsv)
    tsv.write_text(f"{tmp_path}\n   ok.wav\t16000\n")  # leading spaces are still trimmed
    assert [it.key for it in list_inputs(tsv)] == ["ok"]
    txt = tmp_path / "a.txt"  # a Latin-1 name (find over a folder holding one): was refused whole, no line
    txt.write_bytes(b"a.wav\n# caf\xc3\xa9\ncaf\xe9.wav\n")
    with pytest.raises(InputError, match=re.escape(f"{txt}:3: not UTF-8 text (byte 0xe9)")):
        list_inputs(txt)
    (tmp_path / "paths.list").write_text("a.wav\nb.wav\n")  # a list without a list extension: was one bad audio file
    with pytest.raises(InputError, match="paths.list: a text file, not audio; a list of audio files needs one of"):
        list_inputs(tmp_path / "paths.list")
    os.mkfifo(tmp_path / "fifo")  # as <(ls ...) gives
    with pytest.raises(InputError, match=re.escape("fifo: not a regular file (a FIFO or device, as <(...) gives)")):
        list_inputs(tmp_path / "fifo")
    with pytest.raises(InputError, match="^-: no such file or folder; standard input is not read as INPUT"):
        list_inputs("-")  # lhb extract - out.h5 (as ls | lhb extract - ... would be)
    scp = tmp_path / "a.scp"
    scp.write_bytes(b"k1 a.wav\x00\nk2 b.wav\n")
    with pytest.raises(InputError, match=re.escape(f"{scp}:1: the path holds a NUL byte")):
        list_inputs(scp)


@needs_speech
def test_a_list_naming_the_output_to_be_is_refused_before_it_is_created(tmp_path):
    """OUTPUT named in the list (as ../o/out.h5) was refused only when it existed already; a new one was
    created, then read as an input and skipped as undecodable, naming itself in its own skipped list."""
    (tmp_path / "o").mkdir()
    lst = tmp_path / "in" / "l.txt"
    lst.parent.mkdir()
    lst.write_text(f"{UTT}\n../o/out.h5\n")
    p = subprocess.run([*lhb_prefix(), "extract", str(lst), str(tmp_path / "o" / "out.h5"), "-c", "random:small",
                        "-s", "min", "-q"], capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 1 and p.stderr == (f"lhb: error: {tmp_path}/o/out.h5: is also an input ({lst}:2); choose "
                                              "another OUTPUT\n"), p.stderr
    assert os.listdir(tmp_path / "o") == []


def test_released_names_without_a_home_folder_say_what_to_set(tmp_path, monkeypatch):
    """No HOME and no passwd entry (a container's user): '-c small', lhb extract's default, was
    "internal error: RuntimeError: Could not determine home directory"."""
    from lighthubert.checkpoint import cache_dir

    monkeypatch.delenv("LIGHTHUBERT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    with pytest.raises(CheckpointError, match="no home folder .HOME is unset.; set LIGHTHUBERT_CACHE to a folder"):
        cache_dir()


def test_fifo_list_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "list.txt"
    os.mkfifo(fifo)
    with within(30), pytest.raises(InputError, match="not a regular file"):
        list_inputs(fifo)


def test_merge_into_a_fifo_is_refused_without_blocking(tmp_path):
    """Before: lhb merge FIFO part.h5 waited forever, reading the FIFO as OUTPUT's earlier contents."""
    from lighthubert.storage import HDF5, OutputError

    fifo, part = tmp_path / "out.h5", tmp_path / "part.h5"
    os.mkfifo(fifo)
    part.write_bytes(b"not looked at")
    p = lhb("merge", fifo, part, timeout=60)
    assert p.returncode == 1 and one_line(p) == f"lhb: error: {fifo}: is a FIFO, not a regular file; " \
        "OUTPUT is never replaced unless it is one", p.stderr
    assert part.read_bytes() == b"not looked at" and stat.S_ISFIFO(fifo.stat().st_mode)
    with within(30), pytest.raises(OutputError, match=f"{fifo}: is not a regular file, so not a part"):
        HDF5.merge(tmp_path / "new.h5", [fifo], include_output=False)  # the library, given a FIFO part
    assert not (tmp_path / "new.h5").exists()
    seg = tmp_path / "r.h5.parts" / "seg-00000-000001.h5"  # what --resume reads: a FIFO named like a segment
    seg.parent.mkdir()
    os.mkfifo(seg)
    with within(30), pytest.raises(OutputError, match=f"{seg}: is not a regular file, so not a segment lhb wrote"):
        HDF5.committed(tmp_path / "r.h5", {}, include_output=True)


def test_an_output_name_too_long_for_the_temporary_files_is_refused_before_any_work(tmp_path):
    """Before: a 239-byte OUTPUT name passed, every file was extracted, and then the final join failed
    ('File name too long' for .NAME.PID.HEX.merging), with advice to --resume that failed the same way."""
    from lighthubert.storage import OutputError, check_output_path

    longest = "a" * (255 - 26 - 3) + ".h5"  # 255: NAME_MAX here; 26: what the temporary names add
    assert check_output_path(tmp_path / longest, resume=False, overwrite=False) == tmp_path / longest
    with pytest.raises(OutputError, match=r"the file name is too long \(239 bytes; lhb needs room for 26 more"):
        check_output_path(tmp_path / ("a" * 236 + ".h5"), resume=False, overwrite=False)


@needs_speech
def test_options_that_would_be_ignored_say_so(tmp_path, ckpt_files):
    """Before, without a word: --seed with a checkpoint file, --keep-parts in a one-process run, and
    --window-seconds given with --max-chunk-seconds (the file then said "30 s windows")."""
    out = tmp_path / "o.h5"
    p = lhb("extract", UTT, out, *FAST, "--seed", "0", "--keep-parts", "-q")  # 0 is a seed given too
    assert p.returncode == 0 and p.stderr.splitlines() == [
        "lhb: warning: seed 0 (--seed) has no effect: it seeds random:KIND checkpoints only",
        "lhb: warning: --keep-parts has no effect in a run with one process: OUTPUT is written as usual"], p.stderr
    # lhb info and lhb subnet say it too (before: silently); --seed of --sample is the sampling's
    small = ckpt_files["small"]
    runs = [Run(["info", small, "--seed", "3"]), Run(["subnet", "-c", small, "--preset", "min", "--seed", "3"]),
            Run(["subnet", "-c", small, "--sample", "2", "--seed", "3"])]
    for run, warned in zip(runs, (True, True, False)):
        p = run.result()
        said = "lhb: warning: seed 3 (--seed) has no effect: it seeds random:KIND checkpoints only" in p.err_lines
        assert p.returncode == 0 and said == warned, p
    # also when the value given is the default's (before: taken for not given, and dropped)
    p = lhb("extract", UTT, tmp_path / "w.h5", *FAST, "--max-chunk-seconds", "30", "--window-seconds", "60")
    assert p.returncode == 2 and one_line(p) == (
        "lhb: error: --max-chunk-seconds: sets --exact-seconds, --window-seconds and --context-seconds all at once; "
        "give it alone, or those three instead"), p.stderr
    assert not (tmp_path / "w.h5").exists()


@needs_speech
def test_odd_output_paths_get_one_true_line(tmp_path):
    """Before: 'o1.h5/x.h5' (o1.h5 a file) said "the folder o1.h5 does not exist"; 'new.h5/' quietly
    wrote a file new.h5; 'lhb subnet -o ""' said ".: is a folder" (exit 1); a name holding a new line
    gave a two-line error."""
    afile = tmp_path / "o1.h5"
    afile.write_bytes(b"x")
    p = lhb("extract", UTT, afile / "x.h5", *FAST)
    assert p.returncode == 1 and one_line(p) == f"lhb: error: {afile / 'x.h5'}: {afile} is not a folder", p.stderr
    p = lhb("subnet", "--preset", "min", "--supernet", "small", "-o", afile / "s.json")
    assert p.returncode == 1 and one_line(p) == f"lhb: error: {afile / 's.json'}: {afile} is not a folder", p.stderr
    p = lhb("extract", UTT, f"{tmp_path}/new.h5/", *FAST)
    assert p.returncode == 2 and one_line(p) == (f"lhb: error: OUTPUT: {tmp_path}/new.h5/: ends with '/', so names a "
                                                 "folder; give a file name"), p.stderr
    assert not (tmp_path / "new.h5").exists()
    for path in ("/", "."):  # before: "internal error: ValueError: PosixPath('.') has an empty name"
        p = lhb("extract", UTT, path, *FAST)
        assert p.returncode == 1 and one_line(p) == (f"lhb: error: {path}: is a folder; give a file name such as "
                                                     f"{Path(path) / 'features.h5'}"), p.stderr
    for option in ("-o", "--export"):
        p = lhb("subnet", "--preset", "min", "-c", FAST[1], option, "")
        assert p.returncode == 2 and one_line(p) == f"lhb: error: {'--output' if option == '-o' else '--export'}: an empty path", p.stderr
    p = lhb("extract", UTT, tmp_path / "x.npy", *FAST, "-q")  # before: HDF5 under a .npy name, without a word
    assert p.returncode == 0 and one_line(p) == (f"lhb: warning: {tmp_path / 'x.npy'}: is written as HDF5 whatever its "
                                                 "name says (lhb convert writes .npy, fairseq and Kaldi files from it)"), p.stderr
    odd = tmp_path / "a\nb"
    odd.mkdir()
    (odd / "f.h5").write_bytes(b"not features")
    p = lhb("extract", UTT, odd / "f.h5", *FAST)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and f"{tmp_path}/a\\nb/f.h5: already exists" in p.stderr, p.stderr


@needs_speech
def test_an_empty_preset_and_a_resume_with_nothing_left_say_what_they_are(tmp_path):
    """Before: --preset "" printed both supernets' defaults with exit 0; a resume with nothing left said
    "extracting 0 files" and "done: 0 files, 0:00 of audio in 0:00 (0x real time)"."""
    p = lhb("subnet", "--preset", "")
    assert p.returncode == 2 and one_line(p) == "lhb: error: --preset: unknown preset ''; choose one of: default, max, min" \
        and not p.stdout
    p = lhb("units", "learn", tmp_path / "none.h5", tmp_path / "km.pt", "--iterations", "99999999999999999999")
    assert p.returncode == 2 and "--iterations" in one_line(p)  # was accepted: a run without end
    out = tmp_path / "o.h5"
    assert lhb("extract", UTT, out, *FAST, "-q").returncode == 0
    p = lhb("extract", UTT, out, *FAST, "--resume")
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert lines[-2:] == ["resuming: 1 utterance already done, 0 to do",
                          f"done: nothing left to do; {out} ({lines[-1].split('(')[1].split(')')[0]}) holds 1 utterance"], lines


def test_a_run_that_skipped_everything_says_so_plainly(tmp_path):
    """Every input skipped: no "0x real time" in the summary, "1 sample" (not "1 samples"), and ``lhb info``
    shows "none" for the feature shape of a file without utterances (it was a blank)."""
    sf.write(tmp_path / "one.wav", np.zeros(1, dtype=np.float32), 16000)
    out = tmp_path / "o.h5"
    p = lhb("extract", tmp_path / "one.wav", out, *[a for a in FAST if a != "-q"])
    assert p.returncode == 3, p.stderr
    assert "too short: 1 sample at 16 kHz" in p.stderr and "real time" not in p.stderr, p.stderr  # progress line too
    assert "1/1 file, no audio extracted" in p.stderr, p.stderr
    info = lhb("info", out)
    assert info.returncode == 0 and re.search(r"feature shape\s+none \(no utterances\)", info.stdout), info.stdout


@needs_speech
def test_a_subnet_is_read_from_standard_input_with_dash(tmp_path):
    """`lhb subnet ... | lhb extract ... -s -`. Before: "'-' is not a preset ..., inline JSON or an existing
    JSON file", and -s /dev/stdin (which exists) was said not to exist."""
    sub = json.dumps({**lighthubert.SPACES["small"].min_subnet, "supernet": "small"})  # as lhb subnet prints it
    out = tmp_path / "o.h5"
    args = [*lhb_prefix(), "extract", str(UTT), str(out), "-c", "random:small", "--layers", "1", "--device", "cpu",
            "-q", "-s", "-"]
    p = subprocess.run(args, input=sub + "\n", capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    with h5py.File(out) as f:
        stored = json.loads(f.attrs["subnet"])
    assert {k: stored[k] for k in lighthubert.SPACES["small"].min_subnet} == lighthubert.SPACES["small"].min_subnet
    # a byte-order mark (a file saved by a Windows editor, then piped in) is read past, as in a subnet file
    p = subprocess.run([*args, "--overwrite"], input="\ufeff" + sub + "\n", capture_output=True, text=True, encoding="utf-8",
                       env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(args, input="", capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 2 and one_line(p) == "lhb: error: --subnet -: standard input held no subnet JSON", p.stderr
    for given, said in ((b"\xff\xfe", "is not UTF-8 text"), (b"max\n", "starts with 'max'")):  # shown as the argument before
        p = subprocess.run([*lhb_prefix(), "subnet", "-s", "-"], input=given, capture_output=True, env=_env(), timeout=300)
        assert p.returncode == 2 and p.stderr.decode().strip() == (
            f"lhb: error: --subnet -: standard input holds no subnet JSON (a JSON object, as lhb subnet prints; it {said})"), p.stderr
    p = lhb("subnet", "-s", "/dev/stdin")
    assert p.returncode == 2 and one_line(p) == ("lhb: error: --subnet: /dev/stdin: not a regular file, so not a JSON "
                                                 "file to read (lhb reads a subnet piped to it with --subnet -)"), p.stderr


def test_a_planted_lock_link_is_refused_and_its_target_left_alone(tmp_path):
    """Before: a symbolic link (or a second hard name) planted as .OUTPUT.lock had its target truncated
    and overwritten with "lhb pid N on HOST" (a features file, or any file the user can write)."""
    from lighthubert.storage import OutputError, OutputLock

    out, precious = tmp_path / "feats.h5", tmp_path / "precious.txt"
    precious.write_text("keep me")
    lock = tmp_path / ".feats.h5.lock"
    lock.symlink_to(precious)
    with pytest.raises(OutputError, match=r"its lock .*\.feats\.h5\.lock is a symbolic link, not a lock lhb made"):
        OutputLock(out).__enter__()
    p = lhb("merge", out, precious, timeout=60)  # through the CLI too: one line, exit 1
    assert p.returncode == 1 and "is a symbolic link, not a lock lhb made" in one_line(p), p.stderr
    lock.unlink()
    os.link(precious, lock)
    with pytest.raises(OutputError, match="is not a lock lhb made"):
        OutputLock(out).__enter__()
    assert precious.read_text() == "keep me" and lock.read_text() == "keep me"
    lock.unlink()
    with OutputLock(out):  # the real thing still works
        assert lock.read_text().startswith("lhb pid ")
    assert not lock.exists()


# ----------------------------------------------------------------------------- checkpoints


@needs_speech
def test_fifo_checkpoint_is_refused_at_once(tmp_path):
    fifo = tmp_path / "ckpt.pt"
    os.mkfifo(fifo)
    p = lhb("extract", UTT, tmp_path / "o.h5", "-c", fifo, timeout=60)
    assert p.returncode == 1 and "not a regular file" in one_line(p) and str(fifo) in p.stderr
    assert not (tmp_path / "o.h5").exists()


@is_root
def test_endless_device_checkpoint_is_refused_without_reading(tmp_path):
    zero = tmp_path / "zero.pt"
    os.mknod(zero, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # a /dev/zero of our own
    with within(30), pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(zero)


def test_compressed_zip_records_are_refused_before_inflating(tmp_path):
    """A 64 MB zero tensor deflates to about 64 KB: torch would inflate it; it is refused instead."""
    buf = io.BytesIO()
    torch.save({"cfg": {}, "model": {"w": torch.zeros(16 << 20)}}, buf)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="compressed"):
        load_checkpoint(bomb)


def test_a_seed_given_is_a_seed_given_also_when_it_is_0():
    """Before: 0 stood for 'not given', so random:small:5 with seed 0 silently used seed 5 (and a
    checkpoint file with --seed 0 gave no warning that it does nothing)."""
    with pytest.raises(CheckpointError, match=re.escape("random:small:5: names seed 5, and seed 0 (--seed) was given "
                                                        "too; give the seed once")):
        load_checkpoint("random:small:5", seed=0)
    assert load_checkpoint("random:small:5").source == load_checkpoint("random:small", seed=5).source == "random:small:5"
    assert load_checkpoint("random:small").source == "random:small:0"


@pytest.mark.parametrize("seed", ["9" * 5000, str(2**64), "²", "-1"])
def test_random_seed_out_of_range_is_a_clear_error(seed):
    with pytest.raises(CheckpointError, match="the seed must be an integer from 0 to") as caught:
        load_checkpoint(f"random:small:{seed}")
    assert isinstance(caught.value, SettingError)  # lhb: bad usage, exit 2


@pytest.mark.parametrize("spec", [
    "[(512,10,5)]*64*64*64*64",        # chained repeats
    "100000000000*[(512,10,5)]",       # the count on the left
    "[(512,10,5)] * 65",
    "[(512,10,5)] + [(512,3,2)] * 64",
    "[(512*512*512*512,10,5)]",
    "[(8192,10,5)]",
    "[(512,100000,5)]",
    "[(512,10,5)]*-1",
    "1e11*[(512,10,5)]",
    "[" * 100_000 + "]" * 100_000,
])
def test_conv_layers_are_bounded_while_parsed(spec):
    t = time.monotonic()
    with pytest.raises(ConfigError):
        parse_conv_layers(spec)
    assert time.monotonic() - t < 1.0


def test_conv_layers_as_released_and_up_to_the_bound():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert len(parse_conv_layers("[(512,2,2)] * 8 * 8")) == 64
    with pytest.raises(ConfigError, match="conv_pos"):
        ModelConfig.from_dict({"conv_pos": 10**9})


# ----------------------------------------------------------------------------- subnet JSON


def test_subnet_json_with_a_huge_integer_or_too_many_entries_is_refused():
    with pytest.raises(SubnetError, match="not usable JSON"):
        parse_subnet('{"layer_num": ' + "9" * 5000 + "}")
    with pytest.raises(SubnetError, match="layer_num is a huge number"):
        parse_subnet(json.dumps({"embed_dim": 768, "ffn_embed": [1], "heads_num": [1], "layer_num": 10**300}))
    sub = {"embed_dim": 768, "layer_num": 12, "ffn_embed": [3072] * 12, "heads_num": [12] * 100}
    with pytest.raises(SubnetError, match="heads_num has 100 entries"):
        parse_subnet(json.dumps(sub))


@needs_speech
def test_subnet_json_errors_from_the_command(tmp_path):
    p = lhb("extract", UTT, tmp_path / "o.h5", "-c", "random:small", "--subnet", '{"layer_num": ' + "9" * 5000 + "}")
    assert p.returncode == 2 and "not usable JSON" in one_line(p)
    assert not (tmp_path / "o.h5").exists()


# ----------------------------------------------------------------------------- signals


@needs_speech
def test_a_signal_inside_a_finaliser_comes_again_in_the_command(monkeypatch):
    """Before: SIGTERM landing in a weakref callback during lhb merge (h5py's object cleanup) raised
    there, where Python only prints "Exception ignored in ...": a traceback on stderr, the merge went on
    and finished, then the command said "terminated" with 143. Now the signal is sent again a moment
    later, to land in the command's own code."""
    import threading
    import types

    from lighthubert_cli import main

    again = []
    monkeypatch.setattr(threading, "Timer", lambda delay, fn, args: types.SimpleNamespace(
        start=lambda: again.append((delay, fn, args))))
    monkeypatch.setattr(main, "_signals", [])
    in_callback = types.SimpleNamespace(f_code=types.SimpleNamespace(co_name="remove", co_filename="/usr/lib/python3.11/weakref.py"))
    main._on_signal(signal.SIGTERM, in_callback)  # does not raise there
    assert again == [(0.05, os.kill, (os.getpid(), signal.SIGTERM))] and main._signals == []
    with pytest.raises(main.Terminated):
        main._on_signal(signal.SIGTERM, sys._getframe())  # in ordinary code: at once
    assert main._signals == [signal.SIGTERM]


def test_a_stop_that_a_library_turned_into_its_own_error_is_a_stop(monkeypatch, capsys):
    """Before: Ctrl-C during lhb subnet --export x.onnx printed 'lhb: internal error: TorchExportError:
    Failed to export the model ...' (torch's exporter catches the KeyboardInterrupt and raises its own
    error), several lines, then 'lhb: interrupted'. Now the one stop line, exit 130 (143 for SIGTERM)."""
    import typer

    from lighthubert_cli import main

    for signum, status, line in ((signal.SIGINT, 130, "lhb: interrupted"), (signal.SIGTERM, 143, "lhb: terminated")):
        monkeypatch.setattr(main, "_signals", [])
        monkeypatch.setattr(main, "_stop_said", [])

        def export_interrupted():
            with pytest.raises((KeyboardInterrupt, main.Terminated)):
                main._on_signal(signum, sys._getframe())
            raise RuntimeError("Failed to export the model with torch.export")  # what the exporter raises instead

        with pytest.raises(typer.Exit) as e:
            main._one_line_errors(export_interrupted)()
        assert e.value.exit_code == status
        assert capsys.readouterr().err.splitlines() == [line]


def test_a_second_sigterm_stops_at_once_with_143(tmp_path):
    wave = load_audio(UTT)
    sf.write(tmp_path / "long.wav", np.tile(wave, 100 * 16000 // len(wave)), 16000)  # 100 s: one batch
    out = tmp_path / "o.h5"
    proc = subprocess.Popen(lhb_command() + ["extract", str(tmp_path / "long.wav"), str(out), *FAST],
                            stderr=subprocess.PIPE, text=True, env=_env(), stdin=subprocess.DEVNULL)
    try:
        for line in proc.stderr:
            if line.startswith("extracting"):
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        for line in proc.stderr:  # the first is handled (two signals at once would be merged into one)
            if line.startswith("stopping after the current batch"):
                break
        proc.send_signal(signal.SIGTERM)
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stderr.close()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.splitlines()[-1] == (  # before: no word of what to do next
        f"lhb: terminated; what was committed is kept; run the same command with --resume to complete {out}"), err


def test_a_stop_by_signal_ends_lhb_while_a_thread_is_inside_h5py(tmp_path):
    """A second Ctrl-C stops at once and leaves the writer thread running; Python's own exit then tore
    modules down under it, and with the thread inside h5py (holding h5py's lock) the teardown of an
    open file waited for that lock for good: lhb hung after "lhb: interrupted" in about one run in
    eight (or died of SIGSEGV). Here a thread holds the lock for good, as a thread frozen by Python's
    exit does, while ``lhb subnet --subnet -`` waits for its standard input: Ctrl-C still ends lhb at
    once, 130, with its one line."""
    code = textwrap.dedent("""
        import sys, threading, time
        import h5py
        from lighthubert_cli import entry, main  # imported before: the signal lands in the command
        f = h5py.File(sys.argv[1], "w")  # open, as the writer's segment is
        f.create_dataset("x", data=[1.0])
        held = threading.Event()
        def writer():
            with h5py._objects.phil:
                held.set()
                time.sleep(600)
        threading.Thread(target=writer, daemon=True).start()
        held.wait()
        print("ready", flush=True)
        sys.argv = ["lhb", "subnet", "--subnet", "-"]
        entry.main()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "seg.h5")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "lhb: interrupted\n", (proc.returncode, err)


# ----------------------------------------------------------------------------- OUTPUT


def file_state(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, path.read_bytes()


@pytest.mark.slow
@needs_speech
def test_resume_refuses_keys_nesting_with_what_output_and_its_segments_hold(tmp_path):
    """Before any audio is read, a resumed list whose key is a folder of a stored key (or the
    reverse) is refused naming both; OUTPUT and the committed segments are left as they were."""
    nested = tmp_path / "nested.scp"
    nested.write_text(f"a/b {UTT}\na/c {UTT}\n")
    out, out2 = tmp_path / "o.h5", tmp_path / "o2.h5"
    flat = tmp_path / "flat.scp"
    flat.write_text(f"x {UTT}\na {UTT}\n")
    first = [Run(["extract", nested, out, *FAST, "-q"]), Run(["extract", flat, out2, *FAST, "-q"])]  # at once
    assert all(r.result().returncode == 0 for r in first), [str(r.result()) for r in first]
    before = file_state(out)
    p = lhb("extract", flat, out, *FAST, "--resume", "-q")
    line = one_line(p)
    assert p.returncode == 1 and f"{flat}:2" in line and "'a'" in line and "'a/b'" in line, line
    assert file_state(out) == before and sorted(h5_keys(out)) == ["a/b", "a/c"]
    # the reverse: the file holds a, the list has a/b
    p = lhb("extract", nested, out2, *FAST, "--resume", "-q")
    line = one_line(p)
    assert p.returncode == 1 and "'a/b'" in line and "'a'" in line, line
    assert sorted(h5_keys(out2)) == ["a", "x"]
    # keys held by a committed segment of a killed run count too
    out3 = tmp_path / "o3.h5"
    (tmp_path / "o3.h5.parts").mkdir()
    segment = tmp_path / "o3.h5.parts" / "seg-00000-000001.h5"
    out.rename(segment)
    p = lhb("extract", flat, out3, *FAST, "--resume", "-q")
    line = one_line(p)
    assert p.returncode == 1 and "'a'" in line and "'a/b'" in line, line
    assert not out3.exists() and sorted(h5_keys(segment)) == ["a/b", "a/c"]


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_output_that_is_not_a_regular_file_is_never_replaced(tmp_path, kind):
    target = tmp_path / "out.h5"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making device nodes needs root")
        os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null, but here
    else:
        target.mkdir()
    for flag in ("--overwrite", "--resume"):
        p = lhb("extract", UTT, target, *FAST, flag, timeout=60)
        line = one_line(p)
        assert p.returncode == 1 and str(target) in line and "not a regular file" in line, line
    mode = target.stat().st_mode
    assert {"fifo": stat.S_ISFIFO, "device": stat.S_ISCHR, "folder": stat.S_ISDIR}[kind](mode)
    assert sorted(os.listdir(tmp_path)) == ["out.h5"]


@pytest.mark.slow
@needs_speech
def test_output_that_is_an_input_is_refused_before_reading(tmp_path):
    same = tmp_path / "same.wav"
    shutil.copy(UTT, same)
    os.link(same, tmp_path / "link.h5")
    before = file_state(same)
    lst = tmp_path / "list.txt"  # a list naming OUTPUT, and the list file itself as OUTPUT
    lst.write_text(f"{same}\n")
    cases = [(same, out, flag) for out in (same, tmp_path / "link.h5") for flag in ("--overwrite", "--resume")]
    cases += [(lst, same, "--overwrite"), (lst, lst, "--overwrite")]
    runs = [Run(["extract", src, out, *FAST, flag]) for src, out, flag in cases]  # independent: all at once
    for (_, out, _), run in zip(cases, runs):
        p = run.result()
        line = one_line(p)
        why = "OUTPUT is named as audio" if out.suffix == ".wav" else "is also an input"  # refused either way
        assert p.returncode == 1 and why in line and str(out) in line, line
    assert file_state(same) == before and lst.read_text() == f"{same}\n"
    assert sorted(os.listdir(tmp_path)) == ["link.h5", "list.txt", "same.wav"]


@pytest.mark.slow
@needs_speech
def test_a_second_writer_of_the_same_output_is_refused_naming_the_first(tmp_path):
    """While one run writes OUTPUT, another (with --overwrite or --resume, or into a folder of its own)
    is refused naming the holder's pid; the first run completes with all its utterances."""
    audio = tmp_path / "in"
    audio.mkdir()
    for i in range(20):  # 54 s of speech: seconds of work, not over before it is paused
        os.link(UTT, audio / f"u{i:03d}.wav")
    shutil.copy(UTT, tmp_path / "short.wav")
    out = tmp_path / "o.h5"
    first = subprocess.Popen(lhb_command() + ["extract", str(audio), str(out), *FAST], stderr=subprocess.PIPE,
                             text=True, env=_env(), stdin=subprocess.DEVNULL)
    try:
        for line in first.stderr:
            if line.startswith("extracting"):
                break
        first.send_signal(signal.SIGSTOP)  # paused while it writes: as slow as a run can be
        assert first.poll() is None, "the first run ended before the others started"
        for flag in ("--overwrite", "--resume"):
            p = lhb("extract", tmp_path / "short.wav", out, *FAST, flag, "-q")
            line = one_line(p)
            assert p.returncode == 1 and str(out) in line and f"pid {first.pid}" in line, line
        first.send_signal(signal.SIGCONT)
        rest = first.stderr.read()
        first.wait(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, rest
    assert sorted(h5_keys(out)) == [f"u{i:03d}" for i in range(20)]
    assert sorted(os.listdir(tmp_path)) == ["in", "o.h5", "short.wav"]  # no lock or part is left


@pytest.mark.slow
@needs_speech
def test_resume_with_another_compute_dtype_is_refused_and_the_file_kept(tmp_path):
    out = tmp_path / "o.h5"
    assert lhb("extract", UTT, out, *FAST, "--dtype", "float32", "-q").returncode == 0
    before = file_state(out)
    shutil.copy(UTT, tmp_path / "more.wav")
    p = lhb("extract", tmp_path / "more.wav", out, *FAST, "--dtype", "bfloat16", "--resume", "-q")
    line = one_line(p)
    assert p.returncode == 1 and str(out) in line and "compute_dtype" in line and "bfloat16" in line, line
    assert file_state(out) == before
    assert sorted(os.listdir(tmp_path)) == ["more.wav", "o.h5"]


@needs_speech
@pytest.mark.parametrize("option,value", [
    ("--batch-seconds", "inf"), ("--batch-seconds", "1e300"), ("--num-workers", "1000000"),
    ("--seed", "-1"), ("--seed", str(2**64)),
])
def test_absurd_numbers_are_usage_errors_before_anything(tmp_path, option, value):
    p = lhb("extract", UTT, tmp_path / "o.h5", *FAST, option, value, timeout=60)
    line = one_line(p)
    assert p.returncode == 2 and line.startswith(f"lhb: error: {option}:"), line
    assert os.listdir(tmp_path) == []


def test_layers_that_are_not_layers_are_named_before_the_checkpoint_is_fetched(tmp_path):
    """`--layers abc` with a released checkpoint name, offline: the layers are the mistake, so they are
    named (exit 2), not the download that could not be made (the checkpoint used to be fetched first)."""
    env = {"HF_HUB_OFFLINE": "1", "LIGHTHUBERT_CACHE": str(tmp_path / "empty")}
    for value in ("abc", "1,,2", ""):
        p = subprocess.run(lhb_prefix() + ["extract", str(UTT), str(tmp_path / "o.h5"), "-c", "small", "--layers", value],
                           capture_output=True, text=True, timeout=60, env={**_env(), **env}, stdin=subprocess.DEVNULL)
        line = one_line(p)
        assert p.returncode == 2 and line.startswith("lhb: error: --layers: layers must be last, all or comma-separated"), line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("setting,value", [
    ("batch_seconds", float("nan")), ("batch_seconds", float("inf")), ("num_workers", 2.5),
    ("num_workers", 0), ("num_workers", 10**6), ("flush_seconds", float("inf")), ("seed", -1),
])
def test_absurd_numbers_in_the_library_are_setting_errors(tmp_path, setting, value):
    import lighthubert
    from lighthubert.errors import SettingError

    with pytest.raises(SettingError) as e:
        lighthubert.extract(UTT, tmp_path / "o.h5", checkpoint="random:small", **{setting: value})
    assert e.value.setting == setting
    assert os.listdir(tmp_path) == []


NO_LOCKS = """
import errno, fcntl, sys
def unsupported(code):
    def call(*args):
        raise OSError(code, {errno.ENOSYS: "Function not implemented", errno.ENOLCK: "No locks available"}[code])
    return call
fcntl.flock = unsupported(errno.ENOLCK)           # NFS without a lock daemon, Lustre without -o flock
if sys.argv.pop(1) == "none":
    fcntl.lockf = unsupported(errno.ENOSYS)        # no POSIX locks either
from lighthubert_cli.entry import main
sys.argv[0] = "lhb"
main()
"""


def test_output_on_a_filesystem_without_flock(tmp_path, monkeypatch):
    """Lustre mounted without ``-o flock`` or NFS without a lock daemon refuse ``flock`` (ENOSYS,
    ENOLCK): every run was told OUTPUT "is being written by another process", so lhb could not write
    there at all. Now a POSIX lock is taken instead where that works (a second run is still refused),
    and where no lock works the run goes on after one warning line. (The system calls are replaced
    in a real lhb process; the filesystem cannot be mounted here.)"""
    import errno
    import fcntl

    from lighthubert.storage import OutputLock

    script = tmp_path / "nolocks.py"
    script.write_text(NO_LOCKS)

    def run(mode: str, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), mode, "extract", str(UTT), str(out), *FAST, "-q"],
                              capture_output=True, text=True, timeout=120, env=_env(), stdin=subprocess.DEVNULL)

    out = tmp_path / "none.h5"
    p = run("none", out)
    assert p.returncode == 0, p
    assert p.stderr.splitlines() == [f"lhb: warning: {out}: its filesystem takes no file locks (Function not implemented), "
                                     "so nothing stops a second run writing OUTPUT at the same time"], p
    with lighthubert.open_features(out) as f:
        assert f.keys == ["utt03"] and f.attrs["complete"] is True
    assert sorted(os.listdir(tmp_path)) == ["nolocks.py", "none.h5"]  # the lock file went with the run

    out = tmp_path / "posix.h5"
    real_flock = fcntl.flock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with OutputLock(out):  # a POSIX lock, as a running lhb extract on that filesystem holds it
        p = run("posix", out)
        assert p.returncode == 1 and one_line(p) == (
            f"lhb: error: {out}: is being written by lhb pid {os.getpid()} on {socket.gethostname()}; "
            "wait for it to end, or choose another OUTPUT"), p
    monkeypatch.setattr(fcntl, "flock", real_flock)
    p = run("posix", out)
    assert p.returncode == 0 and p.stderr == "", p  # a POSIX lock is a lock: no warning
    with lighthubert.open_features(out) as f:
        assert f.keys == ["utt03"] and f.attrs["complete"] is True


def test_merge_into_an_output_being_written_is_refused(tmp_path):
    from lighthubert.storage import OutputLock

    out = tmp_path / "o.h5"
    (tmp_path / "o.h5.parts").mkdir()
    (tmp_path / "o.h5.parts" / "part-00000.h5").write_bytes(b"")
    with OutputLock(out):  # as a running lhb extract holds it
        p = lhb("merge", out, timeout=60)
        line = one_line(p)
        assert p.returncode == 1 and str(out) in line and f"pid {os.getpid()}" in line, line
    assert sorted(os.listdir(tmp_path)) == ["o.h5.parts"]  # the lock file goes with its holder


@needs_speech
def test_lhb_info_on_what_it_does_not_read_says_what_it_is(tmp_path):
    """Before: a parts folder was "is a folder, not a checkpoint file", audio and a junk .ts "not a
    PyTorch checkpoint ...; give a .pt file", though lhb info reads features, units, k-means and exports."""
    from lighthubert.storage import segment_path

    reads = "lhb info describes a checkpoint, a features or units file, a k-means file or an exported subnet"
    out = tmp_path / "f.h5"
    assert lhb("extract", UTT, out, *FAST).returncode == 0
    seg = segment_path(out, 0, 0, ".h5")
    seg.parent.mkdir()
    shutil.copy(out, seg)
    junk = tmp_path / "x.ts"
    junk.write_text("hello\n")
    expected = {
        seg.parent: f"holds the committed work of a run for {out}, not yet joined: the same lhb extract command with "
                    f"--resume completes {out}, or lhb merge {out} joins it; lhb info {out} describes that file",
        tmp_path: f"is a folder; {reads} (a file)",
        UTT: f"is audio; {reads} (lhb extract makes features from audio)",
        junk: f"not a TorchScript export (not the zip archive torch.jit.save writes); {reads}",
    }
    for path, words in expected.items():
        p = lhb("info", path)
        assert p.returncode == 1 and one_line(p) == f"lhb: error: {path}: {words}", p.stderr
    # a folder named like a released checkpoint (a data subset) is not what `lhb info small` means
    cache = tmp_path / "cache"
    cache.mkdir()
    lighthubert.write_random_checkpoint(cache / "lighthubert_small.pt", "small")
    (tmp_path / "small").mkdir()
    p = subprocess.run(lhb_prefix() + ["info", "small"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**_env(), "LIGHTHUBERT_CACHE": str(cache)}, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "lighthubert_small.pt" in p.stdout, p


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_standard_output_on_a_full_disk_is_one_line(tmp_path):
    """`lhb --version > /dev/full` (or --help, or lhb info / subnet into a file on a full disk) was a
    Python traceback or 'internal error: OSError'; it is one line naming standard output, exit 1."""
    cases = [["--version"], ["--help"], ["extract", "--help"], ["subnet", "--preset", "min", "--supernet", "small"],
             ["info", "random:small"]]
    with open("/dev/full", "w") as full:
        runs = [subprocess.run([*lhb_prefix(), *args], stdout=full, stderr=subprocess.PIPE, text=True, env=_env(),
                               cwd=tmp_path, timeout=300) for args in cases]
    for args, p in zip(cases, runs):
        assert p.returncode == 1 and "Traceback" not in p.stderr, (args, p.stderr)
        assert p.stderr.splitlines()[-1] == "lhb: error: standard output: cannot write: no space left on the device", (args, p.stderr)


def test_subnet_json_rewritten_keeps_its_mode_and_a_long_name_is_written(tmp_path):
    """lhb subnet -o writes beside and renames over (a full disk no longer cuts the old file): the file
    keeps the permissions it had, and a name too long for the temporary one beside it is written in place."""
    old = tmp_path / "s.json"
    assert lhb("subnet", "--preset", "max", "--supernet", "small", "-o", old).returncode == 0
    old.chmod(0o600)
    p = lhb("subnet", "--preset", "min", "--supernet", "small", "-o", old)  # a subnet JSON there: rewritten
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(old.stat().st_mode) == 0o600 and json.loads(old.read_text())["embed_dim"] == 256
    long = tmp_path / ("a" * 240 + ".json")
    p = lhb("subnet", "--preset", "min", "--supernet", "small", "-o", long)
    assert p.returncode == 0 and json.loads(long.read_text())["embed_dim"] == 256, p.stderr
    assert sorted(os.listdir(tmp_path)) == sorted([long.name, "s.json"])
    other = tmp_path / "other-name.json"  # a second name of the same file sees the new subnet too
    os.link(old, other)
    assert lhb("subnet", "--preset", "max", "--supernet", "small", "-o", old).returncode == 0
    assert json.loads(other.read_text())["embed_dim"] == 512 and os.path.samefile(old, other)


def test_subnet_o_is_written_whoever_reads_stdout(tmp_path):
    """Before: 'lhb subnet --sample 10000 -o s.json | head -c 10' ended when head left (exit 141) with
    s.json never written: the file was written after the JSON was printed. Files first now."""
    out = tmp_path / "s.json"
    proc = subprocess.Popen([*lhb_prefix(), "subnet", "--sample", "10000", "--supernet", "small", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), cwd=tmp_path)
    assert proc.stdout.read(10) == b'[{"atten_d'
    proc.stdout.close()  # as head -c 10 does: lhb's next write finds no reader (its 4 MB fill the pipe first)
    proc.wait(timeout=120)
    assert len(json.loads(out.read_text())) == 10000


def test_lhb_debug_shows_a_commands_own_file_error_with_its_traceback(tmp_path):
    """LHB_DEBUG=1 is for the traceback: a file error of the command itself (a name too long) came out
    as 'standard output: cannot write: File name too long', with no traceback."""
    name = str(tmp_path / ("a" * 300 + ".h5"))
    p = subprocess.run([*lhb_prefix(), "info", name], capture_output=True, text=True, timeout=120,
                       env={**_env(), "LHB_DEBUG": "1"})
    assert p.returncode == 1 and "Traceback" in p.stderr and "File name too long" in p.stderr, p.stderr
    assert "standard output" not in p.stderr, p.stderr
