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

import errno
import fcntl
import glob
import json
import os
import re
import socket
import stat
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, Protocol

import numpy as np

from ..errors import LightHubertError, LightHubertWarning
from ..files import link_target, name_max, same_file  # noqa: F401 - same_file: storage.same_file, as callers import it

FORMAT = "lighthubert-features"
UNITS_FORMAT = "lighthubert-units"  # lhb units apply's .h5: /units/KEY (T,) ints
FORMAT_VERSION = 1
FRAME_RATE = 50.0
# The names HDF5 files go by (compared lower-case: see :func:`hdf5_name`).
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
# Root attributes that must match for resume to add to a file, and for merge to join files.
RUN_IDENTITY = ("format", "layers", "subnet", "checkpoint_sha256", "checkpoint", "normalize", "dtype",
                "compute_dtype", "exact_seconds", "window_seconds", "context_seconds")


IDENTITY_OPTIONS = {"layers": "--layers", "subnet": "--subnet", "checkpoint": "-c", "checkpoint_sha256": "-c",
                    "dtype": "--save-dtype", "compute_dtype": "--dtype", "exact_seconds": "--exact-seconds",
                    "window_seconds": "--window-seconds", "context_seconds": "--context-seconds"}
"""The lhb extract option that sets each identity attribute (a refused --resume names both)."""


class OutputError(LightHubertError):
    """OUTPUT cannot be written (or resumed, or merged); the message names the file and the reason."""


class OutputBroken(OutputError):
    """A write failed inside the storage library: its in-memory state is not to be trusted, so the
    file was left as of its last flush. A process should exit without running finalisers."""


class FeaturesWriter(Protocol):
    """What a run writes into OUTPUT (committed pieces, see :meth:`Backend.open_writer`). ``done``
    holds the keys written, and those already committed when the job sets it before the run."""

    path: Path
    done: set[str]
    broken: bool
    """True once a write failed inside the storage library (nothing more is written then)."""

    def write(self, key: str, data: np.ndarray, *, source: str, num_samples: int, windows: int = 0) -> None:
        """Store one utterance whole: ``data`` (T, D) or (L, T, D); raises :class:`OutputError`."""

    def skip(self, key: str, source: str, reason: str) -> None:
        """Record a skipped input (kept in the file at the next flush)."""

    def flush(self) -> None:
        """Commit everything written so far (durable; a later failure cannot undo it)."""

    def close(self, complete: bool) -> None:
        """Commit what is written and close (no-op after a failed write)."""


class FeaturesError(LightHubertError):
    """A features file cannot be read (or lacks what was asked for); the message names the file."""


class FeaturesReader(Protocol):
    """An open features file, read-only (see :meth:`Backend.open_reader`)."""

    path: Path
    attrs: dict[str, Any]
    """Root attributes as plain Python (``subnet`` and ``skipped`` decoded from JSON)."""
    shapes: dict[str, tuple[int, ...]]
    """Key -> the shape of its features, (T, D) or (L, T, D), in file order."""

    def read(self, key: str, positions: int | list[int] | None = None) -> np.ndarray:
        """The features of ``key``: all of them as stored (None), the layer at one position in the
        file ((T, D)) or those at a list of positions ((len, T, D), in that order). Only what is
        asked for is read; a damaged or absurd dataset is a :class:`FeaturesError` naming the key."""

    def num_samples(self, key: str) -> int:
        """Audio samples (16 kHz) of ``key``."""

    def source(self, key: str) -> str:
        """The audio file ``key`` came from."""

    def close(self) -> None:
        """Close the file (again: nothing)."""


