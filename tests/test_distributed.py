"""Several processes: torchrun (gloo, CPU) and srun-style SLURM variables give one OUTPUT equal to a
one-process run; a rank killed mid-run leaves no half-merged OUTPUT, valid parts, and --resume
completes the job."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import lighthubert
from lighthubert.features import keys

from helpers import SPEECH_DIR, copy_speech

SPEECH = SPEECH_DIR
LHB = shutil.which("lhb")
TORCHRUN = shutil.which("torchrun")
pytestmark = [pytest.mark.skipif(not (LHB and TORCHRUN and SPEECH.is_dir()), reason="needs lhb, torchrun and the speech data"),
              pytest.mark.slow]
ARGS = ["--layers", "0,2", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The Small min subnet of a random Small file as a compact checkpoint (the model is not the point
    here; it loads in 0.04 s)."""
    folder = tmp_path_factory.mktemp("ckpt")
    full = lighthubert.write_random_checkpoint(folder / "small.pt", "small", seed=5)
    return lighthubert.export_subnet(lighthubert.load_checkpoint(full), "min", folder / "small_min.pt")


@pytest.fixture(scope="module")
def single(tmp_path_factory, ckpt) -> Path:
    out = tmp_path_factory.mktemp("single") / "single.h5"
    subprocess.run([LHB, "extract", str(SPEECH), str(out), "-c", str(ckpt), *ARGS], check=True)
    return out


