"""Where extracted features go: one small interface and the formats that implement it.

The extraction job (:mod:`lighthubert.job`) and the pipeline talk only to a :class:`Backend` (open a
writer, read which keys a file holds, merge parts, describe a file) and the :class:`FeaturesWriter`
it opens. HDF5 (:mod:`lighthubert.storage.hdf5`) is the one backend; a new output format is one
new module registered in :data:`BACKENDS`.

Format-independent pieces live here: the root attributes of a run (:func:`run_attrs`), the settings
that make a run's identity (:data:`RUN_IDENTITY`, checked by ``resume`` and ``merge``), the early
check of OUTPUT and the naming of the parts of a run with several processes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from ..errors import LightHubertError

FORMAT = "lighthubert-features"
FORMAT_VERSION = 1
FRAME_RATE = 50.0
# Root attributes that must match for resume to add to a file, and for merge to join files.
RUN_IDENTITY = ("format", "layers", "subnet", "checkpoint_sha256", "checkpoint", "normalize", "dtype",
                "compute_dtype", "max_chunk_seconds")


class OutputError(LightHubertError):
    """OUTPUT cannot be written (or resumed, or merged); the message names the file and the reason."""


class OutputBroken(OutputError):
    """A write failed inside the storage library: its in-memory state is not to be trusted, so the
    file was left as of its last flush. A process should exit without running finalisers."""


class FeaturesWriter(Protocol):
    """One output file being written. ``done`` holds the keys it already has (after a resume)."""

    path: Path
    done: set[str]
    broken: bool
    """True once a write failed inside the storage library (nothing more is written then)."""

    def write(self, key: str, data: np.ndarray, *, source: str, num_samples: int, chunks: int = 1) -> None:
        """Store one utterance whole: ``data`` (T, D) or (L, T, D); raises :class:`OutputError`."""

    def skip(self, key: str, source: str, reason: str) -> None:
        """Record a skipped input (kept in the file at the next flush)."""

    def flush(self) -> None:
        """Make everything written so far durable."""

    def close(self, complete: bool) -> None:
        """Record whether the run finished and close (no-op after a failed write)."""


class Backend(Protocol):
    """A storage format: the only thing the job knows about files."""

    name: str
    suffix: str

    def open_writer(self, path: Path, attrs: Mapping[str, Any], *, resume: bool, compression: str | None) -> FeaturesWriter:
        """Create ``path`` (atomically; replacing an old one) or, with ``resume`` and an existing file,
        reopen it after :func:`check_identity`."""

    def keys(self, path: Path) -> set[str]:
        """The utterance keys a file holds; :class:`OutputError` when it cannot be read."""

    def merge(self, output: Path, parts: list[Path], *, include_output: bool, complete: bool | None = None) -> int:
        """Join ``parts`` (and OUTPUT when ``include_output``) into a new OUTPUT, atomically; returns
        the number of utterances. Different run identities or different values for one key are errors."""

    def describe(self, path: Path) -> dict[str, Any]:
        """Root attributes plus utterance count, frames, audio seconds and feature dims."""

    def is_features_file(self, path: Path) -> bool:
        """Whether ``path`` looks like a file of this format (a cheap check of its first bytes)."""


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str = "hdf5") -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise OutputError(f"unknown output format {name!r}; known: {', '.join(BACKENDS)}") from None


def plain(v: Any) -> Any:
    """An attribute value as plain Python (numpy arrays and scalars, bytes)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The :data:`RUN_IDENTITY` attributes on which two runs differ."""
    return [k for k in RUN_IDENTITY if plain(old.get(k)) != plain(new.get(k))]


def check_identity(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Resuming ``path`` (attributes ``old``) with settings ``new``: :class:`OutputError` naming the
    settings that differ and how (a file from before an identity attribute existed differs too)."""
    diff = sorted(identity_diff(old, new), key=lambda k: k != "subnet")  # a subnet changes layers too
    if diff:
        what = " and ".join(f"{k} ({_what_differs(old.get(k), new.get(k))})" for k in diff)
        raise OutputError(f"{path}: was made with a different {what}; use --overwrite to replace it, or another OUTPUT")


def _short(v: Any, width: int = 40) -> str:
    """A value for a message: ``[384]*12`` for a list of one value, else JSON cut to ``width``."""
    if isinstance(v, list) and len(v) > 1 and len({json.dumps(x) for x in v}) == 1:
        return f"[{json.dumps(v[0])}]*{len(v)}"
    text = json.dumps(v) if isinstance(v, (list, dict)) else repr(v)
    return text if len(text) <= width else text[: width - 4] + " ..."


