"""The HDF5 features file (SPEC.md §5): ``/features/KEY`` datasets, root attributes that explain the
run. :class:`FeatureWriter` writes one file, :class:`SegmentWriter` writes a run as segment files
that are never modified once committed, :func:`merge` joins files into a new one that replaces OUTPUT
atomically, :func:`describe` reads a summary back. :class:`Hdf5Backend` is this module as a storage backend.

HDF5 has no journal: a failed write or flush (a disk filled by anyone, EIO, a kill) can leave a file
that no longer opens. So a run never writes into a file that holds committed work: utterances go into
a new segment (``OUTPUT.parts/seg-RANK-INDEX.h5.tmp``), which is closed, fsynced and renamed to its
final name about every second; only renamed segments count. OUTPUT itself is only ever replaced whole
(:func:`merge` writes a new file, fsyncs it, renames it over OUTPUT)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping

import h5py
import numpy as np

from ..files import replace_keeping_mode
from ..inputs import CONTROL
from . import (FORMAT, NO_SPACE, _short, RUN_IDENTITY, UNITS_FORMAT, FeaturesError, OutputError, check_identity, find_committed,
               find_segments, identity_diff, os_reason, os_words, parts_dir, plain, refuse_special, remove_parts,
               segment_path)

GROUP = "features"
SUFFIX = ".h5"
"""The suffix of the segments and parts this backend writes (OUTPUT may be named .hdf5 or .hdf too)."""
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
            replace_keeping_mode(tmp, self.path)
            return h5py.File(self.path, "a")
        except (OSError, RuntimeError) as err:
            raise OutputError(f"{self.path}: cannot create: {_reason(err)}") from None
        finally:
            if tmp.exists():
                tmp.unlink()

    def _open_existing(self, attrs: Mapping[str, Any]) -> h5py.File:
        try:
            f = h5py.File(self.path, "a")
        except OSError as err:
            raise OutputError(f"{self.path}: cannot be opened to resume ({open_reason(err)}); use --overwrite to start again") from None
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
            raise OutputError(f"{self.path}: {_no_room(free, data.nbytes)}; the file is valid up to the last complete "
                              "utterance: free space, then --resume")
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

    def close(self, complete: bool, *, finished: bool = True) -> None:
        """Record the end of the run (``finished``: its time) and close. After a failed write (``broken``)
        HDF5's state is not to be trusted: nothing more is written; the file stays as of the last flush."""
        if self.file and not self.broken:
            self.file.attrs["complete"] = bool(complete)
            if finished:
                self.file.attrs["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            self.flush()
            self.file.close()
            self.file = None


def _no_room(free: int, nbytes: int) -> str:
    """The words for a write refused before it starts: the need includes the metadata reserve, so the
    numbers never read as enough room."""
    need = nbytes + FeatureWriter.RESERVE
    return (f"{NO_SPACE} ({free / 2**20:.1f} MB free, {need / 2**20:.1f} MB needed: "
            f"{nbytes / 2**20:.1f} MB of features and {FeatureWriter.RESERVE / 2**20:.0f} MB kept for the file's metadata)")


def _reason(err: Exception) -> str:
    text = str(err)
    return text.split("(", 1)[0].strip() or type(err).__name__


_LOCK_FAILED = re.compile(r"unable to lock file, errno = (\d+)(?:, error message = '([^']*)')?")
LOCKED = "another program has it open for writing, and HDF5 locks it: close that program first"

_TRUNCATED = re.compile(r"truncated file: eof = (\d+),.*stored_eof = (\d+)")


def open_reason(err: Exception) -> str:
    """Why h5py could not open a file, in words: ``not an HDF5 file``, ``truncated (N of M bytes)``,
    else the OS reason (h5py's own text puts the useful part in parentheses, which :func:`_reason` drops)."""
    text = str(err)
    if "file signature not found" in text:
        return "not an HDF5 file"
    if m := _LOCK_FAILED.search(text):  # HDF5's own lock
        if int(m[1]) in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):  # held: a writer has it open
            return LOCKED
        return (f"HDF5 cannot lock it here ({m[2] or 'errno ' + m[1]}): a filesystem without file locks; "
                "HDF5_USE_FILE_LOCKING=FALSE turns HDF5's locking off")
    if m := _TRUNCATED.search(text):
        return f"truncated: {int(m[1]):,} of its {int(m[2]):,} bytes are there"
    if m := re.search(r"error message = '([^']*)'", text):  # the OS error inside a many-line h5py text
        return m[1]
    return getattr(err, "strerror", None) or _reason(err)


