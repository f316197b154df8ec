"""``lhb``: extract LightHuBERT features to HDF5, find subnets, describe files.

Exit status: 0 success, 1 failure, 2 bad usage, 3 finished but some inputs were skipped,
130 / 143 stopped by Ctrl-C / SIGTERM (the file is valid; --resume completes it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

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


CheckpointOpt = Annotated[str, typer.Option(
    "--checkpoint", "-c", metavar="CKPT",
    help="Checkpoint: a path, a released name (base, small, stage1: downloaded once into the cache), "
         "or random:base / random:small / random:stage1 for random weights.")]
TrustOpt = Annotated[bool, typer.Option(
    "--trust-checkpoint", help="Allow the checkpoint's pickle to run code. Only for files you trust.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for random:* checkpoints and --sample.")]


def _load_checkpoint(source: str, seed: int, trust: bool, quiet: bool):
    from lighthubert.checkpoint import CheckpointError, load_checkpoint

    def progress(done: int, total: int | None) -> None:
        if not quiet and (total is None or done == total or done % (50 << 20) < (1 << 20)):
            err(f"downloading {source}: {size(done)}" + (f" of {size(total)}" if total else ""))

    try:
        return load_checkpoint(source, seed=seed, trust=trust, progress=progress)
    except CheckpointError as e:
        raise Fail(str(e)) from None


def _usage(fn, *args, what: str = ""):
    """Call a parser; its ValueError becomes a usage error (exit 2)."""
    try:
        return fn(*args)
    except ValueError as e:
        raise Fail(f"{what}{e}", EXIT_USAGE) from None


@app.command()
def extract(
    input: Annotated[Path, typer.Argument(
        help="A folder (searched recursively for audio), one audio file, or a list: .txt/.lst (paths), "
             ".tsv (fairseq manifest), .scp (key path).", show_default=False)],
    output: Annotated[Path, typer.Argument(help="The HDF5 features file to write.", show_default=False)],
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
    from lighthubert.pipeline import Options, StrictStop, extract as run_extract
    from lighthubert.space import SubnetError

    if resume and overwrite:
        raise Fail("--resume and --overwrite exclude each other", EXIT_USAGE)
    dev = _usage(resolve_device, device, what="--device: ")
    torch_dtype = _usage(resolve_dtype, dtype.value, dev, what="--dtype: ")
    try:
        items = list_inputs(input)
    except InputError as e:
        raise Fail(str(e)) from None
    try:
        out_path = check_output_path(output, resume=resume, overwrite=overwrite)
    except OutputError as e:
        raise Fail(str(e)) from None
    ckpt = _load_checkpoint(checkpoint, seed, trust_checkpoint, quiet)
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
    if not quiet:
        label = "RANDOM WEIGHTS: these features mean nothing; " if ckpt.random else ""
        err(f"{label}checkpoint {ckpt.name}, subnet {extractor.params / 1e6:.1f}M params "
            f"({n_layers} layers, width {sub['embed_dim']}), {dev} {str(torch_dtype).replace('torch.', '')}")
    try:
        writer = FeatureWriter(out_path, attrs, resume=resume, compression=compression.value)
    except OutputError as e:
        raise Fail(str(e)) from None
    options = Options(
        layers=idx, save_dtype=save_dtype.value, max_chunk_seconds=max_chunk_seconds, num_workers=num_workers,
        batch_seconds=batch_seconds or (200.0 if dev.type == "cuda" else 30.0), strict=strict,
    )
    reporter = Reporter(quiet=quiet)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame):
        if received:  # a second signal: stop now
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()
        err(f"\nstopping after the current batch ({signal.Signals(signum).name}); signal again to stop at once")

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    complete = False
    try:
        summary = run_extract(items, extractor, writer, options, reporter, stop)
        complete = not summary.interrupted
    except StrictStop as e:
        reporter.stop()
        writer.close(complete=False)
        raise Fail(f"{e} (--strict)") from None
    except OutputError as e:
        reporter.stop()
        try:
            writer.close(complete=False)
        except Exception:  # noqa: BLE001 - the disk may be full; the last flush stands
            pass
        raise Fail(str(e)) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    reporter.stop()
    writer.close(complete=complete)
    done_total = summary.done_before + summary.files
    if summary.interrupted:
        err(f"stopped: {done_total} utterances are in {out_path}; to finish, run the same command with --resume")
        raise typer.Exit(130 if received and received[0] == signal.SIGINT else 143)
    if not quiet:
        speed = summary.seconds / summary.wall if summary.wall else 0.0
        err(f"done: {summary.files} files, {hms(summary.seconds)} of audio in {hms(summary.wall)} "
            f"({speed:,.0f}x real time); {out_path} ({size(out_path.stat().st_size)}) holds {done_total} utterances"
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


@app.command("subnet")
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
    export: Annotated[Optional[Path], typer.Option("--export", metavar="OUT.pt", help="Write the subnet as a compact checkpoint (needs --checkpoint).")] = None,
    seed: SeedOpt = 0,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Choose a subnet: by parameter budget, preset, sampling or JSON; print it as JSON on stdout.

    Example: lhb subnet --params 30M -o sub30m.json
    """
    import random

    from lighthubert.checkpoint import CheckpointError, export_subnet
    from lighthubert.space import RELEASED_FIXED_PARAMS, SPACES, SubnetError, best_under_budget, count_params, parse_budget

    chosen = [name for name, v in (("--params", params), ("--preset", preset), ("--sample", sample), ("--subnet", subnet)) if v is not None]
    if len(chosen) > 1:
        raise Fail(f"give one of --params, --preset, --sample, --subnet (got {', '.join(chosen)})", EXIT_USAGE)
    if export is not None and checkpoint is None:
        raise Fail("--export needs --checkpoint (the supernet to cut the subnet from)", EXIT_USAGE)
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
    out = [{**sub, "supernet": name, "params": count_params_of(sub, fixed)} for sub, name in results]
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
        try:
            export_subnet(ckpt, results[0][0], export)
        except (CheckpointError, OSError) as e:
            raise Fail(f"{export}: {e}") from None
        err(f"wrote {export} ({size(export.stat().st_size)})")


def count_params_of(sub: dict, fixed: int) -> int:
    from lighthubert.space import count_params

    return count_params(sub, fixed)


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
def info(
    path: Annotated[str, typer.Argument(help="A checkpoint (path, name or random:KIND) or a features file (.h5).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    seed: SeedOpt = 0,
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Describe a checkpoint or a features file.

    Example: lhb info lighthubert_small.pt --json
    """
    from lighthubert.checkpoint import HDF5_MAGIC

    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            is_h5 = f.read(8) == HDF5_MAGIC
        if is_h5:
            return _info_features(p, as_json)
    _info_checkpoint(path, as_json, seed, trust_checkpoint)


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
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def main() -> None:
    """Entry point: clear one-line errors instead of tracebacks."""
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except Fail as e:
        err(f"lhb: error: {e}")
        sys.exit(e.code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err("lhb: interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001
        import click

        if isinstance(e, click.exceptions.UsageError):
            e.show()
            sys.exit(EXIT_USAGE)
        if isinstance(e, click.exceptions.Abort):
            err("lhb: aborted")
            sys.exit(130)
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("LHB_DEBUG"):
            raise
        err(f"lhb: internal error: {type(e).__name__}: {e} (set LHB_DEBUG=1 for the traceback)")
        sys.exit(EXIT_FAIL)


if __name__ == "__main__":
    main()
