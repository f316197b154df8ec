"""Batching on the CPU: the whole-batch normalisation against per-utterance ``F.layer_norm``, the
prepare/submit API the pipeline uses, and the float32 kernel settings (TF32 off) that a forward pass
sets and restores."""

from __future__ import annotations

import functools
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lighthubert
from lighthubert.extractor import Pending, Prepared, normalize_rows
from lighthubert.model import conv_frames, kernel_choices
from helpers import FLOAT32_FLAGS, tf32_flags

SIZES = (400, 16000, 23456, 40001)


def _waves(sizes=SIZES, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 0.1 + 0.05 * i for i, n in enumerate(sizes)]


def _padded(waves: list[torch.Tensor]) -> torch.Tensor:
    x = torch.zeros(len(waves), max(len(w) for w in waves))
    for row, w in zip(x, waves):
        row[: len(w)] = w
    return x


def test_normalize_rows_is_layer_norm_per_utterance():
    waves = _waves()
    sizes = torch.tensor([len(w) for w in waves])
    padded = _padded(waves)
    got = normalize_rows(padded, sizes)
    assert got is padded, "in place"
    for row, w in zip(got, waves):
        ref = F.layer_norm(w, w.shape)  # what the authors do to each utterance
        assert float((row[: len(w)] - ref).abs().max()) <= 2e-6
        assert not row[len(w):].any(), "padding must stay zero"


def test_normalize_rows_constant_and_loud_rows():
    """A silent row gives zeros (eps keeps it finite); a loud one is standardised like layer_norm."""
    loud = torch.randn(3000, generator=torch.Generator().manual_seed(1)) * 1e3 + 50.0
    waves = [torch.zeros(1000), torch.full((500,), 0.25), loud]
    got = normalize_rows(_padded(waves), torch.tensor([1000, 500, 3000]))
    assert torch.isfinite(got).all()
    assert not got[0].any() and not got[1].any()
    assert float((got[2] - F.layer_norm(loud, loud.shape)).abs().max()) <= 2e-6


def test_prepare_normalises_each_utterance_over_its_own_samples():
    ext = lighthubert.load("random:small", device="cpu")
    assert ext.normalize
    waves = _waves()
    p = ext.prepare(waves)
    assert isinstance(p, Prepared) and p.ready is None
    assert p.wave.shape == (len(waves), max(SIZES)) and p.wave.dtype == torch.float32
    assert p.lengths.tolist() == list(SIZES)
    assert p.frames == conv_frames(torch.tensor(SIZES), ext.checkpoint.cfg.conv_layers).tolist()
    for row, w in zip(p.wave, waves):
        assert float((row[: len(w)] - F.layer_norm(w, w.shape)).abs().max()) <= 2e-6
    # already normalised (the pipeline's chunks of a long file): left as given
    raw = ext.prepare(waves, normalized=True)
    assert torch.equal(raw.wave, _padded(waves))


def test_whether_a_batch_is_padded_is_decided_on_the_host(monkeypatch):
    """The model takes lengths None (the unmasked path) for a batch of equal lengths and the lengths
    otherwise, decided from the sizes on the host: asking CUDA lengths whether they pad anything made
    every forward wait for the device, so no batch was ever queued behind another."""
    ext = lighthubert.load("random:small", subnet="min", device="cpu")
    waves = _waves()
    seen, forward = [], type(ext.model).forward

    def spy(model, wave, lengths=None, *args, **kwargs):
        seen.append(None if lengths is None else lengths.tolist())
        return forward(model, wave, lengths, *args, **kwargs)

    monkeypatch.setattr(type(ext.model), "forward", spy)
    same = [waves[0], waves[0].clone()]
    assert not ext.prepare(same).padded and ext.prepare(waves).padded
    together = ext.submit(ext.prepare(same), [2]).result() + ext.submit(ext.prepare(waves), [2]).result()
    assert seen == [None, list(SIZES)]
    for got, w in zip(together, same + waves):
        assert float((got - ext([w], layers=[2])[0][None]).abs().max()) <= 1e-5


def test_prepare_leaves_audio_alone_when_the_checkpoint_does_not_normalise():
    ext = lighthubert.load("random:stage1", device="cpu")
    assert not ext.normalize
    waves = _waves(seed=3)
    assert torch.equal(ext.prepare(waves).wave, _padded(waves))


def test_submit_gives_each_utterance_its_frames_and_the_asked_dtype():
    ext = lighthubert.load("random:small", device="cpu")
    waves = _waves(seed=4)
    layers = [0, 3, ext.num_layers]
    pending = ext.submit(ext.prepare(waves), layers)
    assert isinstance(pending, Pending)
    feats = pending.result()
    for f, w in zip(feats, waves):
        alone = ext([w], layers=layers)[0]
        assert f.shape == alone.shape == (3, int(conv_frames(torch.tensor([len(w)]), ext.checkpoint.cfg.conv_layers)), ext.embed_dim)
        assert float((f - alone).abs().max() / alone.abs().max()) <= 1e-5
    half = ext.submit(ext.prepare(waves), layers, torch.bfloat16).result()
    for h, f in zip(half, feats):
        assert h.dtype == torch.bfloat16 and h.shape == f.shape
        assert torch.equal(h, f.to(torch.bfloat16))
    # what the pipeline stores: numpy arrays
    assert all(isinstance(f.numpy(), np.ndarray) for f in feats)


