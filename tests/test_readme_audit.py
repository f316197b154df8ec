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


def test_python_library_snippets_run_as_written(ckpt_files, tmp_path, monkeypatch):
    """README "The Python library": its code blocks, run as written in a folder holding ``wavs/`` and a
    Small checkpoint where README says a downloaded one is kept (``LIGHTHUBERT_CACHE``). Only the names
    README leaves to the reader are given: a second waveform, a padded batch, batches and ``use``. A
    newcomer's run of them found ``glob`` never imported and the list example writing over the file
    the call before it had just written."""
    import re
    import shutil

    if not SPEECH_DIR.is_dir():
        pytest.skip(f"no speech at {SPEECH_DIR}")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(ckpt_files["small"], cache / "lighthubert_small.pt")
    monkeypatch.setenv("LIGHTHUBERT_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, src in (("spk1/a.flac", "spk1/utt01.wav"), ("spk2/b.wav", "spk1/utt02.wav")):
        (tmp_path / "wavs" / name).parent.mkdir(parents=True, exist_ok=True)
        wave, rate = sf.read(SPEECH_DIR / src, dtype="float32")
        sf.write(tmp_path / "wavs" / name, wave[: 2 * rate], rate)
    monkeypatch.chdir(tmp_path)
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text(encoding="utf-8")
    section = text[text.index("## The Python library"):]
    blocks = re.findall(r"```python\n(.*?)```", section[:section.index("\n## ", 1)], re.S)
    b = torch.zeros(8000)
    b[:4000] = torch.randn(4000) * 0.1
    used = []
    scope = {"wave_16k_b": b[:4000], "padded": b[None].repeat(2, 1), "lengths": torch.tensor([4000, 8000]),
             "batches": [[b[:4000], b], [b]], "use": used.append}
    for block in blocks[:3]:  # the fourth is the authors' own example, run by test_dropin.py
        exec(compile(block, str(readme), "exec"), scope)
    assert [tuple(f.shape) for f in scope["feats"]] == [(12, 384), (24, 384)]  # the padded batch's, last layer
    assert scope["ext"].params == 26879744  # as README's comment says
    assert scope["summary"].files == 2 and scope["summary"].skipped == []
    with lighthubert.open_features("flac.h5") as f:
        assert list(f.keys) == ["wavs/spk1/a"]
    assert [len(u) for u in used] == [2, 1]
    assert Path("small_min.pt").is_file() and Path("random_base.pt").is_file()
