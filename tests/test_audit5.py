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


def test_unusable_scp_key_is_not_told_to_use_a_scp_list(tmp_path):
    """A .scp key with '.' or empty parts is refused naming its line; the advice 'give keys of your
    own with a .scp list' is for keys made from paths, not for a key the user already wrote in one."""
    from lighthubert.errors import LightHubertError
    from lighthubert.inputs import list_inputs

    wav = SPEECH_DIR / FILES[0]
    scp = tmp_path / "k.scp"
    scp.write_text(f"ok {wav}\na//b {wav}\n")
    with pytest.raises(LightHubertError, match=r"k\.scp:2: 'a//b' is not a usable key \(empty, '\.' or '\.\.' parts\)$"):
        list_inputs(scp)
    lst = tmp_path / "k.txt"
    lst.write_text("./.\n")
    with pytest.raises(LightHubertError, match=r"give keys of your own with a \.scp list"):
        list_inputs(lst)


def test_prepare_refuses_what_the_call_refuses():
    """README's overlapped loop, ext.submit(ext.prepare(waves), ...), took a (N, 2) stereo array as
    2N interleaved samples (twice the frames, features of garbage) where ext(waves) refuses it."""
    import numpy as np
    import soundfile as sf

    import lighthubert

    ext = lighthubert.load("random:small", subnet="min", device="cpu")
    wave, sr = sf.read(SPEECH_DIR / FILES[0], dtype="float32")
    assert sr == 16000 and wave.ndim == 1
    stereo = np.stack([wave, wave], axis=1)  # (N, 2), as soundfile gives a 2-channel file
    for bad, words in ((stereo, r"waveform 1 has shape \(\d+, 2\)"), (wave[:399], "waveform 1 has fewer than 400"),
                       (np.full(1000, np.nan, np.float32), "waveform 1 holds NaN")):
        with pytest.raises(ValueError, match=words):
            ext.prepare([wave, bad])
    (got,) = ext.submit(ext.prepare([wave[None]]), [ext.num_layers]).result()  # (1, N) is one channel
    assert got.shape == (1, (len(wave) - 400) // 320 + 1, ext.embed_dim)
