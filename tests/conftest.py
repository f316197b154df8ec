"""Shared, session-scoped fixtures: random checkpoints in the released layout (dicts and files), the
checkpoints loaded by the library, the authors' models and our drop-in models (each built once per
kind and reused with ``set_sample_config``), and the real speech in ``shared/data/speech``.

Everything heavy is built lazily, on the first test that asks for a kind.

Kinds: ``small`` and ``base`` use the layer_norm extractor with ``normalize`` true, ``stage1`` the
default (GroupNorm) extractor with ``normalize`` false, so both extractor modes are covered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

# Before torch loads OpenMP: the two test workers (pyproject's -n 2) each run torch on 2 threads on a
# 2-core machine, and threads that wait should sleep, not spin on a core the other worker needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

import lighthubert
from helpers import SPEECH_DIR, USER_TF32, authors_hidden_states, tf32_flags
from oracle import authors, build_model

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
README = Path(__file__).resolve().parents[2] / "shared" / "seed" / "LightHuBERT-README.md"



HEAVY = ("test_longform.py", "test_reliability.py", "test_distributed.py", "test_deploy.py", "test_cli.py")
"""The modules that take longest (1.5-4 minutes each), in that order. The workers take whole modules
(``--dist loadfile``: a module's fixtures are built once), and these go first, so that the two
workers end together instead of one running test_longform.py alone at the end."""


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda it: HEAVY.index(it.path.name) if it.path.name in HEAVY else len(HEAVY))  # stable


def pytest_configure(config):
    """Where parity must not be skipped (CI: LIGHTHUBERT_REQUIRE_ORACLE=1), the real speech it is
    checked on must be there too: without it every speech test would skip and CI pass."""
    if os.environ.get("LIGHTHUBERT_REQUIRE_ORACLE") == "1" and not SPEECH_DIR.is_dir():
        raise pytest.UsageError(f"LIGHTHUBERT_REQUIRE_ORACLE=1 and no example speech at {SPEECH_DIR}: "
                                "put ../shared beside the checkout or set LHB_SPEECH to a copy of shared/data/speech")


KINDS = ("small", "base", "stage1")
KIND_PARAMS = [pytest.param(k, marks=pytest.mark.slow) if k == "base" else k for k in KINDS]
"""KINDS for ``parametrize`` in the quick subset (``-m "not slow"``): small and stage1 cover both
extractor modes and both spaces' code; base (building its authors' model is the costly part) runs in
the full suite."""
SEEDS = {"small": 11, "base": 22, "stage1": 33}
SUPERNET_TYPE = {"small": "small", "base": "base", "stage1": "base"}


class Lazy(dict):
    """A dict that builds a missing entry with ``factory(key)`` the first time it is asked for."""

    def __init__(self, factory: Callable):
        super().__init__()
        self.factory = factory

    def __missing__(self, key):
        value = self[key] = self.factory(key)
        return value


@pytest.fixture(scope="session", autouse=True)
def _threads():
    # The suite is sized for a 2-core machine; keep torch from oversubscribing larger ones.
    torch.set_num_threads(min(torch.get_num_threads(), 2))


@pytest.fixture(scope="session")
def ckpt_dicts() -> Lazy:
    """kind -> ``lighthubert.random_checkpoint(kind, SEEDS[kind])`` (the dict)."""
    return Lazy(lambda kind: lighthubert.random_checkpoint(kind, SEEDS[kind]))


@pytest.fixture(scope="session")
def ckpt_files(tmp_path_factory) -> Lazy:
    """kind -> path of ``lighthubert.write_random_checkpoint(path, kind, SEEDS[kind])``."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return Lazy(lambda kind: Path(lighthubert.write_random_checkpoint(folder / f"random_{kind}.pt", kind, SEEDS[kind])))


@pytest.fixture(scope="session")
def ckpts(ckpt_files) -> Lazy:
    """kind -> the library's :class:`Checkpoint` of the random file."""
    return Lazy(lambda kind: lighthubert.load_checkpoint(ckpt_files[kind]))


@pytest.fixture(scope="session")
def authors_models(ckpt_dicts) -> Lazy:
    """kind -> the authors' ``LightHuBERT`` with the random weights (eval mode). Its attribute
    ``initial_params`` is ``calc_sampled_param_num()`` right after construction."""

    def make(kind):
        d = ckpt_dicts[kind]
        model = build_model(d["cfg"]["model"], SUPERNET_TYPE[kind])
        model.initial_params = model.calc_sampled_param_num()
        model.load_result = model.load_state_dict(d["model"], strict=False)
        return model

    return Lazy(make)


