"""The simple entry point: ``lighthubert.load(...)`` gives an :class:`Extractor` that turns a list
of 16 kHz waveforms into per-utterance hidden states."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .audio import MAX_AMPLITUDE, SAMPLE_RATE, sample_peak, too_loud
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .defaults import CHECKPOINT, DEVICE, DTYPE
from .defaults import DTYPES as DTYPE_NAMES
from .errors import LightHubertWarning, SettingError, WaveformError, kind_of
from .longform import LONG_SECONDS, LongForm, hidden_states
from .model import HOP, MIN_SAMPLES, conv_frames, receptive_field

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES if name != "auto"}
"""The compute dtypes by name (``auto`` is resolved by :func:`resolve_dtype`)."""
FINAL = -1
"""In a resolved layer list: the model's final output. For a pre-norm (``layer_norm_first``) model
that is the last hidden state after the encoder's final LayerNorm, which no hidden-state index names."""


def check_geometry(checkpoint: Checkpoint) -> None:
    """A :class:`CheckpointError` unless the conv feature extractor is the released stack's geometry (a
    frame of :data:`MIN_SAMPLES` samples every :data:`HOP`): the files' ``frame_rate``, windows in
    seconds, the shortest input and exported files' bounds assume it. The drop-in API takes any."""
    field, hop = receptive_field(checkpoint.cfg.conv_layers)
    if (field, hop) != (MIN_SAMPLES, HOP):
        raise CheckpointError(f"{checkpoint.path or checkpoint.source}: its conv feature extractor gives a frame of "
                              f"{field} samples every {hop}; features are extracted with the released stack's "
                              f"({MIN_SAMPLES} every {HOP}, 50 frames per second)")


