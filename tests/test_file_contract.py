"""What README and SPEC.md §5 promise about the files lhb writes, checked end to end on a tiny run:
stored audio paths that still lead to the audio from anywhere, the resampler in the root
attributes, `#` lines in every kind of list, plain reasons for empty and undecodable files,
files made with the user's umask, and every job default in lighthubert.defaults."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from importlib import metadata
from pathlib import Path

import h5py
import pytest
import soundfile as sf

import lighthubert
from helpers import SPEECH_DIR
from lighthubert import defaults
from lighthubert.convert import convert
from lighthubert.inputs import list_inputs

needs_speech = pytest.mark.skipif(not SPEECH_DIR.is_dir(), reason=f"no speech data at {SPEECH_DIR}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A relative-path run from ``root``: in/spk/a.wav (good), in/empty.wav (0 bytes),
    in/bad.mp3 (not audio) and in/cut.wav (the first half of a.wav: an interrupted copy) into out/feats.h5."""
    if not SPEECH_DIR.is_dir():
        pytest.skip(f"no speech data at {SPEECH_DIR}")
    root = tmp_path_factory.mktemp("contract")
    (root / "in" / "spk").mkdir(parents=True)
    (root / "out").mkdir()
    shutil.copy(SPEECH_DIR / "spk1" / "utt01.wav", root / "in" / "spk" / "a.wav")
    (root / "in" / "empty.wav").write_bytes(b"")
    (root / "in" / "bad.mp3").write_bytes(b"this is not an mp3 file\n" * 4)
    whole = (root / "in" / "spk" / "a.wav").read_bytes()
    (root / "in" / "cut.wav").write_bytes(whole[: len(whole) // 2])
    here = os.getcwd()
    os.chdir(root)
    try:
        summary = lighthubert.extract("in", "out/feats.h5", checkpoint="random:small", subnet="min", num_workers=1)
    finally:
        os.chdir(here)
    return root, summary


@needs_speech
def test_stored_paths_are_absolute_and_the_fairseq_manifest_leads_to_the_audio(run, tmp_path, monkeypatch):
    root, _ = run
    audio = root / "in" / "spk" / "a.wav"
    with h5py.File(root / "out" / "feats.h5") as f:
        assert f["features/spk/a"].attrs["source"] == str(audio)
        skipped = {s["key"]: s["path"] for s in json.loads(f.attrs["skipped"])}
        last = int(f.attrs["layers"][0])
    assert skipped == {"empty": str(root / "in" / "empty.wav"), "bad": str(root / "in" / "bad.mp3"),
                       "cut": str(root / "in" / "cut.wav")}
    monkeypatch.chdir(tmp_path)  # convert from another folder, with a relative path to the file
    convert(os.path.relpath(root / "out" / "feats.h5"), "km", "fairseq", last)
    manifest_root, row = (tmp_path / "km" / "train.tsv").read_text().splitlines()
    rel, samples = row.split("\t")
    assert Path(manifest_root, rel) == audio and int(samples) == sf.info(str(audio)).frames


@needs_speech
def test_root_attributes_name_the_resampler(run):
    root, _ = run
    with h5py.File(root / "out" / "feats.h5") as f:
        text = f.attrs["resampler"]
    assert "torchaudio.functional.resample" in text and f"torchaudio {metadata.version('torchaudio')}" in text


@needs_speech
def test_empty_undecodable_and_truncated_files_are_skipped_with_a_true_reason(run):
    root, summary = run
    reasons = {item.key: reason for item, reason in summary.skipped}
    assert reasons["empty"] == "empty file (0 bytes)"
    assert reasons["bad"].startswith("cannot decode") and "does not exist" not in reasons["bad"]
    # libsndfile reads a WAV cut short as far as it goes: half an utterance would be stored as if whole
    declared = sf.info(str(SPEECH_DIR / "spk1" / "utt01.wav")).frames
    assert reasons["cut"].startswith(f"truncated: its header declares {declared} samples at 16000 Hz")


@needs_speech
def test_strict_stops_with_the_file_and_the_reason(run, tmp_path):
    """lighthubert.extract(strict=True): the StrictStop carries the input and the reason for library
    callers (no command-line flag in the message), and the file keeps what was done before it."""
    from lighthubert.pipeline import StrictStop

    root, summary = run
    with pytest.raises(StrictStop) as info:
        lighthubert.extract(root / "in", tmp_path / "s.h5", checkpoint="random:small", subnet="min", num_workers=1,
                            strict=True)
    stop = info.value
    reasons = {item.key: reason for item, reason in summary.skipped}  # the same inputs, skipped without strict
    assert Path(stop.path).parent == root / "in" and stop.reason == reasons[Path(stop.path).stem]
    assert str(stop) == f"{stop.path}: {stop.reason} (strict: the run stopped at it)" and "--" not in str(stop)
    again = pickle.loads(pickle.dumps(stop))  # a process pool sends it back whole
    assert (type(again), str(again), again.path, again.reason) == (StrictStop, str(stop), stop.path, stop.reason)
    with h5py.File(tmp_path / "s.h5") as f:
        assert not bool(f.attrs["complete"])


def test_comment_lines_are_ignored_in_a_tsv_manifest_too(tmp_path):
    (tmp_path / "spk").mkdir()
    manifest = tmp_path / "train.tsv"
    manifest.write_text(f"# made by hand\n{tmp_path}\n# spk/old.wav\t16000\nspk/a.wav\t16000\n\n")
    items = list_inputs(manifest)
    assert [(it.key, it.path) for it in items] == [("spk/a", tmp_path / "spk" / "a.wav")]


def test_exported_checkpoints_are_made_with_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = lighthubert.export_subnet(lighthubert.load_checkpoint("random:small"), "min", tmp_path / "min.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["min.pt"]  # no temporary file left


def test_every_job_default_lives_in_lighthubert_defaults():
    """README: the fields of ExtractJob take their defaults from lighthubert.defaults (one place)."""
    constant = {"format": "OUTPUT_FORMAT"}
    for field in dataclasses.fields(lighthubert.ExtractJob):
        if field.default in (dataclasses.MISSING, None, False):
            continue  # required, or "not given" (resolved per device or checkpoint), or a switch
        name = constant.get(field.name, field.name.upper())
        assert getattr(defaults, name, object()) == field.default, f"{field.name}: no defaults.{name} of that value"