class Backend(Protocol):
    """A storage format: the only thing the job and the reader know about files."""

    name: str
    suffix: str

    def open_writer(self, output: Path, attrs: Mapping[str, Any], *, compression: str | None,
                    rank: int = 0) -> FeaturesWriter:
        """A writer that never modifies a committed file: it adds segments of OUTPUT (see
        :func:`segment_path`) for this rank, each committed whole; :meth:`join` puts them into OUTPUT."""

    def create(self, output: Path, attrs: Mapping[str, Any]) -> None:
        """A new, empty, valid OUTPUT, atomically (replacing an old one only once it is ready)."""

    def committed(self, output: Path, attrs: Mapping[str, Any], *, include_output: bool) -> set[str]:
        """The keys OUTPUT (when ``include_output``) and its committed segments and parts hold, after
        checking that each was made with the run identity of ``attrs`` (:class:`OutputError` if not)."""

    def check_resume(self, output: Path, attrs: Mapping[str, Any]) -> None:
        """Before any work: :class:`OutputError` if OUTPUT, there already, was made with another run
        identity than ``attrs``. A file that cannot be read now is left to :meth:`committed` (which
        says why, with the run's lock held), and so are the segments and parts."""

    def join(self, output: Path, *, include_output: bool, complete: bool, inputs: Collection[str] | None = None) -> int:
        """Join OUTPUT (when ``include_output``), its committed segments and parts into a new OUTPUT that
        replaces it atomically, then remove them; on failure all stay as they were. Returns the count.
        ``inputs`` (the run's input keys): skipped entries of other keys are dropped."""

    def merge(self, output: Path, parts: list[Path], *, include_output: bool, complete: bool | None = None,
              verify: bool = False) -> int:
        """Join ``parts`` (and OUTPUT when ``include_output``) into a new OUTPUT, atomically; returns
        the number of utterances. Different run identities or different values for one key are errors;
        with ``verify`` (``lhb merge``, whose parts may be deleted next), so is damaged data in ``parts``
        that the format can detect."""

    def unjoined(self, output: Path) -> list[Path]:
        """The committed segments and parts of OUTPUT holding work OUTPUT does not hold yet (after a
        ``lhb merge`` without ``--remove-parts`` they are all still there, and all in OUTPUT)."""

    def describe(self, path: Path) -> dict[str, Any]:
        """Root attributes plus utterance count, frames, audio seconds and feature dims."""

    def sources(self, paths: Iterable[Path], keys: Iterable[str]) -> dict[str, str]:
        """The recorded ``source`` (audio path) of those ``keys`` that ``paths`` hold (first found)."""

    def is_features_file(self, path: Path) -> bool:
        """Whether ``path`` looks like a file of this format (a cheap check of its first bytes)."""

    def open_reader(self, path: Path, *, check: bool = True) -> FeaturesReader:
        """Open a features file to read. ``check``: read its attributes and every key's shape, and
        check what readers rely on (:class:`FeaturesError` naming the file and what is wrong);
        without it (a second handle on a file checked before) ``attrs`` and ``shapes`` are empty."""


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str | None = None) -> Backend:
    """The backend ``name`` (default: :data:`lighthubert.defaults.OUTPUT_FORMAT`)."""
    from ..defaults import OUTPUT_FORMAT

    try:
        return BACKENDS[name or OUTPUT_FORMAT]
    except KeyError:
        raise OutputError(f"unknown output format {name!r}; known: {', '.join(BACKENDS)}") from None


def claimed_by(path: str | os.PathLike) -> Backend | None:
    """The backend whose format ``path`` is in (by its first bytes), or None."""
    return next((b for b in BACKENDS.values() if b.is_features_file(Path(path))), None)


def backend_of(path: str | os.PathLike) -> Backend:
    """:func:`claimed_by`, else the default backend (whose reader then says what the file is not)."""
    return claimed_by(path) or get_backend()


