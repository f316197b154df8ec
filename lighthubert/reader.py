"""Read a features file back (README "Using the features"): :func:`open_features` for random access,
:class:`FeaturesDataset` + :func:`pad_collate` + :class:`LengthGroupedSampler` for training.

Layers are named by their hidden-state index (the root attribute ``layers``; 0 = projected conv
features), not by their position in the file. ``layer=None`` means every stored layer, as stored.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .errors import LightHubertError, LightHubertWarning, SettingError
from .storage import FORMAT, HDF5, UNITS_FORMAT, OutputError, parts_dir, plain
from .storage.hdf5 import GROUP, damage, open_reason, read_features

Layers = Union[None, int, str, Sequence[int]]
"""None: as stored ((T, D) or (L, T, D)); int: one layer, (T, D); list of ints or "all": (L, T, D)."""


class FeaturesError(LightHubertError):
    """A features file cannot be read (or lacks what was asked for); the message names the file."""


def _open(path: Path) -> h5py.File:
    if path.is_dir():
        raise FeaturesError(f"{path}: is a folder, not a features file")
    if not path.is_file():
        what = "no such file" if not os.path.lexists(path) else (
            "a symbolic link to nothing (broken, or a loop)" if not path.exists() else "not a regular file (a FIFO, device or socket)")
        raise FeaturesError(f"{path}: {what}")
    try:
        if not h5py.is_hdf5(path):
            raise FeaturesError(f"{path}: not an HDF5 file (lhb extract writes features files)")
        f = h5py.File(path, "r")
    except OSError as e:
        raise FeaturesError(f"{path}: cannot be read: {open_reason(e)}") from None
    fmt = plain(f.attrs.get("format"))
    if fmt != FORMAT or GROUP not in f:
        f.close()
        if fmt == UNITS_FORMAT:
            raise FeaturesError(f"{path}: a units file (lhb units apply), not a features file")
        raise FeaturesError(f"{path}: an HDF5 file, but not a lighthubert features file")
    return f


def incomplete_note(path: Path, n: int) -> str:
    """What to say of a features file left by a run that stopped (attribute ``complete`` false)
    holding ``n`` utterances: that it is not every input, and how to finish it."""
    waiting = HDF5.unjoined(path)
    more = f", not the work committed in {parts_dir(path)} (lhb merge {path} --remove-parts joins it)" if waiting else ""
    return (f"{path}: incomplete (its lhb extract run stopped or is still running; --resume completes it); "
            f"using the {n:,} utterances it holds{more}")


class Features:
    """An open features file (read-only). Use as a context manager or call :meth:`close`.

    ``attrs``: root attributes (``subnet`` and ``skipped`` decoded from JSON); ``layers``: stored
    hidden-state indices; ``keys``: utterance keys in file order; ``lengths``: key -> frames (from
    the dataset shapes, no data read); ``dim``: feature width D.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = _open(self.path)
        self.attrs: dict[str, Any]
        try:
            self.attrs, shapes = read_features(self.path, self._file)
        except OutputError as err:
            self.close()
            raise FeaturesError(str(err)) from None
        self.layers: list[int] = [int(i) for i in np.atleast_1d(self.attrs.get("layers", []))]
        self.keys: list[str] = list(shapes)
        self.lengths: dict[str, int] = {k: int(shape[-2]) for k, shape in shapes.items()}
        self.dim: int = int(shapes[self.keys[0]][-1]) if self.keys else int(self.attrs.get("embed_dim", 0))
        if not bool(self.attrs.get("complete", True)):
            warnings.warn(incomplete_note(self.path, len(self.keys)), LightHubertWarning, stacklevel=2)

    def __enter__(self) -> "Features":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.lengths

    def __getitem__(self, key: str) -> torch.Tensor:
        """The features of ``key`` as stored: (T, D) or (L, T, D)."""
        return self.get(key)

    def get(self, key: str, layer: Layers = None) -> torch.Tensor:
        """The features of ``key``: (T, D) for one layer, (L, T, D) for a list or ``"all"``; only the
        chosen layers are read from disk. The stored dtype is kept (float32 or float16)."""
        ds = self._dataset(key)
        return torch.from_numpy(np.ascontiguousarray(read_layers(ds, self.layers, layer, self.path)))

    def num_samples(self, key: str) -> int:
        """Audio samples (16 kHz) of ``key``."""
        return int(self._dataset(key).attrs.get("num_samples", 0))

    def source(self, key: str) -> str:
        """The audio file ``key`` came from."""
        return str(plain(self._dataset(key).attrs.get("source", "")))

    def _dataset(self, key: str) -> h5py.Dataset:
        if key not in self.lengths:
            raise KeyError(f"{self.path}: no utterance {key!r}")
        if self._file is None:
            raise FeaturesError(f"{self.path}: is closed; open it again to read")
        return self._file[GROUP][key]