def keys(f: h5py.File) -> list[str]:
    """Every utterance key in an open features file: every name of a dataset, also where one dataset
    has several (hard links another tool made; HDF5's object visit gives it once, under one of them).
    The object visit with its info (no Python object per key: 5-6.5x faster than ``visititems`` on
    30,000 keys, BENCHMARKS.md) gives the names; the slower walk over every link only runs where a
    dataset has more than one."""
    group = f.get(GROUP)
    if not isinstance(group, h5py.Group):
        return []
    out: list[str] = []
    shared: list[bool] = []

    def see(name: bytes, info: h5py.h5o.ObjInfo) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:
            out.append(name.decode("utf-8"))
            if info.rc > 1:
                shared.append(True)

    h5py.h5o.visit(group.id, see, info=True)
    if not shared:
        return out
    out = []

    def see_link(name: str, link: h5py.HardLink | h5py.SoftLink | h5py.ExternalLink) -> None:
        if isinstance(link, h5py.HardLink) and isinstance(group.get(name), h5py.Dataset):
            out.append(name)

    group.visititems_links(see_link)
    return out


def read_features(path: str | os.PathLike, f: h5py.File,
                  visit: Callable[[str, h5py.Dataset], None] | None = None) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """:func:`_read_features`; a file whose HDF5 structure is damaged (a bad object header, a
    checksum that does not match) is an :class:`OutputError` naming it, not h5py's exception."""
    try:
        return _read_features(path, f, visit)
    except (RuntimeError, KeyError, OSError) as err:
        raise OutputError(f"{path}: is damaged ({damage(err)})") from None


def damage(err: Exception) -> str:
    """h5py's words for a damaged file, shortened: ``Object visitation failed (bad object header
    version number)`` -> ``bad object header version number``."""
    text = str(err).strip("'\"")
    inner = re.findall(r"\(([^()]*)\)", text)
    return (inner[-1] if inner else text)[:200] or type(err).__name__


