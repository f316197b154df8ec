"""The numerical oracle: the authors' LightHuBERT implementation, fetched from the ``s3prl``
source distribution on PyPI (never copied into this repository, never imported by the library).

``authors()`` returns the module ``authors_lighthubert.lighthubert`` (``LightHuBERT``,
``LightHuBERTConfig``, ``LightHuBERTSupernetConfig``). The first call on a machine downloads the
sdist once with pip and unpacks only the authors' package into a cache folder:
``$LIGHTHUBERT_ORACLE_DIR``, else ``~/.cache/lighthubert-tests``.

When it cannot be had the calling test is skipped, unless ``LIGHTHUBERT_REQUIRE_ORACLE=1`` (CI sets
it), in which case the test fails, so parity is never silently skipped.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import pytest

S3PRL = "s3prl==0.4.18"
SDIST_PREFIX = "s3prl-0.4.18/s3prl/upstream/lighthubert/lighthubert/"
PACKAGE = "authors_lighthubert"

_module: ModuleType | None = None
_failure: str | None = None


def cache_dir() -> Path:
    env = os.environ.get("LIGHTHUBERT_ORACLE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lighthubert-tests"


def _fetch(cache: Path) -> None:
    """Download the sdist and unpack the authors' package into ``cache/authors_lighthubert``."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="s3prl-sdist-") as dl:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", S3PRL, "-d", dl]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pip download {S3PRL} timed out") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"pip download {S3PRL} failed: {tail[0]}")
        archives = sorted(Path(dl).glob("s3prl-*.tar.gz"))
        if not archives:
            raise RuntimeError(f"pip download {S3PRL} gave no .tar.gz")
        staging = Path(tempfile.mkdtemp(prefix=".authors-", dir=cache))
        try:
            target = staging / PACKAGE
            count = 0
            with tarfile.open(archives[0], "r:gz") as tar:
                for member in tar.getmembers():
                    if not member.name.startswith(SDIST_PREFIX) or not member.isfile():
                        continue
                    rel = Path(member.name[len(SDIST_PREFIX):])
                    if rel.is_absolute() or ".." in rel.parts:
                        raise RuntimeError(f"unexpected member {member.name!r} in the sdist")
                    dest = target / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None
                    dest.write_bytes(src.read())
                    count += 1
            if not (target / "lighthubert.py").is_file():
                raise RuntimeError(f"{SDIST_PREFIX}lighthubert.py is not in the sdist ({count} files taken)")
            final = cache / PACKAGE
            if final.exists() and not (final / "lighthubert.py").is_file():
                shutil.rmtree(final, ignore_errors=True)  # a broken earlier copy
            try:
                os.replace(target, final)
            except OSError:
                if not (final / "lighthubert.py").is_file():  # not another process winning the race
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _load() -> ModuleType:
    cache = cache_dir()
    if not (cache / PACKAGE / "lighthubert.py").is_file():
        _fetch(cache)
    if str(cache) not in sys.path:
        sys.path.insert(0, str(cache))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = importlib.import_module(f"{PACKAGE}.lighthubert")
    loaded_from = Path(module.__file__).resolve()
    if not loaded_from.is_relative_to((cache / PACKAGE).resolve()):
        raise RuntimeError(f"{PACKAGE} was imported from {loaded_from}, not from the cache {cache}")
    return module


def authors() -> ModuleType:
    """The authors' ``lighthubert`` module; skips (or, with LIGHTHUBERT_REQUIRE_ORACLE=1, fails) the
    calling test when it cannot be had."""
    global _module, _failure
    if _module is None and _failure is None:
        try:
            _module = _load()
        except Exception as err:  # noqa: BLE001 - any failure means "no oracle"
            _failure = f"{type(err).__name__}: {err}"
    if _module is not None:
        return _module
    reason = f"authors' implementation unavailable: {_failure}"
    if os.environ.get("LIGHTHUBERT_REQUIRE_ORACLE") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def build_model(model_cfg: dict, supernet_type: str, state: dict | None = None):
    """The authors' ``LightHuBERT`` for a checkpoint's ``cfg['model']``, in eval mode, with
    ``state`` loaded (strict=False, as their README does)."""
    mod = authors()
    cfg = mod.LightHuBERTConfig(model_cfg)
    cfg.supernet_type = supernet_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        model = mod.LightHuBERT(cfg).eval()
    if state is not None:
        model.load_state_dict(state, strict=False)
    return model
