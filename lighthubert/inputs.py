"""What to extract: a folder, one audio file, or a list file, turned into (key, path) items.

- folder: searched recursively for audio files (by extension; hidden files and folders skipped);
  key = path relative to the folder, without extension, ``/``-separated.
- one audio file: key = its name without extension.
- ``.txt`` / ``.lst``: one path per line; relative paths are relative to the list file's folder;
  key = the path as written, without extension (a leading ``/`` or ``./`` dropped).
- ``.tsv``: a fairseq manifest: first line the root folder, then ``relative/path<TAB>num_samples``;
  key = the relative path without extension.
- ``.scp``: Kaldi style ``key path`` lines; key as given. Pipe commands (``... |``) are refused.

In list files, blank lines and lines starting with ``#`` are ignored, surrounding whitespace is
stripped, and paths may hold spaces and any Unicode. Two items with the same key, or a key that is
a prefix folder of another (``a`` and ``a/b``), are an error naming both lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import LightHubertError

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .aif .aiff .aifc .au .snd .w64 .rf64 .caf .sph .nist .htk .voc .sd2 .paf".split()
)
LIST_EXTENSIONS = (".txt", ".lst", ".tsv", ".scp")


class InputError(LightHubertError):
    """INPUT cannot be turned into a list of items; the message names the file (and line)."""


@dataclass(frozen=True)
class Item:
    key: str
    path: Path
    origin: str = ""
    """Where the item came from, for messages: ``list.txt:12`` or the path."""


def _key_from(text: str) -> str:
    posix = text.replace("\\", "/")
    while posix.startswith("./"):
        posix = posix[2:]
    posix = posix.lstrip("/")
    p = PurePosixPath(posix)
    key = str(p.with_suffix("")) if p.suffix else str(p)
    return key


def _check_key(key: str, where: str) -> str:
    parts = key.split("/")
    if not key or any(part in ("", ".", "..") for part in parts):
        raise InputError(f"{where}: {key!r} is not a usable key (empty, '.' or '..' parts)")
    return key


def is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def list_inputs(source: str | os.PathLike) -> list[Item]:
    """Items of INPUT, in a stable order (sorted by key for folders, file order for lists)."""
    src = Path(source)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if src.is_dir():
        items = _from_folder(src)
        if not items:
            raise InputError(f"{src}: no audio files found (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})")
    elif src.suffix.lower() in LIST_EXTENSIONS:
        items = _from_list(src)
        if not items:
            raise InputError(f"{src}: the list holds no entries")
    else:
        items = [Item(_check_key(src.stem, str(src)), src, str(src))]
    _check_unique(items)
    return items


def _from_folder(root: Path) -> list[Item]:
    items = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or not is_audio(path):
                continue
            rel = path.relative_to(root).as_posix()
            items.append(Item(_check_key(_key_from(rel), str(path)), path, str(path)))
    return sorted(items, key=lambda it: it.key)


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror}") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]


def _from_list(path: Path) -> list[Item]:
    ext = path.suffix.lower()
    lines = _lines(path)
    base = path.parent
    items = []
    if ext == ".tsv":
        lines = [(n, s) for n, s in lines if s]
        if not lines:
            return []
        (_, root_text), rows = lines[0], lines[1:]
        root = Path(root_text)
        if not root.is_absolute():
            root = base / root
        for n, line in rows:
            where = f"{path}:{n}"
            rel = line.split("\t")[0].strip()
            if not rel:
                raise InputError(f"{where}: expected 'relative/path<TAB>num_samples'")
            items.append(Item(_check_key(_key_from(rel), where), root / rel, where))
        return items
    for n, line in lines:
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        if ext == ".scp":
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise InputError(f"{where}: expected 'key path'")
            key, target = parts
            if target.rstrip().endswith("|"):
                raise InputError(f"{where}: pipe commands are not supported; give a path to an audio file")
            key = _check_key(key, where)
        else:
            target = line
            key = _check_key(_key_from(target), where)
        p = Path(target)
        items.append(Item(key, p if p.is_absolute() else base / p, where))
    return items


def _check_unique(items: list[Item]) -> None:
    seen: dict[str, Item] = {}
    for item in items:
        if item.key in seen:
            raise InputError(f"{item.origin}: key {item.key!r} is also given by {seen[item.key].origin}")
        seen[item.key] = item
    for item in items:
        parts = item.key.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in seen:
                raise InputError(
                    f"{item.origin}: key {item.key!r} needs a group {prefix!r}, which {seen[prefix].origin} uses as a key"
                )
