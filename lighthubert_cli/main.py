"""``lhb``: extract LightHuBERT features to HDF5, find subnets, describe files.

Exit status: 0 success, 1 failure, 2 bad usage, 3 finished but some inputs were skipped,
130 / 143 stopped by Ctrl-C / SIGTERM (the file is valid; --resume completes it).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from lighthubert.inputs import display_path

from .progress import Reporter, err, hms, size

app = typer.Typer(
    name="lhb",
    help="Turn folders of speech into LightHuBERT representations (HDF5), pick subnets, describe files.",
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


class SaveDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Compression(str, Enum):
    none = "none"
    gzip = "gzip"
    lzf = "lzf"


class Supernet(str, Enum):
    base = "base"
    small = "small"


class Terminated(KeyboardInterrupt):
    """A second signal after a SIGTERM: stop at once, exit 143 (a second SIGINT exits 130)."""


def _one_line_errors(command):
    """Failures become one line on stderr and an exit status, never a traceback (unless LHB_DEBUG)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Fail as e:
            err(f"lhb: error: {e}")
            raise typer.Exit(e.code) from None
        except Terminated:
            err("lhb: terminated")
            raise typer.Exit(143) from None
        except KeyboardInterrupt:
            err("lhb: interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # noqa: BLE001
            if os.environ.get("LHB_DEBUG"):
                raise
            err(f"lhb: internal error: {type(e).__name__}: {e} (set LHB_DEBUG=1 for the traceback)")
            raise typer.Exit(EXIT_FAIL) from None

    return run


CheckpointOpt = Annotated[str, typer.Option(
    "--checkpoint", "-c", metavar="CKPT",
    help="Checkpoint: a path, a released name (base, small, stage1: downloaded once into the cache), "
         "or random:base / random:small / random:stage1 for random weights.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-checkpoint", help="Allow the checkpoint's pickle to run code. Only for files you trust.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for random:* checkpoints and --sample.")]


def _load_checkpoint(source: str, seed: int, trust: bool, quiet: bool):
    from lighthubert.checkpoint import RELEASED, CheckpointError, load_checkpoint

    if source in RELEASED:  # the hub client's retry warnings would break the one-line errors
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    try:
        return load_checkpoint(source, seed=seed, trust=trust, progress=not quiet)
    except CheckpointError as e:
        raise Fail(str(e)) from None


def _usage(fn, *args, what: str = ""):
    """Call a parser; its ValueError becomes a usage error (exit 2)."""
    try:
        return fn(*args)
    except ValueError as e:
        raise Fail(f"{what}{e}", EXIT_USAGE) from None


@app.command()
@_one_line_errors
def extract(
    input: Annotated[Path, typer.Argument(
        metavar="INPUT", help="A folder (searched recursively for audio), one audio file, or a list: .txt/.lst (paths), "
             ".tsv (fairseq manifest), .scp (key path).", show_default=False)],
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="The HDF5 features file to write.", show_default=False)],
    checkpoint: CheckpointOpt = "small",
    subnet: Annotated[Optional[str], typer.Option(
        "--subnet", "-s", metavar="SPEC",
        help="Subnet: a preset (default, max, min), a JSON file, or inline JSON. Default: the checkpoint's.")] = None,
    layers: Annotated[str, typer.Option(
        "--layers", "-l", help="last, all, or comma-separated hidden-state indices (0 = projected conv features).")] = "last",
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")] = "auto",
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Compute dtype; auto: float16 on CUDA, float32 on CPU.")] = Dtype.auto,
    save_dtype: Annotated[SaveDtype, typer.Option("--save-dtype", help="Dtype of the stored features.")] = SaveDtype.float32,
    batch_seconds: Annotated[Optional[float], typer.Option(
        "--batch-seconds", min=1.0, help="Padded audio per batch. Default: 200 on CUDA, 30 on CPU.")] = None,
    max_chunk_seconds: Annotated[float, typer.Option(
        "--max-chunk-seconds", min=0.0,
        help="Files longer than this are cut into chunks of this length whose features are concatenated "
             "(no context across chunk borders). 0: never cut.")] = 120.0,
    num_workers: Annotated[int, typer.Option("--num-workers", "-j", min=1, help="Decoding threads (overlap compute).")] = 2,
    resume: Annotated[bool, typer.Option("--resume", help="Keep what OUTPUT holds and do the rest.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first bad input (exit 1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary; errors only.")] = False,
    keep_parts: Annotated[bool, typer.Option(
        "--keep-parts", help="With several processes: keep each rank's part in OUTPUT.parts/ instead of merging (join later with lhb merge).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print where the time went and the GPU memory peak.")] = False,
    compression: Annotated[Compression, typer.Option("--compression", help="HDF5 compression of the features.")] = Compression.none,
    seed: SeedOpt = 0,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Extract features of every audio file in INPUT into OUTPUT (HDF5).

    Example: lhb extract wavs/ feats.h5 -c small --layers all
    """
    import lighthubert
    from lighthubert.extractor import Extractor, resolve_device, resolve_dtype, resolve_layers
    from lighthubert.features import FeatureWriter, OutputError, check_output_path, run_attrs
    from lighthubert.inputs import InputError, list_inputs
    from lighthubert.distributed import detect_world, parts_dir
    from lighthubert.pipeline import Options
    from lighthubert.space import SubnetError

    if resume and overwrite:
        raise Fail("--resume and --overwrite exclude each other", EXIT_USAGE)
    world = detect_world()
    if world.distributed and device == "auto" and torch_cuda_available():
        device = f"cuda:{world.local_rank}"
    dev = _usage(resolve_device, device, what="--device: ")
    torch_dtype = _usage(resolve_dtype, dtype.value, dev, what="--dtype: ")
    try:
        items = list_inputs(input)
    except InputError as e:
        raise Fail(str(e)) from None
    try:
        out_path = check_output_path(output, resume=resume, overwrite=overwrite)
        if not world.distributed and any(parts_dir(out_path).glob("part-*.h5")):
            raise OutputError(f"{parts_dir(out_path)}: parts of a run with several processes are there; "
                              f"join them with: lhb merge {out_path} {parts_dir(out_path)}")
    except OutputError as e:
        raise Fail(str(e)) from None
    quiet_here = quiet or world.rank != 0
    ckpt = _load_checkpoint(checkpoint, seed, trust_checkpoint, quiet_here)
    try:
        sub = ckpt.resolve_subnet(subnet)
    except SubnetError as e:
        raise Fail(f"--subnet: {e}", EXIT_USAGE) from None
    n_layers = sub["layer_num"]
    idx = _usage(resolve_layers, layers, n_layers, what="--layers: ")
    final = ckpt.cfg.layer_norm_first and layers == "last"
    extractor = Extractor(ckpt, sub, dev, torch_dtype)
    attrs = run_attrs(
        layers=[-1] if final else idx, subnet=sub, checkpoint=ckpt.name, checkpoint_sha256=ckpt.sha256,
        normalize=ckpt.normalize, random_weights=ckpt.random, params=extractor.params, dtype=save_dtype.value,
        version=lighthubert.__version__, max_chunk_seconds=max_chunk_seconds, num_layers=n_layers,
        embed_dim=sub["embed_dim"],
    )
    if not quiet_here:
        label = "RANDOM WEIGHTS: these features mean nothing; " if ckpt.random else ""
        ranks = f"; {world.size} processes ({world.launcher})" if world.distributed else ""
        err(f"{label}checkpoint {ckpt.name}, subnet {extractor.params / 1e6:.1f}M params "
            f"({n_layers} layers, width {sub['embed_dim']}), {dev} {str(torch_dtype).replace('torch.', '')}{ranks}")
    options = Options(
        layers=idx, save_dtype=save_dtype.value, max_chunk_seconds=max_chunk_seconds, num_workers=num_workers,
        batch_seconds=batch_seconds or (200.0 if dev.type == "cuda" else 30.0), strict=strict,
    )
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame):
        if received:  # a second signal: stop now, with the status of the first one
            raise Terminated if received[0] == signal.SIGTERM else KeyboardInterrupt
        received.append(signum)
        stop.set()
        err(f"\nstopping after the current batch ({signal.Signals(signum).name}); signal again to stop at once")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if world.distributed:
            summary, target = _run_ranks(world, items, extractor, attrs, options, out_path, resume, overwrite,
                                         keep_parts, compression.value, quiet, stop)
        else:
            try:
                writer = FeatureWriter(out_path, attrs, resume=resume, compression=compression.value)
            except OutputError as e:
                raise Fail(str(e)) from None
            summary = _run_one(items, extractor, writer, options, Reporter(quiet=quiet), stop)
            target = out_path
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if summary.interrupted:
        if world.rank == 0:
            where = target if target == out_path else parts_dir(out_path)
            err(f"stopped: what is done is kept in {where}; to finish, run the same command with --resume")
        raise typer.Exit(130 if received and received[0] == signal.SIGINT else 143)
    if not quiet and world.rank == 0:
        speed = summary.seconds / summary.wall if summary.wall else 0.0
        err(f"done: {summary.files} files, {hms(summary.seconds)} of audio in {hms(summary.wall)} "
            f"({speed:,.0f}x real time); {target} ({size(_size_of(target))}) holds {summary.done_before + summary.files} utterances"
            + (f"; skipped {len(summary.skipped)}" if summary.skipped else ""))
    if verbose and not quiet:
        t = summary.timings
        peak = ""
        if dev.type == "cuda":
            import torch

            peak = f"; GPU memory peak {size(torch.cuda.max_memory_allocated(dev))}"
        err(f"time: waiting for decoding {t['decode_wait']:.2f} s, compute (incl. transfers) {t['compute']:.2f} s, "
            f"waiting for the writer {t['write_wait']:.2f} s, total {summary.wall:.2f} s{peak}")
    if summary.skipped:
        raise typer.Exit(EXIT_SKIPPED)


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _size_of(path: Path) -> int:
    """Bytes of a features file, or of the parts in a parts folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.glob("*.h5"))
    return path.stat().st_size if path.exists() else 0