def _read_features(path: str | os.PathLike, f: h5py.File,
                   visit: Callable[[str, h5py.Dataset], None] | None = None) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The root attributes (plain Python; ``subnet`` and ``skipped`` decoded from JSON) and the shape
    of each key's dataset (in file order) of an open features file, after checking what readers rely
    on: those two attributes are well-formed JSON, ``layers`` are integers, no key has a ``.`` or ``..``
    part, and every dataset holds float features of the stored layers and one width. :class:`OutputError` naming the file and the
    attribute or key otherwise. One pass over the datasets' metadata (no data is read), in which
    ``visit(key, dataset)`` is called for each, if given."""
    if GROUP in f and not isinstance(f.get(GROUP), h5py.Group):
        raise OutputError(f"{path}: '/{GROUP}' is not a group of features (it is a dataset); not a features file lhb wrote")
    attrs = {k: plain(v) for k, v in f.attrs.items()}
    for name, kind, what in (("subnet", dict, "a JSON object"), ("skipped", list, "a JSON list of {key, path, reason}")):
        value = attrs.get(name)
        if value is None:
            continue
        try:
            value = json.loads(value) if isinstance(value, str) else value
        except ValueError as err:
            raise OutputError(f"{path}: attribute {name!r} is not valid JSON ({err})") from None
        if not isinstance(value, kind) or (name == "skipped" and not all(
                isinstance(e, dict) and {"key", "path", "reason"} <= set(e) for e in value)):
            raise OutputError(f"{path}: attribute {name!r} is not {what}")
        attrs[name] = value
    if "layers" not in attrs:  # else blamed on the user: "--layer: FILE holds layers []; say which one"
        raise OutputError(f"{path}: has no 'layers' attribute (which hidden states it holds), which every lhb run "
                          "writes; not read")
    layers = np.atleast_1d(np.asarray(attrs.get("layers", [])))
    if layers.ndim != 1 or (layers.size and layers.dtype.kind not in "iu"):
        raise OutputError(f"{path}: attribute 'layers' is not a list of hidden-state indices ({_short(attrs.get('layers'))})")
    names = keys(f)
    dim = attrs.get("embed_dim")
    if not isinstance(dim, int):  # a file from before the attribute: the first dataset's width
        dim = next((f[GROUP][k].shape[-1] for k in names if f[GROUP][k].ndim), None)
    n = layers.size
    shapes: dict[str, tuple[int, ...]] = {}
    group = f[GROUP] if names else None
    gid = group.id if names else None
    for k in names:
        if any(part in (".", "..") for part in k.split("/")):  # h5py allows them; as paths they lead out of a folder
            raise OutputError(f"{path}: dataset '{GROUP}/{k}' has '.' or '..' in its key, which no lhb run writes "
                              "(written as files, it would land outside their folder); not read")
        if CONTROL.search(k):  # a new line in a key splits the lines of a .keys, .len or .km file
            raise OutputError(f"{path}: dataset {GROUP + '/' + k!r} has a control character in its key, which no lhb "
                              "run writes; not read")
        ds = h5py.h5d.open(gid, k.encode())  # not an h5py Dataset: twice as fast, for 281,241 keys too
        shape = ds.shape
        layout = (len(shape) == 2 and n <= 1) or (len(shape) == 3 and shape[0] == n)  # one layer: (T, D)
        if ds.dtype.kind != "f" or not layout or shape[-1] != dim:
            want = f"(T, {dim})" if n <= 1 else f"({n}, T, {dim})"
            got = "a scalar" if not shape else f"shape {shape}"
            raise OutputError(f"{path}: dataset '{GROUP}/{k}' holds {got} of {ds.dtype}, not features of shape {want} "
                              f"(layers {layers.tolist()}, width {dim})")
        shapes[k] = shape
        if visit is not None:
            visit(k, h5py.Dataset(ds))
    return attrs, shapes


def merge(output: Path, parts: list[Path], *, include_output: bool, complete: bool | None = None,
          inputs: Collection[str] | None = None, verify: bool = False) -> int:
    """Join ``parts`` (and OUTPUT itself when ``include_output``) into a new file that replaces
    OUTPUT atomically (written, fsynced, renamed). All must come from the same run settings; a key in
    two files is an error unless the datasets are equal. ``complete`` (default: every source says so)
    is recorded. On any failure (a full disk too) the new file is removed and OUTPUT and ``parts`` are
    as they were. ``verify``: every compressed chunk of ``parts`` is decompressed first (chunks are
    otherwise copied as stored, a damaged one too). Returns the number of utterances."""
    refuse_special(output)  # a FIFO would be read forever, a device never replaced
    for p in parts:
        if os.path.exists(p) and not os.path.isfile(p):
            raise OutputError(f"{p}: is not a regular file, so not a part to merge")
    sources = ([output] if include_output and output.exists() else []) + list(parts)
    if not sources:
        raise OutputError(f"{output}: nothing to merge")
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{os.urandom(4).hex()}.merging")
    try:  # an ordinary new file (the umask applies), unlike mkstemp's 0600
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        raise OutputError(f"{output}: cannot write next to it ({_reason(err)})") from None
    try:
        n = _merge_into(tmp, sources, complete, inputs, set(parts) if verify else set())
        _fsync(tmp)
        replace_keeping_mode(tmp, output)
        _fsync(output.parent if str(output.parent) else Path("."))
        return n
    except (OSError, RuntimeError) as err:  # ENOSPC, EIO from h5py: nothing changed
        # a full disk in HDF5's own words ("Disable slist on ...") is still a full disk
        reason = os_words(err) or (NO_SPACE if _short_of_room(tmp, sources) else os_reason(err))
        raise OutputError(f"{output}: merging failed: {reason}; {output} and the files to merge are kept as "
                          "they were") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _short_of_room(tmp: Path, sources: list[Path]) -> bool:
    """After a failed merge: whether the disk lacks room for the rest of the copy (HDF5 often reports
    a full disk in words of its own, without the OS error)."""
    try:
        written = tmp.stat().st_size if tmp.exists() else 0
        need = sum(p.stat().st_size for p in sources) - written
        return shutil.disk_usage(tmp.parent).free < need + FeatureWriter.RESERVE
    except OSError:
        return False


def _check_chunks(path: Path, key: str, ds: h5py.Dataset) -> None:
    """Decompress each chunk of a compressed dataset (one chunk in memory at a time): an
    :class:`OutputError` naming the file and key if one is damaged. Uncompressed data has no check."""
    if ds.chunks is None or ds.id.get_create_plist().get_nfilters() == 0:
        return
    try:
        for chunk in ds.iter_chunks():
            ds[chunk]
    except (OSError, RuntimeError) as err:  # h5py: 'filter returned failure during read'
        raise OutputError(f"{path}: {key}: cannot be read, the file is damaged ({damage(err)}); nothing was "
                          "merged") from None


def _merge_into(tmp: Path, sources: list[Path], complete: bool | None, inputs: Collection[str] | None = None,
                verify: Collection[Path] = ()) -> int:
    skipped: dict[str, dict] = {}
    owner: dict[str, Path] = {}  # the file each key was taken from
    identity: dict | None = None
    with h5py.File(tmp, "w", libver=("v108", "latest")) as dst:
        group = dst.create_group(GROUP)
        for path in sources:
            try:
                src = h5py.File(path, "r")
            except OSError as err:
                raise OutputError(f"{path}: cannot be opened ({open_reason(err)})") from None
            with src:
                if plain(src.attrs.get("format")) != FORMAT:
                    raise OutputError(f"{path}: an HDF5 file, but not a lighthubert features file")
                attrs, shapes = read_features(path, src)
                ident = {k: plain(src.attrs.get(k)) for k in RUN_IDENTITY}
                if identity is None:
                    identity = ident
                    for k, v in src.attrs.items():
                        dst.attrs[k] = v
                elif diff := identity_diff(identity, ident):
                    raise OutputError(f"{path}: made with different settings ({', '.join(diff)}) than {sources[0]}")
                for entry in attrs.get("skipped") or []:
                    skipped[entry["key"]] = entry
                for key in shapes:
                    _check_nesting(path, key, group, owner)
                    if key in owner:
                        a, b = group[key][()], src[GROUP][key][()]
                        if not np.array_equal(a, b):
                            raise OutputError(f"{path}: key {key!r} is also in {owner[key]}, with other values "
                                              f"({_difference(a, b)})")
                        continue
                    owner[key] = path
                    if path in verify:
                        _check_chunks(path, key, src[GROUP][key])
                    parent = key.rsplit("/", 1)[0] if "/" in key else ""
                    dest_group = group.require_group(parent) if parent else group
                    src.copy(src[GROUP][key], dest_group, name=key.rsplit("/", 1)[-1])
                _copy_the_rest(src, dst)
        done = set(keys(dst))
        dst.attrs["skipped"] = json.dumps([v for k, v in skipped.items()
                                           if k not in done and (inputs is None or k in inputs)])
        dst.attrs["complete"] = all(_complete(p) for p in sources) if complete is None else complete
        dst.attrs["merged_from"] = len(sources)
        dst.attrs["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return len(done)


def _check_nesting(path: Path, key: str, group: h5py.Group, owner: Mapping[str, Path]) -> None:
    """``a`` and ``a/b`` cannot both be stored: an :class:`OutputError` naming both keys and files when
    ``key`` of ``path`` is a group of what the join holds already, or needs a group that is a key there.
    ``owner`` holds every key joined so far, so HDF5 is asked only about a name that is not one of them."""
    if key not in owner and key in group:  # a group of the join
        other = next((k for k in sorted(owner) if k.startswith(key + "/")), None)
        if other is None:  # an empty group another file left (its keys deleted by some tool): the key takes its place
            del group[key]
        else:
            raise OutputError(f"{path}: key {key!r} is a group in {owner[other]}, which holds {other!r}; "
                              "one file cannot hold both")
    parts = key.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in owner:
            raise OutputError(f"{path}: key {key!r} needs a group {prefix!r}, which {owner[prefix]} holds as a key; "
                              "one file cannot hold both")


def _copy_the_rest(src: h5py.File, dst: h5py.File) -> None:
    """What a user added to a features file besides its features (other groups and datasets, attributes
    of ``/features`` and its subgroups) goes into the joined file too, the first file's where two have
    one name: a join must not lose it."""
    for name in src:
        if name == GROUP or name in dst or dst.get(name, getlink=True) is not None:
            continue
        link = src.get(name, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            dst[name] = link  # a link stays a link (its target may be missing: that is the user's)
        else:
            try:
                src.copy(src[name], dst, name=name)
            except (KeyError, OSError, RuntimeError):
                pass  # an object HDF5 cannot open: the features are what the join is for

    def attrs_of(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group):
            if isinstance(dst[GROUP].get(name), h5py.Dataset):  # an empty group named as another file's key
                return
            target = dst[GROUP].require_group(name)
            for k, v in obj.attrs.items():
                if k not in target.attrs:
                    target.attrs[k] = v

    if GROUP not in src:
        return
    src[GROUP].visititems(attrs_of)
    for k, v in src[GROUP].attrs.items():
        if k not in dst[GROUP].attrs:
            dst[GROUP].attrs[k] = v


def _difference(a: np.ndarray, b: np.ndarray) -> str:
    """How two stored arrays of one key differ, in words: shapes, or the largest relative difference
    (features of one input from two runs batched differently differ by float rounding, ~1e-6)."""
    if a.shape != b.shape:
        return f"shapes {a.shape} and {b.shape}"
    a, b = a.astype(np.float64), b.astype(np.float64)
    scale = max(float(np.abs(a).max(initial=0.0)), 1e-30)
    return f"largest difference {float(np.abs(a - b).max()) / scale:.1e} of the largest value"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return bool(f.attrs.get("complete", False))


def _as_joined(path: Path, complete: bool, inputs: Collection[str] | None) -> int | None:
    """OUTPUT's utterance count when it already is what joining it alone would make (``complete`` as
    asked, no skipped entry of a key outside ``inputs``; None: any list is current), else None. One open."""
    with h5py.File(path, "r") as f:
        if bool(f.attrs.get("complete", False)) != complete:
            return None
        if inputs is not None and any(entry["key"] not in inputs
                                      for entry in json.loads(plain(f.attrs.get("skipped", "[]")) or "[]")):
            return None
        return len(set(keys(f)))


def num_samples(path: str | os.PathLike, key: str, ds: h5py.Dataset) -> int:
    """The ``num_samples`` attribute of ``key``'s dataset (0 when absent); a :class:`FeaturesError`
    naming the file and key when another tool wrote something else there."""
    value = plain(ds.attrs.get("num_samples", 0))
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    if not whole or value < 0:
        raise FeaturesError(f"{path}: {key}: attribute 'num_samples' is not a number of samples ({_short(value)})")
    return int(value)


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes plus utterance count, total frames, audio duration, layers and dims."""
    try:
        with h5py.File(path, "r") as f:
            if plain(f.attrs.get("format")) != FORMAT:
                raise OutputError(f"{path}: an HDF5 file, but not a lighthubert features file")
            samples = 0

            def add_samples(key: str, ds: h5py.Dataset) -> None:
                nonlocal samples
                samples += num_samples(path, key, ds)

            attrs, shapes = read_features(path, f, add_samples)
            frames = sum(shape[-2] for shape in shapes.values())
            dims = {tuple(shape[:-2]) + (shape[-1],) for shape in shapes.values()}
    except OSError as err:
        raise OutputError(f"{path}: cannot be read ({open_reason(err)})") from None
    return {
        "attributes": attrs,
        "utterances": len(shapes),
        "frames": frames,
        "audio_seconds": samples / 16000,
        "feature_dims": sorted(dims),
    }


