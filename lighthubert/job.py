"""The extraction job: what ``lhb extract`` does, as a library call.

:class:`ExtractJob` holds every setting with its default (the device-dependent ones resolved in
:func:`prepare`, nowhere else). :func:`prepare` checks the settings, lists the inputs, checks OUTPUT
and loads the model, all before any audio is read; :func:`execute` runs it in one process or, under
torchrun/srun, as one rank of many (rank 0 plans, every rank writes its part, rank 0 merges).
:func:`run` is both; :func:`lighthubert.extract` is the short form with a progress callback.

Failures are :class:`~lighthubert.errors.LightHubertError` with one line for the user. A run holds
OUTPUT's lock (:class:`~lighthubert.storage.OutputLock`) throughout and never modifies committed data in
place: it adds committed segments and finally joins them with OUTPUT into a new OUTPUT (see
:mod:`lighthubert.storage.hdf5`), so OUTPUT and the committed segments are valid whenever one is raised.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import random
import re
import threading
import warnings
from contextlib import ExitStack, contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .audio import SAMPLE_RATE, ResamplerUnavailable
from .checkpoint import Checkpoint, check_seed, load_checkpoint
from .defaults import (BATCH_SECONDS, CHECKPOINT, COMPRESSION, COMPRESSIONS, CONTEXT_SECONDS, DEVICE, DTYPE, EXACT_SECONDS,
                       FLUSH_SECONDS, LAYERS, NUM_WORKERS, OUTPUT_FORMAT, SAVE_DTYPE, SAVE_DTYPES, WINDOW_SECONDS)
from .distributed import (Group, StoppedWaiting, World, balance, decide, detect_world, finished, process_device, rank_timeout,
                          wait_for_ranks)
from .errors import LightHubertError, LightHubertWarning, SettingError, kind_of
from .extractor import Extractor, parse_layers, resolve_device, resolve_dtype, resolve_layers
from .interrupt import interrupt_stops
from .inputs import Item, check_against, is_audio, list_inputs, source_text
from .pipeline import Options, Quiet, Reporter, StrictStop, Summary, estimate_samples
from .pipeline import extract as run_pipeline
from .storage import (
    Backend,
    FeaturesWriter,
    OutputBroken,
    OutputError,
    OutputLock,
    check_output_path,
    find_committed,
    find_parts,
    find_segments,
    finished_path,
    get_backend,
    hdf5_name,
    part_path,
    parts_dir,
    remove_stale_temps,
    run_attrs,
    same_file,
)

MAX_BATCH_SECONDS = 86400.0
"""More padded audio per batch than a day is a mistake, not a setting."""
MAX_WORKERS = 64
"""Decoding threads (each keeps batches in flight: more would only hold memory)."""
STOP_JOIN_BYTES = 1 << 30
"""A stop (Ctrl-C, SIGTERM) joins OUTPUT and the committed segments when that copies at most this much
(about a second); beyond, it leaves them for ``--resume`` or ``lhb merge``: the join copies OUTPUT
whole, which for a corpus's features takes minutes, past a preempted job's grace period."""


class JobError(LightHubertError):
    """The job failed. With several processes, ``silent`` marks a rank whose failure rank 0 reports."""

    def __init__(self, message: str, silent: bool = False):
        super().__init__(message)
        self.silent = silent


@dataclass
class ExtractJob:
    """Every setting of an extraction, with its default from :mod:`lighthubert.defaults` (``lhb extract`` shows the same ones)."""

    input: str | os.PathLike | Sequence[str | os.PathLike]
    """A folder, one audio file, a list file (.txt/.lst, .tsv, .scp), or a Python list of audio file
    paths (keys as a .txt list written in the current folder gives them)."""
    output: str | os.PathLike
    checkpoint: str = CHECKPOINT
    subnet: Any = None
    """None (the checkpoint's default), a preset, a dict, inline JSON or a JSON file."""
    layers: Any = LAYERS
    device: str = DEVICE
    dtype: str = DTYPE
    """Compute dtype; auto: float16 on CUDA, float32 on the CPU."""
    save_dtype: str = SAVE_DTYPE
    batch_seconds: float | None = None
    """Padded audio per batch; None: :data:`BATCH_SECONDS` of the device type."""
    exact_seconds: float | None = None
    """Files up to this long run exactly (as uncut); longer ones windowed. 0: every file exactly.
    None: :data:`EXACT_SECONDS` of the device type."""
    window_seconds: float | None = None
    context_seconds: float | None = None
    """Windowed mode: the transformer runs on windows of ``window_seconds`` with ``context_seconds``
    of context on each side (dropped after the run). None: :data:`WINDOW_SECONDS`,
    :data:`CONTEXT_SECONDS` (None, not the default value, is what lets ``max_chunk_seconds`` tell
    whether they were given)."""
    max_chunk_seconds: float | None = None
    """Deprecated (lighthubert 0.1): S means exact_seconds=S, window_seconds=S, context_seconds=0;
    0 means every file exactly."""
    num_workers: int = NUM_WORKERS
    resume: bool = False
    overwrite: bool = False
    strict: bool = False
    compression: str = COMPRESSION
    keep_parts: bool = False
    seed: int | None = None
    """Seed of a ``random:KIND`` checkpoint; None: :data:`SEED` (or the one ``random:KIND:SEED`` names)."""
    trust_checkpoint: bool = False
    format: str = OUTPUT_FORMAT
    flush_seconds: float = FLUSH_SECONDS


@dataclass
class Plan:
    """A prepared job: settings resolved, inputs listed, model loaded, file attributes derived."""

    job: ExtractJob
    world: World
    items: list[Item]
    output: Path
    backend: Backend
    checkpoint: Checkpoint
    extractor: Extractor
    layers: list[int]
    options: Options
    attrs: dict[str, Any] = field(repr=False)

    @property
    def device(self) -> torch.device:
        return self.extractor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.extractor.dtype


def _setting(name: str, fn: Callable, *args: Any) -> Any:
    try:
        return fn(*args)
    except SettingError as err:
        err.setting = err.setting or name
        raise
    except ValueError as err:
        raise SettingError(str(err), name) from None


def _check_values(job: ExtractJob) -> None:
    def bad(name: str, message: str) -> None:
        raise SettingError(message, name)

    if job.resume and job.overwrite:
        raise SettingError("--resume and --overwrite exclude each other")
    parse_layers(job.layers)  # the syntax now, the range once the subnet is known
    paths = (str, os.PathLike)
    if not isinstance(job.input, (*paths, list, tuple)):  # (what a list holds is said where it is read)
        raise SettingError(f"INPUT is a folder, an audio file, a list file or a list of paths (str or Path), not "
                           f"{kind_of(job.input)}", "input")  # else a raw TypeError, or a generator read as nothing
    if not isinstance(job.output, paths):
        raise SettingError(f"OUTPUT is a path (str or Path), not {kind_of(job.output)}", "output")
    for name in ("input", "output"):  # Path("") would be the current folder
        if isinstance(getattr(job, name), str) and not getattr(job, name).strip():
            raise SettingError(f"{name.upper()} is an empty path")
    if job.save_dtype not in SAVE_DTYPES:
        bad("save_dtype", f"{job.save_dtype!r} is not one of {', '.join(SAVE_DTYPES)}")
    if (job.compression or "none") not in COMPRESSIONS:
        bad("compression", f"{job.compression!r} is not one of {', '.join(COMPRESSIONS)}")
    for name in ("batch_seconds", "max_chunk_seconds", "exact_seconds", "window_seconds", "context_seconds",
                 "num_workers", "flush_seconds"):  # a string said "10 is not from 1 to 86400"
        value = getattr(job, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            bad(name, f"{value!r} is {kind_of(value)}, not a number")
        if isinstance(value, numbers.Integral) and abs(int(value)) > 10**15:  # else said digit by digit
            bad(name, f"a number of {len(str(abs(int(value))))} digits is far out of range")
    if job.batch_seconds is not None:
        if not _number(job.batch_seconds) or not 1.0 <= job.batch_seconds <= MAX_BATCH_SECONDS:
            bad("batch_seconds", f"{job.batch_seconds} is not a number of seconds from 1 to {MAX_BATCH_SECONDS:g}")
    if job.max_chunk_seconds is not None and not (
            _number(job.max_chunk_seconds) and (job.max_chunk_seconds == 0 or 1.0 <= job.max_chunk_seconds <= 1e6)):
        bad("max_chunk_seconds", f"{job.max_chunk_seconds} is neither 0 (never cut) nor from 1 to 1e6 seconds")
    if job.max_chunk_seconds is not None and (job.exact_seconds, job.window_seconds, job.context_seconds) != (None,) * 3:
        bad("max_chunk_seconds", "sets --exact-seconds, --window-seconds and --context-seconds all at once; give it "
            "alone, or those three instead")  # else the others were dropped without a word
    if job.exact_seconds is not None and not (
            _number(job.exact_seconds) and (job.exact_seconds == 0 or 1.0 <= job.exact_seconds <= 1e6)):
        bad("exact_seconds", f"{job.exact_seconds} is neither 0 (every file exactly) nor from 1 to 1e6 seconds")
    if job.window_seconds is not None and not (_number(job.window_seconds) and 1.0 <= job.window_seconds <= 3600.0):
        bad("window_seconds", f"{job.window_seconds} is not from 1 to 3600 seconds")
    if job.context_seconds is not None and not (_number(job.context_seconds) and 0.0 <= job.context_seconds <= 600.0):
        bad("context_seconds", f"{job.context_seconds} is not from 0 to 600 seconds")
    if not _integer(job.num_workers) or not 1 <= job.num_workers <= MAX_WORKERS:
        bad("num_workers", f"{job.num_workers} is not a whole number from 1 to {MAX_WORKERS}")
    if job.seed is not None:
        check_seed(job.seed)
    if not _number(job.flush_seconds) or not 0.01 <= job.flush_seconds <= 3600:
        bad("flush_seconds", f"{job.flush_seconds} is not a number of seconds from 0.01 to 3600")


def _number(x: Any) -> bool:
    """A finite real number: also a numpy scalar or a Fraction (np.int64(30) was "30 is not from 1 to
    3600"); not one too large for a float (10**400 raised a bare OverflowError)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _integer(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def long_settings(job: ExtractJob, device: torch.device) -> tuple[float, float, float]:
    """(exact_seconds, window_seconds, context_seconds) of a job on ``device``."""
    if job.max_chunk_seconds is not None:  # the deprecated option: hard windows, no context
        return float(job.max_chunk_seconds), float(job.max_chunk_seconds or WINDOW_SECONDS), 0.0
    exact = EXACT_SECONDS[device.type] if job.exact_seconds is None else job.exact_seconds
    window = WINDOW_SECONDS if job.window_seconds is None else job.window_seconds
    context = CONTEXT_SECONDS if job.context_seconds is None else job.context_seconds
    return float(exact), float(window), float(context)


def prepare(job: ExtractJob, *, world: World | None = None, download: bool = True) -> Plan:
    """Check and resolve everything before any audio is read; nothing is created on disk."""
    _check_values(job)
    world = world or detect_world()
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    dev = resolve_device(process_device(job.device, world, cuda_devices))
    if world.distributed and dev.type == "cuda":
        torch.cuda.set_device(dev)  # what runs on "the current device" runs on this rank's
    dtype = resolve_dtype(job.dtype, dev)
    backend = get_backend(job.format)
    _not_audio(Path(job.output))
    items = list_inputs(job.input)
    read = [f for f in (job.checkpoint, job.subnet) if isinstance(f, (str, os.PathLike))]  # files, if they are
    out = check_output_path(job.output, resume=job.resume, overwrite=job.overwrite, backend=backend,
                            inputs=itertools.chain([] if isinstance(job.input, (list, tuple)) else [job.input], read,
                                                   (it.path for it in items)))
    if not out.exists():  # (an existing one is found among the inputs by its inode, above)
        where = os.path.realpath(out)
        named = next((it for it in items if it.path.name == out.name and os.path.realpath(it.path) == where), None)
        if named is not None:  # a list naming the OUTPUT to be: it was created, then read as audio
            raise OutputError(f"{out}: is also an input ({named.origin}); choose another OUTPUT")
    if not world.distributed and find_parts(parts_dir(out), backend.suffix):
        raise OutputError(f"{parts_dir(out)}: parts of a run with several processes are there (merged already, "
                          f"or not yet); join them and remove them with: lhb merge {out} {parts_dir(out)} --remove-parts")
    ckpt = load_checkpoint(job.checkpoint, seed=job.seed, trust=job.trust_checkpoint, progress=download)
    if job.keep_parts and not world.distributed:
        warnings.warn("--keep-parts has no effect in a run with one process: OUTPUT is written as usual",
                      LightHubertWarning, stacklevel=2)
    if backend.name == "hdf5" and not hdf5_name(out):
        warnings.warn(f"{job.output}: is written as HDF5 whatever its name says (lhb convert writes .npy, fairseq and Kaldi "
                      "files from it)", LightHubertWarning, stacklevel=2)
    if job.max_chunk_seconds is not None:
        warnings.warn("--max-chunk-seconds is deprecated; use --exact-seconds, --window-seconds and --context-seconds "
                      "(long files now keep every frame)", LightHubertWarning, stacklevel=2)
    sub = _setting("subnet", ckpt.resolve_subnet, job.subnet)
    layers = resolve_layers(job.layers, sub["layer_num"], ckpt.cfg.layer_norm_first)
    extractor = Extractor(ckpt, sub, dev, dtype)
    from . import __version__

    exact, window, context = long_settings(job, dev)
    attrs = run_attrs(
        layers=layers, subnet=sub, checkpoint=ckpt.name, checkpoint_sha256=ckpt.sha256, normalize=ckpt.normalize,
        supernet_sha256=ckpt.meta.get("source_sha256") or ckpt.sha256,
        random_weights=ckpt.random, params=extractor.params, dtype=job.save_dtype,
        compute_dtype=str(dtype).replace("torch.", ""), version=__version__,
        exact_seconds=exact, window_seconds=window, context_seconds=context, num_layers=sub["layer_num"],
        embed_dim=sub["embed_dim"],
    )
    if job.resume and not world.distributed and out.is_file():  # a resume with other settings: said before any work
        backend.check_resume(out, attrs)
    options = Options(
        layers=layers, save_dtype=job.save_dtype, exact_seconds=exact, window_seconds=window, context_seconds=context,
        num_workers=int(job.num_workers), strict=job.strict, flush_seconds=float(job.flush_seconds),
        batch_seconds=float(job.batch_seconds if job.batch_seconds is not None else BATCH_SECONDS[dev.type]),
    )
    return Plan(job, world, items, out, backend, ckpt, extractor, layers, options, attrs)


def execute(plan: Plan, reporter: Reporter | None = None, stop: threading.Event | None = None) -> Summary:
    """Run a prepared job. ``stop`` set: finish the current batch, close the file (valid, not
    complete) and return with ``interrupted``. ``summary.output`` says where the result is."""
    reporter = reporter or Quiet()
    stop = stop or threading.Event()
    if plan.world.distributed:
        return _run_rank(plan, reporter, stop)
    out, backend = plan.output, plan.backend
    with OutputLock(out):
        existing = _claim(plan)
        if not (plan.job.resume and out.exists()):
            backend.create(out, plan.attrs)
        writer = backend.open_writer(out, plan.attrs, compression=plan.job.compression)
        writer.done = set(existing)
        try:
            summary = _run_writer(plan, plan.items, writer, reporter, stop)
        except (StrictStop, ResamplerUnavailable):
            _join(plan, complete=False)  # not the storage: what was done goes into OUTPUT
            raise
        if summary.interrupted and _join_bytes(out, backend) > STOP_JOIN_BYTES:
            summary.output = parts_dir(out)  # committed there; --resume or lhb merge joins them
            return summary
        _join(plan, complete=not summary.interrupted)
    summary.output = out
    return summary


def _join_bytes(out: Path, backend: Backend) -> int:
    """What joining OUTPUT and its committed segments would copy, in bytes."""
    total = 0
    for path in [out, *find_committed(out, backend.suffix)]:
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


def _claim(plan: Plan) -> set[str]:
    """With OUTPUT's lock held: check OUTPUT again (another run may have made it since
    :func:`prepare`), remove what ``overwrite`` replaces and what killed runs left half-written, and
    return the keys already committed, refusing input keys that nest with them."""
    job, out, backend = plan.job, plan.output, plan.backend
    check_output_path(out, resume=job.resume, overwrite=job.overwrite, backend=backend)
    remove_stale_temps(out)
    held = find_committed(out, backend.suffix)
    if job.overwrite:
        for path in held:
            path.unlink()
    elif held and not job.resume:
        if finished_path(out).exists():  # a --keep-parts run that ended well
            raise OutputError(f"{parts_dir(out)}: holds the parts of a finished run: join them with lhb merge {out} "
                              f"{parts_dir(out)} --remove-parts, or use --overwrite to start again")
        raise OutputError(f"{parts_dir(out)}: work of an interrupted run is there; "
                          "pass --resume to complete it or --overwrite to start again")
    existing = backend.committed(out, plan.attrs, include_output=job.resume)
    check_against(plan.items, existing, str(out))
    if existing:
        _check_kept_sources(plan, existing)
    finished_path(out).unlink(missing_ok=True)  # this run is claiming the parts: written again when it ends well
    return existing


SOURCES_CHECKED = 64
"""How many of the keys a resumed OUTPUT already holds have their recorded audio path compared with
INPUT's (reading each costs about 0.1 ms; all of them could take a minute on a large corpus)."""


def _not_audio(output: Path) -> None:
    """``lhb extract a.wav b.wav``, meant as two inputs: features are never written over or as audio,
    also through a link (``feats.h5 -> rec.wav``)."""
    target = Path(os.path.realpath(output))
    for name, via in ((output, ""), (target, f" (a link to {target})")):
        if is_audio(name):
            raise OutputError(f"{output}: OUTPUT is named as audio{via}; features go to an HDF5 file such as feats.h5 "
                              "(to extract several audio files, give their folder or a list of them as INPUT)")


def _check_kept_sources(plan: Plan, existing: set[str]) -> None:
    """Compare the audio paths OUTPUT recorded with INPUT's, on seeded samples read in one pass:
    - keys INPUT no longer has, made from files INPUT now gives under other keys, are an
      :class:`OutputError` (a line added to a list outside its common folder renames every key, and
      resuming would store each utterance twice);
    - kept keys made from other files than INPUT names for them are a
      :class:`~lighthubert.errors.LightHubertWarning` (INPUT is another folder with the same file names,
      or the corpus moved); they are kept, not redone."""
    current = {it.key for it in plan.items}
    gone = sorted(existing - current)
    gone = random.Random(0).sample(gone, min(SOURCES_CHECKED, len(gone)))
    kept = [it for it in plan.items if it.key in existing]  # list_inputs' stable order: the sample is seeded
    wanted = {it.key: source_text(it.path) for it in random.Random(0).sample(kept, min(SOURCES_CHECKED, len(kept)))}
    if not gone and not wanted:
        return
    out = plan.output
    files = [path for path in (out, *find_committed(out, plan.backend.suffix)) if path.exists()]  # OUTPUT may not be there yet
    stored = plan.backend.sources(files, [*gone, *wanted])
    if gone:
        now = {source_text(it.path): it.key for it in plan.items}
        renamed = [(k, stored[k], now[stored[k]]) for k in sorted(gone) if stored.get(k) in now]
        if not renamed and any(k in stored for k in gone):  # the same files spelt through a link?
            real_of = _real_names()
            now = {real_of(source_text(it.path)): it.key for it in plan.items}
            renamed = [(k, stored[k], now[real_of(stored[k])]) for k in sorted(gone)
                       if k in stored and real_of(stored[k]) in now]
        if renamed:
            key, src, new = renamed[0]
            raise OutputError(f"{out}: holds {key!r}, made from {src}, which INPUT now names {new!r}: the keys changed "
                              "(a list's common folder moved? or, in a file an earlier lhb made, a folder reached both "
                              "directly and through a link was named by the link), and resuming would store every such "
                              "file twice; give the same INPUT as before, or another OUTPUT (or --overwrite to start again)")
    checked = sorted(k for k in wanted if k in stored)
    other = [(k, stored[k]) for k in checked if stored[k] != wanted[k] and not same_file(stored[k], wanted[k])]
    if other:
        key, was = other[0]
        warnings.warn(f"{out}: {len(other)} of {len(checked)} utterances checked were made from other files than INPUT "
                      f"names for the same keys (e.g. {key!r}: {was}, now {wanted[key]}); they are kept as they are "
                      "(another OUTPUT or --overwrite redoes them)", LightHubertWarning, stacklevel=2)


def _real_names():
    """A function giving a recorded audio path with its links resolved (``/data/a.wav`` ->
    ``/mnt/nfs/corpus/a.wav``): each folder is resolved once, and a file only when it is a link itself,
    so a corpus costs a look-up per folder and one per file."""
    folders: dict[str, str] = {}

    def real(path: str) -> str:
        if os.path.islink(path):  # a file that is itself a link: its target
            return os.path.realpath(path)
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        return os.path.join(folders[folder], name)

    return real


def _join(plan: Plan, complete: bool) -> None:
    """OUTPUT and the committed segments into a new OUTPUT (on failure both stay as they were)."""
    try:
        plan.backend.join(plan.output, include_output=True, complete=complete, inputs={it.key for it in plan.items})
    except OutputError as err:
        raise OutputError(f"{err}; run the same command with --resume to complete it") from None


def run(job: ExtractJob, reporter: Reporter | None = None, stop: threading.Event | None = None) -> Summary:
    """:func:`prepare` then :func:`execute`."""
    return execute(prepare(job), reporter, stop)


ProgressFn = Callable[[int, int, float, float], None]
"""A progress callback: (files done, files to do, audio seconds done, audio seconds to do)."""


class _Stop(threading.Event):
    """Set by Ctrl-C or by a progress callback that raised; also set when the caller's ``stop`` is."""

    def __init__(self, caller: threading.Event | None):
        super().__init__()
        self.caller = caller

    def is_set(self) -> bool:
        return super().is_set() or (self.caller is not None and self.caller.is_set())


class _Callback(Quiet):
    """:func:`extract`'s ``progress`` as a reporter. An exception it raises stops the run after the
    current batch (the work done is joined into OUTPUT), and is raised by :func:`extract` then."""

    def __init__(self, fn: ProgressFn, stop: threading.Event):
        self.fn, self.stop_event, self.error = fn, stop, None
        self.files, self.seconds, self.total, self.total_seconds = 0, 0.0, 0, 0.0

    def _call(self, *args: Any) -> None:
        if self.error is not None:
            return
        try:
            self.fn(*args)
        except BaseException as err:  # also its own KeyboardInterrupt or sys.exit(): the work is joined first
            self.error = err
            self.stop_event.set()

    def start(self, files: int, seconds: float, done_before: int) -> None:
        self.total, self.total_seconds = files, seconds
        self._call(0, files, 0.0, seconds)

    def advance(self, files: int, seconds: float) -> None:
        self.files += files
        self.seconds += seconds
        self._call(self.files, self.total, self.seconds, self.total_seconds)


def extract(input: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike, *, progress: ProgressFn | None = None,
            stop: threading.Event | None = None, **settings: Any) -> Summary:
    """Extract the features of every audio file in ``input`` into ``output``, as ``lhb extract``
    does; ``settings`` are the fields of :class:`ExtractJob`. Bad inputs are skipped and listed in
    ``summary.skipped`` (``strict=True`` stops at the first; with several processes, each lists its own
    and rank 0's ``summary.skipped_count`` counts them all). Raises
    :class:`~lighthubert.errors.LightHubertError` with one line on failure.

    Without ``stop``, Ctrl-C (a notebook's interrupt: SIGINT, in the main thread) once the work has
    begun stops as ``lhb extract`` does: after the current batch, with what was done joined into
    ``output``; then KeyboardInterrupt is raised (``resume=True`` completes the job). A second Ctrl-C
    stops at once (the committed work then waits in ``output``'s parts folder for the resume).
    A ``progress`` callback that raises stops the run the same way; its exception is raised then."""
    if progress is not None and not callable(progress):  # before any work: else OUTPUT was left incomplete
        raise SettingError(f"progress is a function (files, total, seconds, total_seconds), not {kind_of(progress)}",
                           "progress")
    if stop is not None and not callable(getattr(stop, "is_set", None)):
        raise SettingError(f"stop is a threading.Event, not {kind_of(stop)}", "stop")
    try:
        said: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as said:  # lhb's words in them, said again in the caller's
                warnings.simplefilter("always")
                plan = prepare(ExtractJob(input, output, **settings))
        finally:
            for w in said:  # at the caller's line, as the caller's filters decide
                text = in_python_words(str(w.message)) if issubclass(w.category, LightHubertWarning) else w.message
                warnings.warn(text, w.category, stacklevel=2)
        run_stop = _Stop(stop)
        reporter = _Callback(progress, run_stop) if progress else None
        interrupted = False
        if stop is not None:
            summary = execute(plan, reporter, run_stop)
        else:
            with interrupt_stops(run_stop) as interrupted:
                summary = execute(plan, reporter, run_stop)
    except LightHubertError as err:  # said in this call's keywords, not lhb's flags
        message = in_python_words(str(err))
        setting = getattr(err, "setting", None)
        if setting and not message.startswith(setting):  # lhb prefixes "--batch-seconds: "; a caller sees the keyword
            message = f"{setting}: {message}"
        err.args = (message, *err.args[1:])
        raise
    if reporter is not None and reporter.error is not None:
        err = reporter.error
        err.add_note(f"raised by the progress callback; lighthubert.extract stopped after the current batch: what was "
                     f"done is kept in {summary.output}, and the same call with resume=True completes it"
                     if summary.interrupted else
                     f"raised by the progress callback once the work was done: {summary.output} is complete")
        raise err
    if interrupted and summary.interrupted:
        raise KeyboardInterrupt(f"stopped after the current batch; what was done is kept in {summary.output}: "
                                "run the same call with resume=True to complete it")
    return summary


def in_python_words(message: str) -> str:
    """A message written for ``lhb extract`` as :func:`extract`'s caller reads it: its flags as the
    keywords of :class:`ExtractJob` (``--resume`` -> ``resume=True``, ``--exact-seconds`` ->
    ``exact_seconds``); flags of other commands (``lhb merge ... --remove-parts``) stay."""
    return _FLAG.sub(lambda m: _KEYWORDS.get(m.group(0), m.group(0)), message).replace("the same command", "the same call")


_KEYWORDS = {f"--{f.name.replace('_', '-')}": f"{f.name}=True" if f.type == "bool" else f.name for f in fields(ExtractJob)}
_KEYWORDS["-c"] = "checkpoint"
_FLAG = re.compile(r"--[a-z][a-z-]*|(?<![\w-])-c(?=[:)])")  # "(-c: ...)", not the hint's "lhb: -c PATH"


# ----------------------------------------------------------------------------- one writer


def _run_writer(plan: Plan, items: list[Item], writer: FeaturesWriter, reporter: Reporter,
                stop: threading.Event, samples: dict[str, int] | None = None) -> Summary:
    """Extract ``items`` into ``writer`` and commit what it holds; a failure is raised
    (:class:`OutputBroken` when the storage library failed: the current segment was discarded)."""
    try:
        summary = run_pipeline(items, plan.extractor, writer, plan.options, reporter, stop, samples)
    except (StrictStop, OutputError, ResamplerUnavailable) as err:
        reporter.stop()
        if writer.broken:  # the storage library failed mid-write: closing could write more
            raise OutputBroken(str(err)) from None
        writer.close(complete=False)
        raise
    reporter.stop()
    writer.close(complete=not summary.interrupted)
    return summary


# ----------------------------------------------------------------------------- several processes


class _RankReporter:
    """Pushes this rank's progress into the group's store; on rank 0 also shows the whole job.
    After each batch it checks whether another rank failed, and stops this one if so."""

    def __init__(self, group: Group, user: Reporter, show: bool, stop: threading.Event):
        self.group, self.user, self.show, self.stop_event = group, user, show, stop
        self.total_files, self.total_seconds, self.done_before = 0, 0.0, 0
        self.files, self.seconds = 0, 0.0

    def start(self, files: int, seconds: float, done_before: int) -> None:
        if self.show:
            self.user.start(self.total_files, self.total_seconds, self.done_before)

    def advance(self, files: int, seconds: float) -> None:
        self.group.add("files", files)
        self.group.add("ms", int(seconds * 1000))
        self.tick()
        if self.group.ending():
            self.stop_event.set()

    def tick(self) -> None:
        if self.show:
            files, seconds = self.group.add("files", 0), self.group.add("ms", 0) / 1000
            self.user.advance(files - self.files, seconds - self.seconds)
            self.files, self.seconds = files, seconds

    def skipped(self, item: Item, reason: str) -> None:
        self.user.skipped(item, reason)

    def stop(self) -> None:
        """The display stops once every rank has finished (see :func:`_run_rank`)."""

    def end(self) -> None:
        if self.show:
            self.user.stop()


@contextmanager
def _ranks_meet(when: str, kept: str = "nothing was extracted"):
    """The ranks exchange something; gloo raises RuntimeError ("Connection closed by peer") in every
    rank waiting on one that died: one line for the user instead."""
    try:
        yield
    except RuntimeError:
        raise JobError(f"a rank left {when}; {kept}") from None


def _plan_todo(plan: Plan) -> dict:
    """Rank 0, with OUTPUT's lock held: the indices of the items still to do (what OUTPUT, its segments
    and parts hold is kept) and how many are done."""
    done = _claim(plan)
    if plan.job.overwrite:  # as one process does at its start: a stop then leaves only the new run's work,
        plan.output.unlink(missing_ok=True)  # which --resume completes (the old OUTPUT was kept: refused, or mixed in)
    parts_dir(plan.output).mkdir(parents=True, exist_ok=True)
    return {"todo": [i for i, it in enumerate(plan.items) if it.key not in done], "done": len(done)}


def _plan_shares(plan: Plan, group: Group, todo: list[int]) -> tuple[list[tuple[int, int]], float]:
    """Every rank: this rank's share of ``todo``, as (item index, samples) pairs, balanced by duration,
    and the audio seconds of the whole job. Each rank reads the headers of every size-th item and the
    ranks exchange them (on a slow shared filesystem one process reading them all kept every GPU
    waiting); every rank then balances the same list the same way."""
    world = group.world
    mine = todo[world.rank::world.size]
    with ThreadPoolExecutor(max_workers=max(2, plan.options.num_workers)) as pool:
        read = list(zip(mine, pool.map(lambda i: estimate_samples(plan.items[i]), mine)))
    with _ranks_meet("while the ranks planned the job"):
        sizes = [pair for part in group.gather(read) for pair in part]
    shares = balance([(pair, pair[1]) for pair in sizes], world.size)
    return shares[world.rank], sum(n for _, n in sizes) / SAMPLE_RATE


def _keep_part(plan: Plan, rank: int) -> None:
    """``keep_parts``: this rank's committed segments become its part file ``part-RANK.h5``."""
    out, backend = plan.output, plan.backend
    segments = find_segments(out, backend.suffix, rank=rank)
    if segments:
        # not complete: one rank's share is not the job (lhb merge marks the join complete when the job
        # finished, by its FINISHED note; a merge after a failed job said complete with inputs missing)
        backend.merge(part_path(out, rank, backend.suffix), segments, include_output=True, complete=False)
        for path in segments:
            path.unlink()


def _run_rank(plan: Plan, user: Reporter, stop: threading.Event) -> Summary:
    """This rank's share of a job with several processes; rank 0 plans, waits for all, merges."""
    world, out, backend = plan.world, plan.output, plan.backend
    parts = parts_dir(out)
    try:
        group = Group(world, out, stop=stop)
    except StoppedWaiting:  # the waiting thread stays in torch until the process ends (lhb ends at once)
        return Summary(output=None, interrupted=True)
    lock = ExitStack()
    try:
        claim: dict = {}
        if world.rank == 0:
            try:
                lock.enter_context(OutputLock(out))  # rank 0 holds it for the whole job
                claim = _plan_todo(plan)
            except LightHubertError as err:  # OUTPUT, its lock, or input keys against what it holds
                claim = {"error": str(err)}
        with _ranks_meet("while the ranks planned the job"):
            claim = group.broadcast(claim)
        if "error" in claim:  # rank 0 says it, once
            raise JobError(claim["error"], silent=world.rank != 0)
        share, seconds = _plan_shares(plan, group, claim["todo"])
        mine = [plan.items[i] for i, _ in share]
        reporter = _RankReporter(group, user, world.rank == 0, stop)
        reporter.total_files = len(claim["todo"])
        reporter.total_seconds, reporter.done_before = seconds, claim["done"]
        status = {"rank": world.rank, "error": None, "interrupted": False, "skipped": 0, "files": 0, "seconds": 0.0}
        summary = Summary(output=parts)
        try:
            writer = backend.open_writer(out, plan.attrs, compression=plan.job.compression, rank=world.rank)
            summary = _run_writer(plan, mine, writer, reporter, stop, {plan.items[i].key: n for i, n in share})
            if plan.job.keep_parts and not summary.interrupted:
                _keep_part(plan, world.rank)
            summary.output = parts
            status.update(interrupted=summary.interrupted, skipped=len(summary.skipped), files=summary.files,
                          seconds=summary.seconds)
        except OutputBroken as err:  # the process is to exit at once; the others stop after their batch
            group.fail(f"rank {world.rank}: {err}")
            decide(group, "abandon")
            finished(group)
            raise
        except LightHubertError as err:
            status["error"] = str(err)
            group.fail(f"rank {world.rank} failed ({err})")
        kept = f"the finished work is kept in {parts}; run the same command with --resume to complete it"
        if stop.is_set() and not status["error"]:
            # Stopped (signal, or another rank failed or left): the part is closed and valid. Do not
            # wait for ranks that may be gone; resume completes the job.
            decide(group, "abandon")
            finished(group)
            reporter.end()
            if world.rank == 0 and (why := group.failure()):
                raise JobError(f"{why}; {kept}")
            summary.interrupted = True
            return summary
        finished(group)
        outcome = wait_for_ranks(group, on_tick=reporter.tick, stop=stop)
        reporter.tick()
        if outcome == "stopped":
            reporter.end()
            summary.interrupted = True
            return summary
        if outcome != "gather":  # some rank cannot take part in the exchange below
            reporter.end()
            if status["error"]:
                raise JobError(f"rank {world.rank}: {status['error']}")
            if outcome.startswith("gone"):
                raise JobError(f"rank {outcome.split()[1]} stopped responding (no heartbeat for {rank_timeout():g} s); "
                               f"{kept}")
            raise JobError(f"{group.failure() or 'another rank stopped before finishing its share'}; {kept}",
                           silent=world.rank != 0)
        with _ranks_meet("during the ranks' final exchange", kept):
            statuses = group.gather(status)
        reporter.end()
        failed = [s for s in statuses if s["error"]]
        if status["error"]:
            raise JobError(f"rank {world.rank}: {status['error']}")
        if failed:
            raise JobError(f"rank {failed[0]['rank']} failed ({failed[0]['error']}); the finished work is kept in "
                           f"{parts}; run the same command with --resume to complete it", silent=world.rank != 0)
        whole = Summary(files=sum(s["files"] for s in statuses), seconds=sum(s["seconds"] for s in statuses),
                        interrupted=any(s["interrupted"] for s in statuses), done_before=claim["done"],
                        wall=summary.wall, timings=summary.timings, output=parts)
        whole.skipped = summary.skipped
        if world.rank == 0:  # the other ranks' skipped inputs were reported there; here only their count
            whole.skipped_elsewhere = sum(s["skipped"] for s in statuses) - len(summary.skipped)
        if world.rank == 0 and plan.job.keep_parts and not whole.interrupted:
            try:  # a note for the next run's message only: the parts are whole without it
                finished_path(out).write_text(f"all {world.size} ranks finished; join the parts with: lhb merge {out} {parts} --remove-parts\n", encoding="utf-8")
            except OSError:
                pass
        if whole.interrupted or world.rank != 0 or plan.job.keep_parts:
            return whole
        try:
            backend.join(out, include_output=plan.job.resume, complete=True, inputs={it.key for it in plan.items})
        except OutputError as err:
            raise OutputError(f"merging the parts failed: {err}; they are kept in {parts}") from None
        whole.output = out
        return whole
    finally:
        lock.close()
        group.close()


__all__ = ["BATCH_SECONDS", "ExtractJob", "JobError", "Plan", "execute", "extract", "prepare", "run"]
