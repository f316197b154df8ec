"""What to extract: a folder, one audio file, or a list file, turned into (key, path) items.

- folder: searched recursively for audio files (by extension; hidden files and folders skipped);
  key = path relative to the folder, without extension, ``/``-separated.
- one audio file: key = its name without extension.
- ``.txt`` / ``.lst``: one path per line; relative paths are relative to the list file's folder.
  key = the file's path relative to the list's folder, without extension, when every path of the
  list is inside that folder; otherwise (``../`` or absolute paths elsewhere) relative to the
  deepest folder holding all the list's files. Paths are taken as written (``..`` resolved in the
  text, links not followed). For keys of your own, use ``.scp``.
- ``.tsv``: a fairseq manifest: first line the root folder (which must exist), then
  ``relative/path<TAB>num_samples``; key = the relative path without extension.
- ``.scp``: Kaldi style ``key path`` lines; key as given. Pipe commands (``... |``) are refused.

In list files, blank lines and lines starting with ``#`` are ignored, surrounding whitespace is
stripped, and paths may hold spaces and any Unicode. Two items with the same key, or a key that is
a prefix folder of another (``a`` and ``a/b``), are an error naming both lines. Keys holding control
characters (below U+0020, or U+007F) are an error naming the line or file.

Folders are walked once per real directory: links to files are followed, a link to a folder already
walked (a loop such as ``sub/up -> ..``, or a second link to the same folder) is not entered again.
A subfolder that cannot be read is an item of its own (key: its path), which decoding skips with the reason.
File names that are not valid UTF-8 get a key with each undecodable byte written ``%XX`` (``caf%E9``);
the same escaping (and control characters as ``%XX``) gives the ``source`` text stored with the
features and the paths in messages (:func:`display_path`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from .errors import LightHubertError

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .w64 .rf64 .caf .sph .nist .htk .voc .sd2 .paf".split()
)
LIST_EXTENSIONS = (".txt", ".lst", ".tsv", ".scp")
# One INPUT file of these kinds is refused before any work (OUTPUT given first, a checkpoint); in a
# folder they are not audio and are not listed.
NOT_AUDIO = {".h5": "an HDF5 file", ".hdf5": "an HDF5 file", ".hdf": "an HDF5 file", ".he5": "an HDF5 file", ".pt": "a PyTorch file", ".pth": "a PyTorch file",
             ".ckpt": "a checkpoint", ".onnx": "an ONNX model", ".ts": "a TorchScript file", ".json": "a JSON file",
             ".npy": "a NumPy array", ".npz": "a NumPy archive"}


class InputError(LightHubertError):
    """INPUT cannot be turned into a list of items; the message names the file (and line)."""


@dataclass(frozen=True)
class Item:
    key: str
    path: Path
    origin: str = ""
    """Where the item came from, for messages: ``list.txt:12`` or the path."""


CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""The control characters no key or path lhb writes holds (a new line would split the lines of a .tsv,
.keys, .len or .km file); escaped as ``%XX`` in the texts it writes."""
_SURROGATE = re.compile(r"[\udc80-\udcff]")


def escape_name(text: str) -> str:
    """``text`` with each byte that was not valid UTF-8 (held by Python as a surrogate escape, as
    ``os.fsdecode`` gives it) written ``%XX``: valid text that h5py can store."""
    return _SURROGATE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)


def display_path(path: str | os.PathLike) -> str:
    """The path as valid, one-line UTF-8 text (undecodable bytes and control characters written
    ``%XX``), for messages and the ``source`` attribute."""
    return CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", escape_name(os.fspath(path)))


def source_text(path: str | os.PathLike) -> str:
    """The audio path as a features file records it (``source``, the ``path`` of a skipped input):
    absolute, so the file says where its audio is wherever it is read or converted later (``..``
    resolved in the text, links not followed), written as :func:`display_path` writes it."""
    return display_path(os.path.abspath(path))


def _key_from(text: str) -> str:
    posix = text.replace("\\", "/")
    while posix.startswith("./"):
        posix = posix[2:]
    posix = posix.lstrip("/")
    p = PurePosixPath(posix)
    key = str(p.with_suffix("")) if p.suffix else str(p)
    return key


