"""``lhb``: extract LightHuBERT features to HDF5, find subnets, describe files.

Exit status: 0 success, 1 failure, 2 bad usage, 3 finished but some inputs were skipped,
130 / 143 stopped by Ctrl-C / SIGTERM (the file is valid; --resume completes it).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
import stat
import sys
import threading
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from lighthubert import defaults
from lighthubert.interrupt import in_finaliser

from .progress import STDOUT, Reporter, count, err, hms, out_line, size

try:  # Typer >= 0.2x vendors click as typer._click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer on click
    from click import exceptions as click_errors


class _PlainFlags:
    """In --help, flags (--resume, --quiet, -h) show no value type: they take no value."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params


class LhbCommand(_PlainFlags, TyperCommand):
    """Every ``lhb`` command (``@app.command(cls=LhbCommand)``)."""


class LhbGroup(_PlainFlags, TyperGroup):
    """``lhb`` and ``lhb units``."""


app = typer.Typer(
    name="lhb",
    cls=LhbGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_FAIL, EXIT_USAGE, EXIT_SKIPPED = 1, 2, 3


class Fail(Exception):
    """A clear one-line failure with an exit status."""

    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """The choices of an option, as Typer takes them, from the library's one list of them."""
    return Enum(name, {v: v for v in values}, type=str)


SaveDtype = _choices("SaveDtype", defaults.SAVE_DTYPES)
ExportDtype = _choices("ExportDtype", defaults.EXPORT_DTYPES)
Dtype = _choices("Dtype", defaults.DTYPES)
Compression = _choices("Compression", defaults.COMPRESSIONS)


class Supernet(str, Enum):
    base = "base"
    small = "small"


class Terminated(KeyboardInterrupt):
    """SIGTERM outside lhb extract's graceful stop, or a second signal after a SIGTERM: stop at
    once, exit 143 (SIGINT raises KeyboardInterrupt: exit 130)."""


_stop_said: list[int] = []


def _say_stopped(terminated: bool) -> int:
    """The one line for a stop by signal (printed once per process, with :data:`_stop_hint` when a
    command set one); returns the exit status."""
    if not _stop_said:
        err(("lhb: terminated" if terminated else "lhb: interrupted") + "".join(f"; {h}" for h in _stop_hint[-1:]))
        _stop_said.append(1)
    return 143 if terminated else 130


def stopped_by_signal() -> bool:
    """Whether the last :func:`run` ended with the one line of a stop by signal (``lhb: interrupted``)."""
    return bool(_stop_said)


_stop_hint: list[str] = []
"""What to do after a stop at once, for the line :func:`_say_stopped` prints (set by a command once it
has work to keep)."""

_signals: list[int] = []
"""The signals :func:`_on_signal` has taken, in the order they came."""


def _stop_if_signalled() -> None:
    """Stop now if a signal came earlier (during start-up) but its exception never reached lhb.
    CPython drops an exception raised in Python code that C code calls while it ignores errors (an
    ``__eq__`` during a dict lookup, a ``__getattr__`` under a C ``hasattr``); a SIGTERM caught there
    while torch was imported once let ``lhb extract`` do the whole run and only then say "terminated".
    Commands call this before their work starts, so such a signal stops them with nothing written."""
    if _signals:
        raise Terminated if _signals[0] == signal.SIGTERM else KeyboardInterrupt


def _one_line_errors(command):
    """Failures become one line on stderr and an exit status, never a traceback (unless LHB_DEBUG)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Fail as e:
            err(f"lhb: error: {e}")
            raise typer.Exit(e.code) from None
        except KeyboardInterrupt as e:
            raise typer.Exit(_say_stopped(isinstance(e, Terminated))) from None
        except (typer.Exit, typer.Abort, BrokenPipeError):
            raise  # a closed stdout ends quietly (see run)
        except Exception as e:  # noqa: BLE001
            from lighthubert.errors import LightHubertError, SettingError  # not at import: keeps --help fast

            if _signals and not os.environ.get("LHB_DEBUG"):  # a stop that a library turned into an error of its
                raise typer.Exit(_say_stopped(_signals[0] == signal.SIGTERM)) from None  # own (torch's ONNX exporter)
            if isinstance(e, LightHubertError):  # one line; bad setting values are usage errors
                setting = getattr(e, "setting", None)
                err(f"lhb: error: {'--' + setting.replace('_', '-') + ': ' if setting else ''}{e}")
                raise typer.Exit(EXIT_USAGE if isinstance(e, SettingError) else EXIT_FAIL) from None
            if os.environ.get("LHB_DEBUG"):
                raise
            if isinstance(e, OSError) and e.filename is not None and e.strerror:  # e.g. a name too long
                from lighthubert.inputs import display_path

                from lighthubert.storage import os_reason

                written = "cannot write: " if e.filename == STDOUT else ""
                err(f"lhb: error: {display_path(os.fsdecode(e.filename))}: {written}{os_reason(e)}")
                raise typer.Exit(EXIT_FAIL) from None
            err(f"lhb: internal error: {type(e).__name__}: {e} (set LHB_DEBUG=1 for the traceback)")
            raise typer.Exit(EXIT_FAIL) from None

    return run


def _by_device(seconds: dict[str, float]) -> str:
    """``200 on CUDA, 30 on CPU`` for a per-device default."""
    return f"{seconds['cuda']:g} on CUDA, {seconds['cpu']:g} on CPU"


CheckpointOpt = Annotated[str, typer.Option(
    "--checkpoint", "-c", metavar="CKPT",
    help="Checkpoint: a path, a released name (base, small, stage1: downloaded once into the cache), "
         "or random:base / random:small / random:stage1 for random weights.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-checkpoint", help="Allow the checkpoint's pickle to run code. Only for files you trust.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")]
SeedOpt = Annotated[Optional[int], typer.Option(
    "--seed", help=f"Seed for random:* checkpoints. Default: {defaults.SEED}.", show_default=False)]


def _quiet_hub(source: str) -> None:
    """The hub client's retry warnings would break the one-line errors: errors only."""
    from lighthubert.checkpoint import RELEASED

    if source in RELEASED:
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()


def _load_checkpoint(source: str, seed: int | None, trust: bool, quiet: bool):
    from lighthubert.checkpoint import load_checkpoint

    _quiet_hub(source)
    return load_checkpoint(source, seed=seed, trust=trust, progress=not quiet)


def _check_target(path: Path, is_folder: str = "is a folder; give a file name", *, writable: bool = False,
                  replaced: bool = False) -> None:
    """Fail before any work when the file ``path`` cannot be made: a folder (the message says
    ``is_folder``), or its folder is missing (or, with ``writable``, read-only). With ``replaced`` (the
    file is written beside it and renamed over it) also a FIFO or device there, which would be replaced."""
    from lighthubert.storage import special_kind

    if path.is_dir():
        raise Fail(f"{path}: {is_folder}")
    if replaced and (kind := special_kind(path)):
        raise Fail(f"{path}: is {kind}, not a regular file; it is never replaced by one: give a file name")
    if not path.parent.is_dir():
        if path.parent.exists():
            raise Fail(f"{path}: {path.parent} is not a folder")
        raise Fail(f"{path}: the folder {path.parent} does not exist")
    if writable and not os.access(path.parent, os.W_OK | os.X_OK):
        raise Fail(f"{path}: the folder {path.parent} is not writable")


def _subnet_text(text: str | None) -> str | None:
    """``--subnet``: ``-`` is the JSON on standard input (``lhb subnet ... | lhb extract ... -s -``)."""
    if text != "-":
        return text
    if sys.stdin is None or sys.stdin.isatty():
        raise Fail("--subnet -: reads the subnet JSON from standard input, which is a terminal; pipe it in", EXIT_USAGE)
    data = sys.stdin.read(MAX_SUBNET_TEXT + 1).removeprefix("\ufeff")  # a byte-order mark, as a subnet file may start with
    if len(data) > MAX_SUBNET_TEXT or not data.strip():
        raise Fail(f"--subnet -: standard input held {'no' if not data.strip() else 'more than a'} subnet JSON", EXIT_USAGE)
    head = data.strip()[:1000]
    if not head.startswith(("{", "[")):  # else read as a preset or a file name, and shown as if given as the argument
        from lighthubert.inputs import escape_name

        what = ("is not UTF-8 text" if escape_name(head) != head  # undecodable bytes (surrogateescape)
                else f"starts with {head[:40]!r}")
        raise Fail(f"--subnet -: standard input holds no subnet JSON (a JSON object, as lhb subnet prints; it {what})",
                   EXIT_USAGE)
    return data


MAX_SUBNET_TEXT = 1 << 20
"""The most of standard input ``--subnet -`` reads (a subnet JSON is a few hundred bytes)."""


def _path(text: str | Path) -> Path:
    """A path argument; an empty one (an unset shell variable) is refused instead of meaning '.'."""
    if isinstance(text, str) and not text.strip():
        raise typer.BadParameter("an empty path")
    return Path(text)


def _file_path(text: str | Path) -> Path:
    """A path to a file to write: as :func:`_path`, and a name ending in '/' (a folder, as the user
    wrote it) is refused instead of quietly naming a file."""
    if isinstance(text, str) and text.endswith("/") and text.strip("/"):
        raise typer.BadParameter(f"{text}: ends with '/', so names a folder; give a file name")
    return _path(text)


def _not_stdout(what: str, example: str):
    """A parser for a path to write that cannot be standard output: ``-`` is refused (saying it
    cannot hold ``what``; give ``example``) instead of making a file or folder named ``-``."""
    def parse(text: str | Path) -> Path:
        if isinstance(text, str) and text == "-":
            raise typer.BadParameter(f"'-' (standard output) cannot hold {what}; give {example}")
        return _file_path(text)
    return parse


_features_path = _not_stdout("an HDF5 features file", "a file name such as feats.h5")


@app.command(cls=LhbCommand)
@_one_line_errors
def extract(
    input: Annotated[Path, typer.Argument(
        parser=_path, metavar="INPUT", help="A folder (searched recursively for audio), one audio file, or a list: .txt/.lst (paths), "
             ".tsv (fairseq manifest), .scp (key path).", show_default=False)],
    output: Annotated[Path, typer.Argument(parser=_features_path, metavar="OUTPUT", help="The HDF5 features file to write.", show_default=False)],
    checkpoint: CheckpointOpt = defaults.CHECKPOINT,
    subnet: Annotated[Optional[str], typer.Option(
        "--subnet", "-s", metavar="SPEC",
        help="Subnet: a preset (default, max, min), a JSON file, inline JSON, or - (JSON on standard input). Default: the checkpoint's.")] = None,
    layers: Annotated[str, typer.Option(
        "--layers", "-l", help="last, all, or comma-separated hidden-state indices (0 = projected conv features; -1 = the last).")] = defaults.LAYERS,
    device: DeviceOpt = defaults.DEVICE,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Compute dtype; auto: float16 on CUDA, float32 on CPU.")] = Dtype(defaults.DTYPE),
    save_dtype: Annotated[SaveDtype, typer.Option("--save-dtype", help="Dtype of the stored features.")] = SaveDtype(defaults.SAVE_DTYPE),
    batch_seconds: Annotated[Optional[float], typer.Option(
        "--batch-seconds", help=f"Padded audio per batch. Default: {_by_device(defaults.BATCH_SECONDS)}.")] = None,
    exact_seconds: Annotated[Optional[float], typer.Option(
        "--exact-seconds", metavar="S",
        help="Files up to S seconds give exactly the features of an uncut run (memory linear in length, "
             f"time quadratic); longer files run windowed. 0: every file exactly. Default: {_by_device(defaults.EXACT_SECONDS)}.")] = None,
    window_seconds: Annotated[Optional[float], typer.Option(
        "--window-seconds", metavar="W",
        help="Windowed mode: equal windows of at most W seconds (plus context); same frame count as uncut. "
             f"Default: {defaults.WINDOW_SECONDS:g}.")] = None,
    context_seconds: Annotated[Optional[float], typer.Option(
        "--context-seconds", metavar="C",
        help="Windowed mode: C seconds of context on each side of a window, dropped after the run. "
             f"Default: {defaults.CONTEXT_SECONDS:g}.")] = None,
    max_chunk_seconds: Annotated[Optional[float], typer.Option(
        "--max-chunk-seconds", metavar="S",
        help="Deprecated: the same as --exact-seconds S --window-seconds S --context-seconds 0.")] = None,
    num_workers: Annotated[int, typer.Option("--num-workers", "-j", help="Decoding threads (overlap compute), 1 to 64.")] = defaults.NUM_WORKERS,
    resume: Annotated[bool, typer.Option("--resume", help="Keep what OUTPUT holds and do the rest.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first bad input (exit 1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary; errors, warnings and skipped inputs only.")] = False,
    keep_parts: Annotated[bool, typer.Option(
        "--keep-parts", help="With several processes: keep each rank's part in OUTPUT.parts/ instead of merging (join later with lhb merge).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print where the time went and the GPU memory peak.")] = False,
    compression: Annotated[Compression, typer.Option("--compression", help="HDF5 compression of the features.")] = Compression(defaults.COMPRESSION),
    seed: SeedOpt = None,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Extract features of every audio file in INPUT into OUTPUT (HDF5).

    Example: lhb extract wavs/ feats.h5 -c small --layers all
    """
    from lighthubert.distributed import detect_world
    from lighthubert.job import ExtractJob, JobError, execute, prepare
    from lighthubert.pipeline import StrictStop
    from lighthubert.storage import OutputBroken

    subnet = _subnet_text(subnet)
    job = ExtractJob(
        input=input, output=output, checkpoint=checkpoint, subnet=subnet, layers=layers, device=device,
        dtype=dtype.value, save_dtype=save_dtype.value, batch_seconds=batch_seconds,
        exact_seconds=exact_seconds, window_seconds=window_seconds, context_seconds=context_seconds,
        max_chunk_seconds=max_chunk_seconds, num_workers=num_workers, resume=resume, overwrite=overwrite,
        strict=strict, compression=compression.value, keep_parts=keep_parts, seed=seed,
        trust_checkpoint=trust_checkpoint,
    )
    world = detect_world()
    if world.rank != 0:  # the job's warnings, once: rank 0 says them
        from lighthubert.errors import LightHubertWarning

        warnings.filterwarnings("ignore", category=LightHubertWarning)
    _quiet_hub(checkpoint)
    plan = prepare(job, world=world, download=not (quiet or world.rank != 0))
    _stop_if_signalled()
    ckpt, sub, dev = plan.checkpoint, plan.extractor.subnet, plan.device
    quiet_here = quiet or world.rank != 0
    if not quiet_here:
        label = "RANDOM WEIGHTS: these features mean nothing; " if ckpt.random else ""
        ranks = f"; {world.size} processes ({world.launcher})" if world.distributed else ""
        name = ckpt.name.removesuffix(" (RANDOM WEIGHTS)")  # the line already starts with the warning
        err(f"{label}checkpoint {name}, subnet {plan.extractor.params / 1e6:.1f}M params "
            f"({sub['layer_num']} layers, width {sub['embed_dim']}), {dev} {str(plan.dtype).replace('torch.', '')}{ranks}")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame):
        if received:  # a second signal: stop now, with the status of the first one
            if in_finaliser(signum, frame):  # (during the final join's h5py cleanup, say)
                return
            raise Terminated if received[0] == signal.SIGTERM else KeyboardInterrupt
        received.append(signum)
        stop.set()
        # a new line after the terminal's "^C" echo; a log gets no blank line
        err(f"{chr(10) if sys.stderr.isatty() else ''}stopping after the current batch ({signal.Signals(signum).name}); "
            "signal again to stop at once")

    old = _catch_signals(on_signal)
    _stop_hint.append(f"what was committed is kept; run the same command with --resume to complete {output}")
    try:
        summary = execute(plan, Reporter(quiet=quiet, strict=strict), stop)
    except StrictStop as e:
        reason = f"{e.path}: {e.reason}".rstrip(".")
        raise Fail(f"{reason}; --strict stopped the run and {output} keeps what was done: fix or remove that "
                   "input, then run the same command with --resume") from None
    except OutputBroken as e:
        # The storage library failed mid-write: leave the file as of its last flush and skip its finalisers.
        err(f"lhb: error: {e}")
        os._exit(EXIT_FAIL)
    except JobError as e:
        if e.silent:  # another rank failed; rank 0 says which
            raise typer.Exit(EXIT_FAIL) from None
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if summary.interrupted:
        if summary.output is None:  # while waiting for the other ranks to join
            err("stopped while waiting for the other ranks to join; nothing was done")
        elif world.rank == 0:
            joined = "" if summary.output == plan.output or world.distributed else (
                f" (not joined into {output}, to stop at once; lhb merge {output} joins them now)")
            err(f"stopped: what is done is kept in {summary.output}{joined}; to finish, run the same command with --resume")
        if not received:  # stopped because another rank failed or left: a failure, not a signal (143 would say SIGTERM)
            raise typer.Exit(EXIT_FAIL)
        raise typer.Exit(130 if received[0] == signal.SIGINT else 143)
    if not quiet and world.rank == 0:
        speed = summary.seconds / summary.wall if summary.wall else 0.0
        pace = f" ({speed:,.0f}x real time)" if summary.seconds else ""  # (not "0x" when every input was skipped)
        what = (f"{count(summary.files, 'file')}, {hms(summary.seconds)} of audio in {hms(summary.wall)}{pace}"
                if summary.files or summary.skipped_count else "nothing left to do")
        err(f"done: {what}; {summary.output} ({size(_size_of(summary.output))}) holds "
            f"{count(summary.done_before + summary.files, 'utterance')}"
            + (f"; skipped {summary.skipped_count}" if summary.skipped_count else ""))
    if verbose and not quiet:
        t = summary.timings
        peak = ""
        if dev.type == "cuda":
            import torch

            peak = f"; GPU memory peak {size(torch.cuda.max_memory_allocated(dev))}"
        err(f"time: waiting for decoding {t['decode_wait']:.2f} s, compute (incl. transfers) {t['compute']:.2f} s, "
            f"waiting for the writer {t['write_wait']:.2f} s, total {summary.wall:.2f} s{peak}")
    if summary.skipped_count:
        raise typer.Exit(EXIT_SKIPPED)


def _size_of(path: Path) -> int:
    """Bytes of a features file, or of the parts in a parts folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return path.stat().st_size if path.exists() else 0


@app.command("subnet", cls=LhbCommand)
@_one_line_errors
def subnet_cmd(
    params: Annotated[Optional[str], typer.Option(
        "--params", "-p", help="Parameter budget (30M, 30m, 3e7, 30000000): the largest subnet not above it.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="default, max or min.")] = None,
    sample: Annotated[Optional[int], typer.Option("--sample", min=1, max=10_000, help="Sample N random subnets (with --seed).")] = None,
    subnet: Annotated[Optional[str], typer.Option("--subnet", "-s", metavar="SPEC", help="A JSON file, inline JSON or - (standard input) to check and show.")] = None,
    supernet: Annotated[Optional[Supernet], typer.Option("--supernet", help="Search space (default: both, or the checkpoint's).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(
        "--checkpoint", "-c", metavar="CKPT", help="A checkpoint: its space, its parameter count, and the source for --export.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", parser=_path, metavar="FILE", help="Also write the JSON to this file.")] = None,
    export: Annotated[Optional[Path], typer.Option("--export", parser=_path, metavar="OUT", help=(
        "Write the subnet (needs --checkpoint): OUT.pt a compact checkpoint for this package; OUT.onnx (ONNX, "
        "needs the onnx extra) or OUT.ts (TorchScript), waveforms to hidden states, runnable without it."))] = None,
    export_dtype: Annotated[Optional[ExportDtype], typer.Option(
        "--export-dtype", help=f"Weights and compute of an .onnx/.ts export (float16: for GPUs). Default: {defaults.EXPORT_DTYPE}.",
        show_default=False)] = None,
    layers: Annotated[Optional[str], typer.Option(
        "--layers", "-l", help="Hidden states an .onnx/.ts export outputs: last (default), all, or indices like 0,4,12.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help=f"Seed for --sample and random:* checkpoints. Default: {defaults.SEED}.",
                                                show_default=False)] = None,
    trust_checkpoint: TrustOpt = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=(
        "Replace an existing --export file, or an existing -o file that is not a subnet JSON."))] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table or messages on stderr; errors and warnings only.")] = False,
) -> None:
    """Choose a subnet: by parameter budget, preset, sampling or JSON; print it as JSON on stdout.

    Example: lhb subnet --params 30M -o sub30m.json
    """
    import random

    from lighthubert.space import (
        SPACES,
        SubnetError,
        best_under_budget,
        count_params,
        parse_budget,
        subnet_in_spaces,
    )

    subnet = _subnet_text(subnet)
    chosen = [name for name, v in (("--params", params), ("--preset", preset), ("--sample", sample), ("--subnet", subnet)) if v is not None]
    if len(chosen) > 1:
        raise Fail(f"give one of --params, --preset, --sample, --subnet (got {', '.join(chosen)})", EXIT_USAGE)
    from lighthubert.checkpoint import check_seed, parse_random

    if seed is not None:
        check_seed(seed)  # --sample's and random:*'s seed: the range of lhb extract --seed
    if export is not None and checkpoint is None:
        raise Fail("--export needs --checkpoint (the supernet to cut the subnet from)", EXIT_USAGE)
    if export is None and (export_dtype is not None or layers is not None):
        raise Fail("--export-dtype and --layers go with --export OUT.onnx or OUT.ts", EXIT_USAGE)
    dtype = export_dtype.value if export_dtype else None
    if output is not None and str(output) == "-":  # standard output, which has the JSON anyway (not a file '-')
        output = None
    for target, example in ((output, "subnet.json"), (export, "subnet.pt")):  # said before anything is printed
        if target is not None:
            _check_target(target, f"is a folder; give a file name such as {target / example}", replaced=target == export)
            _not_a_source(target, ("the checkpoint (-c)", checkpoint), ("the --subnet file", subnet))
            if target.is_file() and not overwrite and not (target == output and _is_subnet_json(target)):
                raise Fail(f"{target}: already exists; pass --overwrite to replace it")  # /dev/stdout, a FIFO: written
    if output is not None and export is not None:
        _not_a_source(export, ("the -o file", str(output)))
    if export is not None:  # a wrong suffix, a missing extra or --layers that cannot be read: before any work
        _export(None, None, export, layers, dtype, check_only=True)
        _check_export_layers(layers, 1 << 20)  # the range once the subnet is known
    # with --sample, --seed is the sampling's (and a random:KIND's): a random:KIND:SEED checkpoint keeps the
    # seed it names, and a checkpoint file is not told of a seed it cannot take
    random_name = parse_random(checkpoint) if checkpoint else None
    load_seed = None if sample is not None and (random_name is None or random_name[1] is not None) else seed
    ckpt = _load_checkpoint(checkpoint, load_seed, trust_checkpoint, quiet=quiet) if checkpoint else None
    if ckpt is not None and supernet is not None and supernet.value != ckpt.space.name:
        raise Fail(f"--supernet {supernet.value} does not match the checkpoint's {ckpt.space.name} space", EXIT_USAGE)
    space_names = [supernet.value] if supernet else ([ckpt.space.name] if ckpt else ["base", "small"])
    geometry = ckpt.count_kwargs if ckpt else {}  # else the released files' (the same for all three)
    if ckpt is not None and ckpt.subnet is not None and ((params, sample) != (None, None) or preset not in (None, "default")):
        # its own subnet (shown, checked against --subnet, exported as .onnx/.ts) is all an exported one holds
        raise Fail(f"{ckpt.source}: is an exported subnet and holds only its own; {chosen[0]} needs the supernet "
                   "checkpoint", EXIT_USAGE)
    results: list[tuple[dict, str]] = []
    try:
        if params is not None:
            budget = parse_budget(params)
            found = best_under_budget(budget, [SPACES[n] for n in space_names], **geometry)
            if found is None:
                low = min(count_params(SPACES[n].min_subnet, **geometry) for n in space_names)
                raise Fail(f"--params {params}: every subnet is larger; the smallest has {low:,} parameters")
            results.append((found[0], found[1].name))
        elif sample is not None:
            rng = random.Random(defaults.SEED if seed is None else seed)
            for _ in range(sample):
                name = rng.choice(space_names) if len(space_names) > 1 else space_names[0]  # one space: its own sequence
                results.append((SPACES[name].sample(rng), name))
        elif subnet is not None:
            results.append((ckpt.resolve_subnet(subnet), space_names[0]) if ckpt
                           else subnet_in_spaces(subnet, space_names))
        else:
            name = "default" if preset is None else preset  # "" is refused as unknown, not taken as the default
            for n in space_names:  # "default" of a checkpoint is its own (Stage 1: the Base max)
                results.append((ckpt.default_subnet if ckpt is not None and name == "default" else SPACES[n].preset(name), n))
    except SubnetError as e:  # named by the option that gave the value
        raise Fail(f"{chosen[0]}: {e}" if chosen else str(e), EXIT_USAGE) from None
    out = [{**sub, "supernet": name, "params": count_params(sub, **geometry)} for sub, name in results]
    if export is not None:  # said before the subnet is printed or -o written
        if len(out) != 1:
            raise Fail("--export takes one subnet", EXIT_USAGE)
        _check_export_layers(layers, out[0]["layer_num"])
    if not quiet:
        _show_subnets(out)
    text = json.dumps(out[0] if len(out) == 1 else out, indent=None)
    # the files asked for first: they must not depend on who reads stdout (| head -c 10 ends lhb there)
    if output is not None:
        from lighthubert.storage import os_reason

        try:
            _write_json(output, text + "\n")
        except OSError as e:
            raise Fail(f"{output}: cannot write: {os_reason(e)}") from None
    if export is not None:
        _export(ckpt, results[0][0], export, layers, dtype, quiet=quiet)
    out_line(text)


def _write_json(output: Path, text: str) -> None:
    """``lhb subnet -o``: a file already there stays whole until the new one is (a full disk cut it
    to invalid JSON), and keeps its permissions; /dev/stdout, a FIFO, a file of several names (hard
    links: each keeps seeing it) or a name too long for a temporary one beside it are written as they are."""
    from lighthubert.files import write_atomic
    from lighthubert.storage import resolve_link, special_kind

    if special_kind(output) or str(output).startswith(("/dev/", "/proc/")):
        output.write_text(text, encoding="utf-8")
        return
    target = resolve_link(output)
    if target.is_file() and target.stat().st_nlink > 1:
        target.write_text(text, encoding="utf-8")
        return

    try:
        write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as e:  # no temporary file beside it: a name too long, a folder only the file is writable in
        if e.errno not in (errno.ENAMETOOLONG, errno.EACCES, errno.EPERM):
            raise
        target.write_text(text, encoding="utf-8")


def _not_a_source(target: Path, *sources: tuple[str, str | None]) -> None:
    """Refuse to write over a file this command reads (the checkpoint, a --subnet file), or over the
    other file it writes, whatever --overwrite says: it would be lost."""
    from lighthubert.storage import same_file

    for what, src in sources:
        if src is not None and (target == Path(src) or same_file(target, src)):
            raise Fail(f"{target}: is {what}; give another file to write", EXIT_USAGE)


def _is_subnet_json(path: Path) -> bool:
    """Whether ``path`` holds what ``-o`` writes (a subnet, or a list of them, as JSON): rewriting it
    needs no --overwrite; any other regular file does. Never reads anything else (``-o /dev/stdout``
    would read the pipe lhb writes to)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 50_000_000:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    items = data if isinstance(data, list) else [data]
    return bool(items) and all(isinstance(d, dict) and "layer_num" in d for d in items)


def _check_export_layers(layers: str | None, num_layers: int) -> None:
    """--layers of an export, checked as lhb extract checks its own (a usage error named by the option)."""
    from lighthubert.extractor import resolve_layers

    if layers is not None:
        resolve_layers(layers, num_layers)  # a SettingError of layers: "--layers: ...", exit 2


def _export(ckpt, sub: dict | None, path: Path, layers: str | None, dtype: str | None, check_only: bool = False,
            quiet: bool = False) -> None:
    """--export: the format by suffix (lighthubert.deploy.export), or with ``check_only`` only its
    checks (suffix, options, extra); failures as one line."""
    from lighthubert.deploy import ExportError, check_export, export

    try:
        if check_only:
            check_export(path, layers, dtype)
            return
        _stop_if_signalled()
        export(ckpt, sub, path, layers=layers, dtype=dtype, overwrite=True)  # checked before any work (subnet)
    except ExportError as e:
        raise Fail(str(e)) from None
    except ValueError as e:
        raise Fail(f"{path}: {e}", EXIT_USAGE) from None
    except OSError as e:
        raise Fail(f"{path}: cannot write: {e.strerror or e}") from None
    if not quiet:
        err(f"wrote {path} ({size(path.stat().st_size)}){' from RANDOM WEIGHTS' if ckpt.random else ''}")


SUBNET_ROWS = 20  # more subnets than this (--sample) get one summary line, not a table


def _show_subnets(out: list[dict]) -> None:
    """On stderr: one subnet as a table of its layers; a few as a table of one row each; many (up to
    --sample 10000) as one line, so that drawing never costs more than choosing."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    if len(out) == 1:
        return console.print(_subnet_table(out[0]))
    if len(out) > SUBNET_ROWS:
        params = [item["params"] for item in out]
        return console.print(f"{len(out):,} subnets, {min(params):,} to {max(params):,} parameters (JSON on stdout)",
                             highlight=False)
    table = Table(title=f"{len(out)} subnets", title_justify="left")
    for col in ("#", "supernet", "params", "width", "layers", "heads", "ffn_embed"):
        table.add_column(col, justify="left" if col == "supernet" else "right")
    for i, item in enumerate(out):
        table.add_row(str(i), item["supernet"], f"{item['params']:,}", str(item["embed_dim"]), str(item["layer_num"]),
                      _span(item["heads_num"]), _span(item["ffn_embed"]))
    console.print(table)


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _subnet_table(item: dict):
    from rich.table import Table

    table = Table(title=f"{item['supernet']} subnet: {item['params']:,} parameters, width {item['embed_dim']}",
                  title_justify="left")
    for col in ("layer", "heads", "atten_dim", "ffn_embed", "ffn ratio"):
        table.add_column(col, justify="right")
    for i in range(item["layer_num"]):
        table.add_row(str(i), str(item["heads_num"][i]), str(item["atten_dim"][i]), str(item["ffn_embed"][i]),
                      f"{item['ffn_embed'][i] / item['embed_dim']:g}")
    return table


@app.command(cls=LhbCommand)
@_one_line_errors
def merge(
    output: Annotated[Path, typer.Argument(parser=_features_path, metavar="OUTPUT", help="The features file to write (kept and added to if it exists).", show_default=False)],
    parts: Annotated[Optional[list[Path]], typer.Argument(parser=_path, metavar="PARTS",
        help="Part files or folders of parts. Default: OUTPUT.parts/.", show_default=False)] = None,
    remove_parts: Annotated[bool, typer.Option("--remove-parts", help="Delete the parts once merged.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary line; errors only.")] = False,
) -> None:
    """Join into OUTPUT the parts of a multi-process run (--keep-parts) or a stopped run's work.

    The parts come from lhb extract with several processes and --keep-parts, or are the committed
    work of a stopped run (lhb extract --resume does the same and goes on).

    Example: lhb merge feats.h5 feats.h5.parts
    """
    from lighthubert.storage import merge_parts, resolve_link

    output = resolve_link(output)  # a link's target is written, not a new file in place of the link
    _check_target(output, "is a folder, not a features file")
    _stop_if_signalled()
    n, files = merge_parts(output, parts, remove=remove_parts)
    if not quiet:
        err(f"merged {count(len(files), 'part')} into {output}: {count(n, 'utterance')} ({size(output.stat().st_size)})")


@app.command(cls=LhbCommand)
@_one_line_errors
def info(
    path: Annotated[str, typer.Argument(metavar="PATH", help=(
        "A checkpoint (path, name or random:KIND), a features or units file (.h5), a k-means file (lhb units learn) "
        "or an exported subnet (.onnx, .ts)."), show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    seed: SeedOpt = None,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Describe a checkpoint, a features or units file, a k-means file, or an exported subnet (.onnx, .ts).

    Example: lhb info lighthubert_small.pt --json
    """
    from lighthubert.storage import claimed_by, hdf5_name
    from lighthubert.units import describe_units

    p = Path(path)
    if p.is_file() and (claimed_by(p) is not None or hdf5_name(p)):
        units = describe_units(p)  # None unless a units file
        if units is not None:
            return _info_units(p, units, as_json)
        return _info_features(p, as_json)  # a broken .h5 is described as one, not as a checkpoint
    if p.is_file():
        from lighthubert.deploy import file_format

        if file_format(p):
            return _info_exported(p, as_json)
    _not_for_info(p)
    from lighthubert.checkpoint import KMeansFile

    try:
        _info_checkpoint(path, as_json, seed, trust_checkpoint)
    except KMeansFile as e:  # the other .pt files lhb makes
        _info_km(p, e.km, as_json)


INFO_READS = "lhb info describes a checkpoint, a features or units file, a k-means file or an exported subnet"


def _not_for_info(p: Path) -> None:
    """Say what ``p`` is when it is plainly none of what ``lhb info`` reads (else the checkpoint
    loader says why it is not a checkpoint): a parts folder, another folder, audio, a .ts that is not
    TorchScript."""
    from lighthubert.checkpoint import RELEASED
    from lighthubert.inputs import is_audio
    from lighthubert.storage import find_committed

    if p == Path(".") or (str(p) in RELEASED and not p.is_file()):  # "" is "."; a folder `small` is no checkpoint
        return  # the checkpoint loader's: "empty string", or the released checkpoint of that name
    if p.is_dir():
        output = p.with_name(p.name.removesuffix(".parts")) if p.name.endswith(".parts") else None
        if output is not None and find_committed(output):
            raise Fail(f"{p}: holds the committed work of a run for {output}, not yet joined: the same lhb extract "
                       f"command with --resume completes {output}, or lhb merge {output} joins it; lhb info {output} "
                       "describes that file")
        raise Fail(f"{p}: is a folder; {INFO_READS} (a file)")
    if p.is_file() and is_audio(p):
        raise Fail(f"{p}: is audio; {INFO_READS} (lhb extract makes features from audio)")
    if p.is_file() and p.suffix.lower() == ".ts":
        raise Fail(f"{p}: not a TorchScript export (not the zip archive torch.jit.save writes); {INFO_READS}")


def _info_km(path: Path, km: dict, as_json: bool) -> None:
    """A k-means file from lhb units learn."""
    from lighthubert.units import describe_km

    d = describe_km(km)
    if as_json:
        out_line(json.dumps(d, default=str))
        return
    rows = [("clusters", f"{d['clusters']:,}"), ("layer", str(d["layer"])), ("width", str(d["dim"])),
            ("frames", f"{d['frames']:,}" if isinstance(d["frames"], int) else str(d["frames"])),
            ("inertia", f"{d['inertia']:.6g} per frame" if isinstance(d["inertia"], float) else str(d["inertia"])),
            ("seed", str(d["seed"])), ("features", str(d["features"])), ("format", str(d["format"]))]
    if isinstance(d.get("model"), dict):  # what made the features: units apply checks it
        rows.insert(-1, ("checkpoint", str(d["model"].get("checkpoint") or "-")))
    if d["damaged"]:
        rows.append(("DAMAGED", f"{d['damaged']} (lhb units apply refuses it)"))
    _table(f"{path} (k-means centroids from lhb units learn)", rows)


def _info_exported(path: Path, as_json: bool) -> None:
    """An exported .onnx / .ts subnet: what it computes, its inputs and outputs."""
    from lighthubert.deploy import ExportError, describe

    try:
        d = describe(path)
    except ExportError as e:
        raise Fail(str(e)) from None
    if as_json:
        out_line(json.dumps(d))
        return
    m = d["metadata"]
    sub = m.get("subnet") or {}

    def tensors(items: list[dict]) -> str:
        return "; ".join(f"{t['name']} {t['dtype']} ({', '.join(map(str, t['shape']))})" for t in items)

    rows = [("format", d["format"] + (f" (opset {d['opset']})" if d["opset"] else "")),
            ("subnet", f"{m.get('params', 0):,} params: {m.get('supernet', '?')} space, width {sub.get('embed_dim')}, "
                       f"{sub.get('layer_num')} layers" if sub else "(no lighthubert metadata)"),
            ("layers out", json.dumps(m.get("layers"))),
            ("dtype", str(m.get("dtype", "?"))),
            ("normalization", str(m.get("normalization", "?"))),
            ("inputs", tensors(d["inputs"])),
            ("outputs", tensors(d["outputs"])),
            ("source", f"{m.get('source', '?')}" + (f" sha256 {m['source_sha256']}" if m.get("source_sha256") else "")),
            ("made by", f"lighthubert {m.get('lighthubert_version', '?')}, torch {m.get('torch_version', '?')}"),
            ("file", size(d["file_size"]))]
    if sub:
        rows.insert(2, ("subnet json", json.dumps(sub)))
    _table(str(path), rows)


def _info_checkpoint(source: str, as_json: bool, seed: int | None, trust: bool) -> None:
    data = _load_checkpoint(source, seed, trust, quiet=as_json).describe()
    if as_json:
        out_line(json.dumps(data))
        return
    default, dims = data["default_subnet"], data["supernet_dims"]
    if data["num_subnets"] == 1:  # an exported subnet: its own dims, not its supernet's
        shape = ("subnet", f"{default['layer_num']} layers, {default['embed_dim']} wide, heads "
                           f"{_values(default['heads_num'])}, FFN {_values(default['ffn_embed'])}")
        space = ("supernet", f"cut from the {data['supernet']} space "
                             f"({dims['layers']} layers, {dims['embed_dim']} wide)")
    else:
        shape = ("dims", f"{dims['layers']} layers, {dims['embed_dim']} wide, {dims['heads']} heads, "
                         f"FFN {dims['ffn_embed_dim']}")
        space = ("supernet", f"{data['supernet']} ({data['num_subnets']:,} subnets)")
    rows = [
        ("kind", data["kind"]),
        space,
        shape,
        ("extractor", f"{data['extractor_mode']}, {'pre' if data['layer_norm_first'] else 'post'}-norm"),
        ("normalize", str(data["normalize"])),
        ("weights", data["weight_dtype"] if isinstance(data["weight_dtype"], str) else ", ".join(data["weight_dtype"])),
        ("default subnet", f"{data['default_subnet_params']:,} params: width {default['embed_dim']}, "
                           f"{default['layer_num']} layers, heads {sorted(set(default['heads_num']))}, "
                           f"ffn {sorted(set(default['ffn_embed']))}"),
        ("min / max", f"{data['min_params']:,} / {data['max_params']:,} params"),
        ("file", f"{size(data['file_size'])}" if data["file_size"] else "(built in memory)"),
        ("sha256", data["sha256"] or "-"),
    ]
    if data["num_subnets"] == 1:  # default / min / max are all the one subnet
        rows = [r for r in rows if r[0] not in ("default subnet", "min / max")]
        rows.insert(3, ("params", f"{data['default_subnet_params']:,}"))
    _table(f"{data['checkpoint']}", rows)


def _values(v: list[int]) -> str:
    """``8`` when every layer has the same value, else the per-layer list."""
    return str(v[0]) if len(set(v)) == 1 else "[" + ", ".join(map(str, v)) + "]"


def _info_features(path: Path, as_json: bool) -> None:
    from lighthubert.storage import backend_of, parts_dir

    backend = backend_of(path)
    d = backend.describe(path)
    waiting = backend.unjoined(path)  # the work of a run that stopped or is running, not in it yet
    d["not_yet_joined"] = [str(p) for p in waiting]
    if as_json:
        out_line(json.dumps(d, default=str))
        return
    a = d["attributes"]
    rows = [("utterances", f"{d['utterances']:,}"), ("frames", f"{d['frames']:,}"),
            ("audio", hms(d["audio_seconds"])), ("feature shape", ", ".join("(" + ", ".join([*map(str, s[:-1]), "T", str(s[-1])]) + ")"  # (L, T, D) or (T, D)
                                        for s in d["feature_dims"]) or "none (no utterances)")]
    if waiting:
        rows.insert(1, ("not yet joined", f"{count(len(waiting), 'file')} of committed work in {parts_dir(path)} (a run "
                        "stopped or is still running: the same lhb extract command with --resume completes it, "
                        f"lhb merge {path} --remove-parts joins what is there)"))
    rows += [(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v) if v != "" else "-")  # "": none (random weights)
             for k, v in a.items() if k != "skipped"]
    skipped = a.get("skipped", [])
    rows.append(("skipped", f"{len(skipped)}"))
    rows += [(f"  {s['key']}", f"{s['path']}: {s['reason']}") for s in skipped[:SHOW_SKIPPED]]
    if len(skipped) > SHOW_SKIPPED:
        rows.append(("  ...", f"and {len(skipped) - SHOW_SKIPPED:,} more (lhb info --json lists them all)"))
    _table(str(path), rows)


SHOW_SKIPPED = 20
"""Skipped inputs ``lhb info`` lists by key, path and reason (all of them with ``--json``)."""


def _info_units(path: Path, d: dict, as_json: bool) -> None:
    """A units .h5 from lhb units apply."""
    if as_json:
        out_line(json.dumps(d, default=str))
        return
    rows = [("utterances", f"{d['utterances']:,}"), ("frames", f"{d['frames']:,}"), ("units used", f"{d['units_used']:,}")]
    rows += [(k, str(v)) for k, v in d["attributes"].items()]
    if d["damaged"]:
        rows.append(("DAMAGED", d["damaged"]))
    _table(str(path), rows)


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    """On a terminal a table as wide as the terminal (long values wrap); piped, plain ``key  value``
    lines, each complete on one line (a sha256 or a path is never split)."""
    utf8 = (sys.stdout.encoding or "").lower().replace("-", "") == "utf8"
    if not sys.stdout.isatty() or not utf8:  # (a terminal that is not UTF-8: the plain lines, \xe9 escaped)
        width = max(len(k) for k, _ in rows)
        out_line("\n".join([title] + [f"  {k.ljust(width)}  {v}" for k, v in rows]))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text: names are shown as they are, never read as markup ('k[/]2' raised MarkupError, '[red]' vanished)
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # long values (sha256, JSON) wrap; never cut
    for k, v in rows:
        table.add_row(Text(k), Text(v))
    Console().print(table)


from .use import register as _register_use  # noqa: E402 - lhb convert, lhb units (use.py imports this module)

_register_use(app)


def _usage_line(e: click_errors.UsageError) -> str:
    """A usage error as the text after ``lhb: error: ``: ``--save-dtype: 'float64' is not one of
    float32, float16``; ``missing argument OUTPUT``; ``no such option --bogus``."""
    message = re.sub(r"^\w+ error, ", "", str(getattr(e, "message", "") or e.format_message())).rstrip(".")
    message = re.sub(r"^Input should be ", "must be ", message)
    message = re.sub(r"\. Did you mean '([^']*)'\?$", r" (did you mean \1?)", message)
    message = message[:1].lower() + message[1:]
    choices = re.match(r"(.*is not one of )(.*)$", message)
    if choices:  # 'a', 'b' -> a, b
        message = choices.group(1) + re.sub(r"'([^']*)'", r"\1", choices.group(2))
    if isinstance(e, click_errors.MissingParameter):
        kind = getattr(e.param, "param_type_name", "parameter")
        name = _param_name(e.param)
        return f"missing {kind} {name.upper() if kind == 'argument' else name}"
    if isinstance(e, click_errors.BadParameter) and e.param is not None:
        return f"{_param_name(e.param)}: {message}"
    if isinstance(e, click_errors.NoSuchOption) and e.possibilities:
        return f"{message} (did you mean {', '.join(sorted(e.possibilities))}?)"
    return message or "bad usage"


def _param_name(param) -> str:
    """How a parameter is written on the command line: ``--save-dtype`` for an option, its metavar
    (``OUTPUT``) or name for an argument."""
    if getattr(param, "param_type_name", "") == "option" and param.opts:
        return param.opts[0]
    return (getattr(param, "metavar", None) or getattr(param, "name", "") or "").strip("{}")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out_line(f"lhb (lighthubert) {version('lighthubert')}")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree
            from lighthubert import __version__

            out_line(f"lhb (lighthubert) {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Turn folders of speech into LightHuBERT representations (HDF5), pick subnets, describe files."""


def _on_signal(signum: int, frame) -> None:
    if in_finaliser(signum, frame):
        return
    _signals.append(signum)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _catch_signals(handler) -> dict:
    """``handler`` for SIGINT and SIGTERM, except a signal that whoever started lhb ignores (a shell
    script's ``lhb ... &`` ignores SIGINT, so that Ctrl-C stops the script, not its background work;
    Python keeps that too). Returns the handlers replaced."""
    return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(s) is not signal.SIG_IGN}


def _stdout_closed() -> int:
    """stdout's reader went away (``lhb info --json | head``): end quietly, as a process killed by
    SIGPIPE would (exit 141), without Python's complaint when it flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The library's warnings as one line, ``lhb: warning: ...``; any other as Python shows it."""
    from lighthubert.errors import LightHubertWarning

    if issubclass(category, LightHubertWarning):
        err(f"lhb: warning: {message}")
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def run(args: list[str] | None = None) -> int:
    """Run ``lhb`` and return its exit status. Every way out is one line at most: usage errors
    ``lhb: error: ...`` (2), failures (see ``_one_line_errors``), SIGINT / SIGTERM (130 / 143);
    the library's warnings are one line each, ``lhb: warning: ...``."""
    for state in (_signals, _stop_said, _stop_hint):  # what an earlier run() in this process left
        state.clear()
    warnings.showwarning = _show_warning
    try:
        # inside the try: a signal that is pending when the second handler goes in is dispatched to the
        # first one there (signal.signal checks), and its exception is the one line below, not a traceback
        _catch_signals(_on_signal)
        try:
            rc = app(args=args, prog_name="lhb", standalone_mode=False)
        except click_errors.NoArgsIsHelpError as e:  # bare `lhb` or `lhb units`: the help
            if e.format_message().strip():  # Typer without Rich returns the text (with Rich it is printed)
                print(e.format_message())
            return e.exit_code
        except click_errors.UsageError as e:
            err(f"lhb: error: {_usage_line(e)}")
            return EXIT_USAGE
        except click_errors.ClickException as e:
            err(f"lhb: error: {e.format_message()}")
            return e.exit_code
        except typer.Abort:
            return _say_stopped(False)
        if _signals and not _stop_said:  # a signal while the command line was parsed (Typer hid it)
            return _say_stopped(_signals[0] == signal.SIGTERM)
        return rc if isinstance(rc, int) else 0
    except KeyboardInterrupt as e:
        return _say_stopped(isinstance(e, Terminated))
    except BrokenPipeError:
        return _stdout_closed()
    except OSError as e:  # the help or the version on a full disk (commands' own errors are said in _one_line_errors)
        if os.environ.get("LHB_DEBUG") and e.filename != STDOUT:  # a command's own error, re-raised for its traceback
            raise  # (it was said as "standard output: cannot write: File name too long")
        from lighthubert.storage import os_reason

        err(f"lhb: error: {STDOUT}: cannot write: {os_reason(e)}")
        _stdout_closed()  # nothing more goes there (nor Python's complaint at exit)
        return EXIT_FAIL
    except SystemExit as e:
        if isinstance(e.__context__, BrokenPipeError):  # Rich's own reaction to a closed stdout
            return _stdout_closed()
        raise


def main() -> None:
    """Entry point (the console script is :func:`lighthubert_cli.entry.main`, which handles signals
    during start-up first)."""
    sys.exit(run())
