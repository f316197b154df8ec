"""What README.md promises, checked where a newcomer's audit of it found the code disagreeing."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import soundfile as sf
import torch

import lighthubert
from lighthubert import deploy
from helpers import SPEECH_DIR, rel_err


@pytest.fixture(scope="module")
def prenorm(tmp_path_factory) -> Path:
    """A pre-norm (``layer_norm_first``) Small checkpoint with random weights."""
    return Path(lighthubert.write_random_checkpoint(tmp_path_factory.mktemp("prenorm") / "prenorm.pt", "small",
                                                    seed=5, layer_norm_first=True))


def test_export_index_is_a_hidden_state_on_a_prenorm_model(prenorm, tmp_path):
    """README "Deploying a subnet": ``--layers`` picks hidden states, as in ``lhb extract``, where an
    index is never the normed final output of a pre-norm model (only ``last`` is). An explicit last
    index used to be exported as the normed final output."""
    path = SPEECH_DIR / "spk1" / "utt01.wav"
    if not path.is_file():
        pytest.skip(f"no speech at {path}")
    wave = sf.read(path, dtype="float32")[0][:16000]
    ckpt = lighthubert.load_checkpoint(prenorm)
    ext = lighthubert.load(prenorm, subnet="min", device="cpu")
    last_index = ext.num_layers
    final = ext([wave])[0]                                   # (T, E): `last`, the normed final output
    hidden = ext([wave], layers="all")[0][last_index]        # (T, E): hidden state L, not normed
    assert rel_err(final, hidden) > 1e-2                     # the two differ, or this test proves nothing

    outs = {}
    for name, layers in (("last", None), ("index", [last_index]), ("minus1", "-1")):
        out = deploy.export(ckpt, "min", tmp_path / f"{name}.ts", layers=layers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(out))
        h, frames = module(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        outs[name] = (h[0, 0, : int(frames[0])], deploy.describe(out)["metadata"]["layers"])
    assert rel_err(outs["last"][0], final) < 1e-4
    assert rel_err(outs["index"][0], hidden) < 1e-4
    assert rel_err(outs["minus1"][0], hidden) < 1e-4
    # the file says which it holds, as a features file's `layers` does: -1 only for the final output
    assert outs["last"][1] == [-1]
    assert outs["index"][1] == outs["minus1"][1] == [last_index]