def _run_one(items, extractor, writer, options, reporter, stop):
    """One process's extraction into ``writer``; failures become ``Fail`` after closing the file."""
    from lighthubert.audio import ResamplerUnavailable
    from lighthubert.features import OutputError
    from lighthubert.pipeline import StrictStop, extract as run_extract

    try:
        summary = run_extract(items, extractor, writer, options, reporter, stop)
    except (StrictStop, OutputError, ResamplerUnavailable) as e:
        reporter.stop()
        if writer.broken:
            # HDF5 failed mid-write: closing could write more. Leave the file as of its last flush
            # and skip the library's finalisers.
            err(f"lhb: error: {e}")
            os._exit(EXIT_FAIL)
        writer.close(complete=False)
        raise Fail(f"{e} (--strict)" if isinstance(e, StrictStop) else str(e)) from None
    reporter.stop()
    writer.close(complete=not summary.interrupted)
    return summary


class _RankReporter:
    """Pushes this rank's progress into the group's store; on rank 0 also shows the whole job.
    After each batch it checks whether another rank failed, and stops this one if so."""

    def __init__(self, group, shown: Reporter | None, stop: threading.Event):
        self.group, self.shown, self.stop_event = group, shown, stop
        self.total_files = 0

    def start(self, files: int, seconds: float, done_before: int) -> None:
        if self.shown is not None:
            self.shown.start(self.total_files, self.total_seconds, self.done_before)

    def advance(self, files: int, seconds: float) -> None:
        self.group.add("files", files)
        self.group.add("ms", int(seconds * 1000))
        self.tick()
        if self.group.add("failed", 0) > 0:
            self.stop_event.set()

    def tick(self) -> None:
        if self.shown is not None:
            files, seconds = self.group.add("files", 0), self.group.add("ms", 0) / 1000
            self.shown.advance(files - self.shown.files, seconds - self.shown.seconds)

    def skipped(self, item, reason: str) -> None:
        err(f"skipped {display_path(item.path)}: {reason}")

    def stop(self) -> None:
        """The display stops once every rank has finished (see _run_ranks)."""