@functools.lru_cache(maxsize=None)
def _small(dtype: str):
    return lighthubert.load("random:small", device="cpu", dtype=dtype, subnet="min")


def _flags_during_forward(dtype: str, waves: list) -> list[dict]:
    """The TF32 flags seen inside each forward of the first encoder layer."""
    ext = _small(dtype)
    seen = []
    handle = ext.model.layers[0].register_forward_hook(lambda *_: seen.append(tf32_flags()))
    try:
        ext(waves)
    finally:
        handle.remove()
    return seen


def test_float32_forward_turns_tf32_off_and_restores_the_user_setting(user_tf32):
    """Before: only the newer flags were set, so a user's allow_tf32 = True (or matmul precision
    "high") made torch refuse the legacy readings inside the forward pass."""
    (seen,) = _flags_during_forward("float32", _waves(seed=5)[:2])
    assert {k: seen[k] for k in FLOAT32_FLAGS} == FLOAT32_FLAGS, seen
    assert tf32_flags() == user_tf32


def test_flags_restored_when_the_forward_fails(user_tf32):
    with pytest.raises(RuntimeError, match="boom"):
        with kernel_choices(torch.device("cpu"), torch.float32):
            assert {k: tf32_flags()[k] for k in FLOAT32_FLAGS} == FLOAT32_FLAGS
            raise RuntimeError("boom")
    assert tf32_flags() == user_tf32


def test_bfloat16_forward_leaves_the_flags_alone(user_tf32):
    assert _flags_during_forward("bfloat16", _waves(seed=6)[:1]) == [user_tf32]


OUT_OF_MEMORY = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory (injected by the test)"),
    # what torch's CPU allocator raises (before: 'lhb: internal error', and the run ended)
    "cpu": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
                                "you tried to allocate 123 bytes (injected by the test)"),
    # a pinned host buffer that CUDA cannot allocate (C10_CUDA_CHECK), a cuBLAS workspace
    "pinned": lambda: RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    "cublas": lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
}


@pytest.mark.parametrize("device", sorted(OUT_OF_MEMORY))
def test_out_of_memory_splits_the_batch_in_halves(tmp_path, ckpt_files, monkeypatch, device):
    """A batch that runs out of device (or host) memory (injected here: any batch of more than one
    utterance) is split in halves down to single utterances, without trying the same batch again, and
    every utterance gets the numbers of an unconstrained run."""
    import soundfile as sf

    for i, w in enumerate(_waves((16000, 23456, 40001), seed=3)):
        sf.write(str(tmp_path / f"u{i}.wav"), w.numpy(), 16000, subtype="FLOAT")
    settings = dict(checkpoint=ckpt_files["small"], subnet="min", device="cpu", layers="all")
    lighthubert.extract(tmp_path, tmp_path / "ref.h5", **settings)

    submit, sizes, failed = lighthubert.Extractor.submit, [], []

    def tight(self, prepared, *args, **kwargs):
        # what a failed attempt held (its input, its activations) is freed before the halves run:
        # the exception's traceback kept it (and so the memory it lacked) alive before
        assert [r() for r in failed] == [None] * len(failed)
        sizes.append(prepared.wave.shape[0])
        if prepared.wave.shape[0] > 1:
            activations = torch.empty(1 << 16)
            failed.extend([weakref.ref(prepared.wave), weakref.ref(activations)])
            raise OUT_OF_MEMORY[device]()
        return submit(self, prepared, *args, **kwargs)

    monkeypatch.setattr(lighthubert.Extractor, "submit", tight)
    lighthubert.extract(tmp_path, tmp_path / "split.h5", **settings)
    assert sizes == [3, 1, 2, 1, 1]  # the batch, then its halves (the second one halved again)
    with lighthubert.open_features(tmp_path / "ref.h5") as ref, lighthubert.open_features(tmp_path / "split.h5") as got:
        assert sorted(got.keys) == sorted(ref.keys) == ["u0", "u1", "u2"]
        for k in ref.keys:
            a, b = got[k], ref[k]
            assert a.shape == b.shape and float((a - b).abs().max() / b.abs().max()) <= 1e-5, k


