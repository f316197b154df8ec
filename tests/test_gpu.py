"""CUDA checks (skipped without a GPU): the same numbers as on the CPU in float32, float16 and
bfloat16 close to float32, and batching independence on the device."""

from __future__ import annotations

import pytest
import torch

import lighthubert

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


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
        assert _rel(a, b) < 1e-3  # TF32 may be used by cuDNN convolutions


@pytest.mark.parametrize("dtype,bound", [("float16", 2e-2), ("bfloat16", 1e-1)])
def test_half_precision_close_to_float32(dtype, bound, waves):
    ref = lighthubert.load("random:base", device="cuda", dtype="float32")(waves, layers="all")
    got = lighthubert.load("random:base", device="cuda", dtype=dtype)(waves, layers="all")
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        assert _rel(a, b) < bound


def test_batch_independence_on_cuda(waves):
    ext = lighthubert.load("random:stage1", device="cuda", dtype="float32")
    together = ext(waves, layers="all")
    for w, t in zip(waves, together):
        alone = ext([w], layers="all")[0]
        assert _rel(t, alone) < 1e-5