def resolve_device(device: Any = DEVICE) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; otherwise as ``torch.device`` reads it. A CUDA device
    gets its index (the current device's when none is given), so the model, its streams and its
    copies stay on one GPU whatever the current device is later."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SettingError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N", "device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingError(f"device {device!r} asked for, but CUDA is not available here", "device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SettingError(f"device {device!r} asked for, but there are {torch.cuda.device_count()} CUDA devices", "device")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise SettingError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N", "device")
    return dev


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """``auto``/None -> float16 on CUDA, float32 on the CPU."""
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in TORCH_DTYPES:
            raise SettingError(f"unknown dtype {dtype!r}; use {', '.join(DTYPE_NAMES[:-1])} or {DTYPE_NAMES[-1]}", "dtype")
        dtype = TORCH_DTYPES[dtype]
    if dtype not in TORCH_DTYPES.values():
        raise SettingError(f"unsupported dtype {dtype}; use {', '.join(DTYPE_NAMES[1:-1])} or {DTYPE_NAMES[-1]}", "dtype")
    if dtype == torch.float16 and device.type == "cpu":
        raise SettingError("float16 is for CUDA; on the CPU use float32 (or bfloat16)", "dtype")
    if dtype == torch.bfloat16 and device.type == "cuda" and (cap := torch.cuda.get_device_capability(device)) < (8, 0):
        # below Ampere torch has no fused attention for bfloat16: the plain kernel holds (B, H, T, T)
        # scores, 20 GB for one 10-minute file, and its bfloat16 convolutions are slow
        warnings.warn(f"bfloat16 on {torch.cuda.get_device_name(device)} (compute capability "
                      f"{'.'.join(map(str, cap))}, before Ampere): attention "
                      "memory grows with the square of a file's length and the convolutions are slow; use float16 "
                      "or float32", LightHubertWarning, stacklevel=2)
    return dtype


def parse_layers(spec: Any) -> str | list[int]:
    """The syntax of a layers setting, before any subnet is known: ``"last"`` (also for None),
    ``"all"``, or the integers of ``"0,4,12"``, of a list or of one int, in order (:class:`SettingError` otherwise)."""
    if isinstance(spec, (np.ndarray, np.integer, Tensor)):  # np.array([0, -1]): "in" below would ask its truth value
        spec = spec.tolist()
    if spec is None or (isinstance(spec, str) and spec in ("last", "all")):
        return spec or "last"
    items = spec.split(",") if isinstance(spec, str) else [spec] if isinstance(spec, int) else spec
    try:
        out = [int(str(item).strip()) for item in items]
    except (TypeError, ValueError):
        raise SettingError(f"layers must be last, all or comma-separated integers, got {spec!r}", "layers") from None
    if not out:
        raise SettingError("no layers asked for", "layers")
    return out


def resolve_layers(spec: Any, num_layers: int, layer_norm_first: bool = False) -> list[int]:
    """The one place ``last`` is decided. ``last`` -> the final output: ``[L]`` (hidden state L) for a
    post-norm model, ``[FINAL]`` for a pre-norm one; ``all`` -> [0..L]; ``"0,4,12"`` or a list -> those
    hidden-state indices (0 = projected conv features; negative counts from the end). A number always
    means that hidden state, never the normed final output."""
    parsed = parse_layers(spec)
    if parsed == "last":
        return [FINAL] if layer_norm_first else [num_layers]
    if parsed == "all":
        return list(range(num_layers + 1))
    out: list[int] = []
    for i in parsed:
        j = i + num_layers + 1 if i < 0 else i
        if not 0 <= j <= num_layers:
            raise SettingError(f"layer {i} is out of range: this subnet has hidden states 0..{num_layers}", "layers")
        if j not in out:
            out.append(j)
    return out


def normalize_rows(x: Tensor, lengths: Tensor | Sequence[int], eps: float = 1e-5) -> Tensor:
    """Standardise, in place, each row of a zero-padded (B, N) float32 batch over its own
    ``lengths[b]`` real samples: ``F.layer_norm(row[:n], (n,))``, the authors' own call, row by row
    (one call for a batch of equal rows). Padding stays 0. Returns ``x``.

    The same formula in one pass over the batch (sums of the masked rows) rounds differently:
    ~1e-7 of a row's DC offset, a constant shift that the layer-norm conv extractor amplifies on
    quiet stretches, 1.2e-5 from the authors at an offset of 0.01 and 9e-5 at 0.1."""
    sizes = lengths.tolist() if isinstance(lengths, Tensor) else [int(n) for n in lengths]
    if min(sizes) == max(sizes) == x.shape[1]:
        return x.copy_(F.layer_norm(x, x.shape[1:], eps=eps))
    for row, n in zip(x, sizes):
        row[:n] = F.layer_norm(row[:n], (n,), eps=eps)
        row[n:] = 0
    return x


@dataclass
class Prepared:
    """A batch on the device, from :meth:`Extractor.prepare`.

    wave: (B, N) in the compute dtype, normalised if the checkpoint asks for it; lengths: (B,) real
    samples; frames: real frames per utterance; ready: CUDA event set once the copy is done (None
    on the CPU); padded: whether any row is shorter than N, known on the host (asking the device
    would wait for everything queued on it, which is what the overlap is for)."""

    wave: Tensor
    lengths: Tensor
    frames: list[int]
    ready: torch.cuda.Event | None = None
    padded: bool = True


@dataclass
class Pending:
    """Hidden states on their way to the host, from :meth:`Extractor.submit`.

    data: (B, len(layers), T, E) host tensor (pinned on CUDA, written by a copy still in flight until
    ``done``); frames: real frames per utterance."""

    data: Tensor
    frames: list[int]
    done: torch.cuda.Event | None = None
    finite: Tensor | None = None
    """(B,) bool host tensor: whether each utterance's hidden states (its real frames) hold no NaN or
    inf, found on the device, where it costs next to nothing (on the host, float16 arrays are slow
    to scan); copied with ``data``."""

    def result(self, own: bool = False) -> list[Tensor]:
        """Wait for the copy; each utterance's (len(layers), T_i, E) host tensor: views of ``data``, so
        they hold the whole padded batch (on CUDA its pinned memory) until dropped, or with ``own``
        compact copies in ordinary memory, ordinary tensors (not inference tensors: a probe can be
        trained on them, they can be changed in place) for what is kept past the next batches."""
        if self.done is not None:
            self.done.synchronize()
        views = [self.data[b, :, :t] for b, t in enumerate(self.frames)]
        if not own:
            return views
        with torch.inference_mode(False):
            return [v.clone() for v in views]

    def all_finite(self) -> list[bool]:
        """Per utterance, whether its hidden states are finite (waits for the copy, as :meth:`result`)."""
        if self.done is not None:
            self.done.synchronize()
        return [True] * len(self.frames) if self.finite is None else self.finite.tolist()


class Extractor:
    """One subnet of a checkpoint, ready to run on ``device`` in ``dtype``.

    >>> ext = lighthubert.load("random:small", subnet="default")
    >>> feats = ext([wave1, wave2], layers="all")   # list of (L+1, T_i, E) float32 CPU tensors
    """

    def __init__(self, checkpoint: Checkpoint, subnet: Any = None, device: Any = DEVICE, dtype: Any = DTYPE):
        check_geometry(checkpoint)
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.subnet = checkpoint.resolve_subnet(subnet)
        self.params = checkpoint.params(self.subnet)
        self.model = checkpoint.model(self.subnet, device=self.device, dtype=self.dtype)
        self._copy_streams: tuple[torch.cuda.Stream, torch.cuda.Stream] | None = None

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def embed_dim(self) -> int:
        return self.subnet["embed_dim"]

    @property
    def normalize(self) -> bool:
        return self.checkpoint.normalize

    def prepare(self, waves: Sequence[Tensor | np.ndarray], normalized: bool = False) -> Prepared:
        """Pad ``waves`` into a (B, N) batch on the device and normalise it there (each utterance over
        its own samples, if the checkpoint asks for it and ``normalized`` does not say it was done).

        On CUDA the padding goes through pinned host memory (torch's caching host allocator reuses
        it) and the copy, the normalisation and the cast run on a side stream, so preparing batch k+1
        overlaps the forward of batch k; :meth:`submit` makes the compute stream wait for it.
        Raises :class:`~lighthubert.errors.WaveformError` (a ValueError) for no waveform, or one that is not (N,) or (1, N), is under 400 samples or holds
        NaN, infinite or absurdly large (over 1e10) samples (a (N, 2) stereo array would otherwise be
        read interleaved)."""
        if not len(waves):
            raise WaveformError("no waveforms to prepare (ext([]) gives [] at once)")
        _check_waves(waves)
        return self._prepare(waves, normalized)

    def _prepare(self, waves: Sequence[Tensor | np.ndarray], normalized: bool = False) -> Prepared:
        """:meth:`prepare` of waveforms known to be good, as :func:`lighthubert.audio.load_audio`
        returns them (the pipeline's hot path: the check is a pass over every sample)."""
        tensors = [torch.as_tensor(w, dtype=torch.float32).detach().reshape(-1) for w in waves]  # no autograd
        sizes = [len(t) for t in tensors]
        cuda = self.device.type == "cuda"
        host = torch.empty(len(tensors), max(sizes), dtype=torch.float32, pin_memory=cuda)
        for row, t in zip(host, tensors):
            row[: len(t)] = t
            row[len(t):] = 0
        lengths = torch.tensor(sizes)
        frames = conv_frames(lengths, self.checkpoint.cfg.conv_layers).tolist()
        norm = self.normalize and not normalized
        padded = min(sizes) != max(sizes)
        if not cuda:
            x = normalize_rows(host, lengths) if norm else host
            return Prepared(x.to(self.dtype), lengths, frames, padded=padded)
        stream = self._streams()[0]
        with torch.cuda.stream(stream):
            x = host.to(self.device, non_blocking=True)
            n = lengths.to(self.device, non_blocking=True)
            if norm:
                x = normalize_rows(x, sizes)  # the host's sizes: no wait for the device
            x = x.to(self.dtype)
            ready = torch.cuda.Event()
            ready.record(stream)
        return Prepared(x, n, frames, ready, padded)

    def submit(self, prepared: Prepared, layers: list[int], out_dtype: torch.dtype = torch.float32) -> Pending:
        """Queue the forward pass of a prepared batch and the copy of its hidden states, cast to
        ``out_dtype`` on the device, into pinned host memory on a side stream. Returns at once on
        CUDA; :meth:`Pending.result` waits for the numbers. ``layers`` as :func:`resolve_layers` gives
        them, or any ``layers`` that :meth:`__call__` takes ("all", "last", 3, "0,6")."""
        if isinstance(layers, (str, int)):
            layers = resolve_layers(layers, self.num_layers, self.checkpoint.cfg.layer_norm_first)
        cuda = self.device.type == "cuda"
        if cuda:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(prepared.ready)
            prepared.wave.record_stream(compute)
            prepared.lengths.record_stream(compute)
        stacked, _ = self.run(prepared.wave, prepared.lengths if prepared.padded else None, layers)
        stacked = stacked.to(out_dtype)
        finite = finite_rows(stacked, conv_frames(prepared.lengths, self.checkpoint.cfg.conv_layers))
        if not cuda:
            return Pending(stacked, prepared.frames, finite=finite)
        out = torch.empty(stacked.shape, dtype=out_dtype, pin_memory=True)
        finite_host = torch.empty(finite.shape, dtype=torch.bool, pin_memory=True)
        stream = self._streams()[1]
        stream.wait_stream(compute)
        with torch.cuda.stream(stream):
            out.copy_(stacked, non_blocking=True)
            finite_host.copy_(finite, non_blocking=True)
            stacked.record_stream(stream)
            finite.record_stream(stream)
            done = torch.cuda.Event()
            done.record(stream)
        return Pending(out, prepared.frames, done, finite_host)

    def _streams(self) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
        """The side streams for host-to-device and device-to-host copies (made on first use)."""
        if self._copy_streams is None:
            self._copy_streams = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device))
        return self._copy_streams

    def batch(self, waves: Sequence[Tensor | np.ndarray], normalized: bool = False) -> tuple[Tensor, Tensor]:
        """:meth:`prepare`, ready to use on the current stream: (B, N) in ``dtype`` on the device
        and the (B,) lengths."""
        p = self.prepare(waves, normalized)
        if p.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(p.ready)
            p.wave.record_stream(torch.cuda.current_stream(self.device))
            p.lengths.record_stream(torch.cuda.current_stream(self.device))
        return p.wave, p.lengths

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

    @torch.inference_mode()
    def run_long(self, wave: Tensor, layers: list[int], form: LongForm = LongForm(),
                 progress: Callable[[float], None] | None = None, stack: bool = True) -> Tensor | list[Tensor]:
        """One long utterance, prepared (N,) on the device (normalised, in ``dtype``), through
        :mod:`lighthubert.longform`: (len(layers), T, E) with T = conv_frames(N), or with ``stack``
        False the list of the (T, E) layers (no stacked copy). ``progress`` gets the fraction done
        after each window (windowed mode)."""
        final = FINAL in layers
        out = hidden_states(self.model, wave, sorted(i for i in layers if i != FINAL), last=final, form=form,
                            progress=progress)
        states = [out.last[0] if i == FINAL else out.hidden[i][0] for i in layers]
        return torch.stack(states) if stack else states

    def __call__(self, waves: Sequence[Tensor | np.ndarray] | Tensor | np.ndarray,
                 layers: Any = "last", *, lengths: Sequence[int] | Tensor | np.ndarray | None = None) -> list[Tensor] | Tensor:
        """Hidden states of each waveform (16 kHz, mono): a float32 CPU tensor (T, E) for one layer,
        (len(layers), T, E) for several. ``waves``: a list of (N_i,) waveforms (or a (B, N) array)
        gives a list; one (N,) waveform gives one result. A (B, N) array is B waveforms of N samples
        each; a padded batch needs ``lengths`` (B,), the real samples of each row (the rest is cut
        off; without it the padding would be run as audio). A batch gives each utterance its numbers
        alone up to float32 rounding (README: batching)."""
        idx = resolve_layers(layers, self.num_layers, self.checkpoint.cfg.layer_norm_first)
        if lengths is not None:
            waves = _unpad(waves, lengths)
        if isinstance(waves, (str, bytes, os.PathLike)) or (
                isinstance(waves, (list, tuple)) and waves and isinstance(waves[0], (str, bytes, os.PathLike))):
            raise WaveformError("expected waveforms, got a file name; read the audio first: "
                                "ext(lighthubert.load_audio(path)) (or lighthubert.extract for folders and lists)")
        if not isinstance(waves, (Sequence, Tensor, np.ndarray)):  # a number (np.float32(3.0)), None, a generator
            raise WaveformError(f"expected one waveform (N,), a batch (B, N) or a list of waveforms; got {kind_of(waves)}")
        single = isinstance(waves, (Tensor, np.ndarray)) and waves.ndim == 1
        if single:
            waves = [waves]
        elif isinstance(waves, (Tensor, np.ndarray)) and waves.ndim != 2:
            raise WaveformError(f"expected one waveform (N,), a batch (B, N) or a list of waveforms; got shape {tuple(waves.shape)}")
        elif isinstance(waves, (Tensor, np.ndarray)) and waves.shape[1] < MIN_SAMPLES <= waves.shape[0]:
            raise WaveformError(f"got a {tuple(waves.shape)} array: (samples, channels), as soundfile reads stereo; pass "
                                f"one channel (load_audio averages them: wave.mean(axis=1)), or wave.T to run each channel")
        elif len(waves) == 0:
            return []
        elif np.ndim(waves[0]) == 0:
            raise WaveformError("expected a waveform or a list of waveforms, got a list of numbers; "
                                "pass one waveform as an array: ext(np.asarray(samples))")
        long = {i for i, w in enumerate(waves) if _samples(w) > LONG_SECONDS * SAMPLE_RATE}
        if not long:
            feats = self.submit(self.prepare(waves), idx).result(own=True)  # kept by the caller: not pinned
        else:  # each alone, the conv extractor in pieces: 3 minutes took 2.25 GB more at once, 0.38 in pieces
            _check_waves(waves)  # (named by their place in waves)
            short = [i for i in range(len(waves)) if i not in long]
            feats = [None] * len(waves)
            if short:
                for i, f in zip(short, self.submit(self.prepare([waves[i] for i in short]), idx).result(own=True)):
                    feats[i] = f
            for i in sorted(long):
                states = self.run_long(self.batch([waves[i]])[0][0], idx, stack=False)  # normalised over it whole
                feats[i] = torch.stack([s.float().cpu() for s in states])
        feats = [f[0] for f in feats] if len(idx) == 1 else feats
        return feats[0] if single else feats


