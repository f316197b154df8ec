"""The HDF5 features file (SPEC.md §5): ``/features/KEY`` datasets, root attributes that explain the
run. :class:`FeatureWriter` writes it (new, resumed or overwritten), :func:`merge` joins parts,
:func:`describe` reads a summary back. :class:`Hdf5Backend` is this module as a storage backend."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from . import FORMAT, RUN_IDENTITY, OutputError, check_identity, identity_diff, plain

GROUP = "features"
MAGIC = b"\x89HDF\r\n\x1a\n"
_norm = plain  # the name other modules used


class FeatureWriter:
    """Writes one features file. ``attrs`` describe the run (see :func:`lighthubert.storage.run_attrs`).

    With ``resume`` an existing file made by the same run settings is opened and kept; its keys are
    in :attr:`done`. Otherwise the file is created (replacing any old one).
    """

    RESERVE = 1 << 20
    """Bytes kept free for metadata, so that a full disk stops the run before the file breaks."""

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, Any], *, resume: bool = False,
                 compression: str | None = None):
        self.path = Path(path)
        self.compression = None if compression in (None, "none") else compression
        self.skipped: list[dict] = []
        self.broken = False
        if resume and self.path.exists():
            self.file = self._open_existing(attrs)
        else:
            self.file = self._create(attrs)
        self.done: set[str] = set(keys(self.file))

    def _create(self, attrs: Mapping[str, Any]) -> h5py.File:
        """A new, valid file is built under a temporary name and renamed over OUTPUT, so that OUTPUT
        is never a half-initialised file (an old OUTPUT stays until the new one is ready)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        try:
            with h5py.File(tmp, "w", libver=("v108", "latest")) as f:
                for k, v in attrs.items():
                    f.attrs[k] = v
                f.attrs["complete"] = False
                f.attrs["skipped"] = "[]"
                f.create_group(GROUP)
            os.replace(tmp, self.path)
            return h5py.File(self.path, "a")
        except OSError as err:
            raise OutputError(f"{self.path}: cannot create: {_reason(err)}") from None
        finally:
            if tmp.exists():
                tmp.unlink()

    def _open_existing(self, attrs: Mapping[str, Any]) -> h5py.File:
        try:
            f = h5py.File(self.path, "a")
        except OSError as err:
            raise OutputError(f"{self.path}: cannot be opened to resume ({_reason(err)}); use --overwrite to start again") from None
        try:
            check_identity(self.path, dict(f.attrs), attrs)
        except OutputError:
            f.close()
            raise
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["complete"] = False
        if GROUP not in f:
            f.create_group(GROUP)
        return f

    def write(self, key: str, data: np.ndarray, *, source: str, num_samples: int, windows: int = 0) -> None:
        free = shutil.disk_usage(self.path.parent).free
        if free < data.nbytes + self.RESERVE:
            raise OutputError(
                f"{self.path}: no space left on the device ({free / 2**20:.1f} MB free, {data.nbytes / 2**20:.1f} MB "
                "needed); the file is valid up to the last complete utterance: free space, then --resume"
            )
        try:
            self._write(key, data, source=source, num_samples=num_samples, windows=windows)
        except OSError:
            self.broken = True
            raise

    def _write(self, key: str, data: np.ndarray, *, source: str, num_samples: int, windows: int) -> None:
        name = f"{GROUP}/{key}"
        if name in self.file:  # a dataset left by an interrupted run: replace it
            del self.file[name]
        ds = self.file.create_dataset(name, data=data, compression=self.compression)
        ds.attrs["source"] = source
        ds.attrs["num_samples"] = int(num_samples)
        if windows:
            ds.attrs["windows"] = int(windows)
        self.done.add(key)

    def skip(self, key: str, source: str, reason: str) -> None:
        self.skipped.append({"key": key, "path": source, "reason": reason})

    def flush(self) -> None:
        try:
            self.file.attrs["skipped"] = json.dumps(self.skipped)
            self.file.flush()
        except OSError:
            self.broken = True
            raise

    def close(self, complete: bool) -> None:
        """Record the end of the run and close. After a failed write (``broken``) HDF5's state is
        not to be trusted: nothing more is written; the file stays as of the last flush."""
        if self.file and not self.broken:
            self.file.attrs["complete"] = bool(complete)
            self.file.attrs["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            self.flush()
            self.file.close()
            self.file = None


def _reason(err: Exception) -> str:
    text = str(err)
    return text.split("(", 1)[0].strip() or type(err).__name__


def keys(f: h5py.File) -> list[str]:
    """Every utterance key in an open features file."""
    if GROUP not in f:
        return []
    out: list[str] = []
    f[GROUP].visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


def file_keys(path: Path) -> set[str]:
    """The keys of a features file on disk."""
    try:
        with h5py.File(path, "r") as f:
            return set(keys(f))
    except OSError as err:
        raise OutputError(f"{path}: cannot be read to resume ({err}); remove it or use --overwrite") from None


def merge(output: Path, parts: list[Path], *, include_output: bool, complete: bool | None = None) -> int:
    """Join ``parts`` (and OUTPUT itself when ``include_output``) into a new file that replaces
    OUTPUT atomically. All must come from the same run settings; a key in two files is an error
    unless the datasets are equal. ``complete`` (default: every source says so) is recorded.
    Returns the number of utterances."""
    sources = ([output] if include_output and output.exists() else []) + list(parts)
    if not sources:
        raise OutputError(f"{output}: nothing to merge")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".merging", dir=output.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        skipped: dict[str, dict] = {}
        identity: dict | None = None
        with h5py.File(tmp, "w", libver=("v108", "latest")) as dst:
            group = dst.create_group(GROUP)
            for path in sources:
                try:
                    src = h5py.File(path, "r")
                except OSError as err:
                    raise OutputError(f"{path}: cannot be opened ({err})") from None
                with src:
                    ident = {k: plain(src.attrs.get(k)) for k in RUN_IDENTITY}
                    if identity is None:
                        identity = ident
                        for k, v in src.attrs.items():
                            dst.attrs[k] = v
                    elif diff := identity_diff(identity, ident):
                        raise OutputError(f"{path}: made with different settings ({', '.join(diff)}) than {sources[0]}")
                    for entry in json.loads(plain(src.attrs.get("skipped", "[]")) or "[]"):
                        skipped[entry["key"]] = entry
                    for key in keys(src):
                        if key in group:
                            if not np.array_equal(group[key][()], src[GROUP][key][()]):
                                raise OutputError(f"{path}: key {key!r} is also in another part, with other values")
                            continue
                        parent = key.rsplit("/", 1)[0] if "/" in key else ""
                        dest_group = group.require_group(parent) if parent else group
                        src.copy(src[GROUP][key], dest_group, name=key.rsplit("/", 1)[-1])
            done = set(keys(dst))
            dst.attrs["skipped"] = json.dumps([v for k, v in skipped.items() if k not in done])
            dst.attrs["complete"] = all(_complete(p) for p in sources) if complete is None else complete
            dst.attrs["merged_from"] = len(sources)
        os.replace(tmp, output)
        return len(done)
    finally:
        if tmp.exists():
            tmp.unlink()


def _complete(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return bool(f.attrs.get("complete", False))


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes plus utterance count, total frames, audio duration, layers and dims."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: plain(v) for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT:
                raise OutputError(f"{path}: an HDF5 file, but not a lighthubert features file")
            frames = samples = 0
            shapes: set[tuple] = set()
            names = keys(f)
            for k in names:
                ds = f[GROUP][k]
                frames += ds.shape[-2]
                samples += int(ds.attrs.get("num_samples", 0))
                shapes.add(tuple(ds.shape[:-2]) + (ds.shape[-1],))
    except OSError as err:
        raise OutputError(f"{path}: {err}") from None
    for k in ("subnet", "skipped"):
        if isinstance(attrs.get(k), str):
            attrs[k] = json.loads(attrs[k])
    return {
        "attributes": attrs,
        "utterances": len(names),
        "frames": frames,
        "audio_seconds": samples / 16000,
        "feature_dims": sorted(shapes),
    }


class Hdf5Backend:
    """This module as a :class:`lighthubert.storage.Backend`."""

    name = "hdf5"
    suffix = ".h5"

    def open_writer(self, path: Path, attrs: Mapping[str, Any], *, resume: bool, compression: str | None) -> FeatureWriter:
        return FeatureWriter(path, attrs, resume=resume, compression=compression)

    def keys(self, path: Path) -> set[str]:
        return file_keys(path)

    def merge(self, output: Path, parts: list[Path], *, include_output: bool, complete: bool | None = None) -> int:
        return merge(output, parts, include_output=include_output, complete=complete)

    def describe(self, path: Path) -> dict[str, Any]:
        return describe(path)

    def is_features_file(self, path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return f.read(8) == MAGIC
        except OSError:
            return False


def done_keys(paths: Iterable[Path]) -> set[str]:
    """The union of the keys of ``paths``."""
    found: set[str] = set()
    for p in paths:
        found |= file_keys(p)
    return found