def torchrun(*args: str, nproc: int = 2, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([TORCHRUN, "--standalone", "--nproc-per-node", str(nproc), "--no-python", LHB, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw)


def python_under_torchrun(tmp_path: Path, code: str) -> tuple[subprocess.CompletedProcess, dict[str, list]]:
    """Run the Python ``code`` as two ranks under torchrun; each rank prints one line ``RANK [rank, ...]``
    (JSON), in one ``os.write`` (two ranks' ``print`` pieces once came out interleaved, 'RANKRANK [...').
    Returns the finished process and rank -> the rest of its line; both ranks must have printed."""
    script = tmp_path / "job.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python", sys.executable, str(script)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300)
    ranks = {rank: rest for rank, *rest in (json.loads(ln[5:]) for ln in r.stdout.splitlines() if ln.startswith("RANK "))}
    assert sorted(ranks) == ["0", "1"], r.stdout
    return r, ranks


def segment_keys(parts: Path) -> set[str]:
    """The keys the ranks' committed segments in ``parts`` hold; every segment must open."""
    got: set[str] = set()
    for p in parts.glob("seg-*.h5"):
        with h5py.File(p, "r") as f:
            got.update(keys(f))
    return got


def assert_same(path: Path, reference: Path) -> None:
    with h5py.File(path) as a, h5py.File(reference) as b:
        assert sorted(keys(a)) == sorted(keys(b))
        for k in keys(b):
            x, y = a["features"][k][()], b["features"][k][()]
            assert x.shape == y.shape, k
            assert np.abs(x - y).max() / np.abs(y).max() < 1e-5, k
        assert list(a.attrs["layers"]) == list(b.attrs["layers"])
        assert a.attrs["subnet"] == b.attrs["subnet"]


def test_two_ranks_under_torchrun_equal_one_process(tmp_path, ckpt, single):
    out = tmp_path / "out.h5"
    proc = torchrun("extract", str(SPEECH), str(out), "-c", str(ckpt), *ARGS)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert_same(out, single)
    assert not (tmp_path / "out.h5.parts").exists()
    with h5py.File(out) as f:
        assert bool(f.attrs["complete"])


def test_keep_parts_then_merge(tmp_path, ckpt, single):
    out = tmp_path / "out.h5"
    proc = torchrun("extract", str(SPEECH), str(out), "-c", str(ckpt), *ARGS, "--keep-parts")
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    parts = sorted((tmp_path / "out.h5.parts").glob("part-*.h5"))
    assert len(parts) == 2 and not out.exists()
    counts = []
    for p in parts:
        with h5py.File(p) as f:
            counts.append(len(keys(f)))
    assert sum(counts) == 12 and min(counts) >= 4  # disjoint shares, balanced by duration
    # the same parts without the note that every rank finished (a failed job's): joined, not complete
    # (before, each part said complete, and so did the join, with inputs missing)
    failed = tmp_path / "failed.h5"
    shutil.copytree(tmp_path / "out.h5.parts", tmp_path / "failed.h5.parts", ignore=shutil.ignore_patterns("FINISHED*"))
    assert [p.name for p in (tmp_path / "failed.h5.parts").iterdir() if not p.name.startswith("part-")] == []
    subprocess.run([LHB, "merge", str(failed), "-q"], check=True)
    subprocess.run([LHB, "merge", str(out), str(tmp_path / "out.h5.parts")], check=True)
    assert_same(out, single)
    with h5py.File(out) as f, h5py.File(failed) as g:
        assert f.attrs["complete"] and not g.attrs["complete"] and len(keys(g)) == 12


def srun_task(args: list[str], rank: int, job: str, stderr=subprocess.STDOUT, **env: str) -> subprocess.Popen:
    """Task ``rank`` of 2 of a SLURM step ``job``.0 as srun starts it (no torchrun variables)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environ.update(SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID=str(rank), SLURM_JOB_ID=job,
                   SLURM_STEP_ID="0", OMP_NUM_THREADS="1", **env)
    return subprocess.Popen(args, env=environ, stdout=subprocess.PIPE, stderr=stderr, text=True)


def test_slurm_variables_without_torchrun(tmp_path, ckpt, single):
    out = tmp_path / "out.h5"
    procs = [srun_task([LHB, "extract", str(SPEECH), str(out), "-c", str(ckpt), *ARGS], rank, "4242") for rank in range(2)]
    for p in procs:
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, log
    assert_same(out, single)


def test_srun_ranks_that_cannot_meet_say_where_they_tried(tmp_path, ckpt):
    """Under srun the ranks meet through a file in OUTPUT.parts; when torch cannot use it (here a
    folder in its place; on a filesystem without file locks, its lock calls fail) each rank said
    "lhb: internal error: DistStoreError: Is a directory". Now one line names the file and what it
    needs; nothing is written."""
    out = tmp_path / "out.h5"
    store = tmp_path / "out.h5.parts" / ".store-99.0"
    store.mkdir(parents=True)
    procs = [srun_task([LHB, "extract", str(SPEECH), str(out), "-c", str(ckpt), *ARGS], rank, "99", stderr=subprocess.PIPE)
             for rank in range(2)]
    for rank, p in enumerate(procs):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1 and err.splitlines() == [
            f"lhb: error: rank {rank} of 2 could not join the others through the file {store} (on a filesystem "
            "all nodes share, that takes file locks): Is a directory"], err
    assert not out.exists() and os.listdir(tmp_path / "out.h5.parts") == [".store-99.0"]


def test_killed_rank_fails_cleanly_and_resumes(tmp_path, ckpt, single):
    audio = tmp_path / "audio"
    for i in range(3):
        shutil.copytree(SPEECH, audio / f"copy{i}")
    out = tmp_path / "out.h5"
    args = ["extract", str(audio), str(out), "-c", str(ckpt), "--batch-seconds", "3", *ARGS]
    parts = tmp_path / "out.h5.parts"
    proc = torchrun(*[a for a in args if a != "-q"], start_new_session=True)
    for line in proc.stdout:  # rank 0's plain progress: the ranks have planned and started
        if line.startswith("extracting"):
            break
    time.sleep(1.5)
    killed = False
    if proc.poll() is None:
        ranks = subprocess.run(["pgrep", "-f", f"lhb extract {audio}"], capture_output=True, text=True).stdout.split()
        ranks = [int(r) for r in ranks if int(r) != proc.pid]
        if ranks:
            os.kill(max(ranks), signal.SIGKILL)
            killed = True
    log, _ = proc.communicate(timeout=180)
    if not killed:
        pytest.skip("the run finished before a rank could be killed")
    assert proc.returncode != 0, log
    assert not out.exists(), "a failed job must not leave a (half-merged) OUTPUT"
    got = segment_keys(parts)
    assert 0 < len(got) <= 36  # a rank may also die after its share, before the merge
    again = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python", LHB, *args, "--resume"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stdout + again.stderr
    with h5py.File(out) as a, h5py.File(single) as b:  # each copy equals the one-process run of the speech
        want = {f"copy{i}/{k}" for i in range(3) for k in keys(b)}
        assert set(keys(a)) == want
        for k in sorted(want):
            x, y = a["features"][k][()], b["features"][k.split("/", 1)[1]][()]
            assert x.shape == y.shape and np.abs(x - y).max() / np.abs(y).max() < 1e-5, k
        assert bool(a.attrs["complete"])
    assert not parts.exists()


def test_ctrl_c_in_torchruns_terminal_stops_every_rank_after_its_batch(tmp_path, ckpt):
    """Ctrl-C where torchrun runs (SIGINT to its process group; torchrun sends it on once to each rank,
    which runs in a session of its own): the ranks stop after their current batch (not at once, as a
    second signal would make them), say so without a traceback of lhb's, leave valid segments and no
    OUTPUT; --resume in one process completes the job."""
    audio = tmp_path / "audio"
    for i in range(3):
        shutil.copytree(SPEECH, audio / f"copy{i}")
    out = tmp_path / "out.h5"
    args = ["extract", str(audio), str(out), "-c", str(ckpt), "--batch-seconds", "3", "--layers", "0,2", "--device", "cpu"]
    proc = torchrun(*args, start_new_session=True)  # a process group of its own, as a terminal's foreground job
    for line in proc.stdout:  # rank 0's plain progress: the ranks have planned and started
        if line.startswith("extracting"):
            break
    time.sleep(1.0)
    if proc.poll() is not None:
        pytest.skip("the run finished before Ctrl-C")
    os.killpg(proc.pid, signal.SIGINT)
    log, _ = proc.communicate(timeout=180)
    parts = tmp_path / "out.h5.parts"
    if "done: 36 files" in log:
        pytest.skip("the run finished before Ctrl-C reached it")
    assert "stopping after the current batch (SIGINT); signal again to stop at once" in log, log
    assert f"stopped: what is done is kept in {parts}; to finish, run the same command with --resume" in log, log
    assert "interrupted;" not in log, log  # the ranks' "stop at once" line: a second signal reached them
    frames = [ln for ln in log.splitlines() if ln.lstrip().startswith("File ")]  # torchrun's own traceback only
    assert not [ln for ln in frames if re.search(r"[/\\]lighthubert(_cli)?[/\\]", ln)], log
    assert not out.exists()
    assert 0 < len(segment_keys(parts)) < 36, log
    subprocess.run([LHB, *args, "-q", "--resume"], check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    with h5py.File(out) as f:
        assert len(keys(f)) == 36 and bool(f.attrs["complete"])
    assert not parts.exists()


def test_srun_rank_killed_does_not_leave_the_others_waiting(tmp_path, ckpt, single):
    """Under srun a killed task does not end the others (torchrun tears them down; srun need not): rank
    0 notices the silent rank by its heartbeat, fails with one line and keeps the parts; --resume in
    one process completes the job."""
    audio = tmp_path / "audio"
    for i in range(2):
        shutil.copytree(SPEECH, audio / f"copy{i}")
    out = tmp_path / "out.h5"
    args = [LHB, "extract", str(audio), str(out), "-c", str(ckpt), "--batch-seconds", "3", "--layers", "0,2",
            "--device", "cpu"]
    procs = [srun_task(args, rank, "77", LIGHTHUBERT_RANK_TIMEOUT="4") for rank in range(2)]
    for line in procs[0].stdout:  # rank 0's plain progress: the ranks have planned and started
        if line.startswith("extracting"):
            break
    procs[1].kill()
    procs[1].wait()
    log, _ = procs[0].communicate(timeout=240)
    assert procs[0].returncode == 1, log
    parts = tmp_path / "out.h5.parts"
    assert f"lhb: error: rank 1 stopped responding (no heartbeat for 4 s); the finished work is kept in {parts}" in log
    assert "Traceback" not in log and not out.exists()
    subprocess.run([*args, "-q", "--resume"], check=True, timeout=300)
    with h5py.File(out) as a, h5py.File(single) as b:
        assert set(keys(a)) == {f"copy{i}/{k}" for i in range(2) for k in keys(b)}
        for k in keys(b):
            x, y = a["features"][f"copy1/{k}"][()], b["features"][k][()]
            assert x.shape == y.shape and np.abs(x - y).max() / np.abs(y).max() < 1e-5, k
        assert bool(a.attrs["complete"])


def test_a_rank_stopped_by_another_ranks_failure_exits_1_not_143(tmp_path, ckpt):
    """Before: the rank that stopped because another failed exited 143, which says SIGTERM, though no
    signal came (torchrun and srun report that code)."""
    import soundfile as sf

    audio = tmp_path / "audio"
    shutil.copytree(SPEECH, audio)
    sf.write(audio / "long_nan.wav", np.full(16000 * 30, np.nan, np.float32), 16000, subtype="FLOAT")  # rank 0's first
    out = tmp_path / "out.h5"
    args = [LHB, "extract", str(audio), str(out), "-c", str(ckpt), "--batch-seconds", "3", "--strict", *ARGS]
    procs = [srun_task(args, rank, "55", stderr=subprocess.PIPE) for rank in range(2)]
    logs = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], logs
    assert "long_nan.wav" in logs[0] and "Traceback" not in "".join(logs), logs


def test_resume_refuses_keys_nesting_with_what_output_holds(tmp_path, ckpt):
    """Rank 0 checks the list against the keys OUTPUT (and the parts) hold before any audio is read;
    every rank stops with the one line, and OUTPUT is left as it was."""
    wav = SPEECH / "spk1" / "utt03.wav"
    nested, flat = tmp_path / "nested.scp", tmp_path / "flat.scp"
    nested.write_text(f"a/b {wav}\na/c {wav}\n")
    flat.write_text(f"x {wav}\na {wav}\n")
    out = tmp_path / "out.h5"
    subprocess.run([LHB, "extract", str(nested), str(out), "-c", str(ckpt), *ARGS], check=True)
    before = out.read_bytes()
    proc = torchrun("extract", str(flat), str(out), "-c", str(ckpt), *ARGS, "--resume")
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, log
    assert log.count(f"lhb: error: {flat}:2: key 'a' is a group in {out}, which holds 'a/b'") == 1, log
    assert "internal error" not in log, log
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["flat.scp", "nested.scp", "out.h5"]


def test_each_process_takes_a_gpu_it_can_see():
    """With several processes, ``auto`` and a plain ``cuda`` are GPU LOCAL_RANK modulo the GPUs the
    process sees. Before: ``--device cuda`` put every rank on GPU 0, and under ``srun
    --gpus-per-task=1`` (each task sees one GPU, SLURM_LOCALID still 0..n-1) every rank but the
    first asked for a GPU it could not see and stopped."""
    from lighthubert.distributed import World, process_device

    node = [World(rank, 8, rank, "torchrun") for rank in range(8)]
    assert [process_device("auto", w, 8) for w in node] == [f"cuda:{r}" for r in range(8)]
    assert [process_device("cuda", w, 8) for w in node] == [f"cuda:{r}" for r in range(8)]
    assert [process_device(None, w, 8) for w in node] == [f"cuda:{r}" for r in range(8)]
    assert [process_device("auto", w, 1) for w in node] == ["cuda:0"] * 8  # one GPU shown to each task
    assert [process_device("auto", w, 4) for w in node] == [f"cuda:{r % 4}" for r in range(8)]  # two ranks a GPU
    assert process_device("cuda:1", node[3], 8) == "cuda:1" and process_device("cpu", node[3], 8) == "cpu"
    assert process_device("auto", node[3], 0) == "auto"  # no GPU: the CPU, as auto says
    assert process_device("cuda", World(), 8) == "cuda"  # one process: as given


def test_rank_0s_summary_counts_the_other_ranks_skips(tmp_path, ckpt):
    """lighthubert.extract under torchrun: each rank's summary.skipped holds only real (item, reason)
    pairs (before, rank 0 padded it with (None, '') for the other ranks' skips, which broke code
    reading item.path); rank 0's skipped_count counts the whole job's. The job reads each input's
    header once, shared between the ranks (before: rank 0 read them all, then each rank its share again)."""
    folder = tmp_path / "in"
    copy_speech(folder, ["spk1/" + p.name for p in sorted((SPEECH / "spk1").iterdir())[:2]])
    for i in range(6):  # bad files, spread over both ranks
        (folder / f"bad{i}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * (i + 1))
    r, ranks = python_under_torchrun(tmp_path, (
        "import json, os, lighthubert, lighthubert.pipeline as p\n"
        "headers, real = [], p.audio_frames\n"
        "p.audio_frames = lambda path: headers.append(path) or real(path)\n"
        f"s = lighthubert.extract({str(folder)!r}, {str(tmp_path / 'out.h5')!r}, checkpoint={str(ckpt)!r},"
        " device='cpu', layers='0')\n"
        "os.write(1, ('RANK ' + json.dumps([os.environ['RANK'], [it.path.name for it, _ in s.skipped],"
        " s.skipped_elsewhere, s.skipped_count, len(headers)]) + '\\n').encode())\n"))  # one write: never interleaved
    assert r.returncode == 0, r.stdout
    assert ranks["0"][3] + ranks["1"][3] == 8 and ranks["0"][3] and ranks["1"][3], r.stdout  # 2 files + 6 bad ones
    assert sorted(ranks["0"][0] + ranks["1"][0]) == [f"bad{i}.wav" for i in range(6)]
    assert ranks["1"][0], "no skip on rank 1: the test would not see rank 0's count of them"
    assert ranks["0"][1:3] == [len(ranks["1"][0]), 6]


def test_a_progress_callback_is_rank_0s_and_raising_there_keeps_the_work_for_resume(tmp_path, ckpt, single):
    """lighthubert.extract under torchrun: the ``progress`` callback runs on rank 0 only (the whole job's
    counts), and one that raises there stops the job as a failed rank would: rank 0 raises the
    callback's own exception with the note saying where the work is, no OUTPUT is merged, and
    ``resume=True`` (here in one process) completes the job from the parts. The run had
    ``overwrite=True`` over an OUTPUT of other layers: it is gone, as one process removes it (before,
    it stayed, and the resume lhb advised was refused for its other layers, or with the same settings
    took its old utterances in)."""
    out = tmp_path / "out.h5"
    shutil.copy(single, out)  # layers 0 and 2; this run asks for layer 0
    settings = {"checkpoint": str(ckpt), "device": "cpu", "layers": "0", "batch_seconds": 3}
    r, ranks = python_under_torchrun(tmp_path, (
        "import json, os, lighthubert\n"
        "calls = []\n"
        "def progress(files, total, seconds, total_seconds):\n"
        "    calls.append(files)\n"
        "    if os.environ['RANK'] == '0' and files >= 1:\n"
        "        raise RuntimeError('the callback failed')\n"
        "try:\n"
        f"    lighthubert.extract({str(SPEECH)!r}, {str(out)!r}, progress=progress, overwrite=True, **{settings!r})\n"
        "    said = 'returned'\n"
        "except RuntimeError as err:\n"
        "    said = [str(err), *getattr(err, '__notes__', [])]\n"
        "os.write(1, ('RANK ' + json.dumps([os.environ['RANK'], len(calls), said]) + '\\n').encode())\n"))
    assert ranks["1"][0] == 0, r.stdout  # never called on rank 1
    calls, said = ranks["0"]
    assert calls == 2 and said[0] == "the callback failed", r.stdout  # start, then the first batch: not called again
    assert f"{out}.parts" in said[1] and "resume=True" in said[1], said
    assert not out.exists() and list(Path(f"{out}.parts").glob("seg-*")), r.stdout
    summary = lighthubert.extract(SPEECH, out, resume=True, **settings)
    assert summary.done_before > 0 and summary.done_before + summary.files == 12, summary
    with h5py.File(out) as f:
        assert len(keys(f)) == 12 and f.attrs["complete"]


def test_a_rank_that_dies_before_the_plan_is_said_leaves_one_line(tmp_path, ckpt, single):
    """Under srun (nothing tears the step down) rank 0 joins the group and dies before it says the
    plan: rank 1 waiting for the plan said a gloo RuntimeError in a traceback ("Connection closed by
    peer"). Now one line, exit 1, and nothing written. The fake rank 0 lets its heartbeat's write end
    first: torch's FileStore loops for good on a record cut short (this test hung so, once in CI)."""
    out = tmp_path / "out.h5"
    args = [LHB, "extract", str(SPEECH), str(out), "-c", str(ckpt), *ARGS]
    rank0 = ("import os, sys; from pathlib import Path; from lighthubert.distributed import Group, detect_world; "
             "g = Group(detect_world(), Path(sys.argv[1])); g._stop_beating.set(); g._beater.join(); os._exit(3)")
    procs = [srun_task([sys.executable, "-c", rank0, str(out)], 0, "66"), srun_task(args, 1, "66")]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert procs[0].returncode == 3, logs[0]
    assert procs[1].returncode == 1, logs[1]
    lines = logs[1].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lhb: error: a rank left while the ranks planned the job; nothing was extracted"), logs[1]
    assert not out.exists()
    # the job requeued (same job id, step 0 again, SLURM_RESTART_COUNT=1) beside the store the failed run
    # left: before, the new ranks read the old ranks' addresses from it, and one failed while the other hung
    assert (tmp_path / "out.h5.parts" / ".store-66.0").exists()
    procs = [srun_task(args, rank, "66", SLURM_RESTART_COUNT="1") for rank in range(2)]
    for p in procs:
        log = p.communicate(timeout=120)[0]
        assert p.returncode == 0, log
    assert_same(out, single)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_rank_waiting_for_ranks_that_never_come_stops_on_a_signal(tmp_path, ckpt, sig, status):
    """Under srun a rank whose partners never start waits to join them (up to an hour). It waited inside
    torch, where Python's signal handlers never run: Ctrl-C and SIGTERM did nothing, only SIGKILL ended
    it. Now the stop line and 130/143, at once."""
    out = tmp_path / "out.h5"
    proc = srun_task([LHB, "extract", str(SPEECH), str(out), "-c", str(ckpt), "--layers", "0", "--device", "cpu"], 0,
                     "88", stderr=subprocess.PIPE)
    assert "2 processes (slurm)" in proc.stderr.readline()  # the start line: it now waits for rank 1
    time.sleep(2)
    proc.send_signal(sig)
    _, log = proc.communicate(timeout=60)
    assert proc.returncode == status, log
    assert log.strip().splitlines()[-1] == "stopped while waiting for the other ranks to join; nothing was done", log
    assert not out.exists()