def _check_key(key: str, where: str, own: bool = False) -> str:
    """``key`` if it can be stored; ``own``: the user wrote it (a .scp key), so the error does not
    advise writing keys of one's own."""
    bad = CONTROL.search(key)
    if bad:
        advice = "" if own else ": rename the file, or give it a key of your own with a .scp list ('key path' lines)"
        raise InputError(f"{display_path(where)}: key {escape_name(key)!r} holds the control character "
                         f"U+{ord(bad.group()):04X}; keys must be printable text{advice}")
    parts = key.split("/")
    if not key or any(part in ("", ".", "..") for part in parts):
        advice = "" if own else "; give keys of your own with a .scp list ('key path' lines)"
        raise InputError(f"{where}: {key!r} is not a usable key (empty, '.' or '..' parts){advice}")
    return key


def is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def list_inputs(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Item]:
    """Items of INPUT, in a stable order (sorted by key for folders, file order for lists). A Python
    list (or tuple) of audio file paths is taken as a ``.txt`` list written in the current folder:
    keys relative to it, or to the deepest folder holding every file, without extension."""
    if isinstance(source, (list, tuple)):
        return _from_paths(source)
    src = Path(source)
    if not src.exists():
        why = "a symbolic link to nothing (broken, or a loop)" if os.path.islink(src) else "no such file or folder"
        if str(source) == "-":  # not standard input: a list is a file (a .txt of paths, one per line)
            why += "; standard input is not read as INPUT: write the paths to a .txt list and give that"
        raise InputError(f"{display_path(src)}: {why}")
    if src.is_dir():
        items = _from_folder(src)
        if not items:
            raise InputError(f"{src}: no audio files found (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})")
    elif src.suffix.lower() in LIST_EXTENSIONS:
        items = _from_list(src)
        if not items:
            raise InputError(f"{src}: the list holds no entries")
    else:
        kind = NOT_AUDIO.get(src.suffix.lower())
        if kind:
            raise InputError(f"{display_path(src)}: {kind}, not audio or a list of audio files "
                             "(lhb extract takes INPUT first, then OUTPUT)")
        _check_one_input(src)
        items = [Item(_check_key(escape_name(src.stem), str(src)), src, display_path(src))]
    _check_unique(items, own=src.suffix.lower() == ".scp" and not src.is_dir())
    return items


def _check_one_input(src: Path) -> None:
    """Refuse, before OUTPUT is made, a single INPUT that cannot be audio and looks like a list: a text
    file without a list extension (``paths.list``, ``wav_list``) or a FIFO (``<(ls ...)``). Each was a
    skipped input and an empty OUTPUT, exit 3."""
    lists = ", ".join(LIST_EXTENSIONS)
    try:
        if not stat.S_ISREG(src.stat().st_mode):
            raise InputError(f"{display_path(src)}: not a regular file (a FIFO or device, as <(...) gives); lhb reads "
                             f"INPUT from a file: write the paths to a list file ({lists}) and give that")
        with open(src, "rb") as f:
            head = f.read(4096)
    except OSError:
        return  # said for the input as a skipped file, with the reason
    audio = head.startswith((b"RIFF", b"fLaC", b"OggS", b"FORM", b".snd", b"NIST_1A", b"Creative Voice", b"ID3"))
    if head and b"\0" not in head and not audio and is_text(head):
        raise InputError(f"{display_path(src)}: a text file, not audio; a list of audio files needs one of the "
                         f"extensions {lists} (.txt: one path per line)")


