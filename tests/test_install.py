"""A fresh install works (issue: torch/torchaudio pairs): torchaudio is needed only to resample, the
released checkpoints come from the Hugging Face hub through ``huggingface_hub``, and the package
metadata builds cleanly. Everything runs the installed ``lhb`` or a fresh interpreter, as a user would."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from cli_helpers import lhb, read_features
from helpers import SPEECH_DIR, authors_states, frames_for, rel_err
from conftest import authors_default_subnet

REPO = Path(__file__).resolve().parents[1]
FIX = "pip install --upgrade 'torch>=2.14' 'torchaudio>=2.11.1'"

pytestmark = pytest.mark.slow  # end-to-end: many lhb runs (README: the quick subset)


# ----------------------------------------------------------------------------- torchaudio only to resample


@pytest.fixture(scope="module")
def broken_torchaudio(tmp_path_factory) -> dict[str, str]:
    """An environment whose ``import torchaudio`` fails the way a wrong torch/torchaudio pair does."""
    stub = tmp_path_factory.mktemp("broken") / "torchaudio"
    stub.mkdir()
    (stub / "__init__.py").write_text(
        "raise OSError('Could not load this library: libtorchaudio.so: undefined symbol: "
        "torch_exception_get_what_without_backtrace')\n")
    env = dict(os.environ, PYTHONPATH=str(stub.parent), OMP_NUM_THREADS="1")
    env.pop("LHB_DEBUG", None)
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_broken_torchaudio_is_really_broken(broken_torchaudio):
    r = _run([sys.executable, "-c", "import torchaudio"], broken_torchaudio)
    assert r.returncode != 0 and "undefined symbol" in r.stderr


def test_import_and_commands_work_without_torchaudio(broken_torchaudio, tmp_path):
    code = ("import sys, lighthubert; ext = lighthubert.load('random:small', subnet='min'); "
            "import numpy as np; print(ext([np.zeros(16000, np.float32)])[0].shape); "
            "print('torchaudio' in sys.modules)")
    lhb_exe = shutil.which("lhb") or str(Path(sys.executable).with_name("lhb"))
    commands = [[sys.executable, "-c", code]] + [
        [lhb_exe, *args] for args in (["--help"], ["subnet", "--params", "20M"], ["info", "random:small", "--json"])]
    with ThreadPoolExecutor(len(commands)) as pool:  # independent: all at once
        results = list(pool.map(lambda cmd: _run(cmd, broken_torchaudio), commands))
    r = results[0]
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["torch.Size([49,", "256])", "False"]
    for cmd, r in zip(commands[1:], results[1:]):
        assert r.returncode == 0, (cmd, r.stderr)


def test_16k_extracts_and_44k_fails_in_one_line_without_torchaudio(broken_torchaudio, tmp_path):
    src = tmp_path / "in16"
    src.mkdir()
    shutil.copy(SPEECH_DIR / "spk2/utt03.wav", src / "a.wav")
    lhb_exe = shutil.which("lhb") or str(Path(sys.executable).with_name("lhb"))
    out = tmp_path / "a.h5"
    r = _run([lhb_exe, "extract", str(src), str(out), "-c", "random:small", "--subnet", "min", "-q"], broken_torchaudio)
    assert r.returncode == 0, r.stderr
    assert list(read_features(out).data) == ["a"]

    wave, rate = sf.read(str(SPEECH_DIR / "spk2/utt03.wav"), dtype="float32")
    assert rate == 16000
    hi = tmp_path / "in44"
    hi.mkdir()
    sf.write(str(hi / "b.wav"), AF.resample(torch.from_numpy(wave), 16000, 44100).numpy(), 44100, subtype="FLOAT")
    out2 = tmp_path / "b.h5"
    r = _run([lhb_exe, "extract", str(hi), str(out2), "-c", "random:small", "--subnet", "min", "-q"], broken_torchaudio)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("lhb: error: ") and str(hi / "b.wav") in line
    assert "44100" in line and f"torch {torch.__version__}" in line and "torchaudio" in line
    assert FIX in line
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- resampling end to end


@pytest.mark.parametrize("rate", [44100, 8000])
def test_resampled_audio_matches_the_authors(rate, tmp_path, ckpt_files, authors_models):
    """The installed lhb decodes, resamples with torchaudio and extracts: every layer equals the
    authors' model on the same audio prepared as SPEC.md §4 says."""
    wave, sr = sf.read(str(SPEECH_DIR / "spk1/utt02.wav"), dtype="float32")
    wave = wave[: 2 * sr] if wave.ndim == 1 else wave[: 2 * sr].mean(axis=1)
    if sr != rate:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), sr, rate).numpy()
    src = tmp_path / "in"
    src.mkdir()
    sf.write(str(src / "x.flac"), wave, rate, subtype="PCM_24")
    out = tmp_path / "x.h5"
    r = lhb("extract", src, out, "-c", ckpt_files["small"], "--layers", "all", "-q")
    assert r.returncode == 0, r
    ours = read_features(out).data["x"]
    decoded, file_rate = sf.read(str(src / "x.flac"), dtype="float32")
    assert file_rate == rate
    at16 = AF.resample(torch.from_numpy(decoded), rate, 16000).numpy()
    model = authors_models["small"]
    model.set_sample_config(authors_default_subnet("small"))
    ref = authors_states(model, at16, normalize=True)
    assert ours.shape == ref.shape and ours.shape[1] == frames_for(len(at16))
    assert rel_err(ours, ref) < 1e-5


