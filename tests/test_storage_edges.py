"""Edges of OUTPUT's storage: a full disk at the lock or the final join, features files with
malformed attributes or datasets, a corrupt segment on --resume, merge refusals and messages, a
finished --keep-parts job run again, and an OUTPUT that is a symbolic link. Each is one line naming
the file and the reason, and nothing already written is lost."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

import lighthubert
from cli_helpers import _env, lhb_prefix, one_line
from helpers import SPEECH_DIR

needs_speech = pytest.mark.skipif(not SPEECH_DIR.is_dir(), reason="needs the speech data")
FAST = ["-c", "(set by ckpt)", "--layers", "1", "--device", "cpu", "-q"]


@pytest.fixture(scope="module", autouse=True)
def ckpt(tmp_path_factory) -> Path:
    """The Small min subnet of a random Small file as a compact checkpoint (the model is not the point)."""
    folder = tmp_path_factory.mktemp("ckpt")
    full = lighthubert.write_random_checkpoint(folder / "small.pt", "small", seed=9)
    path = lighthubert.export_subnet(lighthubert.load_checkpoint(full), "min", folder / "small_min.pt")
    FAST[1] = str(path)
    return path


@pytest.fixture(scope="module")
def feats(tmp_path_factory, ckpt) -> Path:
    """A valid features file of the four files of spk1 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("feats") / "v.h5"
    p = lhb("extract", SPEECH_DIR / "spk1", out, *FAST)
    assert p.returncode == 0, p.stderr
    return out


def lhb(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*lhb_prefix(), *map(str, args)], capture_output=True, text=True, env=_env(),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def full_disk(path: Path, size: str = "1m") -> None:
    """A small tmpfs at ``path``, then filled; skips where none can be mounted (needs root)."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    subprocess.run(["dd", "if=/dev/zero", f"of={path / 'filler'}", "bs=64k"], capture_output=True)


# ----------------------------------------------------------------------------- a full disk


@needs_speech
def test_full_disk_at_the_lock_is_one_line_and_leaves_no_lock_file(tmp_path, feats):
    """The disk is full before the run writes anything: the lock file's pid line cannot be written.
    One line naming OUTPUT and the reason, exit 1, and no empty ``.OUTPUT.lock`` is left behind."""
    disk = tmp_path / "disk"
    full_disk(disk)
    try:
        out = disk / "n.h5"
        for args in (["extract", SPEECH_DIR / "spk1", out, *FAST], ["merge", out, feats]):
            p = lhb(*args)
            assert p.returncode == 1, p.stderr
            line = one_line(p)
            assert line.startswith(f"lhb: error: {out}: ") and "no space left on the device" in line, line
            assert sorted(os.listdir(disk)) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)])


def test_subnet_json_on_a_full_disk_keeps_the_file_that_was_there(tmp_path):
    """lhb subnet -o wrote in place: on a full disk the old subnet JSON was cut to invalid JSON (and a
    new name left a 0-byte file). It is now written beside and renamed over."""
    disk = tmp_path / "disk"
    full_disk(disk, "2m")
    try:
        (disk / "filler").unlink()
        old = disk / "s.json"
        old.write_text('{"embed_dim": 256, "layer_num": 10}\n')
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k"], capture_output=True)
        for target in (old, disk / "new.json"):
            p = lhb("subnet", "--sample", "200", "--supernet", "small", "-o", target)
            assert p.returncode == 1 and p.stderr.splitlines()[-1] == f"lhb: error: {target}: cannot write: no space left on the device", p.stderr
            assert "Traceback" not in p.stderr
        assert old.read_text() == '{"embed_dim": 256, "layer_num": 10}\n'
        assert sorted(os.listdir(disk)) == ["filler", "s.json"]
    finally:
        subprocess.run(["umount", str(disk)])


@needs_speech
def test_merge_that_runs_out_of_space_says_so(tmp_path, feats):
    """A join or merge that fills the disk half-way: HDF5 words it as "Disable slist on flush dest
    failure failed"; the line says the disk is full, and nothing is left or lost."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        part = Path(shutil.copy(feats, disk / "part.h5"))
        room = shutil.disk_usage(disk).free - part.stat().st_size // 6  # a sixth of the copy fits
        with open(disk / "filler", "wb") as f:
            f.write(b"\0" * room)
        out = disk / "o.h5"
        p = lhb("merge", out, part)
        assert p.returncode == 1, p.stderr
        line = one_line(p)
        assert line.startswith(f"lhb: error: {out}: merging failed: no space left on the device;"), line
        assert sorted(os.listdir(disk)) == ["filler", "part.h5"]
        with h5py.File(part) as a, h5py.File(feats) as b:
            assert sorted(a["features"]) == sorted(b["features"])
    finally:
        subprocess.run(["umount", str(disk)])