def hdf5_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like an HDF5 file (``feats.H5`` too)."""
    return Path(path).suffix.lower() in HDF5_SUFFIXES


def plain(v: Any) -> Any:
    """An attribute value as plain Python (numpy arrays and scalars, bytes)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        v = v.item()  # np.bytes_ gives bytes: decoded below
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return v


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The :data:`RUN_IDENTITY` attributes on which two runs differ."""
    return [k for k in RUN_IDENTITY if plain(old.get(k)) != plain(new.get(k))]


def check_identity(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Resuming ``path`` (attributes ``old``) with settings ``new``: :class:`OutputError` naming the
    settings that differ and how (a file from before an identity attribute existed differs too).
    An HDF5 file that is not a features file at all is refused as such, not as a list of differences."""
    if plain(old.get("format")) != FORMAT:
        what = "a units file (lhb units apply)" if plain(old.get("format")) == UNITS_FORMAT else "an HDF5 file"
        raise OutputError(f"{path}: {what}, but not a lighthubert features file; use --overwrite to replace it, "
                          "or another OUTPUT")
    diff = sorted(identity_diff(old, new), key=lambda k: k != "subnet")  # a subnet changes layers too
    if diff:
        what = " and ".join(f"{k} ({IDENTITY_OPTIONS[k] + ': ' if k in IDENTITY_OPTIONS else ''}"
                            f"{_what_differs(old.get(k), new.get(k))})" for k in diff)
        raise OutputError(f"{path}: was made with a different {what}; use --overwrite to replace it, or another OUTPUT")


def _short(v: Any, width: int = 40) -> str:
    """A value for a message: ``[384]*12`` for a list of one value, else JSON cut to ``width``."""
    if isinstance(v, list) and len(v) > 1 and len({json.dumps(x, default=repr) for x in v}) == 1:
        return f"[{json.dumps(v[0], default=repr)}]*{len(v)}"
    text = json.dumps(v, default=repr) if isinstance(v, (list, dict)) else repr(v)  # (bytes in a damaged file)
    if len(text) <= width:
        return text
    cut = text[: width - 4]
    if isinstance(v, (list, dict)) and ", " in cut:  # at an item's end: '[0, 1, ... 10, 1 ...' read as a layer 1
        cut = cut[: cut.rindex(", ") + 1]
    return cut + " ..."


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


def resampler() -> str:
    """How audio at other rates reaches 16 kHz (SPEC §4), for the root attribute ``resampler``; the
    torchaudio version is read from the installed metadata (torchaudio itself is not imported)."""
    try:
        version = metadata.version("torchaudio")
    except metadata.PackageNotFoundError:
        version = "not installed"
    return f"torchaudio.functional.resample, default arguments (torchaudio {version})"


def run_attrs(*, layers: list[int], subnet: dict, checkpoint: str, checkpoint_sha256: str | None,
              normalize: bool, random_weights: bool, params: int, dtype: str, compute_dtype: str, version: str,
              exact_seconds: float, window_seconds: float, context_seconds: float, num_layers: int,
              embed_dim: int, supernet_sha256: str | None = None) -> dict[str, Any]:
    """The root attributes of a features file. ``layers``: hidden-state indices, or ``[-1]`` for the
    final output of a pre-norm model; ``dtype`` is the stored dtype, ``compute_dtype`` the model's.
    Long files: exact up to ``exact_seconds`` (0: all), windowed (window, context) beyond.
    ``supernet_sha256``: the supernet file the weights come from (an exported subnet's source)."""
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
        "supernet_sha256": supernet_sha256 or checkpoint_sha256 or "",
        "random_weights": bool(random_weights),
        "normalize": bool(normalize),
        "dtype": dtype,
        "compute_dtype": compute_dtype,
        "long_files": (f"exact up to {exact_seconds:g} s, then windowed ({window_seconds:g} s windows, "
                       f"{context_seconds:g} s context)") if exact_seconds else "exact",
        "exact_seconds": float(exact_seconds),
        "window_seconds": float(window_seconds),
        "context_seconds": float(context_seconds),
        "resampler": resampler(),
        "package_version": f"lighthubert {version}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(path: str | os.PathLike, st: os.stat_result | None = None) -> str | None:
    """What the existing ``path`` is when it is not a regular file ("a FIFO", "a folder", ...), else None."""
    if st is None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
    return next((kind for test, kind in _KINDS if test(st.st_mode)), None)


