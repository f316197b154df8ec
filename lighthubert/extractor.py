"""The simple entry point: ``lighthubert.load(...)`` gives an :class:`Extractor` that turns a list
of 16 kHz waveforms into per-utterance hidden states."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import Checkpoint, Progress, load_checkpoint

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FINAL = -1
"""In a resolved layer list: the model's final output. For a pre-norm (``layer_norm_first``) model
that is the last hidden state after the encoder's final LayerNorm, which no hidden-state index names."""


def resolve_device(device: Any = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise as ``torch.device`` reads it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """``auto``/None -> float16 on CUDA, float32 on the CPU."""
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
        dtype = DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("float16 is for CUDA; on the CPU use float32 (or bfloat16)")
    return dtype


def resolve_layers(spec: Any, num_layers: int, layer_norm_first: bool = False) -> list[int]:
    """The one place ``last`` is decided. ``last`` -> the final output: ``[L]`` (hidden state L) for a
    post-norm model, ``[FINAL]`` for a pre-norm one; ``all`` -> [0..L]; ``"0,4,12"`` or a list -> those
    hidden-state indices (0 = projected conv features; negative counts from the end). A number always
    means that hidden state, never the normed final output."""
    if spec is None or spec == "last":
        return [FINAL] if layer_norm_first else [num_layers]
    if spec == "all":
        return list(range(num_layers + 1))
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[int] = []
    for item in items:
        try:
            i = int(str(item).strip())
        except ValueError:
            raise ValueError(f"layers must be last, all or comma-separated integers, got {spec!r}") from None
        if i < 0:
            i += num_layers + 1
        if not 0 <= i <= num_layers:
            raise ValueError(f"layer {item} is out of range: this subnet has hidden states 0..{num_layers}")
        if i not in out:
            out.append(i)
    if not out:
        raise ValueError("no layers asked for")
    return out


class Extractor:
    """One subnet of a checkpoint, ready to run on ``device`` in ``dtype``.

    >>> ext = lighthubert.load("random:small", subnet="default")
    >>> feats = ext([wave1, wave2], layers="all")   # list of (L+1, T_i, E) float32 CPU tensors
    """

    def __init__(self, checkpoint: Checkpoint, subnet: Any = None, device: Any = "auto", dtype: Any = None):
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.subnet = checkpoint.resolve_subnet(subnet)
        self.params = checkpoint.params(self.subnet)
        self.model = checkpoint.model(self.subnet, device=self.device, dtype=self.dtype)

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def embed_dim(self) -> int:
        return self.subnet["embed_dim"]

    @property
    def normalize(self) -> bool:
        return self.checkpoint.normalize

    def batch(self, waves: Sequence[Tensor | np.ndarray], normalized: bool = False) -> tuple[Tensor, Tensor]:
        """Normalise each waveform over its own samples if the checkpoint asks for it (and
        ``normalized`` does not say it was done already), then pad.
        Returns (B, N) in ``dtype`` on the device and the (B,) lengths."""
        tensors = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waves]
        lengths = torch.tensor([len(t) for t in tensors])
        cuda = self.device.type == "cuda"
        host = torch.zeros(len(tensors), int(lengths.max()), dtype=torch.float32, pin_memory=cuda)
        for i, t in enumerate(tensors):
            host[i, : len(t)] = t
        x = host.to(self.device, non_blocking=True)
        n = lengths.to(self.device, non_blocking=True)
        if self.normalize and not normalized:  # F.layer_norm(w, w.shape) over each utterance's own samples
            for i, length in enumerate(lengths.tolist()):
                x[i, :length] = F.layer_norm(x[i, :length], (length,))
        return x.to(self.dtype), n

    @torch.inference_mode()
    def run(self, wave: Tensor, lengths: Tensor | None, layers: list[int]) -> tuple[Tensor, Tensor]:
        """The forward pass on a prepared batch: (B, len(layers), T, E) in ``dtype`` and frame counts.
        ``layers`` as :func:`resolve_layers` gives them (``FINAL`` for the final output)."""
        final = FINAL in layers
        out = self.model(wave, lengths, layers=[i for i in layers if i != FINAL], last=final)
        stacked = torch.stack([out.last if i == FINAL else out.hidden[i] for i in layers], dim=1)
        n = out.lengths
        if n is None:
            n = torch.full((wave.shape[0],), stacked.shape[2], device=wave.device)
        return stacked, n

    def __call__(self, waves: Sequence[Tensor | np.ndarray], layers: Any = "last") -> list[Tensor]:
        """Hidden states of each waveform (16 kHz, mono): a float32 CPU tensor (T, E) for one layer,
        (len(layers), T, E) for several. Every utterance gets the numbers it gets alone."""
        idx = resolve_layers(layers, self.num_layers, self.checkpoint.cfg.layer_norm_first)
        for i, w in enumerate(waves):
            if np.asarray(w).size < 400:
                raise ValueError(f"waveform {i} has fewer than 400 samples (25 ms); it gives no frame")
        stacked, n = self.run(*self.batch(waves), idx)
        feats = [stacked[b, :, : int(n[b])].float().cpu() for b in range(len(waves))]
        return [f[0] for f in feats] if len(idx) == 1 else feats


def load(source: str = "small", subnet: Any = None, device: Any = "auto", dtype: Any = None, *,
         seed: int = 0, trust: bool = False, progress: Progress | None = None) -> Extractor:
    """Open a checkpoint (path, ``base``/``small``/``stage1``, or ``random:KIND``) and cut a subnet
    (None for the checkpoint's default, a preset ``default``/``max``/``min``, a dict, JSON text or a
    JSON file). ``device`` ``auto`` uses CUDA when present; ``dtype`` None means float16 on CUDA and
    float32 on the CPU."""
    return Extractor(load_checkpoint(source, seed=seed, trust=trust, progress=progress), subnet, device, dtype)