def test_no_room_message_counts_the_reserve_in_what_is_needed(tmp_path):
    """A write refused for lack of room gives numbers that add up: what is needed includes the
    space kept for the file's metadata, so it is more than what is free (it said "2.4 MB free,
    2.2 MB needed")."""
    import re

    from lighthubert.storage import OutputError, run_attrs
    from lighthubert.storage.hdf5 import SegmentWriter, create

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        attrs = run_attrs(layers=[1], subnet={}, checkpoint="x", checkpoint_sha256="", normalize=False,
                          random_weights=True, params=1, dtype="float32", compute_dtype="float32", version="0",
                          exact_seconds=0.0, window_seconds=60.0, context_seconds=10.0, num_layers=1, embed_dim=8)
        out = disk / "o.h5"
        create(out, attrs)
        free = shutil.disk_usage(disk).free
        rows = (free - (300 << 10)) // 32  # 300 KB less than is free: fits, but eats into the reserve
        with pytest.raises(OutputError) as e:
            SegmentWriter(out, attrs).write("big", np.ones((rows, 8), np.float32), source="s", num_samples=1)
        m = re.search(r"\(([\d.]+) MB free, ([\d.]+) MB needed", str(e.value))
        assert m and float(m[1]) < float(m[2]), str(e.value)
    finally:
        subprocess.run(["umount", str(disk)])


# ----------------------------------------------------------------------------- malformed features files


MALFORMED = {
    "skipped": (lambda f: f.attrs.__setitem__("skipped", "not json{"), "attribute 'skipped' is not valid JSON"),
    "skipped-entries": (lambda f: f.attrs.__setitem__("skipped", "[1]"), "attribute 'skipped' is not a JSON list"),
    "subnet": (lambda f: f.attrs.__setitem__("subnet", "{"), "attribute 'subnet' is not valid JSON"),
    "layers": (lambda f: f.attrs.__setitem__("layers", "x"), "attribute 'layers' is not a list"),
    "scalar": (lambda f: f.__setitem__("features/weird", 5), "dataset 'features/weird' holds a scalar"),
    "width": (lambda f: f.__setitem__("features/wd", np.zeros((3, 5), np.float32)), "dataset 'features/wd' holds shape (3, 5)"),
    # before: accepted, and every layer read back as the one stored
    "one-of-two-layers": (lambda f: f.attrs.__setitem__("layers", np.array([0, 1])), "dataset 'features/utt01' holds shape ("),
}