def refuse_special(out: Path, st: os.stat_result | None = None) -> None:
    """An :class:`OutputError` when the existing ``out`` is not a regular file (a folder, FIFO, device
    or socket): OUTPUT is never replaced by one, nor read as one (reading a FIFO would wait forever)."""
    kind = special_kind(out, st)
    if kind:
        hint = f"; give a file name such as {out / 'features.h5'}" if kind == "a folder" else ""
        raise OutputError(f"{out}: is {kind}, not a regular file; OUTPUT is never replaced unless it is one{hint}")


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """Unless ``overwrite``, an :class:`OutputError` naming the first of ``paths`` (files about to be
    written) that is an existing regular file, also through a link: a finished file is replaced only
    when asked (``--overwrite``). FIFOs and devices are written to, not replaced, so they pass."""
    there = [] if overwrite else [p for p in paths if os.path.isfile(p)]
    if there:
        more = f" (and {len(there) - 1} more of the files to write)" if len(there) > 1 else ""
        raise OutputError(f"{there[0]}: already exists{more}; pass --overwrite to replace it")


def resolve_link(out: Path) -> Path:
    """OUTPUT as the file to write: a symbolic link is followed to the path it points to (also when that
    file does not exist yet), so the file replaced is the link's target and the link stays, as other
    tools' writes through a link do. A loop, or a target whose folder is missing, is an :class:`OutputError`."""
    target = link_target(out)
    if target == out:
        return out
    if target.is_symlink():
        raise OutputError(f"{out}: is a symbolic link that leads round in a loop; give the file itself")
    if not target.parent.is_dir():
        raise OutputError(f"{out}: is a symbolic link to {target}, whose folder does not exist")
    return target


TEMP_NAME_EXTRA = len(".{}.4194304.0123abcd.merging") - 2
"""What the longest temporary name beside OUTPUT adds to OUTPUT's name (a pid of up to 7 digits)."""


def check_output_path(path: str | os.PathLike, *, resume: bool, overwrite: bool,
                      inputs: Iterable[str | os.PathLike] = (), backend: Backend | None = None) -> Path:
    """Fail early (before any audio is read) when OUTPUT cannot be written: its folder is missing or
    read-only, it exists without ``resume``/``overwrite``, it is not a regular file (a device, FIFO or
    folder is never replaced), or it is one of ``inputs`` (the same file under any name). With a
    ``backend``, an existing OUTPUT that is not a file of its format is not offered ``--resume``."""
    out = resolve_link(Path(path))
    if not out.name:  # ".", "/": no file name at all (Path("x/..") has one, and is found a folder below)
        raise OutputError(f"{path}: is a folder; give a file name such as {Path(path) / 'features.h5'}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{out}: {folder} is not a folder" if folder.exists() else
                          f"{out}: the folder {folder} does not exist")
    try:  # the real test: permissions, read-only filesystems, ACLs
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputError(f"{out}: the folder {folder} is not writable ({err.strerror})") from None
    longest = name_max(folder)
    if len(os.fsencode(out.name)) + TEMP_NAME_EXTRA > longest:  # else only the final join fails, after all the work
        raise OutputError(f"{out}: the file name is too long ({len(os.fsencode(out.name))} bytes; lhb needs room for "
                          f"{TEMP_NAME_EXTRA} more in the names of its temporary files, and the folder takes {longest})")
    parts = parts_dir(out)
    if os.path.lexists(parts) and not parts.is_dir():  # where a run commits its work
        raise OutputError(f"{parts}: is not a folder; lhb keeps the work of a run for {out} there: move or remove it")
    try:
        st = out.stat()
    except OSError:
        return out  # absent (or a dangling link): created at the start of the run
    refuse_special(out, st)
    features = backend is None or backend.is_features_file(out)  # else a typo'd name, some other file
    if not (resume or overwrite):
        if not features:
            raise OutputError(f"{out}: already exists and is not a features file; choose another OUTPUT "
                              f"(--overwrite would replace it)")
        raise OutputError(f"{out}: already exists; pass --resume to complete it or --overwrite to replace it")
    if not os.access(out, os.W_OK):
        raise OutputError(f"{out}: is not writable")
    for p in inputs:
        try:
            s = os.stat(p)
        except (OSError, ValueError):  # absent, or not a file name (inline JSON, a released name)
            continue
        if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
            raise OutputError(f"{out}: is also an input ({p}); choose another OUTPUT")
    if resume and not overwrite and not features:
        raise OutputError(f"{out}: already exists and is not a features file to resume; choose another OUTPUT "
                          f"(--overwrite would replace it)")
    return out