def open_features(path: str | os.PathLike) -> Features:
    """Open a features file for reading; raises :class:`FeaturesError` naming the file when it is
    missing, not HDF5 or not a lighthubert features file."""
    return Features(path)


def layer_positions(stored: list[int], layer: Layers, path: Path | str = "") -> int | list[int] | None:
    """Positions in the file of the hidden-state indices ``layer`` (None: all, as stored)."""
    if layer is None:
        return None
    if isinstance(layer, str):
        if layer != "all":
            raise FeaturesError(f"{path}: layer must be an index, a non-empty list of indices or 'all', not {layer!r}")
        return list(range(len(stored)))
    if isinstance(layer, (torch.Tensor, np.ndarray)):
        layer = layer.tolist()
    if isinstance(layer, (int, np.integer)):
        wanted = [layer]
    else:
        wanted = list(layer) if isinstance(layer, (list, tuple, range)) else []
    if not wanted or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in wanted):
        raise FeaturesError(f"{path}: layer must be an index, a non-empty list of indices or 'all', not {layer!r}")
    missing = [i for i in wanted if i not in stored]
    if missing:
        hint = "; layers are named by hidden-state index as stored, not counted from the end" if min(missing) < 0 else ""
        raise FeaturesError(f"{path}: has no layer {', '.join(map(str, missing))} (it holds layers {stored}){hint}")
    pos = [stored.index(int(i)) for i in wanted]
    return pos[0] if isinstance(layer, (int, np.integer)) else pos


def one_layer(stored: list[int], layer: int | None, path: Path | str = "") -> int:
    """The one hidden-state index to use: ``layer`` when given (it must be stored), else the file's
    only stored layer (a file of ``lhb extract``'s default ``--layers last``). A file of several
    layers and no ``layer``, or a ``layer`` it lacks, is a :class:`~lighthubert.errors.SettingError`
    listing them (the caller's choice is what is wrong, as for ``--layers`` of extraction)."""
    if layer is None:
        if len(stored) != 1:
            raise SettingError(f"{path} holds layers {stored}; say which one", "layer")
        return stored[0]
    try:
        layer_positions(stored, layer, path)
    except FeaturesError as e:
        raise SettingError(str(e), "layer") from None
    return int(layer)


def read_layers(ds: h5py.Dataset, stored: list[int], layer: Layers, path: Path | str = "") -> np.ndarray:
    """Read ``layer`` of one dataset: (T, D) for one layer, (L, T, D) for a list / "all". A dataset
    too large for memory (a damaged or hostile file can declare any shape) is a :class:`FeaturesError`."""
    try:
        return _read_layers(ds, stored, layer, path)
    except MemoryError:
        raise FeaturesError(f"{path}: {ds.name.removeprefix('/' + GROUP + '/')}: declares {ds.shape} features "
                            f"({ds.size * ds.dtype.itemsize / 2**30:,.1f} GiB), more than memory holds") from None
    except (OSError, RuntimeError, KeyError) as err:  # a damaged chunk (h5py: 'filter returned failure')
        raise FeaturesError(f"{path}: {ds.name.removeprefix('/' + GROUP + '/')}: cannot be read, the file is damaged "
                            f"({damage(err)})") from None


def _read_layers(ds: h5py.Dataset, stored: list[int], layer: Layers, path: Path | str = "") -> np.ndarray:
    pos = layer_positions(stored, layer, path)
    if pos is None:
        return ds[()]
    if ds.ndim == 2:  # one stored layer
        return ds[()] if isinstance(pos, int) else ds[()][None][[0] * len(pos)]  # [L, L] gives 2 x the layer
    if isinstance(pos, int):
        return ds[pos]
    if pos == sorted(set(pos)):
        return ds[pos]  # h5py fancy indexing needs increasing indices
    return ds[()][pos]