@needs_speech
@pytest.mark.parametrize("what", sorted(MALFORMED))
def test_malformed_features_file_is_one_line_naming_it(tmp_path, feats, what):
    """A features file edited by hand (an attribute that is not JSON, a scalar or a dataset of
    another width among the features): lhb info, merge and convert each give one line naming the file
    and what is wrong in it, exit 1 (a data error, not usage); nothing is written."""
    change, reason = MALFORMED[what]
    bad = Path(shutil.copy(feats, tmp_path / "bad.h5"))
    with h5py.File(bad, "a") as f:
        change(f)
    for args in (["info", bad], ["merge", tmp_path / "m.h5", bad], ["convert", bad, tmp_path / "conv"]):
        p = lhb(*args)
        assert p.returncode == 1, (args, p.stderr)
        line = one_line(p)
        assert line.startswith(f"lhb: error: {bad}: {reason}"), line
    assert sorted(os.listdir(tmp_path)) == ["bad.h5"]
    with pytest.raises(lighthubert.FeaturesError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        lighthubert.open_features(bad)


# ----------------------------------------------------------------------------- resume and merge


@needs_speech
def test_a_file_another_program_writes_is_said_so_without_advice_that_loses_it(tmp_path, feats):
    """Before: 'cannot be read to resume (Resource temporarily unavailable); use --overwrite to start
    again', while the file was whole and only held open by a writer (HDF5's file lock)."""
    out = Path(shutil.copy(feats, tmp_path / "o.h5"))
    why = "another program has it open for writing, and HDF5 locks it: close that program first"
    with h5py.File(out, "r+"):  # this process is that program; lhb runs in another
        p = lhb("extract", SPEECH_DIR / "spk1", out, *FAST, "--resume")
        assert p.returncode == 1 and one_line(p) == f"lhb: error: {out}: cannot be read to resume ({why})", p.stderr
        p = lhb("info", out)
        assert p.returncode == 1 and one_line(p) == f"lhb: error: {out}: cannot be read ({why})", p.stderr


def _damage(path: Path, key: str, what: str) -> None:
    """Overwrite bytes of ``key``'s object header or first data chunk."""
    with h5py.File(path) as f:
        ds = f["features"][key]
        at = h5py.h5o.get_info(ds.id).addr if what == "header" else ds.id.get_chunk_info(0).byte_offset + 10
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(b"\x07" if what == "header" else b"\xff" * 64)


@needs_speech
def test_a_damaged_features_file_is_one_line_naming_it(tmp_path, feats):
    """Before: 'lhb: internal error: RuntimeError: Object visitation failed (...)', a line naming no file
    (': Can't synchronously read data'), and raw h5py exceptions from the Python reader."""
    header = Path(shutil.copy(feats, tmp_path / "header.h5"))
    _damage(header, "utt02", "header")
    for args in (["info", header], ["convert", header, tmp_path / "c1", "-f", "npy", "-q"]):
        p = lhb(*args)
        assert p.returncode == 1 and one_line(p) == f"lhb: error: {header}: is damaged (bad object header version number)", p.stderr
    with pytest.raises(lighthubert.FeaturesError, match=re.escape(f"{header}: is damaged (bad object header")):
        lighthubert.open_features(header)
    chunk = tmp_path / "chunk.h5"
    p = lhb("extract", SPEECH_DIR / "spk1", chunk, *FAST, "--compression", "gzip")
    assert p.returncode == 0, p.stderr
    _damage(chunk, "utt02", "chunk")
    p = lhb("convert", chunk, tmp_path / "c2", "-f", "npy", "-q")
    assert p.returncode == 1 and one_line(p).startswith(f"lhb: error: {chunk}: utt02: cannot be read, the file is damaged ("), p.stderr
    assert not (tmp_path / "c2").exists() or not os.listdir(tmp_path / "c2")
    with lighthubert.open_features(chunk) as f:
        with pytest.raises(lighthubert.FeaturesError, match="utt02: cannot be read, the file is damaged"):
            f["utt02"]
        assert f["utt01"].shape[0] > 0  # the rest reads
    for read in (lambda: f["utt01"], lambda: f.num_samples("utt01"), lambda: f.source("utt01")):
        with pytest.raises(lighthubert.FeaturesError, match="is closed; open it again to read"):
            read()
    # lhb merge copied the damaged chunk as stored, said "merged 1 part", and --remove-parts deleted the
    # only copy: the part is read through first, and kept with OUTPUT as they were
    out, other = tmp_path / "merged.h5", tmp_path / "other"
    shutil.copytree(SPEECH_DIR / "spk2", other / "spk2")  # keys spk2/...: none in the part
    p = lhb("extract", other, out, *FAST, "--compression", "gzip")
    assert p.returncode == 0, p.stderr
    before = out.read_bytes()
    p = lhb("merge", out, chunk, "--remove-parts")
    assert p.returncode == 1 and one_line(p).startswith(f"lhb: error: {chunk}: utt02: cannot be read, the file is "
                                                        "damaged ("), p.stderr
    assert chunk.exists() and out.read_bytes() == before


@needs_speech
def test_a_resume_keeps_what_a_user_added_to_output(tmp_path, feats):
    """Before: the join of --resume (and lhb merge) copied only the root attributes and the features,
    so labels a user stored beside them and attributes on /features were lost without a word."""
    out = Path(shutil.copy(feats, tmp_path / "o.h5"))
    with h5py.File(out, "a") as f:
        f["labels/utt01"] = np.arange(3)
        f["features"].attrs["note"] = "mine"
        f.attrs["project"] = "p1"
        f["latest"] = h5py.SoftLink("/gone")  # links stay links, also one to nothing
        f["elsewhere"] = h5py.ExternalLink(str(feats), "/features")
    audio = tmp_path / "audio"
    shutil.copytree(SPEECH_DIR / "spk1", audio)
    shutil.copy(SPEECH_DIR / "spk2" / "utt02.wav", audio / "new.wav")
    p = lhb("extract", audio, out, *FAST, "--resume")
    assert p.returncode == 0, p.stderr
    with h5py.File(out) as f:
        assert "new" in f["features"] and f["labels/utt01"][()].tolist() == [0, 1, 2]
        assert f["features"].attrs["note"] == "mine" and f.attrs["project"] == "p1"
        assert f.get("latest", getlink=True).path == "/gone"
        assert f.get("elsewhere", getlink=True).filename == str(feats)


@needs_speech
def test_a_corrupt_segment_is_named_with_advice_that_keeps_the_others(tmp_path, feats):
    """One committed segment of a killed run is damaged (truncated): --resume names it and advises
    moving that one file away (its utterances are extracted again), not --overwrite alone, which
    deletes every intact segment; nothing is deleted, and following the advice completes the file."""
    out = tmp_path / "p.h5"
    parts = tmp_path / "p.h5.parts"
    parts.mkdir()
    good = Path(shutil.copy(feats, parts / "seg-00000-000001.h5"))
    bad = Path(shutil.copy(feats, parts / "seg-00000-000003.h5"))
    os.truncate(bad, 3000)
    p = lhb("extract", SPEECH_DIR / "spk1", out, *FAST, "--resume")
    assert p.returncode == 1, p.stderr
    line = one_line(p)
    assert line.startswith(f"lhb: error: {bad}: cannot be read to resume (truncated"), line
    assert "move or delete this one file" in line and "--resume then extracts its utterances again" in line, line
    assert sorted(os.listdir(parts)) == [good.name, bad.name] and bad.stat().st_size == 3000
    bad.rename(tmp_path / "damaged.h5")
    p = lhb("extract", SPEECH_DIR / "spk1", out, *FAST, "--resume")
    assert p.returncode == 0, p.stderr
    with h5py.File(out) as f, h5py.File(feats) as r:
        assert sorted(f["features"]) == sorted(r["features"]) and bool(f.attrs["complete"])


@needs_speech
def test_merge_into_an_output_a_run_holds_is_refused_naming_it_before_parts_exist(tmp_path, feats):
    """A run holds OUTPUT's lock but has made no OUTPUT.parts/ yet (or has just removed it): lhb merge
    OUTPUT is refused naming the holder, as README says, not "OUTPUT.parts: no such file or folder"."""
    from lighthubert.storage import OutputLock

    out = tmp_path / "lk3.h5"
    with OutputLock(out):  # what a running lhb extract holds
        for args in (["merge", out], ["merge", out, feats]):
            p = lhb(*args)
            assert p.returncode == 1, p.stderr
            line = one_line(p)
            assert line.startswith(f"lhb: error: {out}: is being written by lhb pid {os.getpid()} on "), line
    assert sorted(os.listdir(tmp_path)) == []


@needs_speech
def test_merge_names_what_is_wrong_with_a_part(tmp_path, feats):
    """A part that exists but is a device is not "no such file"; OUTPUT given as its own part is said
    to be OUTPUT; a key with other values in two parts names both files."""
    out = tmp_path / "o.h5"
    p = lhb("merge", out, "/dev/null")
    assert p.returncode == 1 and one_line(p) == "lhb: error: /dev/null: is neither a features file nor a folder of parts"
    own = Path(shutil.copy(feats, tmp_path / "m3.h5"))
    p = lhb("merge", own, own)
    assert p.returncode == 1, p.stderr
    assert one_line(p) == f"lhb: error: {own}: is OUTPUT itself, not a part; name the parts to join into it"
    a, b = Path(shutil.copy(feats, tmp_path / "a.h5")), Path(shutil.copy(feats, tmp_path / "b.h5"))
    with h5py.File(b, "a") as f:
        key = sorted(f["features"])[0]
        f["features"][key][0, 0] += 1
    p = lhb("merge", out, a, b)
    assert p.returncode == 1, p.stderr
    assert one_line(p).startswith(f"lhb: error: {b}: key {key!r} is also in {a}, with other values"), p.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.h5", "b.h5", "m3.h5"]


def srun_pair(args: list, job: str) -> list[subprocess.CompletedProcess]:
    """``lhb`` as the 2 tasks of a SLURM step (the ranks meet through a file store; no torchrun needed)."""
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    procs = [subprocess.Popen([shutil.which("lhb") or "lhb", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**env, "SLURM_PROCID": str(r), "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": str(r),
                                   "SLURM_JOB_ID": job, "SLURM_STEP_ID": "0", "OMP_NUM_THREADS": "1"})
             for r in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@needs_speech
@pytest.mark.skipif(not shutil.which("lhb"), reason="needs the installed lhb")
def test_a_finished_keep_parts_run_run_again_is_not_called_interrupted(tmp_path):
    """The same --keep-parts command run twice: the second is refused saying the parts are those of
    a finished run (merge them, or --overwrite), not "work of an interrupted run ... --resume"; a
    --keep-parts run makes no OUTPUT, only its parts."""
    out = tmp_path / "kq.h5"
    args = ["extract", SPEECH_DIR / "spk1", out, *FAST, "--keep-parts"]
    first = srun_pair(args, f"{os.getpid()}1")
    assert [p.returncode for p in first] == [0, 0], [p.stderr for p in first]
    parts = tmp_path / "kq.h5.parts"
    assert not out.exists() and sorted(p.name for p in parts.glob("*.h5")) == ["part-00000.h5", "part-00001.h5"]
    again = srun_pair(args, f"{os.getpid()}2")
    assert [p.returncode for p in again] == [1, 1], [p.stderr for p in again]
    line = one_line(again[0])
    assert line == (f"lhb: error: {parts}: holds the parts of a finished run: join them with lhb merge {out} {parts} --remove-parts, "
                    "or use --overwrite to start again"), line
    assert sorted(p.name for p in parts.glob("*.h5")) == ["part-00000.h5", "part-00001.h5"]
    # merged without --remove-parts, then resumed in one process: before, the refusal asked for the
    # same merge again, which changed nothing (a loop); it now names the way out
    assert lhb("merge", out).returncode == 0
    p = lhb("extract", SPEECH_DIR / "spk1", out, *FAST, "--resume")
    assert p.returncode == 1 and one_line(p) == (
        f"lhb: error: {parts}: parts of a run with several processes are there (merged already, or not yet); "
        f"join them and remove them with: lhb merge {out} {parts} --remove-parts"), p.stderr
    (tmp_path / "via").symlink_to(tmp_path)  # the parts named through a link are still lhb's own folder
    p = lhb("merge", out, tmp_path / "via" / "kq.h5.parts", "--remove-parts")
    assert p.returncode == 0 and not parts.exists(), p.stderr  # before: its FINISHED note and the folder stayed
    with h5py.File(out) as f:
        assert len(f["features"]) == 4 and bool(f.attrs["complete"])
    assert lhb("extract", SPEECH_DIR / "spk1", out, *FAST, "--resume").returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["kq.h5", "via"]


# ----------------------------------------------------------------------------- OUTPUT as a link


@needs_speech
def test_output_that_is_a_link_writes_its_target_and_keeps_the_link(tmp_path, feats):
    """OUTPUT a symbolic link to a file on another disk: --overwrite, --resume and lhb merge write the
    target (the link stays a link, nothing lands beside it); a link into a missing folder is one line."""
    (tmp_path / "disk").mkdir()
    target = tmp_path / "disk" / "t.h5"
    link = tmp_path / "here" / "l.h5"
    link.parent.mkdir()
    link.symlink_to(target)
    for extra in (["--overwrite"], ["--resume"]):
        p = lhb("extract", SPEECH_DIR / "spk1", link, *FAST, *extra)
        assert p.returncode == 0, p.stderr
        assert link.is_symlink() and os.readlink(link) == str(target), extra
        assert sorted(os.listdir(link.parent)) == ["l.h5"] and sorted(os.listdir(target.parent)) == ["t.h5"]
        with h5py.File(target) as f:
            assert len(f["features"]) == 4 and bool(f.attrs["complete"])
    p = lhb("merge", link, feats)
    assert p.returncode == 0, p.stderr
    assert link.is_symlink() and sorted(os.listdir(link.parent)) == ["l.h5"]
    with h5py.File(target) as f:
        assert f.attrs["merged_from"] == 2
    lost = tmp_path / "here" / "lost.h5"
    lost.symlink_to(tmp_path / "nowhere" / "x.h5")
    p = lhb("extract", SPEECH_DIR / "spk1", lost, *FAST)
    assert p.returncode == 1, p.stderr
    assert one_line(p) == f"lhb: error: {lost}: is a symbolic link to {tmp_path / 'nowhere' / 'x.h5'}, whose folder does not exist"


@needs_speech
def test_info_on_a_stopped_run_counts_the_work_not_yet_joined(feats, tmp_path):
    """What a killed run leaves: an empty OUTPUT (made at its start) and committed segments beside it.
    Before: lhb info said 0 utterances and a `finished` time (the creation time), and nothing of the
    segments, so the file looked empty and done: a user might delete it."""
    from lighthubert.storage import HDF5, segment_path

    out = tmp_path / "k.h5"
    with h5py.File(feats) as f:
        attrs = dict(f.attrs)
    attrs.pop("finished", None)
    HDF5.create(out, attrs)  # as a run does before its first batch
    segment_path(out, 0, 0, ".h5").parent.mkdir()
    shutil.copy(feats, segment_path(out, 0, 0, ".h5"))  # one committed segment
    p = lhb("info", out)
    assert p.returncode == 0, p.stderr
    rows = dict(line.split(None, 1) if not line.startswith("  not yet joined") else ("not yet joined", line.split("joined", 1)[1].strip())
                for line in p.stdout.splitlines()[1:])
    assert rows["utterances"].strip() == "0" and "finished" not in rows and rows["complete"].strip() == "False"
    assert rows["not yet joined"] == (f"1 file of committed work in {out}.parts (a run stopped or is still running: the same "
                                      f"lhb extract command with --resume completes it, lhb merge {out} --remove-parts joins what is there)")
    d = json.loads(lhb("info", out, "--json").stdout)
    assert d["not_yet_joined"] == [str(segment_path(out, 0, 0, ".h5"))]
    p = lhb("convert", out, tmp_path / "npy", "--format", "npy")
    assert f"not the work committed in {out}.parts (lhb merge {out} --remove-parts joins it)" in p.stderr, p.stderr
    # merged without --remove-parts: the segment stays, but its work is in the file (before: still 'not yet joined')
    assert lhb("merge", out).returncode == 0 and segment_path(out, 0, 0, ".h5").exists()
    assert "not yet joined" not in lhb("info", out).stdout and json.loads(lhb("info", out, "--json").stdout)["not_yet_joined"] == []
    assert lhb("merge", out, "--remove-parts").returncode == 0  # what the line says: then it holds the work, and says nothing more
    assert "not yet joined" not in lhb("info", out).stdout and json.loads(lhb("info", out, "--json").stdout)["utterances"] == 4


@needs_speech
def test_a_resume_lists_only_the_inputs_still_skipped(tmp_path):
    """Before: inputs skipped by an earlier run stayed in `skipped` after they were removed from INPUT
    and the run resumed (it exited 0, and lhb info still listed them)."""
    folder = tmp_path / "in"
    shutil.copytree(SPEECH_DIR / "spk1", folder)
    (folder / "bad1.wav").write_bytes(b"not audio at all")
    (folder / "bad2.wav").write_bytes(b"not audio either")
    out = tmp_path / "s.h5"

    def skipped() -> list[str]:
        with h5py.File(out) as f:
            return sorted(e["key"] for e in json.loads(f.attrs["skipped"]))

    assert lhb("extract", folder, out, *FAST).returncode == 3 and skipped() == ["bad1", "bad2"]
    (folder / "bad1.wav").unlink()
    assert lhb("extract", folder, out, *FAST, "--resume").returncode == 3 and skipped() == ["bad2"]
    (folder / "bad2.wav").unlink()
    assert lhb("extract", folder, out, *FAST, "--resume").returncode == 0 and skipped() == []
    with h5py.File(out) as f:
        assert len(f["features"]) == 4 and bool(f.attrs["complete"])


@needs_speech
def test_merge_remove_parts_leaves_other_files_in_the_parts_folder(feats, tmp_path):
    """Before: --remove-parts on OUTPUT.parts/ removed the whole folder, with a README and a backup the
    user kept there that were never merged (README: other files stay)."""
    out = tmp_path / "rp.h5"
    parts = tmp_path / "rp.h5.parts"
    parts.mkdir()
    for name in ("part-00000.h5", "part-00001.h5", "backup-old.h5"):
        shutil.copy(feats, parts / name)
    (parts / "README.txt").write_text("mine")
    (parts / "seg-00000-000003.h5.tmp").write_bytes(b"an unfinished segment")
    p = lhb("merge", out, parts, "--remove-parts")
    assert p.returncode == 0 and "merged 2 parts" in p.stderr, p.stderr
    assert sorted(x.name for x in parts.iterdir()) == ["README.txt", "backup-old.h5"]
    assert (parts / "README.txt").read_text() == "mine"
    with h5py.File(out) as f:
        assert len(f["features"]) == 4


@needs_speech
def test_a_resume_whose_input_renames_the_keys_is_refused(tmp_path):
    """A .txt list keys its files relative to their common folder; one line added outside it renames
    every key. Before: the resume exited 0 and stored each earlier utterance twice (spk1/utt01 and
    lists/spk1/utt01, one source)."""
    corpus = tmp_path / "c"
    shutil.copytree(SPEECH_DIR / "spk1", corpus / "lists" / "spk1")
    (corpus / "other").mkdir()
    shutil.copy(SPEECH_DIR / "spk2" / sorted(os.listdir(SPEECH_DIR / "spk2"))[0], corpus / "other" / "x.wav")
    listing = corpus / "lists" / "l.txt"
    listing.write_text("spk1/utt01.wav\nspk1/utt02.wav\n")
    out = tmp_path / "r.h5"
    assert lhb("extract", listing, out, *FAST).returncode == 0
    before = out.read_bytes()
    listing.write_text("spk1/utt01.wav\nspk1/utt02.wav\n../other/x.wav\n")
    p = lhb("extract", listing, out, *FAST, "--resume")
    src = corpus / "lists" / "spk1" / "utt01.wav"
    assert p.returncode == 1 and one_line(p) == (
        f"lhb: error: {out}: holds 'spk1/utt01', made from {src}, which INPUT now names 'lists/spk1/utt01': the keys "
        "changed (a list's common folder moved? or, in a file an earlier lhb made, a folder reached both directly and "
        "through a link was named by the link), and resuming would store every such file twice; give the same INPUT "
        "as before, or another OUTPUT (or --overwrite to start again)"), p.stderr
    assert out.read_bytes() == before


@needs_speech
def test_a_resume_whose_input_renames_the_keys_through_a_link_is_refused(tmp_path):
    """The same as above with the first list's files named through a link to the folder (``/data`` ->
    the real corpus): the recorded paths are spelt otherwise than INPUT's, and are still the same files."""
    corpus = tmp_path / "c"
    shutil.copytree(SPEECH_DIR / "spk1", corpus / "lists" / "spk1")
    (corpus / "other").mkdir()
    shutil.copy(SPEECH_DIR / "spk2" / sorted(os.listdir(SPEECH_DIR / "spk2"))[0], corpus / "other" / "x.wav")
    (tmp_path / "data").symlink_to(corpus / "lists")
    first = tmp_path / "first.txt"
    first.write_text(f"{tmp_path}/data/spk1/utt01.wav\n{tmp_path}/data/spk1/utt02.wav\n")
    out = tmp_path / "r.h5"
    assert lhb("extract", first, out, *FAST).returncode == 0
    before = out.read_bytes()
    second = tmp_path / "second.txt"
    second.write_text(f"{corpus}/lists/spk1/utt01.wav\n{corpus}/lists/spk1/utt02.wav\n{corpus}/other/x.wav\n")
    p = lhb("extract", second, out, *FAST, "--resume")
    assert p.returncode == 1 and one_line(p).startswith(
        f"lhb: error: {out}: holds 'data/spk1/utt01', made from {tmp_path}/data/spk1/utt01.wav, which INPUT now "
        "names 'c/lists/spk1/utt01': the keys changed"), p.stderr
    assert out.read_bytes() == before
    # the files themselves links (links/utt01.wav -> the corpus): the same files too
    (tmp_path / "links").mkdir()
    for name in ("utt01.wav", "utt02.wav"):
        (tmp_path / "links" / name).symlink_to(corpus / "lists" / "spk1" / name)
    first.write_text(f"{tmp_path}/links/utt01.wav\n{tmp_path}/links/utt02.wav\n")
    out2 = tmp_path / "r2.h5"
    assert lhb("extract", first, out2, *FAST).returncode == 0
    p = lhb("extract", second, out2, *FAST, "--resume")
    assert p.returncode == 1 and one_line(p).startswith(
        f"lhb: error: {out2}: holds 'links/utt01', made from {tmp_path}/links/utt01.wav, which INPUT now names "
        "'c/lists/spk1/utt01': the keys changed"), p.stderr


@needs_speech
def test_a_run_whose_stderr_reader_left_goes_on_to_the_end(tmp_path):
    """`lhb extract ... 2>&1 | head -c 30`, or a `| tee log` that died. Before: the next progress line
    raised EPIPE, the run ended with 141, the segments were never joined and OUTPUT held 0 utterances."""
    out = tmp_path / "e.h5"
    args = [a for a in FAST if a != "-q"]
    proc = subprocess.Popen([*lhb_prefix(), "extract", str(SPEECH_DIR / "spk1"), str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), stdin=subprocess.DEVNULL)
    proc.stderr.close()  # the reader leaves before the first line
    assert proc.wait(timeout=300) == 0
    with h5py.File(out) as f:
        assert len(f["features"]) == 4 and bool(f.attrs["complete"])


@needs_speech
def test_a_key_with_dot_dot_is_refused_before_convert_writes_outside_its_folder(tmp_path, feats):
    """A features file from someone else can hold a group named '..' (h5py allows it): lhb convert
    -f npy wrote FEATURES/../../victim as a file outside OUTPUT, replacing one there without
    --overwrite. Every reader (convert, info, merge, open_features) now refuses such a key."""
    bad = tmp_path / "bad.h5"
    shutil.copy(feats, bad)
    with h5py.File(bad, "r+") as f:
        first = lighthubert.features.keys(f)[0]
        f.copy(f["features"][first], f["features"].create_group("..").create_group(".."), name="victim")
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"precious")
    (tmp_path / "out").mkdir()
    runs = [lhb("convert", bad, tmp_path / "out" / "conv", "-f", "npy"), lhb("info", bad),
            lhb("merge", tmp_path / "m.h5", bad)]
    for p in runs:
        assert p.returncode == 1 and one_line(p) == (
            f"lhb: error: {bad}: dataset 'features/../../victim' has '.' or '..' in its key, which no lhb run writes "
            "(written as files, it would land outside their folder); not read"), p.stderr
    assert victim.read_bytes() == b"precious" and not (tmp_path / "out" / "conv").exists()
    assert not (tmp_path / "m.h5").exists()
    with pytest.raises(lighthubert.FeaturesError, match="has '.' or '..' in its key"):
        lighthubert.open_features(bad)


@needs_speech
def test_layers_of_bytes_are_named_not_an_internal_error(tmp_path, feats):
    """An edited file whose 'layers' holds bytes: the message showing the value crashed in json.dumps
    (lhb: internal error: TypeError ... bytes is not JSON serializable)."""
    bad = tmp_path / "bad.h5"
    shutil.copy(feats, bad)
    with h5py.File(bad, "r+") as f:
        f.attrs["layers"] = np.array([b"x", b"y"])
    p = lhb("info", bad)
    assert p.returncode == 1 and one_line(p) == (
        f"lhb: error: {bad}: attribute 'layers' is not a list of hidden-state indices ([\"b'x'\", \"b'y'\"])"), p.stderr