def _samples(wave: Any) -> int:
    """The samples of a waveform as given (0 when its shape cannot be read: said by :func:`_check_waves`)."""
    try:
        shape = np.shape(wave)
    except ValueError:
        return 0
    return shape[-1] if shape else 0


def _unpad(batch: Any, lengths: Any) -> list[Tensor | np.ndarray]:
    """The rows of a padded (B, N) ``batch`` cut to their ``lengths`` (B,) real samples."""
    if not isinstance(batch, (Tensor, np.ndarray)) or batch.ndim != 2:
        raise WaveformError("lengths go with a padded (B, N) batch; a list of waveforms carries its own lengths")
    n = torch.as_tensor(lengths).detach().cpu()
    if n.ndim != 1 or len(n) != batch.shape[0] or n.is_floating_point() or n.is_complex() or n.dtype == torch.bool:
        raise WaveformError(f"lengths must be {batch.shape[0]} integers, one per row of the {tuple(batch.shape)} batch; "
                            f"got {tuple(n.shape)} of {str(n.dtype).removeprefix('torch.')}")
    if len(n) and not (0 < int(n.min()) and int(n.max()) <= batch.shape[1]):
        raise WaveformError(f"lengths must be within 1..{batch.shape[1]} (the batch's samples per row); "
                            f"got {int(n.min())}..{int(n.max())}")
    return [batch[i, : int(k)] for i, k in enumerate(n.tolist())]