class FeaturesDataset(Dataset):
    """``(key, features)`` for each utterance, features (T, D) or (L, T, D) as chosen by ``layer``,
    as float32 unless ``dtype`` says otherwise.

    The HDF5 file is opened on the first item read in each process (so every DataLoader worker
    has its own handle; PyTorch issue 11929), never pickled. ``lengths`` (frames per item), ``layers``
    (stored hidden-state indices) and ``dim`` (D) are read from the file when the dataset is made.
    """

    def __init__(self, path: str | os.PathLike, layer: Layers = None, keys: Sequence[str] | None = None,
                 dtype: torch.dtype | None = torch.float32):
        self.path = Path(path)
        self.layer = layer
        self.dtype = dtype
        with open_features(self.path) as f:
            self.layers, self.dim = f.layers, f.dim
            layer_positions(f.layers, layer, self.path)  # fail now, not in a worker
            if keys is None:
                self.keys = list(f.keys)
            else:
                unknown = [k for k in keys if k not in f]
                if unknown:
                    raise FeaturesError(f"{self.path}: no utterance {unknown[0]!r}")
                self.keys = list(keys)
            self.lengths: list[int] = [f.lengths[k] for k in self.keys]
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        key = self.keys[i]
        x = torch.from_numpy(np.ascontiguousarray(read_layers(self._file[GROUP][key], self.layers, self.layer, self.path)))
        return key, (x if self.dtype is None else x.to(self.dtype))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def pad_collate(batch: Sequence[tuple[str, torch.Tensor]], pad_value: float = 0.0
                ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """``[(key, (T_i, D) or (L, T_i, D))]`` -> ``(keys, x, lengths)``: x is (B, T_max, D) or
    (B, L, T_max, D), zero-padded at the end of time; lengths is a (B,) int64 tensor of T_i."""
    if not batch:
        raise ValueError("pad_collate: the batch is empty")
    keys = [k for k, _ in batch]
    feats = [x for _, x in batch]
    lengths = torch.tensor([x.shape[-2] for x in feats], dtype=torch.long)
    t_max = int(lengths.max())
    out = feats[0].new_full((len(feats), *feats[0].shape[:-2], t_max, feats[0].shape[-1]), pad_value)
    for i, x in enumerate(feats):
        out[i, ..., : x.shape[-2], :] = x
    return keys, out, lengths


class LengthGroupedSampler(Sampler[list[int]]):
    """A batch sampler: batches of ``batch_size`` items of similar length (less padding).

    Items are shuffled, cut into pools of ``batch_size * pool`` items, sorted by length within each
    pool and cut into batches; batch order is then shuffled. Seeded; call :meth:`set_epoch` for a new
    order each epoch. ``shuffle=False``: batches in increasing length order. With ``num_replicas``
    processes (DistributedDataParallel), process ``rank`` gets every ``num_replicas``-th batch, all
    processes the same number (the first batches are repeated to even them out).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 pool: int = 50, drop_last: bool = False, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), not {rank}")
        if isinstance(lengths, Mapping):  # Features.lengths (key -> frames): its keys would be sorted, not lengths
            raise TypeError("lengths must be a sequence of item lengths (FeaturesDataset.lengths), not a mapping")
        self.lengths = list(lengths)
        self.batch_size, self.shuffle, self.seed, self.pool, self.drop_last = batch_size, shuffle, seed, pool, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        idx = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(idx)
            size = self.batch_size * self.pool
            pools = [sorted(idx[i:i + size], key=self.lengths.__getitem__) for i in range(0, len(idx), size)]
        else:
            pools = [sorted(idx, key=self.lengths.__getitem__)]
        batches = [p[i:i + self.batch_size] for p in pools for i in range(0, len(p), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            rng.shuffle(batches)
        if self.num_replicas > 1 and batches:
            batches += [batches[i % len(batches)] for i in range(-len(batches) % self.num_replicas)]  # cyclically: fewer batches than processes too
            batches = batches[self.rank::self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        n = len(self.lengths)
        total = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return -(-total // self.num_replicas)