NO_SPACE = "no space left on the device"


def os_words(err: BaseException) -> str | None:
    """A full disk, a file-size limit or EIO in words (also found inside h5py's many-line texts);
    None for any other error."""
    text = str(err)
    if "No space left" in text or "errno = 28" in text or getattr(err, "errno", None) == errno.ENOSPC:
        return NO_SPACE
    if "File too large" in text or "errno = 27" in text or getattr(err, "errno", None) == errno.EFBIG:
        return "file too large for this filesystem or limit"
    if "Input/output error" in text or "errno = 5" in text or getattr(err, "errno", None) == errno.EIO:
        return "input/output error (EIO)"
    if re.search(r"\d+ requested and \d+ written", text):  # numpy's short write: no errno
        return f"{NO_SPACE}, or a file size limit (a short write)"
    return None


def os_reason(err: BaseException) -> str:
    """Why a write failed, in words: :func:`os_words`, else the first part of the error's text."""
    return (os_words(err) or getattr(err, "strerror", None) or str(err).split("(", 1)[0].strip()
            or type(err).__name__)


_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
"""What a non-blocking lock call fails with when another process holds the lock; any other error
means the filesystem does not do that kind of lock (Lustre without ``-o flock``: ENOSYS; NFS without
a lock daemon: ENOLCK)."""


def _lock(fd: int) -> OSError | None:
    """Lock ``fd`` exclusively without waiting: ``flock``, else a POSIX ``lockf`` lock (some network
    filesystems do only that). Returns None once locked, the last error when the filesystem supports
    neither; raises the OSError of a lock another process holds."""
    for take in (fcntl.flock, fcntl.lockf):
        try:
            take(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except OSError as err:
            if err.errno in _HELD:
                raise
            unsupported = err
    return unsupported


class OutputLock:
    """An exclusive lock on OUTPUT for a whole run (its temporary files and parts too): ``flock`` (or
    a POSIX lock where only that works) on ``.OUTPUT.lock`` next to it, which holds the owner's pid and
    host. A second writer is refused with :class:`OutputError` naming the holder; the kernel releases
    the lock when a process dies. On a filesystem without locks the run goes on unlocked, after a
    :class:`~lighthubert.errors.LightHubertWarning` saying so."""

    def __init__(self, output: Path):
        self.output = output
        self.path = output.with_name(f".{output.name}.lock")
        self.fd: int | None = None

    def __enter__(self) -> "OutputLock":
        for _ in range(10):  # the file may be unlinked by its holder between our open and flock
            try:  # never through a link: the lock is truncated and written, and must not be another file
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as err:  # no inode left, a read-only folder, a symbolic link (ELOOP)
                if err.errno == errno.ELOOP:
                    raise OutputError(f"{self.output}: its lock {self.path} is a symbolic link, not a lock lhb made; "
                                      "remove the link (its target is left alone)") from None
                raise OutputError(f"{self.output}: cannot create the lock {self.path}: {os_reason(err)}") from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # a FIFO, a device, a hard link to another file
                os.close(fd)
                raise OutputError(f"{self.output}: its lock {self.path} is not a lock lhb made (a special file or a "
                                  "second name of another file); remove it")
            try:
                unsupported = _lock(fd)
            except OSError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise OutputError(f"{self.output}: is being written by {holder}; wait for it to end, "
                                  "or choose another OUTPUT") from None
            if unsupported is not None:
                warnings.warn(f"{self.output}: its filesystem takes no file locks ({unsupported.strerror}), so "
                              "nothing stops a second run writing OUTPUT at the same time", LightHubertWarning,
                              stacklevel=2)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                try:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"lhb pid {os.getpid()} on {socket.gethostname()}\n".encode())
                except OSError as err:  # a full disk: the lock file is ours to remove (we hold it)
                    self.fd = fd
                    self.__exit__()
                    raise OutputError(f"{self.output}: cannot write the lock {self.path}: {os_reason(err)}; "
                                      "nothing was written") from None
                self.fd = fd
                return self
            os.close(fd)
        raise OutputError(f"{self.output}: cannot take the lock {self.path}")

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def remove_stale_temps(output: Path) -> None:
    """Temporary files of runs that were killed (call with the :class:`OutputLock` held): partial
    new files, partial merges, and segments that were never committed."""
    folder = output.parent if str(output.parent) else Path(".")
    stale = [p for p in folder.glob(f".{glob.escape(output.name)}.*") if p.suffix in (".new", ".merging")]
    stale += list(parts_dir(output).glob("seg-*.tmp")) + list(parts_dir(output).glob(".seg-*.new"))
    for p in stale:
        try:
            p.unlink()
        except OSError:
            pass


