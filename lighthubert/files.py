"""Files written whole: a new file beside the final one, renamed over it once complete.

An existing file stays as it was until its replacement is whole (a full disk or a kill half-way loses
nothing), and the replacement keeps the old file's permission bits for group and others, as a shell's
``>`` or ``cp`` onto it would: a features or k-means file made group-only or private stays so after
``--overwrite``. The owner keeps read and write (a features file is reopened to be written, and
resumed later).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from pathlib import Path
from typing import Callable, Iterable, Mapping


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same file (also through a link); False when one is missing or
    is not a file name (a released checkpoint name, inline JSON)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def replace_keeping_mode(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """``os.replace(tmp, final)``; when ``final`` is a regular file already, ``tmp`` first takes its
    permission bits, with read and write for the owner whatever they were (a read-only 0444 file
    replaced, then reopened to be written, would fail half-way). Owner and group cannot be kept
    without privileges, and are not. Where the mode cannot be set (some network file systems), the
    file is still replaced."""
    try:
        st = os.stat(final)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        try:
            os.chmod(tmp, (stat.S_IMODE(st.st_mode) & 0o777) | 0o600)
        except OSError:
            pass
    os.replace(tmp, final)


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of ``folder`` takes (of the nearest existing
    folder above it, when it is still to be made); 255 where the system does not say."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


TEMP_STEM_BYTES = 255 - len("..4194304.0123abcd.part") - 3
"""The longest final name a temporary name holds whole: with the pid (7 digits at most on Linux, 3
more to spare) and the rest, it stays within the 255 bytes a file name may have."""


def _temp_stem(name: str) -> str:
    """``name`` as :func:`new_temp_beside` puts it in a temporary name: whole, or, where that would
    make the temporary name too long for the file system (a key near 255 bytes as KEY.npy), cut
    between characters and followed by ``~`` and a hash of the whole name."""
    if len(os.fsencode(name)) <= TEMP_STEM_BYTES:
        return name
    cut = name
    while len(os.fsencode(cut)) > TEMP_STEM_BYTES - 9:
        cut = cut[:-1]
    return f"{cut}~{hashlib.sha256(os.fsencode(name)).hexdigest()[:8]}"


def new_temp_beside(path: Path) -> Path:
    """A new, empty file next to ``path``: an ordinary file (the umask applies, so the result is as
    readable as any file the user makes), unlike mkstemp's 0600."""
    while True:
        tmp = path.with_name(f".{_temp_stem(path.name)}.{os.getpid()}.{os.urandom(4).hex()}.part")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


TEMP_NAME = re.compile(r"\.(.+)\.(\d+)\.[0-9a-f]{8}\.part")
"""What :func:`new_temp_beside` names a temporary file: ``.NAME.PID.XXXXXXXX.part``."""


def remove_dead_temps(finals: Iterable[Path]) -> None:
    """Remove the temporary files :func:`new_temp_beside` made for ``finals`` (beside each) for
    processes of this host that no longer run (killed half-way); those of a live process, and any
    other file, are left alone. Each folder is listed once."""
    by_folder: dict[Path, set[str]] = {}
    for final in finals:
        by_folder.setdefault(final.parent, set()).add(_temp_stem(final.name))
    for folder, names in by_folder.items():
        try:
            listed = os.listdir(folder)
        except OSError:
            continue  # not there (yet)
        for name in listed:
            m = TEMP_NAME.fullmatch(name)
            if not m or m[1] not in names or int(m[2]) == os.getpid():
                continue
            try:
                os.kill(int(m[2]), 0)
            except ProcessLookupError:  # gone: its file is no one's
                (folder / name).unlink(missing_ok=True)
            except (PermissionError, OverflowError, OSError):
                pass  # alive under another user, or not a pid


def link_target(path: Path) -> Path:
    """``path``, or, when it is a symbolic link, the path it leads to (which need not exist yet): a file
    written whole replaces the link's target and the link stays a link, as a shell's ``>`` through it."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a new file beside ``path`` (beside its target when it is a symbolic link),
    then rename it over that: an existing file stays whole until the new one is, and the new one gets
    its permissions; the temporary file is removed on any failure or interruption. Returns the path
    written."""
    path = link_target(Path(path))
    tmp = new_temp_beside(path)
    try:
        write(tmp)
        replace_keeping_mode(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_bytes_atomic(path: str | os.PathLike, serialise: Callable[[io.BytesIO], None]) -> Path:
    """``serialise(buffer)`` in memory, then the bytes to ``path`` through :func:`write_atomic`."""
    buf = io.BytesIO()
    serialise(buf)
    return write_atomic(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))


def target_problem(path: str | os.PathLike, *, overwrite: bool,
                   sources: Mapping[str, str | os.PathLike | None] | None = None) -> str | None:
    """Why a file cannot be written whole at ``path``, in words that follow it (``PATH: ...``), or None.
    ``sources``: what the caller reads (``{"the checkpoint it is cut from": path}``), never replaced;
    an existing file is replaced only with ``overwrite``."""
    path = Path(path)
    for what, src in (sources or {}).items():
        if src is not None and same_file(path, src):
            return f"is {what}; give another file to write"
    if path.is_dir():
        return "is a folder; give a file name"
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist"
    if path.is_file() and not overwrite:
        return "already exists; pass overwrite=True to replace it"
    return None