class FeatureReader:
    """A features file open to read (:class:`lighthubert.storage.FeaturesReader`)."""

    def __init__(self, path: str | os.PathLike, *, check: bool = True):
        self.path = Path(path)
        self.attrs: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._file: h5py.File | None = _open_to_read(self.path) if check else h5py.File(self.path, "r")
        if check:
            try:
                self.attrs, self.shapes = read_features(self.path, self._file)
            except OutputError as err:
                self.close()
                raise FeaturesError(str(err)) from None

    def _dataset(self, key: str) -> h5py.Dataset:
        if self._file is None:
            raise FeaturesError(f"{self.path}: is closed; open it again to read")
        return self._file[GROUP][key]

    def read(self, key: str, positions: int | list[int] | None = None) -> np.ndarray:
        ds = self._dataset(key)
        try:
            x = _read(ds, positions)
            return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))  # big-endian floats of another tool
        except MemoryError:
            raise FeaturesError(f"{self.path}: {key}: declares {ds.shape} features "
                                f"({ds.size * ds.dtype.itemsize / 2**30:,.1f} GiB), more than memory holds") from None
        except (OSError, RuntimeError, KeyError) as err:  # a damaged chunk (h5py: 'filter returned failure')
            raise FeaturesError(f"{self.path}: {key}: cannot be read, the file is damaged ({damage(err)})") from None

    def num_samples(self, key: str) -> int:
        return num_samples(self.path, key, self._dataset(key))

    def source(self, key: str) -> str:
        value = plain(self._dataset(key).attrs.get("source", ""))
        return value if isinstance(value, str) else ""  # another tool's number or list: no file named

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_to_read(path: Path) -> h5py.File:
    """``path`` opened read-only after checking it is an HDF5 features file; :class:`FeaturesError`
    saying what it is otherwise."""
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


