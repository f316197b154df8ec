"""Long recordings in bounded memory, with the frame count of an uncut run.

Two modes for one long utterance (B = 1):

- **exact**: the convolutional feature extractor runs in pieces that overlap by its receptive field
  (400 samples, hop 320), so its output equals the uncut one; in ``default`` (GroupNorm) mode the
  per-channel statistics of the first block are gathered over the whole file first (two passes).
  The transformer then runs once over the whole sequence; without a padding mask PyTorch's
  ``scaled_dot_product_attention`` uses its memory-efficient kernels, so memory grows linearly with
  length (time still grows quadratically).
- **windowed**: the same exact conv features and hidden state 0; the transformer runs on equal
  windows of at most W frames, each in a run of W + 2C frames centred on it (moved inside the file
  at its ends, see :func:`windows`); context frames are dropped and the windows joined, so no frame
  is lost or repeated. Results near window borders differ from an uncut run by a bound
  measured in BENCHMARKS.md.

Frames are 20 ms (50 per second): the released conv stack's, the only one the Extractor takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .errors import SettingError
from .model import ConvBlock, Output, SubnetModel, conv_frames, kernel_choices, receptive_field

LONG_SECONDS = 60.0
"""Utterances longer than this run alone, with the conv extractor in pieces (bounded memory): in
``lhb extract`` and in ``Extractor(waves)`` alike."""
PIECE_FRAMES = 1500
"""Conv-extractor piece: 30 s of output frames (~200 MB of float32 activations in the first block)."""


@dataclass(frozen=True)
class LongForm:
    """How a long file is run: ``exact``, or ``windowed`` with W and C in seconds."""

    mode: str = "exact"
    window_seconds: float = 0.0
    context_seconds: float = 0.0

    def __post_init__(self):
        if self.mode not in ("exact", "windowed"):
            raise SettingError(f"mode must be exact or windowed, got {self.mode!r}")
        if self.mode == "windowed" and not (self.window_seconds > 0 and self.context_seconds >= 0):
            raise SettingError("windowed mode needs window_seconds > 0 and context_seconds >= 0")

    def windows(self, frames: int) -> list[tuple[int, int, int, int]]:
        """The windows of a file of ``frames`` frames (windowed mode): see :func:`windows`."""
        return windows(frames, max(1, round(self.window_seconds * 50)), max(0, round(self.context_seconds * 50)))


def _first_block_stats(model: SubnetModel, wave: Tensor, piece_frames: int) -> tuple[Tensor, Tensor]:
    """GroupNorm statistics of the first conv block over the whole utterance, gathered in pieces:
    per-channel mean and biased variance, each (1, 1, C) float32 (accumulated in float64)."""
    block: ConvBlock = model.feature_extractor.blocks[0]
    _, k, s = model.cfg.conv_layers[0]
    step = piece_frames * (receptive_field(model.cfg.conv_layers)[1] // s)
    n0 = (wave.shape[0] - k) // s + 1
    total = sq = None
    for a in range(0, n0, step):
        b = min(n0, a + step)
        y = block.conv_only(wave[a * s:(b - 1) * s + k].reshape(1, -1, 1)).double()[0]  # (b - a, C)
        total = y.sum(0) if total is None else total + y.sum(0)
        sq = y.pow(2).sum(0) if sq is None else sq + y.pow(2).sum(0)
    mean = total / n0
    var = (sq / n0 - mean.pow(2)).clamp(min=0)
    return mean.float().view(1, 1, -1), var.float().view(1, 1, -1)


def conv_features(model: SubnetModel, wave: Tensor, piece_frames: int = PIECE_FRAMES) -> Tensor:
    """Conv features of one utterance, computed in overlapping pieces: wave (N,) -> (1, T, C),
    equal to ``model.feature_extractor(wave[None], None)`` with T = conv_frames(N)."""
    field, hop = receptive_field(model.cfg.conv_layers)
    frames = int(conv_frames(torch.tensor([wave.shape[0]]), model.cfg.conv_layers)[0])
    if frames == 0:
        raise ValueError(f"{wave.shape[0]} samples give no frame (at least {field} are needed)")
    blocks = model.feature_extractor.blocks
    stats = _first_block_stats(model, wave, piece_frames) if blocks[0].norm_kind == "group" else None
    pieces = []
    for f0 in range(0, frames, piece_frames):
        f1 = min(frames, f0 + piece_frames)
        x = wave[f0 * hop:(f1 - 1) * hop + field].reshape(1, -1, 1)
        for block in blocks:
            x = block(x, None, stats if block.norm_kind == "group" else None)
        pieces.append(x)
    return torch.cat(pieces, dim=1)


def windows(frames: int, window: int, context: int) -> list[tuple[int, int, int, int]]:
    """How windowed mode cuts ``frames``: ``(s, e, lo, hi)`` per window, frames [s, e) kept from the
    encoder's run on [lo, hi).

    The n = ceil(frames / window) windows are of equal size (within one frame), never a short tail,
    and every run spans ``window + 2 * context`` frames (or the whole file), centred on its window
    and moved inside the file at its ends. So no run is longer than W + 2C (the memory bound), every
    kept frame has at least C frames of context on each side or the file's edge, and a window
    shorter than W gets the difference as extra context. Against fixed W windows (a 125 s file used
    to end in a 5 s window with context on one side only) the worst layer's distance to an uncut
    run is up to 4x smaller just above a multiple of W, the same at multiples of W: BENCHMARKS.md,
    "Window geometry"."""
    n = -(-frames // window)
    span = min(frames, window + 2 * context)
    out = []
    for k in range(n):
        s, e = k * frames // n, (k + 1) * frames // n
        lo = max(0, min(s - (span - (e - s)) // 2, frames - span))
        out.append((s, e, lo, lo + span))
    return out


def hidden_states(model: SubnetModel, wave: Tensor, want: Sequence[int], last: bool = False,
                  form: LongForm = LongForm(), piece_frames: int = PIECE_FRAMES,
                  progress: Callable[[float], None] | None = None) -> Output:
    """The forward pass of one long utterance, wave (N,) already normalised if the checkpoint asks
    for it: the hidden states in ``want`` (sorted indices) and, with ``last``, the final output,
    each (1, T, E) with T = conv_frames(N), as ``model(wave[None], layers=want, last=last)`` gives
    (exact mode) or with windowed attention (windowed mode). ``progress`` is called with the
    fraction of the file done after each window (windowed mode; on CUDA, once each is queued)."""
    with kernel_choices(wave.device, wave.dtype):  # encode takes its own
        x = model.project(conv_features(model, wave, piece_frames))
    return encode(model, x, want, last, form, progress)


def encode(model: SubnetModel, x: Tensor, want: Sequence[int], last: bool = False, form: LongForm = LongForm(),
           progress: Callable[[float], None] | None = None) -> Output:
    """The transformer part of :func:`hidden_states`: projected conv features x (1, T, E) (hidden
    state 0) -> :class:`Output`, over the whole sequence (exact mode) or window by window. One
    file's features serve both modes (what the windowed bound is measured on)."""
    with kernel_choices(x.device, x.dtype):
        if form.mode == "exact":
            return model.encode(x, None, want, last)
        frames = x.shape[1]
        parts: list[Output] = []
        for s, e, lo, hi in form.windows(frames):
            out = model.encode(x[:, lo:hi], None, want, last)
            keep = slice(s - lo, s - lo + (e - s))
            parts.append(Output(hidden={i: h[:, keep] for i, h in out.hidden.items()},
                                last=None if out.last is None else out.last[:, keep]))
            if progress is not None:
                progress(e / frames)
        return Output(hidden={i: torch.cat([p.hidden[i] for p in parts], dim=1) for i in parts[0].hidden},
                      last=torch.cat([p.last for p in parts], dim=1) if last else None, lengths=None)
