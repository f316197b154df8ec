"""Extracting a list of audio files into a features file.

Three stages overlap: decoding in a thread pool (``num_workers``), the forward pass in the calling
thread, writing (a :class:`~lighthubert.storage.FeaturesWriter`) in a writer thread. Files are
sorted by length and packed into batches of at most ``batch_seconds`` of padded audio, so padding
stays small. A file longer than :data:`LONG_SECONDS` (or than a batch, or than ``exact_seconds``) runs alone through
:mod:`lighthubert.longform`: exactly (conv extractor in pieces, transformer over the whole file) up to
``exact_seconds``, windowed with ``window_seconds`` and ``context_seconds`` beyond. Every file gets
exactly ``conv_frames(num_samples)`` frames.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch

from .audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, ResamplerUnavailable, audio_frames, read_audio
from .defaults import FLUSH_SECONDS, FLUSH_SHARE
from .errors import LightHubertError
from .extractor import Extractor
from .longform import LONG_SECONDS, LongForm
from .inputs import Item, display_path, source_text
from .storage import FeaturesWriter, OutputError

MAX_BATCH = 256


@dataclass
class Options:
    """The pipeline's resolved settings; :class:`lighthubert.job.ExtractJob` holds their defaults."""

    layers: list[int]
    save_dtype: str
    batch_seconds: float
    exact_seconds: float
    """Files up to this long run exactly; longer ones windowed. 0: every file exactly."""
    window_seconds: float
    context_seconds: float
    num_workers: int
    strict: bool
    flush_seconds: float = FLUSH_SECONDS


class Reporter(Protocol):
    """Progress events: ``start`` once (files and audio seconds to do, keys already done), ``advance``
    after each batch, ``skipped`` for each bad input, ``stop`` when the run is over."""

    def start(self, files: int, seconds: float, done_before: int) -> None: ...
    def advance(self, files: int, seconds: float) -> None: ...
    def skipped(self, item: Item, reason: str) -> None: ...
    def stop(self) -> None: ...