def _read(ds: h5py.Dataset, pos: int | list[int] | None) -> np.ndarray:
    if pos is None:
        return ds[()]
    if ds.ndim == 2:  # one stored layer
        return ds[()] if isinstance(pos, int) else ds[()][None][[0] * len(pos)]  # [L, L] gives 2 x the layer
    if isinstance(pos, int):
        return ds[pos]
    if pos == sorted(set(pos)):
        return ds[pos]  # h5py fancy indexing needs increasing indices
    return ds[()][pos]


SEGMENT_BYTES = 64 << 20
"""A segment is committed once it holds this many bytes of features (or at each flush, about every second)."""


class SegmentWriter:
    """A :class:`~lighthubert.storage.FeaturesWriter` for OUTPUT that never modifies a committed file.

    Utterances go into the current segment (``OUTPUT.parts/seg-RANK-INDEX.h5.tmp``, a features file of
    its own); :meth:`flush` commits it: closed, fsynced, renamed to ``seg-RANK-INDEX.h5``. A failed
    write or commit discards only the current segment (at most about a second of work) and raises
    :class:`OutputError` with ``broken`` set; committed segments stay for ``--resume``."""

    def __init__(self, output: Path, attrs: Mapping[str, Any], *, compression: str | None = None, rank: int = 0,
                 max_bytes: int = SEGMENT_BYTES):
        self.path, self.attrs, self.compression, self.rank = output, dict(attrs), compression, rank
        self.max_bytes = max_bytes
        self.done: set[str] = set()
        self.broken = False
        self.current: FeatureWriter | None = None
        self.bytes = 0
        self.pending_skips: list[dict] = []  # appended from the compute thread, taken at commit
        self.folder = parts_dir(output)  # made with the first segment
        mine = find_segments(output, SUFFIX, rank=rank)
        self.index = max((int(p.name.split(".")[0].rsplit("-", 1)[1]) for p in mine), default=0) + 1

    def _open(self) -> FeatureWriter:
        if self.current is None:
            tmp = segment_path(self.path, self.rank, self.index, SUFFIX + ".tmp")
            try:
                self.folder.mkdir(exist_ok=True)
                self.current = FeatureWriter(tmp, self.attrs, compression=self.compression)
            except (OSError, OutputError, RuntimeError) as err:
                raise self._fail(err) from None
            self.bytes = 0
        return self.current

    def _fail(self, err: BaseException) -> OutputError:
        """Discard the current segment; the error for the user."""
        self.broken = True
        cur, self.current = self.current, None
        if cur is not None:
            try:
                if cur.file:
                    cur.file.close()
            except Exception:  # noqa: BLE001 - the segment is dropped anyway
                pass
            try:
                cur.path.unlink()
            except OSError:
                pass
        reason = os_reason(err)
        return OutputError(f"{self.path}: writing failed: {reason}; the work committed before is kept in {self.folder}: "
                           "fix the cause, then run the same command with --resume")

    def write(self, key: str, data: np.ndarray, *, source: str, num_samples: int, windows: int = 0) -> None:
        free = shutil.disk_usage(self.folder if self.current else (self.path.parent or Path('.'))).free
        if free < data.nbytes + FeatureWriter.RESERVE:  # stop before the disk is full: the segment stays good
            raise OutputError(f"{self.path}: {_no_room(free, data.nbytes)}; the work done so far is kept: free space, "
                              "then run the same command with --resume")
        cur = self._open()  # its failure is already the user's line (and discards the segment)
        try:
            cur.write(key, data, source=source, num_samples=num_samples, windows=windows)
        except (OutputError, OSError, RuntimeError) as err:  # OutputError: the space went since the check above
            raise self._fail(err) from None
        self.done.add(key)
        self.bytes += data.nbytes
        if self.bytes >= self.max_bytes:
            self.flush()

    def skip(self, key: str, source: str, reason: str) -> None:
        self.pending_skips.append({"key": key, "path": source, "reason": reason})

    def flush(self) -> None:
        """Commit the current segment (and the skipped inputs recorded since the last commit)."""
        if self.broken or (self.current is None and not self.pending_skips):
            return
        try:
            cur = self._open()
            taken, self.pending_skips = self.pending_skips, []
            cur.skipped.extend(taken)
            cur.close(complete=False)
            final = segment_path(self.path, self.rank, self.index, SUFFIX)
            _fsync(cur.path)
            os.replace(cur.path, final)
            _fsync(self.folder)
        except (OSError, RuntimeError) as err:
            raise self._fail(err) from None
        self.current = None
        self.index += 1

    def close(self, complete: bool) -> None:
        """Commit what is written (``complete`` is recorded by the join, not in segments)."""
        self.flush()


