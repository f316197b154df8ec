"""``lhb convert`` and ``lhb units learn|apply``: hand a features file to other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lighthubert.defaults import BATCH_SIZE, CLUSTERS, CONVERT_FORMAT, CONVERT_FORMATS, DEVICE, ITERATIONS, KMEANS_SEED, MAX_FRAMES, NSHARD, SPLIT

from .main import EXIT_USAGE, DeviceOpt, Fail, LhbCommand, LhbGroup, _check_target, _choices, _not_stdout, _one_line_errors, _path, _stop_if_signalled
from .progress import err

units_app = typer.Typer(
    name="units", cls=LhbGroup, help="Discrete units: learn k-means centroids on one layer, turn features into unit sequences.",
    no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
)


Format = _choices("Format", CONVERT_FORMATS)


FeaturesArg = Annotated[Path, typer.Argument(parser=_path, metavar="FEATURES", help="A features file made by lhb extract.",
                                             show_default=False)]
LayerOpt = Annotated[Optional[int], typer.Option(
    "--layer", "-l", help="Hidden-state index (0 = projected conv features); must be in the file. "
                          "Default: the file's layer, when it holds one.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress messages.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace files that exist (without it, an existing one is an error).")]


def _every(what: str, quiet: bool):
    """A progress callback printing about ten lines on stderr."""
    def progress(done: int, total: int) -> None:
        if not quiet and (done == total or done % max(1, total // 10) == 0):
            err(f"{what}: {done}/{total}")
    return progress


def _not_an_input(target: Path, *inputs: Path) -> None:
    """Refuse a file to write that is one of the files read (the same file, also through a link):
    it would be replaced by what is made from it."""
    from lighthubert.storage import same_file

    for src in inputs:
        if same_file(target, src):
            raise Fail(f"{target}: is the input {src} itself; give another file to write")


def _library_errors(fn, *args, **kwargs):
    """Run a library function; its plain ValueErrors are usage errors, an OSError one line (the
    library's own errors are said by ``_one_line_errors``)."""
    from lighthubert.errors import LightHubertError

    _stop_if_signalled()
    try:
        return fn(*args, **kwargs)
    except LightHubertError:
        raise  # one line already, a SettingError named by its option
    except ValueError as e:
        raise Fail(str(e), EXIT_USAGE) from None
    except BrokenPipeError:
        raise  # `lhb units apply ... - | head`: stdout's reader left; lhb ends quietly (141)
    except OSError as e:  # no file name: the reason alone (before: ': No space left on device')
        raise Fail(f"{e.filename}: {e.strerror or e}" if e.filename else str(e.strerror or e)) from None


@_one_line_errors
def convert(
    features: FeaturesArg,
    output: Annotated[Path, typer.Argument(parser=_not_stdout("the files of a folder", "a folder name such as km_feats"),
                                           metavar="OUTPUT", help="The folder to write (created).", show_default=False)],
    layer: LayerOpt = None,
    fmt: Annotated[Format, typer.Option(
        "--format", "-f", help="fairseq: SPLIT_RANK_NSHARD.npy/.len/.keys (simple_kmeans layout); npy: one KEY.npy "
                               "per utterance; kaldi: SPLIT.ark + SPLIT.scp.")] = Format(CONVERT_FORMAT),
    split: Annotated[str, typer.Option("--split", help="Name of the split in the file names (fairseq, kaldi).")] = SPLIT,
    nshard: Annotated[int, typer.Option("--nshard", min=1, help="fairseq: number of shards (contiguous ranges of keys).")] = NSHARD,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write one layer of a features file as float32 files other tools read.

    Example: lhb convert feats.h5 km_feats --layer 6 --format fairseq   (then fairseq's learn_kmeans.py km_feats train 1 ...)
    """
    from lighthubert.convert import convert as run

    files = _library_errors(run, features, output, fmt.value, layer, split=split, nshard=nshard, overwrite=overwrite,
                            progress=_every("converted", quiet))
    if not quiet:
        from lighthubert.reader import open_features

        with open_features(features) as f:
            n = len(f)
        err(f"wrote {len(files)} files to {output}: {n:,} utterances"
            + ("" if n else f" ({features} holds none, so the files are empty)"))


@units_app.command("learn", cls=LhbCommand)
@_one_line_errors
def learn(
    features: FeaturesArg,
    km_path: Annotated[Path, typer.Argument(parser=_not_stdout("a k-means file", "a file name such as km.pt"), metavar="KM",
                                            help="The k-means file to write (e.g. km.pt).", show_default=False)],
    layer: LayerOpt = None,
    clusters: Annotated[int, typer.Option("--clusters", "-k", min=1, help="Number of clusters (units).")] = CLUSTERS,
    max_frames: Annotated[int, typer.Option(
        "--max-frames", min=1, help="Frames to learn from: utterances in a seeded random order until this many.")] = MAX_FRAMES,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Frames per mini-batch (>= frames: plain k-means).")] = BATCH_SIZE,
    iterations: Annotated[int, typer.Option("--iterations", min=1, max=1_000_000, help="Mini-batch steps.")] = ITERATIONS,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the frame sample, the k-means++ start and the batches.")] = KMEANS_SEED,
    device: DeviceOpt = DEVICE,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Learn k-means centroids (mini-batch k-means, k-means++ start) on one layer.

    Example: lhb units learn feats.h5 km.pt --layer 6 --clusters 500
    """
    from lighthubert.checkpoint import save_atomic
    from lighthubert.storage import refuse_existing
    from lighthubert.extractor import resolve_device
    from lighthubert.units import learn_file

    _check_target(km_path, writable=True, replaced=True)
    _not_an_input(km_path, features)
    refuse_existing([km_path], overwrite)  # before the work, not after
    resolve_device(device)  # an unknown or absent device: said before any work
    steps = _every("k-means step", quiet)

    def progress(done: int, total: int) -> None:
        if done == 0:  # the frames are read; the k-means++ start can take a while with many clusters
            if not quiet:
                err(f"k-means++ start: {clusters:,} centroids, then {total:,} steps")
        else:
            steps(done, total)

    km = _library_errors(learn_file, features, layer, clusters, max_frames=max_frames, batch_size=batch_size,
                         iterations=iterations, seed=seed, device=device, progress=progress)
    try:  # beside KM, then renamed: an old KM stays whole if this stops half-way
        save_atomic(km, km_path)
    except OSError as e:
        raise Fail(f"{km_path}: cannot write ({e.strerror})") from None
    except RuntimeError as e:  # torch's zip writer reports an open failure as RuntimeError
        raise Fail(f"{km_path}: cannot write ({str(e).splitlines()[0]})") from None
    if not quiet:
        err(f"wrote {km_path}: {clusters} clusters of layer {km['layer']} from {km['frames']:,} frames, "
            f"inertia {km['inertia']:.4g} per frame")


@units_app.command("apply", cls=LhbCommand)
@_one_line_errors
def apply(
    features: FeaturesArg,
    km_path: Annotated[Path, typer.Argument(parser=_path, metavar="KM", help="A k-means file from lhb units learn.", show_default=False)],
    output: Annotated[Path, typer.Argument(
        parser=_path, metavar="OUTPUT", help="units.h5 (/units/KEY int datasets) or a text file (.km: one line of units per "
                               "utterance, in the features file's key order); - for standard output.", show_default=False)],
    keys: Annotated[bool, typer.Option("--keys", help="Text output: start each line with the key.")] = False,
    device: DeviceOpt = DEVICE,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Turn each utterance's features into units (nearest centroid of each frame).

    Example: lhb units apply feats.h5 km.pt train.km
    """
    from lighthubert.storage import hdf5_name, refuse_existing
    from lighthubert.extractor import resolve_device
    from lighthubert.units import apply_file, load_km

    to_stdout = str(output) == "-"
    if to_stdout:  # the text form, on standard output
        output = Path("/dev/stdout")
    elif keys and hdf5_name(output):  # each utterance is its own dataset there, named by its key
        raise Fail(f"--keys is for text output; {output} is written as HDF5, whose datasets are named by key", EXIT_USAGE)
    if not output.exists() or output.is_dir() or (output.is_file() and not output.is_symlink()):
        _check_target(output, writable=True)  # a new or plain file is written beside it, then renamed (not /dev/stdout)
    elif hdf5_name(output):  # HDF5 cannot be streamed into a FIFO or device
        _check_target(output, replaced=True)
    _not_an_input(output, features, km_path)
    refuse_existing([output], overwrite or to_stdout)  # before any other line (apply_file checks it too)
    resolve_device(device)  # an unknown or absent device: said before any work
    km = _library_errors(load_km, km_path)
    n = _library_errors(apply_file, features, km, output, keys=keys, device=device,
                        overwrite=overwrite or to_stdout,  # standard output: whatever the shell opened
                        progress=_every("units", quiet))
    if not quiet:
        err(f"wrote the units of {n} utterances to standard output" if to_stdout else f"wrote {output}: units of {n} utterances")


def register(app: typer.Typer) -> None:
    """Add ``convert`` and ``units`` to the ``lhb`` app."""
    app.command("convert", cls=LhbCommand)(convert)
    app.add_typer(units_app, name="units")