def test_an_utterance_that_does_not_fit_alone_is_skipped_and_the_run_goes_on(tmp_path, ckpt_files, monkeypatch):
    """Out of device memory for one utterance on its own (the batch split down to it, or a long file
    run alone): that utterance is skipped with the reason and what to try; the others are written.
    Before, the error ended the whole run."""
    import soundfile as sf

    for i, w in enumerate(_waves((16000, 23456, 40001), seed=3)):
        sf.write(str(tmp_path / f"u{i}.wav"), w.numpy(), 16000, subtype="FLOAT")
    settings = dict(checkpoint=ckpt_files["small"], subnet="min", device="cpu", layers="all")
    lighthubert.extract(tmp_path, tmp_path / "ref.h5", **settings)
    submit = lighthubert.Extractor.submit

    def big(self, prepared, *args, **kwargs):
        if prepared.wave.shape[1] > 40000:  # any batch holding u2, u2 alone too
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return submit(self, prepared, *args, **kwargs)

    monkeypatch.setattr(lighthubert.Extractor, "submit", big)
    batched = lighthubert.extract(tmp_path, tmp_path / "small.h5", **settings)
    assert [(it.key, reason) for it, reason in batched.skipped] == [
        ("u2", "out of device memory for it alone (0.0 min of audio): use fewer --layers, or run it on a device with "
               "more memory (CUDA out of memory (injected by the test))")]
    monkeypatch.setattr(lighthubert.Extractor, "submit", lambda self, prepared, *a, **k: (
        (_ for _ in ()).throw(OUT_OF_MEMORY["cpu"]()) if prepared.wave.shape[1] > 40000 else submit(self, prepared, *a, **k)))
    on_cpu = lighthubert.extract(tmp_path, tmp_path / "cpu.h5", **settings)
    assert [(it.key, reason.split(" (")[0]) for it, reason in on_cpu.skipped] == [("u2", "out of memory for it alone")]
    monkeypatch.setattr(lighthubert.Extractor, "submit", submit)

    def long_too_big(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    monkeypatch.setattr(lighthubert.Extractor, "run_long", long_too_big)  # u2 (2.5 s) is a long file here
    windowed = lighthubert.extract(tmp_path, tmp_path / "long.h5", exact_seconds=2, window_seconds=1,
                                   context_seconds=0.5, **settings)
    assert [it.key for it, _ in windowed.skipped] == ["u2"]
    assert windowed.skipped[0][1].startswith("out of device memory for it alone (0.0 min of audio): use a shorter "
                                             "--window-seconds or --context-seconds, or fewer --layers")
    with lighthubert.open_features(tmp_path / "ref.h5") as ref:
        for out in ("small.h5", "long.h5"):
            with lighthubert.open_features(tmp_path / out) as got:
                assert sorted(got.keys) == ["u0", "u1"] and [s["key"] for s in got.attrs["skipped"]] == ["u2"]
                for k in got.keys:
                    assert float((got[k] - ref[k]).abs().max() / ref[k].abs().max()) <= 1e-5, (out, k)


def test_a_long_file_comes_to_the_host_layer_by_layer_with_the_numbers_of_a_stacked_run():
    """The long-file path moves each layer to the host on its own (no stacked copy of all of them on
    the device) and gives run_long's stacked numbers, in the save dtype, with the finite check."""
    from lighthubert.longform import LongForm
    from lighthubert.pipeline import _run_long

    ext = lighthubert.load("random:small", subnet="min", device="cpu")
    wave = _waves((48000,), seed=5)[0].numpy()
    layers = [0, 3, ext.num_layers]
    form = LongForm("windowed", 1.0, 0.5)
    stacked = ext.run_long(ext.batch([wave])[0][0], layers, form)
    for dtype in (torch.float32, torch.float16):
        data, finite = _run_long(ext, wave, layers, form, dtype, None)
        assert finite and data.dtype == (np.float16 if dtype == torch.float16 else np.float32)
        assert np.array_equal(data, stacked.to(dtype).numpy())


def test_results_are_ordinary_compact_tensors():
    """Before: on the CPU each result was an inference tensor viewing the whole padded batch: a probe
    trained on it failed ('Inference tensors cannot be saved for backward'), an in-place change failed,
    and a short utterance's result kept a long one's batch in memory."""
    long, short = _waves(seed=7)[0], _waves(seed=8)[0][:8000]
    long = np.tile(long, 1 + 160_000 // len(long))
    ext = _small("float32")
    _, x = ext([long, short], layers="all")
    assert not x.is_inference() and x.is_contiguous()
    assert x.untyped_storage().nbytes() == x.numel() * x.element_size()
    probe = torch.nn.Linear(x.shape[-1], 3)
    probe(ext(short)).sum().backward()
    assert probe.weight.grad is not None
    y = ext(short)
    y.sub_(y.mean())


def test_submit_takes_the_layers_the_extractor_takes():
    """Before: ext.submit(ext.prepare(waves), "all") was "TypeError: 'in <string>' requires string"."""
    ext = _small("float32")
    waves = _waves(seed=9)[:2]
    for layers in ("all", "last", 2, "0,2"):
        got = ext.submit(ext.prepare(waves), layers).result(own=True)
        want = ext(waves, layers=layers)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.reshape(w.shape), w, rtol=0, atol=0)