# ----------------------------------------------------------------------------- parts of a run with several processes


def parts_dir(output: Path) -> Path:
    """``OUTPUT.parts/``: where the ranks of a run with several processes write their parts."""
    return output.with_name(output.name + ".parts")


def finished_path(output: Path) -> Path:
    """``OUTPUT.parts/FINISHED``: written once every rank of a ``--keep-parts`` run finished its share,
    so the parts are a whole job to merge, not the work of an interrupted run."""
    return parts_dir(output) / "FINISHED"


def part_path(output: Path, rank: int, suffix: str) -> Path:
    """The part of ``rank``: ``OUTPUT.parts/part-RANK`` and the backend's ``suffix``."""
    return parts_dir(output) / f"part-{rank:05d}{suffix}"


def find_parts(folder: Path, suffix: str, *, any_name: bool = False) -> list[Path]:
    """The part files in ``folder``, sorted; with ``any_name`` also the committed segments, or every
    ``*suffix`` file when neither is there."""
    found = sorted(folder.glob(f"part-*{suffix}"))
    if any_name:  # what lhb merge joins: parts and committed segments, or else every such file
        found += sorted(folder.glob(f"seg-*{suffix}"))
        return found or sorted(folder.glob(f"*{suffix}"))
    return found


def segment_path(output: Path, rank: int, index: int, suffix: str) -> Path:
    """A committed segment: ``OUTPUT.parts/seg-RANK-INDEX`` and the backend's ``suffix`` (written as
    ``....tmp`` until then)."""
    return parts_dir(output) / f"seg-{rank:05d}-{index:06d}{suffix}"


def find_segments(output: Path, suffix: str, rank: int | None = None) -> list[Path]:
    """The committed segments of OUTPUT (of one rank, or of all), oldest first per rank."""
    pattern = f"seg-{rank:05d}-*{suffix}" if rank is not None else f"seg-*{suffix}"
    return sorted(parts_dir(output).glob(pattern))


def find_committed(output: Path, suffix: str | None = None) -> list[Path]:
    """Everything a run of OUTPUT committed besides OUTPUT itself: its segments, then the parts of a
    run with several processes; files of the backend of ``suffix``, or of any registered backend."""
    if suffix is None:
        return [p for b in BACKENDS.values() for p in find_committed(output, b.suffix)]
    return find_segments(output, suffix) + find_parts(parts_dir(output), suffix)


def lhb_parts_files(suffix: str) -> tuple[str, ...]:
    """What lhb itself writes in ``OUTPUT.parts/`` with the backend of ``suffix``: segments (committed
    and not), parts, the srun store, the note."""
    return (f"seg-*{suffix}", "seg-*.tmp", ".seg-*.new", f"part-*{suffix}", ".store-*", "FINISHED")


def remove_parts(output: Path, suffix: str) -> None:
    """Remove lhb's own files (of the backend of ``suffix``) from ``OUTPUT.parts/``, then the folder
    once empty: anything else a user keeps there stays (with the folder)."""
    folder = parts_dir(output)
    for pattern in lhb_parts_files(suffix):
        for p in folder.glob(pattern):
            if not p.is_dir() or p.is_symlink():
                p.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # missing, or other files are there: they stay


