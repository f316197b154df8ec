"""Helpers for the end-to-end tests of the ``lhb`` command (tests/test_cli.py).

Everything here is independent of the code under test: the CLI is driven as a subprocess, features
files are read back with plain h5py, audio for the reference is decoded with soundfile/torchaudio
exactly as SPEC.md §4 says, and parameter counts are written out from SPEC.md §2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


SAMPLE_RATE = 16000
TIMEOUT = 300


def lhb_command() -> list[str]:
    """The installed ``lhb`` entry point (the brief: drive the installed command)."""
    exe = shutil.which("lhb")
    if exe is None:  # e.g. a venv whose bin/ is not on PATH: the script sits beside the interpreter
        cand = Path(sys.executable).with_name("lhb")
        if cand.is_file():
            exe = str(cand)
    assert exe is not None, "the `lhb` command is not installed (pip install -e .)"
    return [exe]


def lhb_prefix() -> list[str]:
    """How the tests start ``lhb`` when start-up itself is not the point: through the fork server in
    ``forkserver.py`` (a real process per command, without the 2 s of importing torch each time), or
    the installed command (:func:`lhb_command`) when ``LIGHTHUBERT_TESTS_FRESH=1``. Tests about
    start-up, signals by pid, SIGKILL/SIGSTOP, resource limits or memory use :func:`lhb_command`."""
    if os.environ.get("LIGHTHUBERT_TESTS_FRESH") == "1":
        return lhb_command()
    import forkserver

    return forkserver.command(_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LHB_DEBUG", None)
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    # One compute thread per lhb process: the tests run two of them beside the reference computation on
    # a 2-core machine, and several multi-threaded processes on 2 cores spin and crawl.
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # shown when an assertion fails
        return (f"lhb {' '.join(self.args)}\n--- exit {self.returncode}\n--- stdout:\n{self.stdout[-3000:]}"
                f"\n--- stderr:\n{self.stderr[-3000:]}")

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


class Run:
    """An ``lhb`` subprocess started now; :meth:`result` waits for it (once)."""

    def __init__(self, args: Sequence[Any], cwd: str | os.PathLike | None = None):
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen(lhb_prefix() + self.args, cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._result: Result | None = None

    def result(self) -> Result:
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                raise AssertionError(f"lhb {' '.join(self.args)} ran over {TIMEOUT} s\n{err[-3000:]}") from None
            self._result = Result(self.args, self.proc.returncode, out, err)
        return self._result


def lhb(*args: Any, cwd: str | os.PathLike | None = None) -> Result:
    return Run(args, cwd).result()


def one_line(run: Result | subprocess.CompletedProcess) -> str:
    """The one line a failing run printed on stderr (no traceback, no "internal error")."""
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    return lines[0]


# ----------------------------------------------------------------------------- features files


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class Features:
    attrs: dict[str, Any]
    data: dict[str, np.ndarray]
    meta: dict[str, dict[str, Any]]
    """per key: dataset attributes plus ``dtype`` and ``compression``."""

    @property
    def layers(self) -> list[int]:
        return [int(i) for i in np.atleast_1d(self.attrs["layers"])]

    @property
    def skipped(self) -> list[dict]:
        s = self.attrs["skipped"]
        return json.loads(s) if isinstance(s, str) else list(s)

    @property
    def subnet(self) -> dict:
        s = self.attrs["subnet"]
        return json.loads(s) if isinstance(s, str) else dict(s)


def read_features(path: str | os.PathLike) -> Features:
    data: dict[str, np.ndarray] = {}
    meta: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                data[name] = obj[()]
                meta[name] = {k: _plain(v) for k, v in obj.attrs.items()}
                meta[name]["dtype"] = obj.dtype
                meta[name]["compression"] = obj.compression

        if "features" in f:
            f["features"].visititems(visit)
    return Features(attrs, data, meta)


# ----------------------------------------------------------------------------- the reference


def spec_audio(path: str | os.PathLike) -> np.ndarray:
    """SPEC.md §4, written out: soundfile float32, channels averaged, torchaudio resample at defaults."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = data.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def make_subnet(embed_dim: int, heads: Sequence[int], ratios: Sequence[float]) -> dict:
    """A subnet in the authors' format (SPEC §2)."""
    n = len(heads)
    assert len(ratios) == n
    return {
        "atten_dim": [64 * h for h in heads],
        "embed_dim": embed_dim,
        "ffn_embed": [int(r * embed_dim) for r in ratios],
        "heads_num": list(heads),
        "layer_num": n,
        "slide_wsz": ["global"] * n,
    }


