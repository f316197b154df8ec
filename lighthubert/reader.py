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

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .errors import LightHubertWarning, SettingError
from .storage import FeaturesError, FeaturesReader, backend_of, parts_dir

Layers = Union[None, int, str, Sequence[int]]
"""None: as stored ((T, D) or (L, T, D)); int: one layer, (T, D); list of ints or "all": (L, T, D)."""


def incomplete_note(path: Path, n: int) -> str:
    """What to say of a features file left by a run that stopped (attribute ``complete`` false)
    holding ``n`` utterances: that it is not every input, and how to finish it."""
    waiting = backend_of(path).unjoined(path)
    more = f", not the work committed in {parts_dir(path)} (lhb merge {path} --remove-parts joins it)" if waiting else ""
    return (f"{path}: incomplete (its extraction stopped or is still running; the same run with --resume, "
            f"or resume=True in Python, completes it); using the {n:,} utterances it holds{more}")


class Features:
    """An open features file (read-only). Use as a context manager or call :meth:`close`.

    ``attrs``: root attributes (``subnet`` and ``skipped`` decoded from JSON); ``layers``: stored
    hidden-state indices; ``keys``: utterance keys in file order; ``lengths``: key -> frames (from
    the dataset shapes, no data read); ``dim``: feature width D.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._reader: FeaturesReader = backend_of(self.path).open_reader(self.path)
        self.attrs: dict[str, Any] = self._reader.attrs
        shapes = self._reader.shapes
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
        self._reader.close()

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
        self._known(key)
        data = self._reader.read(key, layer_positions(self.layers, layer, self.path))
        return torch.from_numpy(np.ascontiguousarray(data))

    def num_samples(self, key: str) -> int:
        """Audio samples (16 kHz) of ``key``."""
        return self._reader.num_samples(self._known(key))

    def source(self, key: str) -> str:
        """The audio file ``key`` came from."""
        return self._reader.source(self._known(key))

    def _known(self, key: str) -> str:
        if key not in self.lengths:
            raise KeyError(f"{self.path}: no utterance {key!r}")
        return key


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


class FeaturesDataset(Dataset):
    """``(key, features)`` for each utterance, features (T, D) or (L, T, D) as chosen by ``layer``,
    as float32 unless ``dtype`` says otherwise.

    The file is opened on the first item read in each process (so every DataLoader worker
    has its own handle; PyTorch issue 11929), never pickled. ``lengths`` (frames per item), ``layers``
    (stored hidden-state indices) and ``dim`` (D) are read from the file when the dataset is made;
    ``item_layers`` are the hidden-state indices an item holds, in order (L of (L, T, D) is their count).
    """

    def __init__(self, path: str | os.PathLike, layer: Layers = None, keys: Sequence[str] | None = None,
                 dtype: torch.dtype | None = torch.float32):
        self.path = Path(path)
        self.layer = layer
        self.dtype = dtype
        with open_features(self.path) as f:
            self.layers, self.dim = f.layers, f.dim
            if keys is None:
                self.keys = list(f.keys)
            elif isinstance(keys, (str, bytes)):  # else iterated letter by letter: "no utterance 'u'"
                raise SettingError(f"keys: give a list of keys (keys=[{keys!r}]), not one string", "keys")
            else:
                unknown = [k for k in keys if k not in f]
                if unknown:
                    raise FeaturesError(f"{self.path}: no utterance {unknown[0]!r}")
                self.keys = list(keys)
            self.lengths: list[int] = [f.lengths[k] for k in self.keys]
        self._positions = layer_positions(self.layers, layer, self.path)
        pos = self._positions
        self.item_layers: list[int] = (list(self.layers) if pos is None else [self.layers[pos]] if isinstance(pos, int)
                                       else [self.layers[p] for p in pos])
        self._reader: FeaturesReader | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = backend_of(self.path).open_reader(self.path, check=False), os.getpid()
        key = self.keys[i]
        x = torch.from_numpy(np.ascontiguousarray(self._reader.read(key, self._positions)))
        return key, (x if self.dtype is None else x.to(self.dtype))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"], state["_pid"] = None, None
        return state

    def __del__(self) -> None:
        if getattr(self, "_reader", None) is not None:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def pad_collate(batch: Sequence[tuple[str, torch.Tensor]], pad_value: float = 0.0
                ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """``[(key, (T_i, D) or (L, T_i, D))]`` -> ``(keys, x, lengths)``: x is (B, T_max, D) or
    (B, L, T_max, D), zero-padded at the end of time; lengths is a (B,) int64 tensor of T_i."""
    if not batch:
        raise SettingError("pad_collate: the batch is empty", "batch")
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
    order each epoch. ``shuffle=False``: batches in increasing length order. ``drop_last``: the items
    that would not fill a batch are left out, drawn anew each epoch (with ``shuffle=False``: the
    longest). With ``num_replicas`` processes (DistributedDataParallel), process ``rank`` gets every
    ``num_replicas``-th batch, all processes the same number (the first batches are repeated to even
    them out).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 pool: int = 50, drop_last: bool = False, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise SettingError(f"batch_size must be at least 1, not {batch_size}", "batch_size")
        if pool < 1:
            raise SettingError(f"pool must be at least 1 (batches per pool sorted by length), not {pool}", "pool")
        if not 0 <= rank < num_replicas:
            raise SettingError(f"rank must be in [0, {num_replicas}), not {rank}", "rank")
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
            pools = [idx[i:i + size] for i in range(0, len(idx), size)]
            if self.drop_last:  # the items left over are drawn at random, not the longest of a pool every epoch
                pools = [p[: len(p) - len(p) % self.batch_size] for p in pools]
            pools = [sorted(p, key=self.lengths.__getitem__) for p in pools]
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