# ----------------------------------------------------------------------------- released checkpoints from the hub


def _hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LIGHTHUBERT_CACHE", "LOCAL_RANK", "SLURM_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _lhb(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = shutil.which("lhb") or str(Path(sys.executable).with_name("lhb"))
    return _run([exe, *args], env)


def test_a_hub_whose_name_does_not_resolve_is_said_at_once(tmp_path):
    """Without network (no DNS), the hub client would retry for about 25 s and then say only that the
    hub could not be reached; lhb says at once which host did not resolve."""
    env = {k: v for k, v in _hub_env(tmp_path, HF_ENDPOINT="https://hub.lighthubert-test.invalid").items()
           if not k.lower().endswith("_proxy")}
    r = _lhb(["info", "small"], env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "hub.lighthubert-test.invalid could not be resolved" in lines[0]
    assert "https://hub.lighthubert-test.invalid/mechanicalsea/lighthubert/resolve/main/lighthubert_small.pt" in lines[0]
    # a proxy that the host bypasses (NO_PROXY) is no proxy for it: said at once as well
    r = _lhb(["info", "small"], {**env, "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "localhost,.lighthubert-test.invalid"})
    assert r.returncode == 1 and "hub.lighthubert-test.invalid could not be resolved" in r.stderr, r.stderr


def test_offline_names_the_way_to_place_the_file(tmp_path):
    start = time.monotonic()
    r = _lhb(["info", "small"], _hub_env(tmp_path, HF_HUB_OFFLINE="1"))
    assert time.monotonic() - start < 30
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    line = lines[0]
    assert "offline" in line and "lighthubert_small.pt" in line
    assert "https://huggingface.co/mechanicalsea/lighthubert/resolve/main/lighthubert_small.pt" in line
    assert str(tmp_path / "xdg" / "lighthubert") in line and "-c /path/to/lighthubert_small.pt" in line
    assert not (tmp_path / "xdg" / "lighthubert" / "lighthubert_small.pt").exists()


def test_a_cache_setting_that_names_a_file_is_named(tmp_path):
    """LIGHTHUBERT_CACHE set to a file: the line says so, instead of the hub's error about a
    '<file>/.cache/huggingface' path and a hint to put the checkpoint "in" the file."""
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    r = _lhb(["info", "small"], _hub_env(tmp_path, HF_HUB_OFFLINE="1", LIGHTHUBERT_CACHE=str(afile)))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"LIGHTHUBERT_CACHE={afile} is a file, not a folder" in lines[0]
    assert ".cache/huggingface" not in lines[0] and afile.read_text() == "x"


def test_a_file_placed_by_hand_is_used_offline(tmp_path, ckpt_files):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(ckpt_files["small"], folder / "lighthubert_small.pt")
    digest = hashlib.sha256(ckpt_files["small"].read_bytes()).hexdigest()
    r = _lhb(["info", "small", "--json"], _hub_env(tmp_path, HF_HUB_OFFLINE="1", LIGHTHUBERT_CACHE=str(folder)))
    assert r.returncode == 0, r.stderr
    assert f'"sha256": "{digest}"' in r.stdout
    # from a folder holding a data subset called small/ (before: "small: is a folder, not a checkpoint file",
    # also for lhb extract small feats.h5, whose default checkpoint is small)
    data = tmp_path / "corpus"
    (data / "small").mkdir(parents=True)
    r = _run([shutil.which("lhb") or str(Path(sys.executable).with_name("lhb")), "info", "small", "--json"],
             _hub_env(tmp_path, HF_HUB_OFFLINE="1", LIGHTHUBERT_CACHE=str(folder)), cwd=data)
    assert r.returncode == 0 and f'"sha256": "{digest}"' in r.stdout, r.stderr
    # the old default folder (~/.cache/lighthubert) is still searched
    legacy = tmp_path / "xdg" / "lighthubert"
    legacy.mkdir(parents=True)
    shutil.copy(ckpt_files["small"], legacy / "lighthubert_small.pt")
    r = _lhb(["info", "small", "--json"], _hub_env(tmp_path, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0 and f'"sha256": "{digest}"' in r.stdout, r.stderr


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Serves one file the way the hub's resolve endpoint does (commit, etag and size headers)."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def _headers(self) -> bytes | None:
        self.requests.append(f"{self.command} {self.path}")
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self):
        self._headers()

    def do_GET(self):
        data = self._headers()
        if data is not None:
            self.wfile.write(data)


@pytest.fixture
def fake_hub(ckpt_files):
    handler = type("Hub", (_FakeHub,), {"files": {
        "/mechanicalsea/lighthubert/resolve/main/lighthubert_small.pt": ckpt_files["small"].read_bytes()},
        "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_download_once_into_the_hub_cache(tmp_path, fake_hub, ckpt_files):
    url, handler = fake_hub
    digest = hashlib.sha256(ckpt_files["small"].read_bytes()).hexdigest()
    env = _hub_env(tmp_path, HF_ENDPOINT=url)
    with ThreadPoolExecutor(2) as pool:  # the first download, and a file the hub does not have, at once
        r, missing = pool.map(lambda args: _lhb(args, env), (["info", "small", "--json"], ["info", "base"]))
    assert r.returncode == 0, r.stderr
    assert f'"sha256": "{digest}"' in r.stdout
    cached = list((tmp_path / "hf" / "hub" / "models--mechanicalsea--lighthubert").rglob("lighthubert_small.pt"))
    assert len(cached) == 1 and hashlib.sha256(cached[0].read_bytes()).hexdigest() == digest
    assert any(req.startswith("GET") for req in handler.requests)
    handler.requests.clear()
    r = _lhb(["info", "small", "--json"], env)  # from the cache: the hub is not asked again
    assert r.returncode == 0 and f'"sha256": "{digest}"' in r.stdout, r.stderr
    assert not [req for req in handler.requests if "/mechanicalsea/" in req]
    # a file the hub does not have: one line, the way out
    lines = [ln for ln in missing.stderr.splitlines() if ln.strip()]
    assert missing.returncode == 1 and len(lines) == 1, missing.stderr
    assert f"{url}/mechanicalsea/lighthubert/resolve/main/lighthubert_base.pt" in lines[0]


def test_lighthubert_cache_receives_the_download(tmp_path, fake_hub, ckpt_files):
    url, _ = fake_hub
    folder = tmp_path / "mine"
    r = _lhb(["info", "small", "--json"], _hub_env(tmp_path, HF_ENDPOINT=url, LIGHTHUBERT_CACHE=str(folder)))
    assert r.returncode == 0, r.stderr
    assert (folder / "lighthubert_small.pt").read_bytes() == ckpt_files["small"].read_bytes()
    assert not (tmp_path / "hf" / "hub" / "models--mechanicalsea--lighthubert").exists()


def test_other_local_ranks_wait_for_local_rank_0(tmp_path, ckpt_files):
    """Under torchrun, LOCAL_RANK 1 never downloads: it waits until rank 0's file is there."""
    folder = tmp_path / "mine"
    folder.mkdir()
    env = _hub_env(tmp_path, LIGHTHUBERT_CACHE=str(folder), LOCAL_RANK="1", HF_ENDPOINT="http://127.0.0.1:9")
    exe = shutil.which("lhb") or str(Path(sys.executable).with_name("lhb"))
    proc = subprocess.Popen([exe, "info", "small", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    time.sleep(3)
    assert proc.poll() is None, proc.communicate()  # still waiting, not failed on the unreachable hub
    tmp = folder / ".incoming"
    shutil.copy(ckpt_files["small"], tmp)
    os.replace(tmp, folder / "lighthubert_small.pt")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert hashlib.sha256(ckpt_files["small"].read_bytes()).hexdigest() in out


# ----------------------------------------------------------------------------- packaging


def test_wheel_builds_without_warnings(tmp_path):
    """Current setuptools accepts the metadata (SPDX license, license file) without deprecation
    warnings. Needs PyPI for the isolated build environment, like any pip install."""
    tree = tmp_path / "src"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "__pycache__", ".venv*"))
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(tree)], dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    text = (r.stdout + r.stderr).lower()
    assert "deprecat" not in text and "warning: " not in text.replace("warning: location", ""), text[-3000:]
    wheels = list((tmp_path / "dist").glob("lighthubert-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as z:
        assert "lighthubert/py.typed" in z.namelist()  # PEP 561: mypy and pyright read an installed copy's annotations
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        assert "License-Expression: MIT" in meta
        assert any(n.endswith("licenses/LICENSE") for n in z.namelist())
        # every module of the packages is in the wheel (subpackages too: lighthubert.storage)
        sources = {p.relative_to(REPO).as_posix() for pkg in ("lighthubert", "lighthubert_cli")
                   for p in (REPO / pkg).rglob("*.py")}
        assert sources <= set(z.namelist()), sorted(sources - set(z.namelist()))


def test_ci_without_the_example_speech_fails_instead_of_skipping(tmp_path):
    """With LIGHTHUBERT_REQUIRE_ORACLE=1 (CI) a run whose example speech is missing stops at once: the
    parity tests on real speech would otherwise all skip and the run pass."""
    env = {**os.environ, "LIGHTHUBERT_REQUIRE_ORACLE": "1", "LHB_SPEECH": str(tmp_path / "nowhere")}
    r = _run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
              str(REPO / "tests" / "test_space.py")], env)
    assert r.returncode == 4, r.stdout + r.stderr
    assert f"no example speech at {tmp_path / 'nowhere'}" in r.stdout + r.stderr
