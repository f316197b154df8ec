"""Write the features of one layer in the layouts other tools read (README "Using the features").

- ``fairseq``: fairseq HuBERT's ``simple_kmeans`` layout: ``{split}_{rank}_{nshard}.npy`` (all
  frames of the shard concatenated, float32 (N, D)), ``.len`` (frames per utterance, one integer a
  line) and ``.keys`` (the utterance key of each line, same order; fairseq does not read it), plus
  ``{split}.tsv``, fairseq's audio manifest of the same utterances in the same order.
- ``npy``: one ``KEY.npy`` per utterance ((T, D) float32; keys with ``/`` make subfolders).
- ``kaldi``: ``{split}.ark`` (binary float matrices) and ``{split}.scp`` (``key ark:offset``), keys
  in Kaldi's order (``LC_ALL=C sort``: by their UTF-8 bytes).

Text files are UTF-8 whatever the locale.

Every file is written beside its final name and renamed into place only once all of them are whole,
so a stop or failure half-way leaves what the folder held before, never a new ``.npy`` beside the
old ``.len``. A file that exists already is replaced only with ``overwrite`` (``--overwrite``).
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .files import link_target, name_max, new_temp_beside, remove_dead_temps, replace_keeping_mode
from .inputs import CONTROL, display_path
from .errors import LightHubertWarning, SettingError
from .defaults import CONVERT_FORMAT, CONVERT_FORMATS, NSHARD, SPLIT
from .reader import FeaturesError, one_layer, open_features
from .storage import OutputError, os_reason, refuse_existing, same_file



def shard_range(total: int, nshard: int, rank: int) -> tuple[int, int]:
    """Utterances [start, end) of shard ``rank`` of ``nshard`` (contiguous, as fairseq cuts tsvs)."""
    return round(total / nshard * rank), round(total / nshard * (rank + 1))


class _Staged:
    """Files written under temporary names beside their final ones; :meth:`commit` renames them all
    into place, :meth:`discard` removes what is left (an old file of the same name stays whole)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Path, Path]] = []
        self.made: list[Path] = []  # folders made for the files, removed again (when empty) by discard
        self.committed = False

    def folder(self, path: Path) -> None:
        """Make the folder ``path`` and those above it that are missing, noting them for :meth:`discard`
        (one look-up when it is there already, as for every file after the first in a folder)."""
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for p in reversed(missing):
            p.mkdir(exist_ok=True)
            self.made.append(p)

    def temp(self, final: Path) -> Path:
        """A new empty file to write instead of ``final`` (its folder is created; a symbolic link's
        target is what is replaced, beside which it is made, and the link stays)."""
        final = link_target(final)
        self.folder(final.parent)
        try:
            tmp = new_temp_beside(final)
        except OSError as e:  # named by the file the user asked for, not by the temporary one
            raise OSError(e.errno, f"cannot write ({e.strerror})", str(final)) from None
        self.pairs.append((tmp, final))
        return tmp

    def commit(self) -> list[Path]:
        for tmp, final in self.pairs:
            replace_keeping_mode(tmp, final)
        done, self.pairs, self.committed = [final for _, final in self.pairs], [], True
        return done

    def discard(self) -> None:
        for tmp, _ in self.pairs:
            tmp.unlink(missing_ok=True)
        if not self.committed:  # the folders made for it go too
            for folder in reversed(self.made):
                try:
                    folder.rmdir()
                except OSError:
                    pass  # not empty: something else is there


def output_files(keys: Sequence[str], out: Path, fmt: str, split: str = SPLIT, nshard: int = NSHARD) -> list[Path]:
    """The files :func:`convert` writes under ``out`` for the utterances ``keys``, in writing order:
    fairseq: ``.npy``, ``.len``, ``.keys`` of each shard, then the ``.tsv``; npy: one per key;
    kaldi: the ``.ark``, then the ``.scp``."""
    if fmt == "fairseq":
        stems = [out / f"{split}_{rank}_{nshard}" for rank in range(nshard)]
        return [Path(f"{stem}{ext}") for stem in stems for ext in (".npy", ".len", ".keys")] + [out / f"{split}.tsv"]
    if fmt == "npy":
        return [out / f"{k}.npy" for k in keys]
    return [out / f"{split}.ark", out / f"{split}.scp"]


