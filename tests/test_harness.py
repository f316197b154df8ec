"""The fork server most CLI tests start ``lhb`` through (tests/forkserver.py) behaves as the installed
command: same exit status, stdout and stderr, argv bytes, working folder and umask, signals forwarded
and a death by signal reported as such. If it did not, the CLI tests would check something else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import _env, lhb_command, lhb_prefix
from helpers import SPEECH_DIR

pytestmark = pytest.mark.skipif(os.environ.get("LIGHTHUBERT_TESTS_FRESH") == "1", reason="no fork server in use")


def test_the_fork_server_runs_lhb_as_the_installed_command_does(tmp_path, ckpt_files):
    """Exit status, stdout and stderr alike, for JSON, help, a usage error and failures that name a
    non-UTF-8 argument and a path relative to the working folder (all started at once)."""
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/x\xff.h5")
    open(odd, "wb").close()
    (tmp_path / "rel.pt").write_bytes(b"not a checkpoint")
    cases = [["info", str(ckpt_files["small"]), "--json"], ["--help"], ["subnet", "--params", "0"],
             ["extract", str(tmp_path), odd, "-c", "random:small"], ["info", "rel.pt"]]
    runs = [[subprocess.Popen(prefix + args, cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for prefix in (lhb_prefix(), lhb_command())] for args in cases]
    for args, (fork, real) in zip(cases, runs):
        fork_out, real_out = fork.communicate(timeout=120), real.communicate(timeout=120)
        assert (*fork_out, fork.returncode) == (*real_out, real.returncode), args


def test_umask_signals_and_a_death_by_signal_reach_through(tmp_path):
    old = os.umask(0o077)
    try:
        args = ["subnet", "--preset", "min", "-c", "random:small", "-o", tmp_path / "s.json"]
        p = subprocess.run(lhb_prefix() + args, env=_env(), capture_output=True, timeout=120)
    finally:
        os.umask(old)
    assert p.returncode == 0 and (tmp_path / "s.json").stat().st_mode & 0o777 == 0o600, p.stderr
    run = ["extract", str(SPEECH_DIR), str(tmp_path / "o.h5"), "-c", "random:small", "--overwrite"]
    # lhb's own answers to SIGTERM and SIGINT; SIGQUIT it leaves to Python's default: it dies of it
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGQUIT, -signal.SIGQUIT)):
        proc = subprocess.Popen(lhb_prefix() + run, env=_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.0)  # within the run
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, (sig, err)


def test_lhb_lets_torch_threads_sleep_unless_told_otherwise():
    """lhb sets OMP_WAIT_POLICY=PASSIVE before torch is imported (BENCHMARKS.md, "Threads that wait"),
    and keeps a value the user set: what the variable holds when torch is imported, in a run of lhb's
    entry point (a command that loads torch: lhb info of a missing file)."""
    script = "\n".join([
        "import atexit, os, sys",
        "seen = []",
        "sys.addaudithook(lambda ev, args: ev == 'import' and args[0] == 'torch' and not seen"
        " and seen.append(os.environ.get('OMP_WAIT_POLICY')))",
        "atexit.register(lambda: print(seen))",
        "from lighthubert_cli import entry",
        "entry.main()"])
    for given, seen in ((None, "['PASSIVE']"), ("ACTIVE", "['ACTIVE']")):
        env = {k: v for k, v in _env().items() if k != "OMP_WAIT_POLICY"}
        if given:
            env["OMP_WAIT_POLICY"] = given
        p = subprocess.run([sys.executable, "-c", script, "info", "/nonexistent/x.pt"], env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 1 and p.stdout.strip() == seen, p