class Quiet:
    """A reporter that shows nothing."""

    def start(self, files: int, seconds: float, done_before: int) -> None: ...
    def advance(self, files: int, seconds: float) -> None: ...
    def skipped(self, item: Item, reason: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Summary:
    files: int = 0
    seconds: float = 0.0
    skipped: list[tuple[Item, str]] = field(default_factory=list)
    """The inputs this process skipped, with the reason."""
    skipped_elsewhere: int = 0
    """On rank 0 of several processes: how many inputs the other ranks skipped (each reported there)."""
    wall: float = 0.0
    interrupted: bool = False
    done_before: int = 0
    output: Path | None = None
    """Where the result is: OUTPUT, or the parts folder when parts were kept or the run stopped."""
    timings: dict[str, float] = field(default_factory=lambda: {"decode_wait": 0.0, "compute": 0.0, "write_wait": 0.0})

    @property
    def skipped_count(self) -> int:
        """Inputs skipped by the whole job."""
        return len(self.skipped) + self.skipped_elsewhere


class StrictStop(LightHubertError):
    """``strict`` and an input was bad: ``path`` (as shown to users) and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason} (strict: the run stopped at it)")
        self.path, self.reason = path, reason

    def __reduce__(self):  # pickled (a process pool) and copied with its two fields
        return type(self), (self.path, self.reason)


def estimate_samples(item: Item) -> int:
    """16 kHz samples from the file header; 0 when unknown."""
    info = audio_frames(item.path)
    if info is None:
        return 0
    frames, rate = info
    return math.ceil(frames * SAMPLE_RATE / rate) if rate > 0 else 0


def plan_batches(sizes: list[tuple[Item, int]], batch_samples: int, long_samples: int) -> list[list[tuple[Item, int]]]:
    """Longest first; files longer than ``long_samples`` go alone; others packed so that
    (files in batch) * (longest) <= batch_samples."""
    ordered = sorted(sizes, key=lambda s: (-s[1], s[0].key))
    batches: list[list[tuple[Item, int]]] = []
    current: list[tuple[Item, int]] = []
    for item, n in ordered:
        if long_samples and n > long_samples:
            batches.append([(item, n)])
            continue
        if current and ((len(current) + 1) * current[0][1] > batch_samples or len(current) >= MAX_BATCH):
            batches.append(current)
            current = []
        current.append((item, n))
    if current:
        batches.append(current)
    return batches


class _Writer(threading.Thread):
    """Writes finished utterances off the compute path; flushes every ``flush_seconds``, or every
    :data:`~lighthubert.defaults.FLUSH_SHARE` of the time since it started when that is longer."""

    def __init__(self, writer: FeaturesWriter, flush_seconds: float):
        super().__init__(name="lhb-writer", daemon=True)
        self.writer = writer
        self.flush_seconds = flush_seconds
        self.queue: queue.Queue = queue.Queue(maxsize=64)
        self.error: BaseException | None = None
        self.abandoned = False

    def run(self) -> None:
        start = last = time.monotonic()
        while True:
            job = self.queue.get()
            if job is None or self.abandoned:
                break
            if self.error is not None:
                continue
            try:
                if job == "flush":
                    self.writer.flush()
                    continue
                key, data, source, n, windows = job
                self.writer.write(key, data, source=source, num_samples=n, windows=windows)
                now = time.monotonic()
                if now - last > max(self.flush_seconds, (now - start) * FLUSH_SHARE):
                    self.writer.flush()
                    last = time.monotonic()
            except BaseException as err:  # noqa: BLE001 - reported to the compute thread
                self.error = err

    def put(self, job) -> None:
        self.check()
        self.queue.put(job)

    def check(self) -> None:
        if self.error is not None:
            err = self.error
            if isinstance(err, OutputError):
                raise err
            raise OutputError(f"{self.writer.path}: writing failed: {_os_reason(err)}") from None

    def finish(self) -> None:
        """Write what is queued and end the thread; a second Ctrl-C while it drains abandons the rest."""
        if self.abandoned:
            return
        try:
            self.queue.put(None)
            self.join()
        except KeyboardInterrupt:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Stop at once (a second Ctrl-C): what is queued is never written (the segment stays
        uncommitted; a resume does it again) and the thread ends after its current write."""
        self.abandoned = True
        try:
            self.queue.put_nowait(None)  # wakes it if it waits for work
        except queue.Full:  # it is writing: it sees the flag next
            pass


def _os_reason(err: BaseException) -> str:
    text = str(err)
    errno = getattr(err, "errno", None)
    if "No space left" in text or errno == 28:
        return "no space left on the device (the file is valid up to the last complete utterance; free space and --resume)"
    if "File too large" in text or errno == 27:
        return "file too large for this filesystem or limit (the file is valid up to the last complete utterance)"
    return text.splitlines()[0] if text else type(err).__name__


def _decode(item: Item) -> np.ndarray | AudioError:
    try:
        return read_audio(item.path)  # the reason alone: the skip names the file
    except AudioError as err:
        return err
    except ResamplerUnavailable:  # the installation, not the input: stops the run
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure is a reason to skip, not to crash
        return AudioError(f"cannot decode: {type(err).__name__}: {err}")


class _Stopped(Exception):
    """``stop`` was set while a long file ran window by window."""


def extract(items: Iterable[Item], extractor: Extractor, writer: FeaturesWriter, options: Options,
            reporter: Reporter | None = None, stop: threading.Event | None = None,
            samples: dict[str, int] | None = None) -> Summary:
    """Extract every item not already in ``writer.done``; returns what happened. ``samples``: key ->
    16 kHz samples from the headers, where already read (the shares of several processes); the
    other headers are read here."""
    reporter = reporter or Quiet()
    stop = stop or threading.Event()
    t0 = time.monotonic()
    todo = [it for it in items if it.key not in writer.done]
    summary = Summary(done_before=len(writer.done))
    workers = max(1, int(options.num_workers))
    batch_samples = max(int(options.batch_seconds * SAMPLE_RATE), MIN_SAMPLES)
    long_samples = min(int(LONG_SECONDS * SAMPLE_RATE), batch_samples,
                       int(options.exact_seconds * SAMPLE_RATE) if options.exact_seconds else batch_samples)
    save_dtype = np.dtype(options.save_dtype)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lhb-decode") as pool:
        known = samples or {}
        sizes = list(zip(todo, pool.map(lambda it: known[it.key] if it.key in known else estimate_samples(it), todo)))
        reporter.start(len(todo), sum(n for _, n in sizes) / SAMPLE_RATE, len(writer.done))
        batches = plan_batches(sizes, batch_samples, long_samples)
        pending: deque[list[tuple[Item, Future]]] = deque()
        ahead = max(2, workers)
        out = _Writer(writer, options.flush_seconds)
        out.start()
        inflight: tuple[Callable[[], list[tuple[tuple, bool]]], int, float, list[float], dict[str, Item]] | None = None

        def skip(it: Item, reason: str) -> None:
            summary.skipped.append((it, reason))
            writer.skip(it.key, source_text(it.path), reason)
            reporter.skipped(it, reason)
            if options.strict:
                finish()  # what is computed is kept
                raise StrictStop(display_path(it.path), reason)

        def finish() -> None:
            """Collect the batch in flight: wait for its results, queue them for writing, report.
            Features that are not finite, or that did not fit in device memory, are never written:
            their utterance is skipped, with the reason."""
            nonlocal inflight
            if inflight is None:
                return
            collect, files, seconds, shown, items = inflight
            inflight = None
            t = time.monotonic()
            results = collect()
            summary.timings["compute"] += time.monotonic() - t
            t = time.monotonic()
            bad, lost = [], 0.0
            for job, reason in results:  # reason: why not to write it (not finite: found on the device)
                if reason is None:
                    out.put(job)
                else:
                    bad.append((items[job[0]], reason))
                    lost += job[3] / SAMPLE_RATE
            if stop.is_set():
                out.put("flush")
            summary.timings["write_wait"] += time.monotonic() - t
            summary.seconds += seconds - lost  # the summary's audio is what was written
            summary.files -= len(bad)
            for it, reason in bad:
                skip(it, reason)
            reporter.advance(files, seconds - shown[0])

        try:
            next_batch = 0
            while next_batch < len(batches) or pending:
                while next_batch < len(batches) and len(pending) < ahead:
                    pending.append([(it, pool.submit(_decode, it)) for it, _ in batches[next_batch]])
                    next_batch += 1
                if stop.is_set():
                    summary.interrupted = True
                    break
                batch = pending.popleft()
                t = time.monotonic()
                decoded = [(it, fut.result()) for it, fut in batch]
                summary.timings["decode_wait"] += time.monotonic() - t
                good = []
                for it, wave in decoded:
                    if isinstance(wave, AudioError):
                        skip(it, str(wave))
                    else:
                        good.append((it, wave))
                # queue batch k on the device, then collect batch k-1 while it runs (CUDA overlaps the
                # copies and the forward pass of consecutive batches). Where batch k runs before _launch
                # returns (the CPU; a long file, window by window) batch k-1 is written first: it waited
                # for all of batch k, and a kill then lost it (a finished long file, minutes of work)
                if extractor.device.type != "cuda" or (len(good) == 1 and len(good[0][1]) > long_samples):
                    finish()
                seconds = sum(len(w) for _, w in good) / SAMPLE_RATE
                shown = [0.0]  # audio seconds of this batch already reported (a long file's windows)

                def window_done(fraction: float, seconds: float = seconds, shown: list[float] = shown) -> None:
                    step = fraction * seconds - shown[0]
                    shown[0] += step
                    reporter.advance(0, step)
                    if stop.is_set() and fraction < 1:  # a long file stops between windows, not at its end
                        raise _Stopped

                t = time.monotonic()
                try:
                    collect = _launch(good, extractor, options, long_samples, save_dtype, window_done)
                except _Stopped:  # the long file is dropped; --resume does it again
                    summary.interrupted = True
                    break
                summary.timings["compute"] += time.monotonic() - t
                finish()
                summary.files += len(good)
                inflight = (collect, len(decoded), seconds, shown, {it.key: it for it, _ in good})
            finish()
        except KeyboardInterrupt:  # a second Ctrl-C: at once, not after the writer's queue
            out.abandon()
            raise
        finally:
            for batch in pending:
                for _, fut in batch:
                    fut.cancel()
            out.finish()
            if not out.abandoned:
                out.check()
    summary.wall = time.monotonic() - t0
    return summary


def _launch(good: list[tuple[Item, np.ndarray]], extractor: Extractor, options: Options, long_samples: int,
            save_dtype: np.dtype, progress: Callable[[float], None] | None = None
            ) -> Callable[[], list[tuple[tuple, str | None]]]:
    """Start one planned batch; the returned function waits for it and gives, per utterance, the
    writer's job (key, array, source, num_samples, windows) and None, or the reason not to write it:
    features not finite (checked on the device), or an utterance that does not fit in device memory
    alone. ``progress``: the fraction of a long file done, after each of its windows."""
    if not good:
        return list
    out_dtype = torch.float16 if save_dtype == np.float16 else torch.float32
    not_finite = _not_finite(extractor.dtype, save_dtype)
    if len(good) == 1 and len(good[0][1]) > long_samples:
        item, wave = good[0]
        form = long_form(len(wave), options)
        ran, oom = _attempt(lambda: _run_long(extractor, wave, options.layers, form, out_dtype, progress))
        if oom is not None:
            torch.cuda.empty_cache()
            job = (item.key, None, source_text(item.path), len(wave), 0)
            return lambda: [(job, _too_big(len(wave), form, oom))]
        data, finite = ran
        windows = len(form.windows(data.shape[-2])) if form.mode == "windowed" else 0
        job = (item.key, _squeeze(data, options.layers), source_text(item.path), len(wave), windows)
        return lambda: [(job, None if finite else not_finite)]
    waves = [w for _, w in good]
    # _prepare: load_audio checked the waveforms
    pending, oom = _attempt(lambda: extractor.submit(extractor._prepare(waves), options.layers, out_dtype))
    if oom is None:
        # on CUDA own copies: the writer's queue keeps them a while, and views would pin the batch's pinned
        # buffer; on the CPU views, written within moments (a copy would be work on every utterance)
        feats: Callable[[], list] = lambda: [(f.numpy(), None if ok else not_finite) for f, ok in
                                             zip(pending.result(own=extractor.device.type == "cuda"), pending.all_finite())]
    else:
        done = []
        for data, w in zip(_halves(extractor, waves, options.layers, out_dtype, oom), waves):
            if isinstance(data, BaseException):  # did not fit alone
                done.append((None, _too_big(len(w), None, data)))
            else:
                done.append((data, None if np.isfinite(data).all() else not_finite))
        feats = lambda: done
    return lambda: [((item.key, None if data is None else _squeeze(data, options.layers), source_text(item.path),
                      len(wave), 0), reason) for (item, wave), (data, reason) in zip(good, feats())]


def _run_long(extractor: Extractor, wave: np.ndarray, layers: list[int], form: LongForm, out_dtype: torch.dtype,
              progress: Callable[[float], None] | None) -> tuple[np.ndarray, bool]:
    """One long file: (len(layers), T, E) on the host in ``out_dtype`` and whether it is finite. The
    layers come to the host one by one: a stacked copy, and another in ``out_dtype``, of every layer
    of an hour of audio would take several times the device memory of the hidden states."""
    wave_t = extractor.batch([wave])[0][0]  # normalised over the whole file, on the device
    states = extractor.run_long(wave_t, layers, form, progress, stack=False)
    data, finite = None, True
    for j, layer in enumerate(states):
        layer = layer.to(out_dtype)
        finite = finite and bool(torch.isfinite(layer).all())
        host = layer.cpu().numpy()
        if data is None:
            data = np.empty((len(states), *host.shape), dtype=host.dtype)
        data[j] = host
        states[j] = None  # its device memory goes as soon as it is on the host
    return data, finite


def _too_big(num_samples: int, form: LongForm | None, err: BaseException) -> str:
    """The reason an utterance that does not fit in device memory on its own is skipped."""
    minutes = num_samples / SAMPLE_RATE / 60
    if form is not None and form.mode == "exact":
        advice = "run it windowed with a lower --exact-seconds, or with fewer --layers"
    elif form is not None:
        advice = "use a shorter --window-seconds or --context-seconds, or fewer --layers"
    else:
        advice = "use fewer --layers, or run it on a device with more memory"
    where = "device memory" if isinstance(err, torch.OutOfMemoryError) else "memory"
    return f"out of {where} for it alone ({minutes:.1f} min of audio): {advice} ({str(err).splitlines()[0][:120]})"


def _not_finite(dtype: torch.dtype, save_dtype: np.dtype) -> str:
    """The reason an utterance whose features came out NaN or inf is skipped, with what to try."""
    if dtype == torch.float16:
        advice = "float16 computation overflows past 65504; run with --dtype bfloat16 or float32"
    elif save_dtype == np.float16:
        advice = "values past 65504 do not fit float16; store them with --save-dtype float32"
    else:
        advice = f"the computation overflowed in {str(dtype).replace('torch.', '')} (look at the checkpoint's weights)"
    return f"its features are not finite (NaN or inf): {advice}"


def long_form(num_samples: int, options: Options) -> LongForm:
    """How a long file of ``num_samples`` (16 kHz) runs under ``options``."""
    if not options.exact_seconds or num_samples <= options.exact_seconds * SAMPLE_RATE:
        return LongForm("exact")
    return LongForm("windowed", options.window_seconds, options.context_seconds)


def _squeeze(data: np.ndarray, layers: list[int]) -> np.ndarray:
    return data[0] if len(layers) == 1 else data


def _run(extractor: Extractor, waves: list, layers: list[int], out_dtype: torch.dtype
         ) -> list[np.ndarray | BaseException]:
    """Forward pass, results cast to ``out_dtype`` on the device (half the transfer when saving
    float16); out of memory, the batch is split in halves (see :func:`_halves`)."""
    feats, oom = _attempt(lambda: [f.numpy() for f in extractor.submit(extractor._prepare(waves), layers, out_dtype)
                                   .result(own=extractor.device.type == "cuda")])  # load_audio checked them; CPU: as above
    return feats if oom is None else _halves(extractor, waves, layers, out_dtype, oom)


OUT_OF_MEMORY_WORDS = ("can't allocate memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
                       "CUDNN_STATUS_ALLOC_FAILED")
"""How a RuntimeError says memory ran out where torch raises no OutOfMemoryError: its CPU allocator,
a failed pinned host allocation (``C10_CUDA_CHECK``), cuBLAS and cuDNN workspaces."""


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says memory ran out: the device's (``torch.OutOfMemoryError``, or
    :data:`OUT_OF_MEMORY_WORDS`), or the host's (``MemoryError``, torch's CPU allocator)."""
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and any(w in str(err) for w in OUT_OF_MEMORY_WORDS))


def _attempt(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """``(fn(), None)``, or ``(None, err)`` when ``fn`` runs out of memory (:func:`out_of_memory`):
    ``err`` without its traceback, whose frames hold what the failed forward had made (its input on
    the device, the hidden states so far). Kept, they left the halves of a batch less memory than
    the whole had had; what the caller does next runs once this function has returned, out of the
    ``except`` block."""
    try:
        return fn(), None
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        err.__context__ = err.__cause__ = None
        return None, err.with_traceback(None)


def _halves(extractor: Extractor, waves: list, layers: list[int], out_dtype: torch.dtype,
            err: BaseException) -> list[np.ndarray | BaseException]:
    """After ``waves`` ran out of memory together (``err``): each half on its own, without trying
    the whole batch again; a single utterance that does not fit alone gives its error in its place
    (it is skipped, the run goes on)."""
    torch.cuda.empty_cache()
    if len(waves) == 1:
        return [err]
    half = len(waves) // 2
    return _run(extractor, waves[:half], layers, out_dtype) + _run(extractor, waves[half:], layers, out_dtype)