def is_text(head: bytes) -> bool:
    """Whether ``head``, the first bytes of a file, is UTF-8 text (a character cut at its end counts)."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start > len(head) - 4  # a character cut by the window
    return True


def _from_paths(paths: Sequence[str | os.PathLike]) -> list[Item]:
    """Items of a Python list of audio file paths (see :func:`list_inputs`)."""
    if not paths:
        raise InputError("the list of inputs is empty")
    texts = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)) or not os.fspath(p):
            raise InputError(f"{p!r} in the list of inputs is not a file path")
        texts.append(os.fsdecode(os.fspath(p)))
    base = Path(".")
    items = [Item(_check_key(key, display_path(t)), Path(t), display_path(t))
             for t, key in zip(texts, _list_keys(base, texts))]
    _check_unique(items)
    return items


def _from_folder(root: Path) -> list[Item]:
    """Audio files under ``root``; each real directory is walked once (links followed, loops cut).
    Folders reached through a link are walked after every folder reached without one, so a folder
    that is both gives its files keys under its own name, whatever the link is called (``a_latest ->
    real`` beside ``real`` would otherwise sort first and rename every key of ``real``)."""
    items = []
    seen: set[tuple[int, int]] = set()
    stack, linked = [root], []
    while stack or linked:
        if not stack:  # every folder reached without a link is done: now those reached through one
            stack, linked = linked[::-1], []
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            continue  # a dangling link or an unreadable folder
        if (st.st_dev, st.st_ino) in seen:
            continue  # a loop (sub/up -> ..) or a second link to a folder already walked
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            if folder == root:
                raise InputError(f"{display_path(root)}: cannot read: {err.strerror or err}") from None
            # an unreadable subfolder is kept as an item of its own: decoding skips it with the reason,
            # so that its files are not missing without a word
            rel = escape_name(folder.relative_to(root).as_posix())
            items.append(Item(_check_key(rel, display_path(folder)), folder, display_path(folder)))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows links
                is_link = entry.is_symlink()
            except OSError:
                is_dir = is_link = False
            if is_dir:
                (linked if is_link else subdirs).append(path)
            elif is_audio(path):
                # FIFOs and devices named *.wav are kept: decoding skips them with the reason
                rel = escape_name(path.relative_to(root).as_posix())
                items.append(Item(_check_key(_key_from(rel), display_path(path)), path, display_path(path)))
        stack.extend(reversed(subdirs))
    return sorted(items, key=lambda it: it.key)


ASCII_BLANKS = " \t\r\f\v"


def _lines(path: Path, tabbed: bool = False) -> list[tuple[int, str]]:
    """(line number, stripped text) of each line of a list file that is not blank or a ``#`` comment.
    ``tabbed`` (a .tsv): a leading tab is kept, as the end of an empty first column."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"{display_path(path)}: not a regular file (a list must be a file, not a FIFO or device)")
        data = path.read_bytes()
        text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not part of the first path
    except UnicodeDecodeError as err:  # said with the line (a 100,000-line list is otherwise searched by hand)
        line = data[:err.start].count(b"\n") + 1
        raise InputError(f"{display_path(path)}:{line}: not UTF-8 text (byte {data[err.start]:#04x}); a list is "
                         "UTF-8 (name a file with bytes that are not UTF-8 through its folder, or rename it)") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror}") from None
    # Lines end at \n (\r\n too) only, and only ASCII blanks are trimmed: str.splitlines() and strip()
    # would also cut at, or drop, U+2028, U+0085, U+00A0... which a file name may hold.
    lead = ASCII_BLANKS.replace("\t", "") if tabbed else ASCII_BLANKS
    stripped = ((n, line.rstrip(ASCII_BLANKS).lstrip(lead)) for n, line in enumerate(text.split("\n"), start=1))
    return [(n, line) for n, line in stripped if line and not line.startswith("#")]