def _what_differs(old: Any, new: Any) -> str:
    """``'a', now 'b'``; for JSON objects (the subnet) the fields that differ, single values first,
    each shortened: ``embed_dim 384, now 256; layer_num 12, now 10; heads_num [6]*12, now [4]*10``."""
    old, new = plain(old), plain(new)
    try:
        a, b = json.loads(old), json.loads(new)
    except (TypeError, ValueError):
        a = b = None
    if isinstance(a, dict) and isinstance(b, dict):
        fields = sorted((f for f in set(a) | set(b) if a.get(f) != b.get(f)),
                        key=lambda f: (isinstance(a.get(f), list), f))
        shown = [f"{f} {_short(a.get(f))}, now {_short(b.get(f))}" for f in fields[:3]]
        more = f"; and {len(fields) - 3} more" if len(fields) > 3 else ""
        return "; ".join(shown) + more
    return f"{_short(old)}, now {_short(new)}"


def run_attrs(*, layers: list[int], subnet: dict, checkpoint: str, checkpoint_sha256: str | None,
              normalize: bool, random_weights: bool, params: int, dtype: str, compute_dtype: str, version: str,
              max_chunk_seconds: float, num_layers: int, embed_dim: int) -> dict[str, Any]:
    """The root attributes of a features file. ``layers``: hidden-state indices, or ``[-1]`` for the
    final output of a pre-norm model; ``dtype`` is the stored dtype, ``compute_dtype`` the model's."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layers": np.asarray(layers, dtype=np.int64),
        "frame_rate": FRAME_RATE,
        "sample_rate": 16000,
        "subnet": json.dumps(subnet, sort_keys=True),
        "subnet_params": int(params),
        "num_layers": int(num_layers),
        "embed_dim": int(embed_dim),
        "checkpoint": checkpoint,
        "checkpoint_sha256": checkpoint_sha256 or "",
        "random_weights": bool(random_weights),
        "normalize": bool(normalize),
        "dtype": dtype,
        "compute_dtype": compute_dtype,
        "max_chunk_seconds": float(max_chunk_seconds),
        "package_version": f"lighthubert {version}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def check_output_path(path: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Fail early (before any audio is read) when OUTPUT cannot be written."""
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{out}: the folder {folder} does not exist")
    try:  # the real test: permissions, read-only filesystems, ACLs
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputError(f"{out}: the folder {folder} is not writable ({err.strerror})") from None
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name such as {out / 'features.h5'}")
    if out.exists():
        if not (resume or overwrite):
            raise OutputError(f"{out}: already exists; pass --resume to complete it or --overwrite to replace it")
        if not os.access(out, os.W_OK):
            raise OutputError(f"{out}: is not writable")
    return out


# ----------------------------------------------------------------------------- parts of a run with several processes


def parts_dir(output: Path) -> Path:
    """``OUTPUT.parts/``: where the ranks of a run with several processes write their parts."""
    return output.with_name(output.name + ".parts")


def part_path(output: Path, rank: int, suffix: str = ".h5") -> Path:
    return parts_dir(output) / f"part-{rank:05d}{suffix}"


def find_parts(folder: Path, suffix: str = ".h5", *, any_name: bool = False) -> list[Path]:
    """The part files in ``folder``, sorted; with ``any_name`` every ``*suffix`` file when no
    ``part-*`` file is there."""
    found = sorted(folder.glob(f"part-*{suffix}"))
    return found or (sorted(folder.glob(f"*{suffix}")) if any_name else [])


def remove_parts(output: Path) -> None:
    shutil.rmtree(parts_dir(output), ignore_errors=True)


from . import hdf5 as _hdf5  # noqa: E402 - registers the HDF5 backend

HDF5 = register(_hdf5.Hdf5Backend())

__all__ = [
    "BACKENDS", "Backend", "FORMAT", "FORMAT_VERSION", "FRAME_RATE", "FeaturesWriter", "HDF5", "OutputBroken",
    "OutputError", "RUN_IDENTITY", "check_identity", "check_output_path", "find_parts", "get_backend",
    "identity_diff", "part_path", "parts_dir", "plain", "register", "remove_parts", "run_attrs",
]
