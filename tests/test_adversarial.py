"""A second adversarial pass over the command and the library: each case is a defect that was found
(it failed before its fix) and is now one clear line naming the file and the reason, with nothing
already written lost."""

from __future__ import annotations

import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from cli_helpers import _env, lhb_command, one_line
from helpers import SPEECH_DIR
from lighthubert.storage import HDF5, OutputError, run_attrs
from lighthubert.storage.hdf5 import FeatureWriter

UTT = SPEECH_DIR / "spk2" / "utt03.wav"  # about 1 s of real speech at 16 kHz
needs_speech = pytest.mark.skipif(not UTT.is_file(), reason="needs the speech data")


def lhb(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(lhb_command() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=_env(), stdin=subprocess.DEVNULL)


def _attrs() -> dict:
    return run_attrs(layers=[1], subnet={"a": 1}, checkpoint="c.pt", checkpoint_sha256="ab", normalize=True,
                     random_weights=True, params=10, dtype="float32", compute_dtype="float32", version="t",
                     exact_seconds=120.0, window_seconds=60.0, context_seconds=10.0, num_layers=1, embed_dim=4)


def _features_file(path) -> None:
    w = FeatureWriter(path, _attrs())
    w.write("u", np.ones((3, 4), np.float32), source="/a/u.wav", num_samples=960)
    w.close(complete=True)


# ----------------------------------------------------------------------------- OUTPUT that is not ours


def test_resume_or_merge_of_an_hdf5_file_that_is_not_ours_says_so(tmp_path):
    """Before: resuming listed eleven 'differing settings' (None, now ...) in a 700-character line."""
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2]
    before = foreign.read_bytes()
    for call in (lambda: HDF5.committed(foreign, _attrs(), include_output=True),
                 lambda: FeatureWriter(foreign, _attrs(), resume=True)):
        with pytest.raises(OutputError) as e:
            call()
        assert str(e.value).startswith(f"{foreign}: an HDF5 file, but not a lighthubert features file"), e.value
        assert "None" not in str(e.value)
    ours = tmp_path / "ours.h5"
    _features_file(ours)
    with pytest.raises(OutputError, match="other.h5: an HDF5 file, but not a lighthubert features file$"):
        HDF5.merge(tmp_path / "m.h5", [ours, foreign], include_output=False)
    assert foreign.read_bytes() == before and not (tmp_path / "m.h5").exists()


def test_a_truncated_or_non_hdf5_output_is_named_as_such(tmp_path):
    """Before: '(Unable to synchronously open file)', h5py's reason cut off."""
    good = tmp_path / "good.h5"
    _features_file(good)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:1000])
    text = tmp_path / "text.h5"
    text.write_text("not features\n")
    size = good.stat().st_size
    for path, reason in ((cut, f"truncated: 1,000 of its {size:,} bytes are there"), (text, "not an HDF5 file")):
        with pytest.raises(OutputError) as e:
            HDF5.committed(path, _attrs(), include_output=True)
        assert str(e.value) == f"{path}: cannot be read to resume ({reason}); use --overwrite to start again"
        with pytest.raises(OutputError, match=f"cannot be opened \\({reason}\\)"):
            HDF5.merge(tmp_path / "m.h5", [good, path], include_output=False)
        with pytest.raises(OutputError, match=f"{path.name}: cannot be read \\({reason}\\)$"):
            HDF5.describe(path)
    assert HDF5.describe(good)["utterances"] == 1


def test_info_of_a_broken_h5_file_speaks_of_hdf5_not_checkpoints(tmp_path):
    text = tmp_path / "feats.h5"
    text.write_text("hello\n")
    p = lhb("info", text)
    assert p.returncode == 1 and one_line(p) == f"lhb: error: {text}: cannot be read (not an HDF5 file)", p.stderr
    assert p.stdout == ""