SUBNET_KEYS = ("atten_dim", "embed_dim", "ffn_embed", "heads_num", "layer_num", "slide_wsz")


def core(sub: dict) -> dict:
    """The six keys every subnet dict has (the authors' default also carries ffn_ratio)."""
    return {k: sub[k] for k in SUBNET_KEYS}


def find_values(obj: Any) -> list[Any]:
    """Every scalar, list and dict value anywhere in a JSON document (to look for a fact without
    depending on key names the issue does not fix)."""
    out = [obj]
    if isinstance(obj, dict):
        for v in obj.values():
            out += find_values(v)
    elif isinstance(obj, list):
        for v in obj:
            out += find_values(v)
    return out


# ----------------------------------------------------------------------------- SPEC §2 parameter counts

# The released search spaces (SPEC §2 table).
SPACE_TABLE = {  # embed_dim, heads_num, ffn ratios, layer_num
    "base": ((512, 640, 768), (8, 10, 12), (3.5, 4.0), (12,)),
    "small": ((256, 384, 512), (4, 6, 8), (3.0, 3.5, 4.0), (10, 11, 12)),
}
SPEC_COUNTS = {  # SPEC §2 reference values (released layer_norm-mode files)
    ("base", "default"): 66_897_664, ("base", "max"): 94_377_728, ("base", "min"): 41_249_536,
    ("small", "default"): 26_879_744, ("small", "max"): 44_398_336, ("small", "min"): 11_449_088,
}
SPEC_NUM_SUBNETS = {"base": 6_530_347_008, "small": 951_892_141_473}


def layer_params(e: int, a: int, f: int) -> int:
    """One encoder layer cut to width e, attention a, FFN f: q/k/v/out projections with biases, two
    layer norms, fc1/fc2 with biases."""
    return 4 * e * a + 3 * a + 2 * e * f + f + 6 * e


def width_params(e: int) -> int:
    """post_extract_proj (512 -> e, bias), pos conv e*(e/16)*128 + bias e, encoder.layer_norm 2e."""
    return 512 * e + e + e * (e // 16) * 128 + e + 2 * e


def variable_params(sub: dict) -> int:
    e = sub["embed_dim"]
    return width_params(e) + sum(layer_params(e, a, f) for a, f in zip(sub["atten_dim"], sub["ffn_embed"]))


def best_count_under(budget: int, fixed: int, spaces: Iterable[str]) -> int | None:
    """The largest SPEC §2 parameter count not above ``budget`` over whole search spaces, by
    exhaustive enumeration of the reachable per-layer sums (the order of layers does not change the
    count, so multisets suffice)."""
    best = None
    for name in spaces:
        embeds, heads, ratios, depths = SPACE_TABLE[name]
        for e in embeds:
            options = np.unique([layer_params(e, 64 * h, int(r * e)) for h in heads for r in ratios]).astype(np.int64)
            sums = np.zeros(1, dtype=np.int64)
            for depth in range(1, max(depths) + 1):
                sums = np.unique(np.add.outer(sums, options).ravel())
                if depth in depths:
                    totals = fixed + width_params(e) + sums
                    ok = totals[totals <= budget]
                    if ok.size and (best is None or ok.max() > best):
                        best = int(ok.max())
    return best


class Jobs:
    """Named background jobs (functions that run ``lhb`` and return what the tests check), run by a
    small pool so that the command works while the test process computes the authors' references.
    ``jobs[name]`` returns a job's value (or raises its exception): it waits for a job that is running
    or done, and runs one that has not started yet right away in the calling thread (so a test never
    queues behind jobs it does not need, e.g. when only some tests are selected)."""

    def __init__(self, workers: int = 2):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lhb-job")
        self.futures: dict[str, Any] = {}
        self.calls: dict[str, tuple] = {}

    def submit(self, name: str, fn, *args: Any) -> None:
        assert name not in self.futures, name
        self.calls[name] = (fn, args)
        self.futures[name] = self.pool.submit(fn, *args)

    def __getitem__(self, name: str) -> Any:
        fut = self.futures[name]
        if fut.cancel():  # not started: run it here (others asking meanwhile wait on `fresh`)
            fresh: Future = Future()
            self.futures[name] = fresh
            fn, args = self.calls[name]
            try:
                fresh.set_result(fn(*args))
            except BaseException as err:  # noqa: BLE001 - re-raised below, as for a pooled job
                fresh.set_exception(err)
            fut = fresh
        return fut.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
