"""The features file (SPEC.md §5): HDF5, ``/features/KEY`` datasets, root attributes that explain
the run. :class:`FeatureWriter` writes it (new, resumed or overwritten); :func:`describe` reads
a summary back."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

FORMAT = "lighthubert-features"
FORMAT_VERSION = 1
FRAME_RATE = 50.0
GROUP = "features"
# Attributes that must match for --resume to add to an existing file.
RUN_IDENTITY = ("format", "layers", "subnet", "checkpoint_sha256", "checkpoint", "normalize", "dtype",
                "max_chunk_seconds")


class OutputError(Exception):
    """OUTPUT cannot be written (or resumed); the message names the file and the reason."""


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


class FeatureWriter:
    """Writes one features file. ``attrs`` describe the run (see :func:`run_attrs`).

    With ``resume`` an existing file made by the same run settings is opened and kept; its keys are
    in :attr:`done`. Otherwise the file is created (replacing any old one).
    """

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
        for k in RUN_IDENTITY:
            old, new = f.attrs.get(k), attrs.get(k)
            if _norm(old) != _norm(new):
                f.close()
                raise OutputError(
                    f"{self.path}: was made with a different {k} ({_norm(old)!r}, now {_norm(new)!r}); "
                    "use --overwrite to replace it, or another OUTPUT"
                )
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["complete"] = False
        if GROUP not in f:
            f.create_group(GROUP)
        return f

    RESERVE = 1 << 20
    """Bytes kept free for metadata, so that a full disk stops the run before the file breaks."""

    def write(self, key: str, data: np.ndarray, *, source: str, num_samples: int, chunks: int = 1) -> None:
        free = shutil.disk_usage(self.path.parent).free
        if free < data.nbytes + self.RESERVE:
            raise OutputError(
                f"{self.path}: no space left on the device ({free / 2**20:.1f} MB free, {data.nbytes / 2**20:.1f} MB "
                "needed); the file is valid up to the last complete utterance: free space, then --resume"
            )
        try:
            self._write(key, data, source=source, num_samples=num_samples, chunks=chunks)
        except OSError:
            self.broken = True
            raise

    def _write(self, key: str, data: np.ndarray, *, source: str, num_samples: int, chunks: int) -> None:
        name = f"{GROUP}/{key}"
        if name in self.file:  # a dataset left by an interrupted run: replace it
            del self.file[name]
        ds = self.file.create_dataset(name, data=data, compression=self.compression)
        ds.attrs["source"] = source
        ds.attrs["num_samples"] = int(num_samples)
        if chunks > 1:
            ds.attrs["chunks"] = int(chunks)
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


def _norm(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def keys(f: h5py.File) -> list[str]:
    """Every utterance key in an open features file."""
    if GROUP not in f:
        return []
    out: list[str] = []
    f[GROUP].visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


def run_attrs(*, layers: list[int], subnet: dict, checkpoint: str, checkpoint_sha256: str | None,
              normalize: bool, random_weights: bool, params: int, dtype: str, version: str,
              max_chunk_seconds: float, num_layers: int, embed_dim: int) -> dict[str, Any]:
    """The root attributes of a features file."""
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
        "max_chunk_seconds": float(max_chunk_seconds),
        "package_version": f"lighthubert {version}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes plus utterance count, total frames, audio duration, layers and dims."""
    with h5py.File(path, "r") as f:
        attrs = {k: _norm(v) for k, v in f.attrs.items()}
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