def _run_ranks(world, items, extractor, attrs, options, out_path, resume, overwrite, keep_parts, compression,
               quiet, stop):
    """This rank's share of a job with several processes; rank 0 plans, waits for all, merges."""
    from concurrent.futures import ThreadPoolExecutor

    from lighthubert.distributed import Group, balance, done_keys, merge, part_path, parts_dir, remove_parts, wait_for
    from lighthubert.features import FeatureWriter, OutputError
    from lighthubert.pipeline import Summary, estimate_samples

    group = Group(world, out_path)
    try:
        plan: dict = {}
        if world.rank == 0:
            try:
                if overwrite:
                    remove_parts(out_path)
                elif any(parts_dir(out_path).glob("part-*.h5")) and not resume:
                    raise OutputError(f"{parts_dir(out_path)}: parts of an interrupted run are there; "
                                      "pass --resume to complete them or --overwrite to start again")
                done = done_keys(out_path, resume)
                todo = [i for i, it in enumerate(items) if it.key not in done]
                with ThreadPoolExecutor(max_workers=max(2, options.num_workers)) as pool:
                    sizes = list(zip(todo, pool.map(lambda i: estimate_samples(items[i]), todo)))
                plan = {"shares": balance(sizes, world.size), "done": len(done),
                        "seconds": sum(n for _, n in sizes) / 16000}
                parts_dir(out_path).mkdir(parents=True, exist_ok=True)
            except OutputError as e:
                plan = {"error": str(e)}
        plan = group.broadcast(plan)
        if "error" in plan:
            raise Fail(plan["error"])
        mine = [items[i] for i in plan["shares"][world.rank]]
        shown = Reporter(quiet=quiet) if world.rank == 0 else None
        reporter = _RankReporter(group, shown, stop)
        reporter.total_files = sum(len(s) for s in plan["shares"])
        reporter.total_seconds, reporter.done_before = plan["seconds"], plan["done"]
        status = {"rank": world.rank, "error": None, "interrupted": False, "skipped": 0, "files": 0, "seconds": 0.0}
        summary = Summary()
        try:
            writer = FeatureWriter(part_path(out_path, world.rank), attrs, resume=True, compression=compression)
            summary = _run_one(mine, extractor, writer, options, reporter, stop)
            status.update(interrupted=summary.interrupted, skipped=len(summary.skipped), files=summary.files,
                          seconds=summary.seconds)
        except (Fail, OutputError) as e:
            status["error"] = str(e)
            group.add("failed", 1)
        group.add("finished", 1)
        if stop.is_set() and not status["error"]:
            # Stopped (signal, or another rank failed): the part is closed and valid. Do not wait for
            # ranks that may be gone; --resume completes the job.
            if shown is not None:
                shown.stop()
            if group.add("failed", 0) and world.rank == 0:
                raise Fail(f"another rank failed; the finished work is kept in {parts_dir(out_path)}; "
                           "run the same command with --resume to complete it")
            summary.interrupted = True
            return summary, parts_dir(out_path)
        if world.rank == 0:
            wait_for(group, "finished", world.size, on_tick=reporter.tick, stop=stop)
            reporter.tick()
            if stop.is_set():
                shown.stop()
                summary.interrupted = True
                return summary, parts_dir(out_path)
        statuses = group.gather(status)
        if shown is not None:
            shown.stop()
        failed = [s for s in statuses if s["error"]]
        if status["error"]:
            raise Fail(f"rank {world.rank}: {status['error']}")
        if failed:
            if world.rank == 0:
                raise Fail(f"rank {failed[0]['rank']} failed ({failed[0]['error']}); the finished work is kept in "
                           f"{parts_dir(out_path)}; run the same command with --resume to complete it")
            raise typer.Exit(EXIT_FAIL)
        whole = Summary(files=sum(s["files"] for s in statuses), seconds=sum(s["seconds"] for s in statuses),
                        interrupted=any(s["interrupted"] for s in statuses), done_before=plan["done"],
                        wall=summary.wall, timings=summary.timings)
        whole.skipped = [(None, "")] * sum(s["skipped"] for s in statuses) if world.rank == 0 else summary.skipped
        if whole.interrupted or world.rank != 0:
            return whole, parts_dir(out_path)
        if keep_parts:
            return whole, parts_dir(out_path)
        parts = sorted(parts_dir(out_path).glob("part-*.h5"))
        try:
            merge(out_path, parts, include_output=resume, complete=True)
        except OutputError as e:
            raise Fail(f"merging the parts failed: {e}; they are kept in {parts_dir(out_path)}") from None
        remove_parts(out_path)
        return whole, out_path
    finally:
        group.close()