def create(output: Path, attrs: Mapping[str, Any]) -> None:
    """A new, empty, valid OUTPUT, atomically (no ``finished`` time: the run has just begun)."""
    FeatureWriter(output, attrs).close(complete=False, finished=False)


def committed(output: Path, attrs: Mapping[str, Any], *, include_output: bool) -> set[str]:
    """Keys of OUTPUT (when ``include_output``) and its committed segments and parts, each checked
    against the run identity of ``attrs``."""
    sources = ([output] if include_output and output.exists() else []) + find_committed(output, SUFFIX)
    found: set[str] = set()
    for path in sources:
        if not path.is_file():  # a FIFO named like a segment would be read forever
            raise OutputError(f"{path}: is not a regular file, so not a segment lhb wrote; move it away")
        try:
            with h5py.File(path, "r") as f:
                check_identity(path, dict(f.attrs), attrs)
                found |= set(keys(f))
        except (OSError, RuntimeError) as err:
            if _LOCK_FAILED.search(str(err)):  # nothing is wrong with the file: no advice that would lose it
                raise OutputError(f"{path}: cannot be read to resume ({open_reason(err)})") from None
            advice = "use --overwrite to start again" if path == output else (
                f"move or delete this one file (--resume then extracts its utterances again), or use --overwrite "
                f"to start over (it deletes all of {parts_dir(output)})")
            raise OutputError(f"{path}: cannot be read to resume ({open_reason(err)}); {advice}") from None
    return found