def _refuse_file_in_folders_place(features: str | os.PathLike, keys: list[str]) -> None:
    """npy: key ``x`` is the file ``x.npy`` and key ``x.npy/y`` needs a folder of that name; both are
    valid keys, and the conversion failed after its work, naming a temporary file ("Is a directory")."""
    folders: dict[str, str] = {}  # every folder the keys need -> a key inside it
    for k in keys:
        parts = k.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folders.setdefault("/".join(parts[:i]), k)
    for k in keys:
        if (inner := folders.get(f"{k}.npy")) is not None:
            raise OutputError(f"{display_path(features)}: keys {display_path(k)!r} and {display_path(inner)!r} need {display_path(k)}.npy as a "
                              "file and as a folder; rename one (a .scp list names keys), or use --format fairseq or kaldi")


def convert(features: str | os.PathLike, output: str | os.PathLike, fmt: str = CONVERT_FORMAT, layer: int | None = None, *,
            split: str = SPLIT, nshard: int = NSHARD, overwrite: bool = False,
            progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Write ``layer`` of every utterance of ``features`` under the folder ``output`` (created) in
    the layout ``fmt`` (see module docstring); ``layer`` None: the file's only layer. Returns the
    files written. A file to write that exists already is an :class:`~lighthubert.storage.OutputError`
    (before anything is written) unless ``overwrite``."""
    if fmt not in CONVERT_FORMATS:
        raise SettingError(f"unknown format {fmt!r} (choose from {', '.join(CONVERT_FORMATS)})", "format")
    if not split or split in (".", "..") or any(c in split for c in "/\\\0"):  # the files stay inside ``output``
        raise SettingError(f"{split!r} is not a plain file name (no '/', not empty)", "split")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if not out.parent.is_dir():  # the folder is made, not a chain of them from a typo
        raise OutputError(f"{out}: the folder {out.parent} does not exist")
    with open_features(features) as f:
        layer = one_layer(f.layers, layer, features)  # a missing layer fails before anything is written
        if fmt == "fairseq" and nshard < 1:
            raise SettingError("nshard must be at least 1", "nshard")
        if fmt == "fairseq" and nshard > max(len(f), 1):  # else empty shards (10^20 of them: a run without end)
            raise SettingError(f"{nshard} shards of {len(f)} utterances would leave some empty; "
                               f"give at most {max(len(f), 1)}", "nshard")
        files = output_files(f.keys, out, fmt, split, nshard)
        if fmt == "npy":
            _refuse_file_in_folders_place(features, f.keys)
        longest = name_max(out)
        for path in files:  # before anything is written, whatever overwrite says
            long = [part for part in path.relative_to(out).parts if len(os.fsencode(part)) > longest]
            if long:  # else the last renames fail, with the other files in place already
                remedy = ("give the utterance a shorter key (a .scp list names keys), or use --format fairseq or kaldi"
                          if fmt == "npy" else "give a shorter --split")
                raise OutputError(f"{display_path(path)}: the name is too long for a file name ({len(os.fsencode(long[0]))} "
                                  f"bytes; the folder takes {longest}); {remedy}")
            if same_file(path, features):
                raise OutputError(f"{path}: is FEATURES itself ({features}), which would be replaced; "
                                  "convert into another folder")
            if path.is_dir() and not path.is_symlink():
                raise OutputError(f"{path}: is a folder, where a file is to be written")
        refuse_existing(files, overwrite)
        staged = _Staged()
        staged.folder(out)
        remove_dead_temps(files)  # what a killed conversion left of these files
        try:
            _write(f, features, files, fmt, layer, nshard, staged, progress)
            return staged.commit()
        except OSError as e:  # a write that failed (a full disk, a file size limit) names no file
            if e.filename is not None:
                raise
            raise OutputError(f"{out}: cannot write the {fmt} files ({os_reason(e)}); nothing was changed there") from None
        finally:
            staged.discard()


def _write(f, features: str | os.PathLike, files: list[Path], fmt: str, layer: int, nshard: int,
           staged: _Staged, progress: Callable[[int, int], None] | None) -> None:
    """Write ``layer`` of the open features file ``f`` in the layout ``fmt`` into ``staged`` files
    standing for ``files`` (:func:`output_files`)."""
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, len(f))

    if fmt == "fairseq":
        for rank in range(nshard):
            start, end = shard_range(len(f), nshard, rank)
            keys = f.keys[start:end]
            npy, lens, keys_file = files[3 * rank: 3 * rank + 3]
            total = sum(f.lengths[k] for k in keys)
            # written, not memory-mapped: a full disk is then an OSError, not SIGBUS on a page of the map
            with open(staged.temp(npy), "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (total, f.dim)})
                for k in keys:
                    fh.write(np.ascontiguousarray(f.get(k, layer).numpy(), dtype="<f4").data)
                    tick()
            staged.temp(lens).write_text("".join(f"{f.lengths[k]}\n" for k in keys), encoding="utf-8")
            staged.temp(keys_file).write_text("".join(f"{k}\n" for k in keys), encoding="utf-8")
        write_tsv(f, staged.temp(files[-1]), files[-1])
    elif fmt == "npy":
        for k, path in zip(f.keys, files):
            with open(staged.temp(path), "wb") as fh:  # np.save on a name would add ".npy"
                np.save(fh, f.get(k, layer).numpy().astype(np.float32, copy=False))
            tick()
    else:
        bad = [k for k in f.keys if any(c.isspace() for c in k)]
        if bad:
            raise FeaturesError(f"{features}: key {bad[0]!r} has white space, which Kaldi cannot hold; extract from a "
                                ".scp list ('key path' lines) to choose keys without it, or use --format npy or fairseq")
        ark, scp = files
        with open(staged.temp(ark), "wb") as a, open(staged.temp(scp), "w", encoding="utf-8") as s:
            for k in sorted(f.keys, key=str.encode):  # Kaldi's sorted order (C locale: bytes), for scp,s,cs: and its tools
                a.write(f"{k} ".encode())
                s.write(f"{k} {ark.resolve()}:{a.tell()}\n")  # the final name: the scp is read after the rename
                a.write(kaldi_matrix(f.get(k, layer).numpy()))
                tick()

def kaldi_matrix(x: np.ndarray) -> bytes:
    """One binary Kaldi float matrix (``\\0B FM`` header, int32 rows and cols, float32 data)."""
    x = np.ascontiguousarray(x, dtype="<f4")
    return b"\0BFM " + struct.pack("<bibi", 4, x.shape[0], 4, x.shape[1]) + x.tobytes()


def write_tsv(f, path: Path, shown: Path | None = None) -> Path:
    """fairseq's manifest: the root folder, then ``relative/path<TAB>num_samples`` per utterance, in
    key order (the order of the ``.len`` lines and of ``lhb units apply``'s lines). ``num_samples``
    is the file's frames as stored (from its header), as fairseq's ``wav2vec_manifest.py`` writes
    it. A :class:`LightHubertWarning` names the files fairseq could not train on: those stored at
    another rate than 16 kHz (fairseq's HuBERT training reads them as they are and needs 16 kHz),
    and those whose header cannot be read where the features file says they are (moved, or named
    in bytes that are not UTF-8, which the features file writes ``%XX``); these are listed with
    their 16 kHz sample count. ``shown``: the name the warnings give (``path`` may be a temporary one)."""
    from .audio import SAMPLE_RATE, audio_frames

    sources = []
    for k in f.keys:
        src = f.source(k)
        if not src or CONTROL.search(src):  # else the current folder, or a line split in two, in the manifest
            raise FeaturesError(f"{f.path}: {k}: {'no' if not src else 'a control character in its'} 'source' attribute "
                                "(the audio file), which fairseq's .tsv lists; use --format npy or kaldi")
        sources.append(os.path.abspath(src))
    root = os.path.commonpath([os.path.dirname(s) for s in sources]) if sources else os.sep
    rows, other_rate, unreadable = [], [], []
    for k, src in zip(f.keys, sources):
        info = audio_frames(src)
        if info is None:
            unreadable.append(src)
        elif info[1] != SAMPLE_RATE:
            other_rate.append((src, info[1]))
        rows.append(f"{os.path.relpath(src, root)}\t{info[0] if info else f.num_samples(k)}\n")
    path.write_text(root + "\n" + "".join(rows), encoding="utf-8")
    total = len(sources)
    shown = shown or path
    if other_rate:
        warnings.warn(f"{shown}: {len(other_rate)} of {total} audio files are not stored at 16 kHz (first: "
                      f"{other_rate[0][0]}, {other_rate[0][1]} Hz); fairseq's HuBERT training reads them as stored "
                      "and needs 16 kHz: resample them first", LightHubertWarning, stacklevel=2)
    if unreadable:
        warnings.warn(f"{shown}: {len(unreadable)} of {total} audio files cannot be read where the features file "
                      f"says they are (first: {unreadable[0]}): fairseq reads them from there", LightHubertWarning,
                      stacklevel=2)
    return path