def merge_parts(output: Path, parts: str | os.PathLike | Iterable[str | os.PathLike] | None = None, *, remove: bool = False,
                backend: Backend | None = None) -> tuple[int, list[Path]]:
    """``lhb merge``: join the part files in ``parts`` (files, or folders searched for ``*.h5``;
    default ``OUTPUT.parts/``) into ``output`` (kept and added to when it exists), under its lock, after
    removing what a killed run or merge left half-written. With ``remove`` the files merged are deleted
    afterwards, and a folder given once it is empty (``OUTPUT.parts/``: also lhb's own leftovers there).
    The parts' compressed chunks are read through first: a damaged one is an error, nothing changed.
    Returns (utterances in ``output``, the files merged); :class:`OutputError` naming what is wrong."""
    backend = backend or get_backend()
    output = resolve_link(Path(output))  # a link's target is written, not a new file in place of the link
    if isinstance(parts, (str, os.PathLike)):  # one file or folder, not its characters
        parts = [parts]
    sources = [Path(s) for s in parts] if parts else [parts_dir(output)]
    with OutputLock(output):  # not while a run writes it (which may not have made OUTPUT.parts/ yet)
        remove_stale_temps(output)  # a killed merge's or run's half-written files (no one else holds the lock)
        files: list[Path] = []
        for src in sources:
            if src.is_dir():
                files += find_parts(src, backend.suffix, any_name=True)
            elif src.is_file():
                files.append(src)
            elif os.path.exists(src):
                raise OutputError(f"{src}: is neither a features file nor a folder of parts")
            elif not parts and output.is_file():  # the default folder: a run that stopped joined its work itself
                raise OutputError(f"{output}: nothing to join: {src} does not exist (a stopped run joins what it did "
                                  f"into {output} itself; if {output} is incomplete, the same lhb extract command with "
                                  "--resume completes it)")
            else:
                raise OutputError(f"{src}: no such file or folder")
        if files and all(same_file(f, output) for f in files):
            raise OutputError(f"{files[0]}: is OUTPUT itself, not a part; name the parts to join into it")
        files = [f for f in files if not same_file(f, output)]  # OUTPUT is joined anyway; never removed as a part
        if not files:
            raise OutputError(f"no parts found in {', '.join(map(str, sources))}")
        # the parts of a --keep-parts job are complete together only when all its ranks finished (its note)
        finished = finished_path(output).is_file() and any(s.is_dir() and same_file(s, parts_dir(output)) for s in sources)
        n = backend.merge(output, files, include_output=True, complete=True if finished else None,
                          verify=True)  # --remove-parts deletes them next
    if remove:  # the files merged, nothing else: a folder given is removed only once empty
        for f in files:
            f.unlink(missing_ok=True)
        for src in sources:
            if src.is_dir() and same_file(src, parts_dir(output)):  # also when named through a link
                remove_parts(output, backend.suffix)  # lhb's own folder: also its .tmp segments and notes, not other files
            elif src.is_dir():
                try:
                    src.rmdir()
                except OSError:
                    pass  # other files are there: they stay
    return n, files


from . import hdf5 as _hdf5  # noqa: E402 - registers the HDF5 backend

HDF5 = register(_hdf5.Hdf5Backend())

__all__ = [
    "BACKENDS", "Backend", "FORMAT", "FORMAT_VERSION", "FRAME_RATE", "FeaturesError", "FeaturesReader", "FeaturesWriter",
    "HDF5", "OutputBroken", "backend_of", "claimed_by",
    "OutputError", "OutputLock", "RUN_IDENTITY", "check_identity", "check_output_path", "find_committed", "find_parts",
    "finished_path", "resolve_link",
    "find_segments",
    "get_backend", "identity_diff", "merge_parts", "part_path", "parts_dir", "plain", "refuse_existing", "register",
    "remove_parts", "same_file",
    "remove_stale_temps", "run_attrs", "segment_path",
]