def finite_rows(stacked: Tensor, frames: Tensor) -> Tensor:
    """(B,) bool on ``stacked``'s device: whether the real frames of each utterance of the (B, L, T, E)
    hidden states ``stacked`` (``frames``: (B,) real frames, on the same device) hold no NaN or inf."""
    bad = (~torch.isfinite(stacked)).any(dim=-1).any(dim=1)  # (B, T)
    real = torch.arange(stacked.shape[2], device=stacked.device)[None, :] < frames[:, None]
    return ~(bad & real).any(dim=1)


def _check_waves(waves: Sequence[Tensor | np.ndarray]) -> None:
    """:class:`~lighthubert.errors.WaveformError` naming the first waveform that is not one channel of at least 400 finite samples
    within ±MAX_AMPLITUDE."""
    for i, w in enumerate(waves):
        try:
            shape = tuple(np.shape(w))
        except ValueError:  # nested lists of different lengths
            raise WaveformError(f"waveform {i} is nested lists of different lengths; expected (N,) samples of one "
                                "16 kHz channel") from None
        if len(shape) != 1 and not (len(shape) == 2 and shape[0] == 1):
            raise WaveformError(f"waveform {i} has shape {shape}; expected (N,) samples of one 16 kHz channel")
        try:  # what the values are is said before how many there are ("fewer than 400 samples" of strings)
            t = torch.as_tensor(w).detach()
        except (TypeError, ValueError, RuntimeError):  # object or string arrays, lists of strings, float128
            dtype = getattr(w, "dtype", None)
            if isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating):
                raise WaveformError(f"waveform {i} holds {dtype} samples, which torch cannot take; pass float32 "
                                    "(w.astype(np.float32))") from None
            raise WaveformError(f"waveform {i} holds {_kind(w)} values; expected real samples") from None
        if t.is_meta:
            raise WaveformError(f"waveform {i} is on the meta device: it has a shape but no samples")
        if t.is_complex() or t.dtype == torch.bool:
            raise WaveformError(f"waveform {i} holds {t.dtype} values; expected real samples")
        if not t.is_floating_point():  # raw PCM read as integers would be taken as amplitudes of thousands
            raise WaveformError(f"waveform {i} holds {str(t.dtype).removeprefix('torch.')} integers; expected float "
                                "samples within about ±1 (16-bit PCM: divide by 32768, or read files with "
                                "lighthubert.load_audio)")
        if t.numel() < MIN_SAMPLES:
            raise WaveformError(f"waveform {i} has fewer than {MIN_SAMPLES} samples (25 ms); it gives no frame")
        peak = sample_peak(t)
        if not math.isfinite(peak):  # else every feature is NaN, silently
            raise WaveformError(f"waveform {i} holds NaN or infinite samples")
        if peak > MAX_AMPLITUDE:  # else the standardisation overflows: features of silence, or NaN
            raise WaveformError(f"waveform {i} holds {too_loud(peak)}")


def _kind(w: Any) -> str:
    """What the values of a waveform that torch cannot take are, for a message: ``object``, ``<U3``, ``str``."""
    dtype = getattr(w, "dtype", None)
    return str(dtype) if dtype is not None else type(next(iter(w), None)).__name__


def load(source: str = CHECKPOINT, subnet: Any = None, device: Any = DEVICE, dtype: Any = DTYPE, *,
         seed: int | None = None, trust: bool = False, progress: bool = True) -> Extractor:
    """Open a checkpoint (path, ``base``/``small``/``stage1``, or ``random:KIND``) and cut a subnet
    (None or ``default`` for the checkpoint's default, a preset ``default``/``max``/``min``, a dict, JSON text or a
    JSON file). ``device`` ``auto`` uses CUDA when present; ``dtype`` None means float16 on CUDA and
    float32 on the CPU."""
    return Extractor(load_checkpoint(source, seed=seed, trust=trust, progress=progress), subnet, device, dtype)