def unjoined(output: Path) -> list[Path]:
    """See :meth:`lighthubert.storage.Backend.unjoined`; a file that cannot be read counts as unjoined
    (its work is not known to be in OUTPUT)."""
    try:
        with h5py.File(output, "r") as f:
            have = set(keys(f))
    except (OSError, RuntimeError, KeyError):
        have = set()
    out = []
    for path in find_committed(output, SUFFIX):
        try:
            with h5py.File(path, "r") as f:
                if set(keys(f)) <= have:
                    continue
        except (OSError, RuntimeError, KeyError):
            pass
        out.append(path)
    return out


def join(output: Path, *, include_output: bool, complete: bool, inputs: Collection[str] | None = None) -> int:
    """Merge OUTPUT (when ``include_output``), its segments and parts into OUTPUT; then remove them.
    ``inputs``: the run's input keys; skipped entries of other keys (files no longer given) are dropped."""
    sources = find_committed(output, SUFFIX)
    if not sources and include_output and output.exists() and (n := _as_joined(output, complete, inputs)) is not None:
        remove_parts(output, SUFFIX)
        return n  # nothing new: OUTPUT is left as it is
    n = merge(output, sources, include_output=include_output, complete=complete, inputs=inputs)
    remove_parts(output, SUFFIX)
    return n