@pytest.fixture(scope="session")
def authors_counters(ckpt_dicts) -> Lazy:
    """kind -> the authors' ``LightHuBERT`` moved to the meta device: their own
    ``set_sample_config`` + ``calc_sampled_param_num`` without copying real weights (1 s a subnet on
    CPU), for parameter counts only."""
    return Lazy(lambda kind: build_model(ckpt_dicts[kind]["cfg"]["model"], SUPERNET_TYPE[kind]).to("meta"))


@pytest.fixture(scope="session")
def dropin_models(ckpt_dicts) -> Lazy:
    """kind -> our drop-in ``lighthubert.LightHuBERT`` with the random weights. Its attribute
    ``initial_params`` is ``calc_sampled_param_num()`` right after construction."""

    def make(kind):
        d = ckpt_dicts[kind]
        cfg = lighthubert.LightHuBERTConfig(d["cfg"]["model"])
        cfg.supernet_type = SUPERNET_TYPE[kind]
        model = lighthubert.LightHuBERT(cfg).eval()
        model.initial_params = model.calc_sampled_param_num()
        result = model.load_state_dict(d["model"], strict=False)
        assert not result.missing_keys
        return model

    return Lazy(make)


@pytest.fixture(scope="session")
def speech() -> list[tuple[str, np.ndarray]]:
    """Every file of ``shared/data/speech``: (relative path, 16 kHz mono float32 waveform)."""
    if not SPEECH_DIR.is_dir():
        pytest.skip(f"no speech data at {SPEECH_DIR}")
    files = sorted(p for p in SPEECH_DIR.rglob("*") if p.is_file() and p.suffix.lower() in (".wav", ".flac"))
    if not files:
        pytest.skip(f"no speech files in {SPEECH_DIR}")
    return [(p.relative_to(SPEECH_DIR).as_posix(), lighthubert.load_audio(p)) for p in files]


@pytest.fixture(scope="session")
def short_speech(speech) -> list[np.ndarray]:
    """Two short crops of real utterances (about 0.45 s and 0.8 s; lengths that are not multiples
    of the 320-sample hop) for sweeps over many subnets."""
    by_len = sorted((w for _, w in speech), key=len)
    return [by_len[0][1000:1000 + 7_337], by_len[1][3000:3000 + 12_999]]


def authors_default_subnet(kind: str) -> dict:
    """The subnet the authors' code runs for a released file of this kind by default: the space's
    default subnet for Base/Small; the base max subnet for Stage 1."""
    space = authors().LightHuBERTSupernetConfig(SUPERNET_TYPE[kind])
    return space.max_subnet if kind == "stage1" else space.subnet


@pytest.fixture(scope="session")
def authors_default_outputs(authors_models, ckpt_dicts, speech) -> Lazy:
    """kind -> [hidden states of every speech file] from the authors' model, default subnet."""

    def make(kind):
        model = authors_models[kind]
        model.set_sample_config(authors_default_subnet(kind))
        normalize = ckpt_dicts[kind]["cfg"]["task"]["normalize"]
        return [authors_hidden_states(model, w, normalize) for _, w in speech]

    return Lazy(make)


@pytest.fixture(scope="session")
def ours_default_outputs(ckpt_files, speech) -> Lazy:
    """kind -> (Extractor from ``lighthubert.load(path)``, [(L+1, T, E) of every speech file, run alone])."""

    def make(kind):
        ext = lighthubert.load(str(ckpt_files[kind]), device="cpu")
        return ext, [ext([w], layers="all")[0] for _, w in speech]

    return Lazy(make)


@pytest.fixture(params=list(USER_TF32))
def user_tf32(request):
    """A user who turned TF32 on for their own work, in one of the ways torch offers; every flag is
    restored afterwards. Yields the readings as the user left them."""
    mm, cudnn, mkldnn = torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.mkldnn
    legacy = (torch.get_float32_matmul_precision(), cudnn.allow_tf32)
    saved = [(o, o.fp32_precision) for o in (torch.backends, mm, cudnn, cudnn.conv, cudnn.rnn, mkldnn, mkldnn.matmul,
                                             mkldnn.conv, mkldnn.rnn)]
    USER_TF32[request.param]()
    yield tf32_flags()
    torch.set_float32_matmul_precision(legacy[0])
    cudnn.allow_tf32 = legacy[1]
    for o, value in saved:
        o.fp32_precision = value
