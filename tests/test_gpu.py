"""CUDA checks (skipped without a GPU): float32 is float32 (TF32 off, the caller's flags restored),
float16 and bfloat16 close to float32, attention never on cuDNN's per-shape backend, batching
independence on the device, and the overlapped prepare/submit path giving the plain path's numbers."""

from __future__ import annotations

import pytest
import torch

import lighthubert
from helpers import FLOAT32_FLAGS, SPEECH_DIR, tf32_flags

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
SPEECH = SPEECH_DIR


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(scope="module")
def waves():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=g) * 0.1 for n in (16000, 23456, 40000)]


@pytest.mark.parametrize("kind", ["small", "stage1"])
def test_cuda_float32_matches_cpu(kind, waves):
    cpu = lighthubert.load(f"random:{kind}", device="cpu")(waves, layers="all")
    gpu = lighthubert.load(f"random:{kind}", device="cuda", dtype="float32")(waves, layers="all")
    for a, b in zip(gpu, cpu):
        assert a.shape == b.shape
        assert _rel(a, b) < 1e-5  # TF32 is off for float32


def test_float32_turns_tf32_off_only_during_the_forward(waves, user_tf32):
    """However the caller turned TF32 on (fp32_precision, allow_tf32, matmul precision "high", the
    generic flag), a float32 forward on CUDA runs with every flag saying float32 (cuBLAS reads the
    legacy ones: a contradiction is an error there), equals the CPU, and leaves the flags as they were."""
    ext = lighthubert.load("random:small", device="cuda", dtype="float32")
    seen = []
    ext.model.layers[0].register_forward_hook(lambda *_: seen.append((tf32_flags(), torch.backends.cuda.cudnn_sdp_enabled())))
    got = ext(waves, layers="all")
    (flags, cudnn_sdp), = seen
    assert {k: flags[k] for k in FLOAT32_FLAGS} == FLOAT32_FLAGS and not cudnn_sdp, flags
    assert tf32_flags() == user_tf32
    for a, b in zip(got, lighthubert.load("random:small", device="cpu")(waves, layers="all")):
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("dtype,bound", [("float16", 2e-2), ("bfloat16", 1e-1)])
def test_half_precision_close_to_float32(dtype, bound, waves):
    ref = lighthubert.load("random:base", device="cuda", dtype="float32")(waves, layers="all")
    got = lighthubert.load("random:base", device="cuda", dtype=dtype)(waves, layers="all")
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        assert _rel(a, b) < bound


def test_float16_on_real_speech_within_3e_3_of_float32():
    files = sorted(p for p in SPEECH.rglob("*") if p.is_file())
    if not files:
        pytest.skip(f"no speech under {SPEECH}")
    speech = [lighthubert.load_audio(p) for p in files[:4]]
    ref = lighthubert.load("random:base", device="cuda", dtype="float32")(speech, layers="last")
    got = lighthubert.load("random:base", device="cuda", dtype="float16")(speech, layers="last")
    for a, b in zip(got, ref):
        assert _rel(a, b) <= 3e-3


def test_batch_independence_on_cuda(waves):
    ext = lighthubert.load("random:stage1", device="cuda", dtype="float32")
    together = ext(waves, layers="all")
    for w, t in zip(waves, together):
        alone = ext([w], layers="all")[0]
        assert _rel(t, alone) < 1e-5


def test_overlapped_batches_equal_one_at_a_time(waves):
    """Batch k+1 prepared and queued (side-stream copies) before batch k's results are read."""
    ext = lighthubert.load("random:small", device="cuda", dtype="float32")
    batches = [waves, waves[1:], [w * 0.5 for w in waves], waves[:1]]
    layers = [0, ext.num_layers]
    got, pending = [], None
    for b in batches:
        nxt = ext.submit(ext.prepare(b), layers)
        if pending is not None:
            got.append(pending.result())
        pending = nxt
    got.append(pending.result())
    for b, feats in zip(batches, got):
        for w, f in zip(b, feats):
            alone = ext([w], layers=layers)[0]
            assert f.shape == alone.shape
            assert _rel(f, alone) < 1e-5


def test_float32_torchscript_exported_on_the_cpu_runs_on_cuda(waves, tmp_path):
    """``lhb subnet --export x.ts`` (float32, traced on the CPU) loaded with ``map_location="cuda"``
    runs on CUDA inputs and gives the CPU file's features (cuDNN's TF32 convolutions: within 1e-2)."""
    import warnings

    from lighthubert import deploy

    path = tmp_path / "min.ts"
    deploy.export(lighthubert.load_checkpoint("random:small"), "min", path, layers="all")
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.14
        on_cpu = torch.jit.load(str(path), map_location="cpu")
        on_cuda = torch.jit.load(str(path), map_location="cuda")
    with torch.inference_mode():
        h_cpu, f_cpu = on_cpu(batch, lengths)
        h_cuda, f_cuda = on_cuda(batch.cuda(), lengths.cuda())
    assert h_cuda.is_cuda and f_cuda.tolist() == f_cpu.tolist()
    assert _rel(h_cuda.cpu(), h_cpu) < 1e-2