@app.command("subnet")
@_one_line_errors
def subnet_cmd(
    params: Annotated[Optional[str], typer.Option(
        "--params", "-p", help="Parameter budget (30M, 30m, 3e7, 30000000): the largest subnet not above it.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="default, max or min.")] = None,
    sample: Annotated[Optional[int], typer.Option("--sample", min=1, help="Sample N random subnets (with --seed).")] = None,
    subnet: Annotated[Optional[str], typer.Option("--subnet", "-s", metavar="SPEC", help="A JSON file or inline JSON to check and show.")] = None,
    supernet: Annotated[Optional[Supernet], typer.Option("--supernet", help="Search space (default: both, or the checkpoint's).")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(
        "--checkpoint", "-c", metavar="CKPT", help="A checkpoint: its space, its parameter count, and the source for --export.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the JSON to this file.")] = None,
    export: Annotated[Optional[Path], typer.Option("--export", metavar="OUT", help=(
        "Write the subnet (needs --checkpoint): OUT.pt a compact checkpoint for this package; OUT.onnx (ONNX, "
        "needs the onnx extra) or OUT.ts (TorchScript), waveforms to hidden states, runnable without it."))] = None,
    export_dtype: Annotated[Optional[SaveDtype], typer.Option(
        "--export-dtype", help="Weights and compute of an .onnx/.ts export: float32 (default) or float16 (for GPUs).")] = None,
    layers: Annotated[Optional[str], typer.Option(
        "--layers", "-l", help="Hidden states an .onnx/.ts export outputs: last (default), all, or indices like 0,4,12.")] = None,
    seed: SeedOpt = 0,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Choose a subnet: by parameter budget, preset, sampling or JSON; print it as JSON on stdout.

    Example: lhb subnet --params 30M -o sub30m.json
    """
    import random

    from lighthubert.space import RELEASED_FIXED_PARAMS, SPACES, SubnetError, best_under_budget, count_params, parse_budget

    chosen = [name for name, v in (("--params", params), ("--preset", preset), ("--sample", sample), ("--subnet", subnet)) if v is not None]
    if len(chosen) > 1:
        raise Fail(f"give one of --params, --preset, --sample, --subnet (got {', '.join(chosen)})", EXIT_USAGE)
    if export is not None and checkpoint is None:
        raise Fail("--export needs --checkpoint (the supernet to cut the subnet from)", EXIT_USAGE)
    if export is None and (export_dtype is not None or layers is not None):
        raise Fail("--export-dtype and --layers go with --export OUT.onnx or OUT.ts", EXIT_USAGE)
    dtype = export_dtype.value if export_dtype else None
    if export is not None:  # a wrong suffix or a missing extra is said before any work
        _export(None, None, export, layers, dtype, check_only=True)
    ckpt = _load_checkpoint(checkpoint, seed, trust_checkpoint, quiet=False) if checkpoint else None
    if ckpt is not None and supernet is not None and supernet.value != ckpt.space.name:
        raise Fail(f"--supernet {supernet.value} does not match the checkpoint's {ckpt.space.name} space", EXIT_USAGE)
    space_names = [supernet.value] if supernet else ([ckpt.space.name] if ckpt else ["base", "small"])
    fixed = ckpt.fixed_params if ckpt else RELEASED_FIXED_PARAMS
    if ckpt is not None and ckpt.subnet is not None:
        raise Fail(f"{ckpt.source}: is an exported subnet; give the supernet checkpoint", EXIT_USAGE)
    results: list[tuple[dict, str]] = []
    try:
        if params is not None:
            budget = parse_budget(params)
            found = best_under_budget(budget, [SPACES[n] for n in space_names], fixed)
            if found is None:
                low = min(count_params(SPACES[n].min_subnet, fixed) for n in space_names)
                raise Fail(f"--params {params}: every subnet is larger; the smallest has {low:,} parameters")
            results.append((found[0], found[1].name))
        elif sample is not None:
            rng = random.Random(seed)
            for _ in range(sample):
                name = rng.choice(space_names)
                results.append((SPACES[name].sample(rng), name))
        elif subnet is not None:
            name = space_names[0]
            sub = ckpt.resolve_subnet(subnet) if ckpt else _subnet_any(subnet, space_names)
            if isinstance(sub, tuple):
                sub, name = sub
            results.append((sub, name))
        else:
            name = preset or "default"
            for n in space_names:
                results.append((SPACES[n].preset(name) if ckpt is None or ckpt.kind != "student_hubert" or preset
                                else ckpt.default_subnet, n))
    except SubnetError as e:
        raise Fail(str(e), EXIT_USAGE) from None
    out = [{**sub, "supernet": name, "params": count_params(sub, fixed)} for sub, name in results]
    for item in out:
        _subnet_table(item)
    text = json.dumps(out[0] if len(out) == 1 else out, indent=None)
    print(text)
    if output is not None:
        try:
            output.write_text(text + "\n", encoding="utf-8")
        except OSError as e:
            raise Fail(f"{output}: cannot write: {e.strerror}") from None
    if export is not None:
        if len(out) != 1:
            raise Fail("--export takes one subnet", EXIT_USAGE)
        _export(ckpt, results[0][0], export, layers, dtype)


def _export(ckpt, sub: dict | None, path: Path, layers: str | None, dtype: str | None, check_only: bool = False) -> None:
    """--export: the format by suffix (lighthubert.deploy.export), or with ``check_only`` only its
    checks (suffix, options, extra); failures as one line."""
    from lighthubert.deploy import ExportError, check_export, export

    try:
        if check_only:
            check_export(path, layers, dtype)
            return
        export(ckpt, sub, path, layers=layers, dtype=dtype)
    except ExportError as e:
        raise Fail(str(e)) from None
    except ValueError as e:
        raise Fail(f"{path}: {e}", EXIT_USAGE) from None
    except OSError as e:
        raise Fail(f"{path}: cannot write: {e.strerror or e}") from None
    err(f"wrote {path} ({size(path.stat().st_size)})")


def _subnet_any(spec: str, space_names: list[str]):
    """A subnet from JSON/file, validated against the first space that accepts it."""
    from lighthubert.checkpoint import _subnet_from_text
    from lighthubert.space import SPACES, SubnetError

    errors = []
    for n in space_names:
        try:
            return _subnet_from_text(spec, SPACES[n]), n
        except SubnetError as e:
            errors.append(str(e))
    raise SubnetError(errors[0] if len(errors) == 1 else "; ".join(f"{n}: {e}" for n, e in zip(space_names, errors)))


def _subnet_table(item: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{item['supernet']} subnet: {item['params']:,} parameters, width {item['embed_dim']}",
                  title_justify="left")
    for col in ("layer", "heads", "atten_dim", "ffn_embed", "ffn ratio"):
        table.add_column(col, justify="right")
    for i in range(item["layer_num"]):
        table.add_row(str(i), str(item["heads_num"][i]), str(item["atten_dim"][i]), str(item["ffn_embed"][i]),
                      f"{item['ffn_embed'][i] / item['embed_dim']:g}")
    Console(stderr=True).print(table)


@app.command()
@_one_line_errors
def merge(
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="The features file to write (kept and added to if it exists).", show_default=False)],
    parts: Annotated[Optional[list[Path]], typer.Argument(metavar="PARTS",
        help="Part files or folders of parts. Default: OUTPUT.parts/.", show_default=False)] = None,
    remove_parts: Annotated[bool, typer.Option("--remove-parts", help="Delete the parts once merged.")] = False,
) -> None:
    """Join the parts of a run with several processes (lhb extract --keep-parts) into OUTPUT.

    Example: lhb merge feats.h5 feats.h5.parts
    """
    import shutil

    from lighthubert.distributed import merge as merge_files, parts_dir
    from lighthubert.features import OutputError

    sources = parts or [parts_dir(output)]
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(src.glob("part-*.h5")) or sorted(src.glob("*.h5"))
        elif src.is_file():
            files.append(src)
        else:
            raise Fail(f"{src}: no such file or folder")
    if not files:
        raise Fail(f"no parts found in {', '.join(map(str, sources))}")
    try:
        n = merge_files(output, files, include_output=True)
    except OutputError as e:
        raise Fail(str(e)) from None
    err(f"merged {len(files)} parts into {output}: {n} utterances ({size(output.stat().st_size)})")
    if remove_parts:
        for src in sources:
            shutil.rmtree(src) if src.is_dir() else src.unlink()


@app.command()
@_one_line_errors
def info(
    path: Annotated[str, typer.Argument(metavar="PATH", help=(
        "A checkpoint (path, name or random:KIND), a features file (.h5) or an exported subnet (.onnx, .ts)."), show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    seed: SeedOpt = 0,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Describe a checkpoint, a features file or an exported subnet (.onnx, .ts).

    Example: lhb info lighthubert_small.pt --json
    """
    from lighthubert.checkpoint import HDF5_MAGIC

    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            is_h5 = f.read(8) == HDF5_MAGIC
        if is_h5:
            return _info_features(p, as_json)
        from lighthubert.deploy import file_format

        if file_format(p):
            return _info_exported(p, as_json)
    _info_checkpoint(path, as_json, seed, trust_checkpoint)


def _info_exported(path: Path, as_json: bool) -> None:
    """An exported .onnx / .ts subnet: what it computes, its inputs and outputs."""
    from lighthubert.deploy import ExportError, describe

    try:
        d = describe(path)
    except ExportError as e:
        raise Fail(str(e)) from None
    if as_json:
        print(json.dumps(d))
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


def _info_checkpoint(source: str, as_json: bool, seed: int, trust: bool) -> None:
    from lighthubert.checkpoint import kind_label

    ckpt = _load_checkpoint(source, seed, trust, quiet=as_json)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in ckpt.state.values() if hasattr(t, "dtype")})
    default = ckpt.default_subnet
    data = {
        "checkpoint": ckpt.name,
        "kind": kind_label(ckpt),
        "model_name": ckpt.kind,
        "random_weights": ckpt.random,
        "supernet": ckpt.space.name,
        "supernet_dims": {"layers": ckpt.cfg.encoder_layers, "embed_dim": ckpt.cfg.embed_dim,
                          "ffn_embed_dim": ckpt.cfg.ffn_dim, "heads": ckpt.cfg.heads},
        "extractor_mode": ckpt.cfg.extractor_mode,
        "layer_norm_first": ckpt.cfg.layer_norm_first,
        "normalize": ckpt.normalize,
        "sample_rate": ckpt.sample_rate,
        "weight_dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "default_subnet": default,
        "default_subnet_params": ckpt.params(default),
        "min_params": ckpt.params(default) if ckpt.subnet else ckpt.params(ckpt.space.min_subnet),
        "max_params": ckpt.params(default) if ckpt.subnet else ckpt.params(ckpt.space.max_subnet),
        "num_subnets": 1 if ckpt.subnet else ckpt.space.num_subnets,
        "file_size": ckpt.path.stat().st_size if ckpt.path else None,
        "sha256": ckpt.sha256,
    }
    if ckpt.subnet is not None:
        data["source"] = ckpt.meta.get("source")
    if as_json:
        print(json.dumps(data))
        return
    _table(f"{data['checkpoint']}", [
        ("kind", data["kind"]),
        ("supernet", f"{data['supernet']} ({data['num_subnets']:,} subnets)"),
        ("dims", "12 layers, 768 wide, 12 heads, FFN 3072"),
        ("extractor", f"{data['extractor_mode']}, {'pre' if data['layer_norm_first'] else 'post'}-norm"),
        ("normalize", str(data["normalize"])),
        ("weights", str(data["weight_dtype"])),
        ("default subnet", f"{data['default_subnet_params']:,} params: width {default['embed_dim']}, "
                           f"{default['layer_num']} layers, heads {sorted(set(default['heads_num']))}, "
                           f"ffn {sorted(set(default['ffn_embed']))}"),
        ("min / max", f"{data['min_params']:,} / {data['max_params']:,} params"),
        ("file", f"{size(data['file_size'])}" if data["file_size"] else "(built in memory)"),
        ("sha256", data["sha256"] or "-"),
    ])


def _info_features(path: Path, as_json: bool) -> None:
    from lighthubert.features import OutputError, describe

    try:
        d = describe(path)
    except (OutputError, OSError) as e:
        raise Fail(f"{path}: {e}") from None
    if as_json:
        print(json.dumps(d, default=str))
        return
    a = d["attributes"]
    rows = [("utterances", f"{d['utterances']:,}"), ("frames", f"{d['frames']:,}"),
            ("audio", hms(d["audio_seconds"])), ("feature shape", ", ".join(str(s) for s in d["feature_dims"]))]
    rows += [(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in a.items() if k != "skipped"]
    rows.append(("skipped", f"{len(a.get('skipped', []))}"))
    _table(str(path), rows)


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # long values (sha256, JSON) wrap; never cut
    for k, v in rows:
        table.add_row(k, v)
    # piped: wide enough that no value (a sha256, a path) is split across lines
    Console(width=None if sys.stdout.isatty() else 200).print(table)


from .use import register as _register_use  # noqa: E402 - lhb convert, lhb units (use.py imports this module)

_register_use(app)


def main() -> None:
    """Entry point. Typer reports usage errors (exit 2); the commands report their own failures in
    one line (see ``_one_line_errors``)."""
    app()


if __name__ == "__main__":
    main()
