"""Found by a fresh-eyes audit of the command as a speech researcher uses it (README, literally)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from cli_helpers import _env, lhb, lhb_command
from helpers import SPEECH_DIR

FILES = ["spk1/utt01.wav", "spk1/utt02.wav", "spk2/utt01.wav"]


@pytest.fixture(scope="module")
def feats_km(tmp_path_factory):
    """A features file (layers 0 and 3 of random:small's min subnet) and a 4-cluster k-means of layer 3."""
    d = tmp_path_factory.mktemp("audit5")
    for rel in FILES:
        (d / "wav" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SPEECH_DIR / rel, d / "wav" / rel)
    feats, km = d / "feats.h5", d / "km.pt"
    r = lhb("extract", d / "wav", feats, "-c", "random:small", "--subnet", "min", "--layers", "0,3", "--device", "cpu", "-q")
    assert r.returncode == 0, r
    r = lhb("units", "learn", feats, km, "--layer", "3", "--clusters", "4", "--iterations", "5", "-q")
    assert r.returncode == 0, r
    return feats, km


def test_units_apply_to_a_closed_stdout_ends_quietly(feats_km):
    """README: `lhb units apply feats.h5 km.pt - --keys | head`, and a reader that closes the pipe
    early ends lhb quietly with exit 141. Before: 'lhb: error: : Broken pipe', exit 1."""
    feats, km = feats_km
    proc = subprocess.Popen(lhb_command() + ["units", "apply", str(feats), str(km), "-", "--keys", "-q"], env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: the reader is gone before lhb writes
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and err == b"", err