class Hdf5Backend:
    """This module as a :class:`lighthubert.storage.Backend`."""

    name = "hdf5"
    suffix = SUFFIX

    def open_writer(self, output: Path, attrs: Mapping[str, Any], *, compression: str | None,
                    rank: int = 0) -> SegmentWriter:
        return SegmentWriter(output, attrs, compression=None if compression in (None, "none") else compression,
                             rank=rank)

    def create(self, output: Path, attrs: Mapping[str, Any]) -> None:
        create(output, attrs)

    def committed(self, output: Path, attrs: Mapping[str, Any], *, include_output: bool) -> set[str]:
        return committed(output, attrs, include_output=include_output)

    def check_resume(self, output: Path, attrs: Mapping[str, Any]) -> None:
        try:
            with h5py.File(output, "r") as f:
                old = dict(f.attrs)
        except (OSError, RuntimeError, KeyError):
            return
        check_identity(output, old, attrs)

    def join(self, output: Path, *, include_output: bool, complete: bool, inputs: Collection[str] | None = None) -> int:
        return join(output, include_output=include_output, complete=complete, inputs=inputs)

    def merge(self, output: Path, parts: list[Path], *, include_output: bool, complete: bool | None = None,
              verify: bool = False) -> int:
        return merge(output, parts, include_output=include_output, complete=complete, verify=verify)

    def describe(self, path: Path) -> dict[str, Any]:
        return describe(path)

    def unjoined(self, output: Path) -> list[Path]:
        return unjoined(output)

    def sources(self, paths: Iterable[Path], keys: Iterable[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        wanted = set(keys)
        for path in paths:
            try:
                with h5py.File(path, "r") as f:
                    group = f[GROUP] if GROUP in f else {}
                    for key in wanted - set(found):
                        if key in group:
                            found[key] = plain(group[key].attrs.get("source", ""))
            except OSError as err:
                raise OutputError(f"{path}: cannot be read ({open_reason(err)})") from None
        return found

    def is_features_file(self, path: Path) -> bool:
        if not os.path.isfile(path):  # a FIFO would wait for a writer; a device is never one
            return False
        try:
            with open(path, "rb") as f:
                return f.read(8) == MAGIC
        except OSError:
            return False

    def open_reader(self, path: Path, *, check: bool = True) -> FeatureReader:
        return FeatureReader(path, check=check)