def _from_list(path: Path) -> list[Item]:
    ext = path.suffix.lower()
    lines = _lines(path, tabbed=ext == ".tsv")
    base = path.parent
    items = []
    if ext == ".tsv":
        if not lines:
            return []
        (first, root_text), rows = lines[0], lines[1:]
        if "\t" in root_text:
            raise InputError(f"{display_path(path)}:{first}: expected the root folder, found an entry "
                             f"({root_text.split(chr(9))[0]!r}); a fairseq .tsv manifest starts with its root folder")
        root = Path(root_text)
        if not root.is_absolute():
            root = base / root
        if not root.is_dir():
            why = "is not a folder" if root.exists() else "does not exist"
            raise InputError(f"{display_path(path)}:{first}: the root folder {display_path(root)} {why}")
        for n, line in rows:
            where = f"{display_path(path)}:{n}"
            rel = line.split("\t")[0].strip(ASCII_BLANKS)
            if not rel:
                raise InputError(f"{where}: expected 'relative/path<TAB>num_samples'")
            # the key is the path relative to the root, ".." resolved in the text as in .txt lists; an
            # absolute entry inside the root gets the key its relative form has (before: the absolute path
            # without its "/", so one file could be stored under two keys)
            inside = os.path.relpath(os.path.normpath(os.path.join(root, rel)), root)
            if inside == ".." or inside.startswith(".." + os.sep):
                raise InputError(f"{where}: {rel!r} is outside the root folder {display_path(root)} (line 1); a .tsv "
                                 "lists paths relative to its root: give another root, or use a .txt list of paths")
            items.append(Item(_check_key(_key_from(inside), where), root / rel, where))
        return items
    paths: list[tuple[str, str]] = []  # (where, path text) of a .txt / .lst
    for n, line in lines:
        where = f"{display_path(path)}:{n}"
        if ext == ".scp":
            parts = re.split(f"[{ASCII_BLANKS}]+", line, maxsplit=1)
            if len(parts) != 2:
                raise InputError(f"{where}: expected 'key path'")
            key, target = parts
            if target.rstrip().endswith("|"):
                raise InputError(f"{where}: pipe commands are not supported; give a path to an audio file")
            if "\0" in target:  # was a skipped input saying "ValueError: embedded null byte"
                raise InputError(f"{where}: the path holds a NUL byte, which no file name can; fix the line")
            p = Path(target)
            items.append(Item(_check_key(key, where, own=True), p if p.is_absolute() else base / p, where))
        else:
            paths.append((where, line))
    if paths:
        for (where, target), key in zip(paths, _list_keys(base, [t for _, t in paths])):
            p = Path(target)
            items.append(Item(_check_key(key, where), p if p.is_absolute() else base / p, where))
    return items


def _list_keys(base: Path, targets: list[str]) -> list[str]:
    """Keys of a .txt / .lst list in folder ``base``: each path relative to ``base`` when all are
    inside it, else relative to the deepest folder holding all the files; without extension."""
    full = [os.path.abspath(os.path.join(base, t.replace("\\", "/"))) for t in targets]
    root = os.path.abspath(base)
    if not all(os.path.commonpath([f, root]) == root for f in full):
        root = os.path.commonpath([os.path.dirname(f) for f in full])
    return [_key_from(os.path.relpath(f, root)) for f in full]


def check_against(items: list[Item], existing_keys: Iterable[str], where: str = "OUTPUT") -> None:
    """Refuse items whose key is a prefix folder of a key already in ``where`` (or the reverse):
    ``a`` and ``a/b`` cannot both be stored. Keys equal to an existing key are fine (resume skips them).
    Raises :class:`InputError` naming both keys."""
    existing = set(existing_keys)
    groups = {"/".join(k.split("/")[:i]) for k in existing for i in range(1, k.count("/") + 1)}
    for item in items:
        if item.key in groups:
            other = next(k for k in sorted(existing) if k.startswith(item.key + "/"))
            raise InputError(f"{item.origin}: key {item.key!r} is a group in {where}, which holds {other!r}")
        parts = item.key.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in existing:
                raise InputError(f"{item.origin}: key {item.key!r} needs a group {prefix!r}, which {where} holds as a key")


def _check_unique(items: list[Item], own: bool = False) -> None:
    """No key twice, and no key that is another's group. ``own``: the keys are the user's (.scp)."""
    seen: dict[str, Item] = {}
    for item in items:
        if item.key in seen:
            advice = "" if own else ("; keys are paths without the extension: rename one, or give keys of your own "
                                     "with a .scp list ('key path' lines)")
            other = seen[item.key].origin
            if other == item.origin:  # one name's undecodable byte shown %XX is the other's real '%XX': show the bytes
                advice = f" (the names are {os.fsencode(seen[item.key].path)!r} and {os.fsencode(item.path)!r}){advice}"
            raise InputError(f"{item.origin}: key {item.key!r} is also given by {other}{advice}")
        seen[item.key] = item
    for item in items:
        parts = item.key.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in seen:
                raise InputError(
                    f"{item.origin}: key {item.key!r} needs a group {prefix!r}, which {seen[prefix].origin} uses as a key"
                )
