"""End-to-end tests of the ``lhb`` command line (issue 3).

The installed command is run as a subprocess on ``shared/data/speech`` and on generated bad files,
with random checkpoints written by ``lighthubert.write_random_checkpoint`` (conftest's
``ckpt_files``: small and base with the layer_norm extractor and normalize true, stage1 with the
default extractor and normalize false), and what it writes is read back with h5py and compared with
the AUTHORS' implementation (tests/oracle.py), one utterance run alone at a time.

Sized for a 2-core machine: every ``lhb`` run is a named job of a module-wide pool of two workers
(one compute thread per ``lhb`` process), all submitted when the first test needs them, so that the
command works while this process computes the authors' references (also on one thread); the tests
then wait for their jobs and check. Run alone, test_cli.py takes about 300 CPU-seconds.
"""

from __future__ import annotations

import hashlib
import json
import random
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

import lighthubert
from cli_helpers import (
    SPACE_TABLE,
    SPEC_COUNTS,
    SPEC_NUM_SUBNETS,
    SUBNET_KEYS,
    Jobs,
    best_count_under,
    core,
    find_values,
    lhb,
    make_subnet,
    read_features,
    spec_audio,
    variable_params,
)
from conftest import KINDS, SEEDS, SUPERNET_TYPE, authors_default_subnet
from helpers import SPEECH_DIR, authors_states, copy_speech, frames_for, rel_err
from oracle import authors

TOL = 1e-4  # the issue: the authors' single-utterance result within 1e-4 relative, whatever the batching
BATCH_TOL = 1e-5  # the issue: --batch-seconds 1 vs a large batch
F16_TOL = 2e-3  # --save-dtype float16: half precision of the same numbers

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_SKIPPED = 0, 1, 2, 3

# A hand-made subnet per kind, away from every preset: mixed heads and FFN ratios per layer, and for
# the small space a 10-layer depth (supernet layers 7 and 11 skipped).
JSON_SUBNETS = {
    "small": make_subnet(384, [4, 6, 8, 4, 6, 8, 4, 6, 8, 6], [3.0, 3.5, 4.0, 4.0, 3.0, 3.5, 3.5, 4.0, 3.0, 3.0]),
    "base": make_subnet(512, [8, 10, 12] * 4, [3.5, 4.0] * 6),  # FFN 1792: 4 blocks, the last cut short
    "stage1": make_subnet(640, [12, 10, 8] * 4, [4.0, 3.5, 3.5] * 4),  # FFN 2240: the SPEC §2 cut example
}

# Short real files: 1 s at 16 kHz, 2.7 s, a flac, an 8 kHz wav, a 24-bit wav.
SHORT_FILES = ["spk2/utt03.wav", "spk1/utt03.wav", "spk3/utt03.flac", "spk2/utt04.wav", "spk2/utt05.wav"]

# The JSON-subnet runs: the short files and the 44.1 kHz stereo one (the default-subnet runs take every file).
JSON_FILES = SHORT_FILES + ["spk1/utt04.wav"]

SMALL_MIN = ["--subnet", "min", "--device", "cpu"]  # for the tests where size is not the point; with ctx.aux

pytestmark = pytest.mark.slow  # end-to-end: many lhb runs (README: the quick subset)


def key_of(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def normalize_of(ckpt_dicts, kind: str) -> bool:
    return bool(ckpt_dicts[kind]["cfg"]["task"]["normalize"])


def authors_count(model, sub: dict) -> int:
    model.set_sample_config(sub)
    return int(model.calc_sampled_param_num())


def check_against(feats, key: str, theirs: np.ndarray, layers: list[int], what: str, tol: float = TOL) -> None:
    """One utterance of a features file against the authors' (L+1, T, E) hidden states."""
    assert key in feats.data, f"{what}: {key} is not in the file (keys: {sorted(feats.data)})"
    x = feats.data[key].astype(np.float32)
    if len(layers) == 1:
        assert x.ndim == 2, f"{what} {key}: one layer asked for, expected (T, D), got {x.shape}"
        x = x[None]
    assert x.shape == (len(layers),) + theirs.shape[1:], f"{what} {key}: shape {x.shape}, authors {theirs.shape}"
    for pos, idx in enumerate(layers):
        err = rel_err(x[pos], theirs[idx])
        assert err <= tol, f"{what} {key}: hidden state {idx} differs from the authors' by {err:.2e} (relative)"


def assert_plain_stderr(r) -> None:
    """stderr is a pipe here: plain lines, no cursor movement, no colours."""
    assert "\x1b[" not in r.stderr and "\r" not in r.stderr, f"terminal control codes on a non-terminal stderr\n{r}"


# ============================================================================= the jobs (all `lhb` runs)


def job_default(ctx, kind):
    out = ctx.tmp / f"default_{kind}.h5"
    return out, lhb("extract", SPEECH_DIR, out, "-c", ctx.ckpt[kind], "--layers", "all", "--device", "cpu")


def job_json(ctx, kind):
    """A JSON-subnet run, one file per batch; small reads the subnet from a file, the others inline."""
    spec = json.dumps(JSON_SUBNETS[kind])
    if kind == "small":
        (ctx.tmp / "subnet.json").write_text(spec)
        spec = str(ctx.tmp / "subnet.json")
    out = ctx.tmp / f"json_{kind}.h5"
    return out, lhb("extract", ctx.json_in, out, "-c", ctx.ckpt[kind], "--subnet", spec, "--layers", "all",
                    "--batch-seconds", "1", "--device", "cpu", "--dtype", "float32")


def job_tsv(ctx):
    """A fairseq manifest, run with one file per batch and with one batch for all."""
    d = ctx.tmp / "tsv"
    d.mkdir()
    lines = [str(SPEECH_DIR)] + [f"{rel}\t{sf.info(str(SPEECH_DIR / rel)).frames}" for rel in SHORT_FILES]
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    runs = {}
    for seconds in ("1", "1000"):
        out = d / f"batch{seconds}.h5"
        runs[seconds] = out, lhb("extract", d / "train.tsv", out, "-c", ctx.aux, *SMALL_MIN,
                                 "--layers", "all", "--batch-seconds", seconds)
    return runs


def job_txt(ctx):
    """A .txt list of relative paths, run from the list's folder; --layers 3,0."""
    d = ctx.tmp / "txt"
    copy_speech(d / "data", SHORT_FILES[:3])
    (d / "list.txt").write_text("".join(f"data/{rel}\n" for rel in SHORT_FILES[:3]))
    return d / "list.h5", lhb("extract", "list.txt", "list.h5", "-c", ctx.aux, *SMALL_MIN,
                              "--layers", "3,0", cwd=d)


def job_single(ctx):
    out = ctx.tmp / "single.h5"
    return out, lhb("extract", SPEECH_DIR / "spk3/utt03.flac", out, "-c", ctx.aux, *SMALL_MIN)


SCP_KEYS = {"spk1/utt03": "spk1/utt03.wav", "spk2/utt04": "spk2/utt04.wav", "renamed/x-1": "spk2/utt05.wav",
            "spk3/utt03": "spk3/utt03.flac"}


def job_export(ctx):
    """`lhb subnet --subnet JSON -c CKPT --export OUT.pt`, `lhb info OUT.pt --json`, then
    `lhb extract LIST.scp -c OUT.pt` (keys as given in the .scp)."""
    pt = ctx.tmp / "exported.pt"
    export = lhb("subnet", "--subnet", json.dumps(JSON_SUBNETS["base"]), "--checkpoint", ctx.ckpt["base"],
                 "--export", pt)
    info = lhb("info", pt, "--json") if pt.is_file() else None
    scp = ctx.tmp / "wav.scp"
    scp.write_text("".join(f"{k} {SPEECH_DIR / rel}\n" for k, rel in SCP_KEYS.items()))
    out = ctx.tmp / "exported.h5"
    extract = lhb("extract", scp, out, "-c", pt, "--layers", "all", "--batch-seconds", "1", "--device", "cpu",
                  "--dtype", "float32") if pt.is_file() else None
    return SimpleNamespace(pt=pt, export=export, info=info, out=out, extract=extract)


def job_random(ctx):
    """-c random:small --seed S: the same weights as write_random_checkpoint(path, "small", S)."""
    out = ctx.tmp / "random.h5"
    return out, lhb("extract", SPEECH_DIR / "spk2/utt03.wav", out, "-c", "random:small", "--seed", SEEDS["small"],
                    *SMALL_MIN, "--layers", "all")


def job_bad(ctx):
    out = ctx.tmp / "bad.h5"
    return out, lhb("extract", ctx.bad, out, "-c", ctx.aux, *SMALL_MIN, "--layers", "all",
                    "--num-workers", "1")


def job_strict(ctx):
    out = ctx.tmp / "strict.h5"
    return out, lhb("extract", ctx.bad, out, "-c", ctx.aux, *SMALL_MIN, "--strict")


def job_quiet(ctx):
    out = ctx.tmp / "quiet.h5"
    return out, lhb("extract", ctx.bad / "good", out, "-c", ctx.aux, *SMALL_MIN, "--layers", "all",
                    "--quiet", "--save-dtype", "float16", "--compression", "gzip", "--num-workers", "3")


RESUME_FILES = {"a/x": "spk2/utt03.wav", "a/y": "spk1/utt03.wav", "b/z": "spk3/utt03.flac", "b/w": "spk2/utt05.wav"}


def job_resume(ctx):
    """A run on part of a folder, then refused re-runs, --resume on the whole folder, --overwrite; a
    fresh run on the whole folder to compare with. One utterance of the first run is marked (set to
    7.0) so that keeping it, not recomputing it, can be seen."""
    d = ctx.tmp / "resume"
    part, full = d / "part", d / "full"
    for key, rel in RESUME_FILES.items():
        for root in (full, part) if key.startswith("a/") else (full,):
            dest = root / (key + Path(rel).suffix)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SPEECH_DIR / rel, dest)
    out, fresh = d / "out.h5", d / "fresh.h5"
    common = ["-c", ctx.aux, *SMALL_MIN, "--layers", "last"]
    s = SimpleNamespace(out=out, fresh=fresh)
    s.fresh_run = lhb("extract", full, fresh, *common)
    s.first = lhb("extract", part, out, *common)
    if s.first.returncode != EXIT_OK:
        return s
    s.keys_first = set(read_features(out).data)
    with h5py.File(out, "r+") as f:
        f["features/a/y"][...] = 7.0
    s.sha_before = sha256_of(out)
    s.refused = lhb("extract", full, out, *common)
    s.other_layers = lhb("extract", full, out, *common[:-2], "--layers", "all", "--resume")
    s.sha_after_refused = sha256_of(out)
    s.resumed = lhb("extract", full, out, *common, "--resume")
    s.resumed_copy = d / "resumed.h5"
    shutil.copy(out, s.resumed_copy)
    s.overwritten = lhb("extract", full, out, *common, "--overwrite")
    return s


def job_run(ctx, args, out=None):
    """One plain `lhb` run; returns (OUTPUT it was given or None, Result)."""
    return out, lhb(*args)


def job_info_features(ctx, jobs):
    out, run = jobs["json:small"]  # submitted earlier: already running or done
    return run, lhb("info", out, "--json"), lhb("info", out)


# ----------------------------------------------------------------------------- bad inputs

BAD_REASONS = {  # key -> what its reason must speak of
    "bad/garbage": r"decod|format|read|recogni|invalid",
    "bad/empty": r"no samples|empty|0 samples",
    "bad/short100": r"short|400",
    "bad/short8k": r"short|400",
    "bad/nan": r"nan|finite",
    "bad/inf": r"inf|finite",
}
GOOD_KEYS = ("good/speech", "good/six48k", "good/tiny8k")


def make_bad_folder(d: Path) -> None:
    (d / "good").mkdir(parents=True)
    (d / "bad").mkdir()
    rng = np.random.default_rng(3)
    shutil.copy(SPEECH_DIR / "spk2/utt03.wav", d / "good/speech.wav")
    speech = np.resize(sf.read(str(SPEECH_DIR / "spk1/utt03.wav"), dtype="float32")[0], 72000)
    gains = [1.0, 0.5, -0.3, 0.8, 0.2, -0.6]  # 6 channels at 48 kHz, 1.5 s
    sf.write(str(d / "good/six48k.wav"), np.stack([speech * g for g in gains], axis=1), 48000, subtype="PCM_16")
    sf.write(str(d / "good/tiny8k.wav"), (0.1 * rng.standard_normal(250)).astype(np.float32), 8000)  # -> 500
    (d / "bad/garbage.wav").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    sf.write(str(d / "bad/empty.wav"), np.zeros(0, dtype=np.float32), 16000)
    sf.write(str(d / "bad/short100.wav"), (0.1 * rng.standard_normal(100)).astype(np.float32), 16000)
    sf.write(str(d / "bad/short8k.wav"), (0.1 * rng.standard_normal(150)).astype(np.float32), 8000)  # -> 300
    x = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    x[5000] = np.nan
    sf.write(str(d / "bad/nan.wav"), x, 16000, subtype="FLOAT")
    x[5000] = np.inf
    sf.write(str(d / "bad/inf.wav"), x, 16000, subtype="FLOAT")


# ----------------------------------------------------------------------------- runs that must stop early


def early_cases(ctx) -> dict:
    """name -> (INPUT, OUTPUT, extra args). Each must stop before any audio is processed."""
    tmp = ctx.tmp / "early"
    tmp.mkdir()
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    small, good_in = ctx.ckpt["small"], SPEECH_DIR / "spk2"
    default = make_subnet(384, [6] * 12, [4.0] * 12)  # SPEC §2: the small default subnet
    bad_attn = default | {"atten_dim": [100] + default["atten_dim"][1:]}
    sliding = default | {"slide_wsz": [64] + ["global"] * 11}
    base_sub = make_subnet(640, [10] * 12, [4.0] * 12)  # the base default: not in the small space
    cases = {
        "missing_input": (tmp / "no_such_folder", ["-c", small]),
        "missing_output_folder": (good_in, ["-c", small]),
        "subnet_bad_json": (good_in, ["-c", small, "--subnet", '{"embed_dim": 384,']),
        "subnet_other_space": (good_in, ["-c", small, "--subnet", json.dumps(base_sub)]),
        "subnet_inconsistent": (good_in, ["-c", small, "--subnet", json.dumps(bad_attn)]),
        "subnet_sliding_window": (good_in, ["-c", small, "--subnet", json.dumps(sliding)]),
        "checkpoint_missing": (good_in, ["-c", tmp / "none.pt"]),
        "checkpoint_garbage": (good_in, ["-c", garbage]),
        "layers_out_of_range": (good_in, ["-c", small, "--layers", "99"]),
        "resume_and_overwrite": (good_in, ["-c", small, "--resume", "--overwrite"]),
        "batch_seconds_zero": (good_in, ["-c", small, "--batch-seconds", "0"]),
        "batch_seconds_nan": (good_in, ["-c", small, "--batch-seconds", "nan"]),
        # bad usage caught by the option parser
        "unknown_option": (good_in, ["-c", small, "--no-such-option"]),
    }
    out = {}
    for name, (inp, extra) in cases.items():
        folder = tmp / "no" / "such" / "folder" if name == "missing_output_folder" else tmp
        out[name] = (inp, folder / f"{name}.h5", [*extra, "--device", "cpu"])
    return out


EARLY_ONE_LINE = ["missing_input", "missing_output_folder", "subnet_bad_json", "subnet_other_space",
                  "subnet_inconsistent", "subnet_sliding_window", "checkpoint_missing", "checkpoint_garbage"]
EARLY_USAGE = ["layers_out_of_range", "resume_and_overwrite", "batch_seconds_zero", "batch_seconds_nan"]

EARLY_PARSER = ["unknown_option"]


SUBNET_RUNS = {
    "30M": ["--params", "30M"], "30m": ["--params", "30m"], "3e7": ["--params", "3e7"],
    "30000000": ["--params", "30000000"],
    "small30M": ["--params", "30M", "--supernet", "small"],
    "base50M": ["--params", "50M", "--supernet", "base"],
    "1M": ["--params", "1M"],
    "base_default": ["--preset", "default", "--supernet", "base", "-o", "{tmp}/sub.json"],
    "small_max": ["--preset", "max", "--supernet", "small"],
    "sample5": ["--sample", "3", "--seed", "5"],
    "sample5again": ["--sample", "3", "--seed", "5"],
    "sample6small": ["--sample", "3", "--seed", "6", "--supernet", "small"],
}


# ============================================================================= fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The authors' references are computed on one thread while two `lhb` jobs run beside them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def jobs(ckpt_files, tmp_path_factory):
    """Every `lhb` run of this module, submitted at once (whole-corpus runs first); a test asking for
    one that has not started runs it itself."""
    tmp = tmp_path_factory.mktemp("cli")
    ctx = SimpleNamespace(tmp=tmp, ckpt={}, bad=tmp / "badinputs")
    make_bad_folder(ctx.bad)
    ctx.json_in = copy_speech(tmp / "json_in", JSON_FILES)
    pool = Jobs(workers=2)
    for kind in KINDS:
        ctx.ckpt[kind] = ckpt_files[kind]  # written on first use: start each kind's runs as soon as it is there
        pool.submit(f"default:{kind}", job_default, ctx, kind)
        pool.submit(f"json:{kind}", job_json, ctx, kind)
    # A compact small-min checkpoint (`lhb subnet --preset min --export`) for the runs where size is not
    # the point: it loads in a fraction of the time. If the export fails (its own test says so), those
    # runs take the supernet file and --subnet min instead.
    ctx.aux_pt = tmp / "small_min.pt"
    ctx.aux_export = lhb("subnet", "--preset", "min", "--supernet", "small", "--checkpoint", ctx.ckpt["small"],
                         "--export", ctx.aux_pt)
    ctx.aux = ctx.aux_pt if ctx.aux_export.returncode == EXIT_OK and ctx.aux_pt.is_file() else ctx.ckpt["small"]
    for name, fn in [("tsv", job_tsv), ("txt", job_txt), ("single", job_single), ("export", job_export),
                     ("random", job_random), ("bad", job_bad), ("strict", job_strict),
                     ("quiet", job_quiet), ("resume", job_resume)]:
        pool.submit(name, fn, ctx)
    for name, (inp, out, extra) in early_cases(ctx).items():
        pool.submit(f"early:{name}", job_run, ctx, ["extract", inp, out, *extra], out)
    for name, args in SUBNET_RUNS.items():
        pool.submit(f"subnet:{name}", job_run, ctx, ["subnet", *[a.format(tmp=tmp) for a in args]])
    for kind in KINDS:
        pool.submit(f"info:{kind}", job_run, ctx, ["info", ctx.ckpt[kind], "--json"])
    pool.submit("info:text", job_run, ctx, ["info", ctx.ckpt["small"]])
    pool.submit("info:features", job_info_features, ctx, pool)
    pool.ctx = ctx
    yield pool
    pool.close()
    shutil.rmtree(tmp, ignore_errors=True)  # several hundred MB of features files


@pytest.fixture(scope="module")
def authors_space():
    mod = authors()
    return {name: mod.LightHuBERTSupernetConfig(name) for name in ("base", "small")}


@pytest.fixture(scope="module")
def ref_min(authors_models, ckpt_dicts):
    """(kind, audio path) -> the authors' hidden states of the file (decoded per SPEC §4) with the
    kind's space's min subnet."""
    cache: dict = {}

    def states(kind: str, path: Path) -> np.ndarray:
        if (kind, str(path)) not in cache:
            model = authors_models[kind]
            model.set_sample_config(authors().LightHuBERTSupernetConfig(SUPERNET_TYPE[kind]).min_subnet)
            cache[kind, str(path)] = authors_states(model, spec_audio(path), normalize_of(ckpt_dicts, kind))
        return cache[kind, str(path)]

    return states


# ============================================================================= extract: parity on the corpus


@pytest.mark.parametrize("kind", KINDS)
def test_extract_default_subnet_all_layers_matches_authors(kind, jobs, ckpt_files, ckpt_dicts, speech,
                                                           authors_default_outputs):
    """Every speech file, every hidden state, the checkpoint's default subnet, default batching:
    the authors' single-utterance result; the root and dataset attributes of SPEC §5; stdout/stderr."""
    theirs = authors_default_outputs[kind]  # computed here while lhb runs in the pool
    out, r = jobs[f"default:{kind}"]
    assert r.returncode == EXIT_OK, r
    assert r.stdout == "", f"extract writes no data to stdout\n{r}"
    assert_plain_stderr(r)
    assert len(r.err_lines) >= 2, f"expected progress lines and a summary on stderr\n{r}"
    assert "12" in r.err_lines[-1], f"the last line should summarise the 12 files\n{r}"

    feats = read_features(out)
    sub = authors_default_subnet(kind)
    assert set(feats.data) == {key_of(rel) for rel, _ in speech}
    a = feats.attrs
    assert feats.layers == list(range(sub["layer_num"] + 1))
    assert a.get("format") and a.get("format_version") is not None
    assert float(a["frame_rate"]) == 50.0 and int(a["sample_rate"]) == 16000
    assert core(feats.subnet) == core(sub)
    assert ckpt_files[kind].name in a["checkpoint"]
    assert a["checkpoint_sha256"] == sha256_of(ckpt_files[kind])
    assert bool(a["normalize"]) == normalize_of(ckpt_dicts, kind)
    assert lighthubert.__version__ in str(a["package_version"])
    assert feats.skipped == []

    for (rel, wave), t in zip(speech, theirs):
        key = key_of(rel)
        t = torch.stack(t).numpy()
        assert feats.meta[key]["dtype"] == np.float32
        assert Path(feats.meta[key]["source"]).resolve() == (SPEECH_DIR / rel).resolve()
        assert int(feats.meta[key]["num_samples"]) == len(spec_audio(SPEECH_DIR / rel)) == len(wave)
        assert t.shape == (sub["layer_num"] + 1, frames_for(len(wave)), sub["embed_dim"])
        check_against(feats, key, t, feats.layers, f"{kind} default")


@pytest.mark.parametrize("kind", KINDS)
def test_extract_json_subnet_all_layers_matches_authors(kind, jobs, authors_models, ckpt_dicts, speech):
    """A hand-made JSON subnet (a file for small, inline for the others), every hidden state, one file
    per batch (--batch-seconds 1), on the short files (8 kHz, 24-bit, flac) and the 44.1 kHz stereo one."""
    sub = JSON_SUBNETS[kind]
    model = authors_models[kind]
    model.set_sample_config(sub)
    speech = [(rel, w) for rel, w in speech if rel in JSON_FILES]
    assert len(speech) == len(JSON_FILES)
    theirs = {rel: authors_states(model, w, normalize_of(ckpt_dicts, kind)) for rel, w in speech}
    out, r = jobs[f"json:{kind}"]
    assert r.returncode == EXIT_OK, r
    feats = read_features(out)
    assert core(feats.subnet) == sub
    assert feats.layers == list(range(sub["layer_num"] + 1))
    assert set(feats.data) == {key_of(rel) for rel, _ in speech}
    for rel, wave in speech:
        assert theirs[rel].shape == (sub["layer_num"] + 1, frames_for(len(wave)), sub["embed_dim"])
        check_against(feats, key_of(rel), theirs[rel], feats.layers, f"{kind} json subnet")


# ============================================================================= extract: inputs, batching, options


def test_tsv_manifest_and_batching_independence(jobs, ref_min):
    """A fairseq .tsv (root line, then rel/path<TAB>num_samples): keys are the relative paths without
    extension. --batch-seconds 1 (one file per batch) and 1000 (one batch) agree within 1e-5 and
    both match the authors within 1e-4."""
    runs = jobs["tsv"]
    (p1, r1), (p2, r2) = runs["1"], runs["1000"]
    assert r1.returncode == EXIT_OK, r1
    assert r2.returncode == EXIT_OK, r2
    a, b = read_features(p1), read_features(p2)
    assert set(a.data) == set(b.data) == {key_of(rel) for rel in SHORT_FILES}
    for rel in SHORT_FILES:
        k = key_of(rel)
        assert a.data[k].shape == b.data[k].shape
        for i in range(a.data[k].shape[0]):
            err = rel_err(a.data[k][i], b.data[k][i])
            assert err <= BATCH_TOL, f"{k} hidden state {i}: --batch-seconds 1 vs 1000 differ by {err:.2e}"
        theirs = ref_min("small", SPEECH_DIR / rel)
        check_against(a, k, theirs, a.layers, "tsv, batch 1 s")
        check_against(b, k, theirs, b.layers, "tsv, batch 1000 s")


def test_txt_list_keys_and_layer_order(jobs, ref_min):
    """A .txt list of relative paths: key = the path as written, without extension. --layers 3,0:
    (2, T, D) per utterance, in the order of the root attribute ``layers``."""
    out, r = jobs["txt"]
    assert r.returncode == EXIT_OK, r
    f = read_features(out)
    assert set(f.data) == {f"data/{key_of(rel)}" for rel in SHORT_FILES[:3]}
    assert sorted(f.layers) == [0, 3]
    for rel in SHORT_FILES[:3]:
        check_against(f, f"data/{key_of(rel)}", ref_min("small", SPEECH_DIR / rel), f.layers, "txt list")


def test_single_file_last_layer(jobs, ref_min, authors_space):
    """One audio file: key = its name without extension; --layers last (default): (T, D)."""
    out, r = jobs["single"]
    assert r.returncode == EXIT_OK, r
    f = read_features(out)
    assert set(f.data) == {"utt03"}
    assert f.layers == [authors_space["small"].min_subnet["layer_num"]]
    assert f.data["utt03"].ndim == 2
    check_against(f, "utt03", ref_min("small", SPEECH_DIR / "spk3/utt03.flac"), f.layers, "single file")


def test_scp_list_and_exported_subnet_checkpoint(jobs, ckpt_files, authors_models):
    """`lhb subnet --subnet JSON --checkpoint CKPT --export OUT.pt` writes a compact checkpoint that
    `lhb info` describes and `lhb extract -c OUT.pt` uses with the same features as the supernet +
    --subnet run. The input is a Kaldi .scp whose keys (one unrelated to its file name) are kept."""
    sub = JSON_SUBNETS["base"]
    s = jobs["export"]
    assert s.export.returncode == EXIT_OK, s.export
    shown = json.loads(s.export.stdout)
    assert core(shown) == sub
    expected_params = authors_count(authors_models["base"], sub)
    assert shown.get("params", expected_params) == expected_params
    assert s.pt.stat().st_size < 0.7 * ckpt_files["base"].stat().st_size, "the exported checkpoint is not compact"

    assert s.info.returncode == EXIT_OK, s.info
    d = json.loads(s.info.stdout)
    assert d["supernet"] == "base" and d["normalize"] is True
    assert d["default_subnet_params"] == expected_params

    assert s.extract.returncode == EXIT_OK, s.extract
    ours = read_features(s.out)
    assert set(ours.data) == set(SCP_KEYS)
    ref_path, ref_run = jobs["json:base"]
    assert ref_run.returncode == EXIT_OK, ref_run
    ref = read_features(ref_path)
    assert ours.layers == ref.layers and core(ours.subnet) == sub
    for k, rel in SCP_KEYS.items():
        a, b = ours.data[k], ref.data[key_of(rel)]
        assert a.shape == b.shape
        assert np.array_equal(a, b), f"{k}: the exported subnet differs from supernet + subnet by {rel_err(a, b):.2e}"


def test_subnet_export_preset(jobs, authors_space, ckpt_files):
    """`lhb subnet --preset min --supernet small --checkpoint CKPT --export OUT.pt` (the compact
    checkpoint the smaller tests below run with)."""
    r = jobs.ctx.aux_export
    assert r.returncode == EXIT_OK, r
    assert core(json.loads(r.stdout)) == core(authors_space["small"].min_subnet)
    assert jobs.ctx.aux == jobs.ctx.aux_pt
    assert jobs.ctx.aux_pt.stat().st_size < 0.3 * ckpt_files["small"].stat().st_size


def test_random_checkpoint_option(jobs, ref_min):
    out, r = jobs["random"]
    assert r.returncode == EXIT_OK, r
    assert r.stderr.count("RANDOM WEIGHTS") == 1, r.stderr  # the header warns, once
    f = read_features(out)
    assert set(f.data) == {"utt03"}
    check_against(f, "utt03", ref_min("small", SPEECH_DIR / "spk2/utt03.wav"), f.layers, "random:small")


def test_bad_inputs_are_skipped_and_recorded(jobs, ref_min):
    """Undecodable, empty, too short (at 16 kHz and after resampling from 8 kHz), NaN and inf files
    are skipped, each named on stderr with its reason and listed in the root attribute ``skipped``;
    the good files (including a 6-channel 48 kHz one and a 500-sample one) are extracted; exit 3."""
    out, r = jobs["bad"]
    bad = jobs.ctx.bad
    assert r.returncode == EXIT_SKIPPED, r
    f = read_features(out)
    assert set(f.data) == set(GOOD_KEYS), "every good file is still extracted"
    skipped = {s["key"]: s for s in f.skipped}
    assert set(skipped) == set(BAD_REASONS)
    for key, pattern in BAD_REASONS.items():
        s = skipped[key]
        assert Path(s["path"]).resolve() == (bad / f"{key}.wav").resolve()
        assert re.search(pattern, s["reason"], re.I), f"{key}: reason {s['reason']!r}"
        lines = [ln for ln in r.err_lines if f"{key}.wav" in ln]
        assert lines, f"{key}.wav is not named on stderr\n{r}"
        assert any(s["reason"] in ln or re.search(pattern, ln, re.I) for ln in lines), f"{key}: no reason\n{r}"
    described = lhb("info", out).stdout.splitlines()  # lhb info names each, with its path and reason
    for key, s in skipped.items():
        assert [key, f"{s['path']}: {s['reason']}"] in [ln.strip().split(None, 1) for ln in described], described
    for key in GOOD_KEYS:
        check_against(f, key, ref_min("small", bad / f"{key}.wav"), f.layers, "bad-inputs folder")
    assert f.data["good/tiny8k"].shape[1] == 1  # 250 samples at 8 kHz -> 500 at 16 kHz -> one frame
    assert int(f.meta["good/six48k"]["num_samples"]) == math.ceil(72000 / 3)


def test_strict_stops_at_a_bad_input(jobs):
    out, r = jobs["strict"]
    assert r.returncode == EXIT_FAIL, r
    assert any(f"{k}.wav" in r.stderr for k in BAD_REASONS), f"the bad input is not named\n{r}"


def test_quiet_float16_gzip(jobs, ref_min):
    """--quiet: nothing on stderr, nothing on stdout; --save-dtype float16; --compression gzip."""
    out, r = jobs["quiet"]
    assert r.returncode == EXIT_OK, r
    assert r.stderr == "" and r.stdout == "", r
    f = read_features(out)
    assert set(f.data) == {k.split("/")[1] for k in GOOD_KEYS}
    for k in f.data:
        assert f.meta[k]["dtype"] == np.float16
        assert f.meta[k]["compression"] == "gzip"
        check_against(f, k, ref_min("small", jobs.ctx.bad / "good" / f"{k}.wav"), f.layers, "float16", F16_TOL)


def test_resume_and_overwrite(jobs, ref_min):
    s = jobs["resume"]
    assert s.fresh_run.returncode == EXIT_OK, s.fresh_run
    assert s.first.returncode == EXIT_OK, s.first
    assert s.keys_first == {"a/x", "a/y"}
    assert s.refused.returncode != EXIT_OK, f"an existing OUTPUT needs --resume or --overwrite\n{s.refused}"
    assert s.refused.err_lines, s.refused
    assert s.other_layers.returncode != EXIT_OK, f"--resume with other --layers must be refused\n{s.other_layers}"
    # before the work, in one line: no start line ("checkpoint ..., subnet ...") came first
    assert s.other_layers.err_lines == [f"lhb: error: {s.out}: was made with a different layers (--layers: [10], "
                                        "now [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]); use --overwrite to replace it, or "
                                        "another OUTPUT"], s.other_layers
    assert s.sha_after_refused == s.sha_before, "a refused run changed OUTPUT"

    assert s.resumed.returncode == EXIT_OK, s.resumed
    got, ref = read_features(s.resumed_copy), read_features(s.fresh)
    assert set(got.data) == set(ref.data) == set(RESUME_FILES)
    assert np.all(got.data["a/y"] == 7.0), "--resume recomputed an utterance the file already held"
    for k in ("a/x", "b/z", "b/w"):
        assert rel_err(got.data[k], ref.data[k]) <= BATCH_TOL, k
    for k, rel in RESUME_FILES.items():
        check_against(ref, k, ref_min("small", SPEECH_DIR / rel), ref.layers, "fresh run")
    assert got.skipped == [] and got.layers == ref.layers and got.subnet == ref.subnet

    assert s.overwritten.returncode == EXIT_OK, s.overwritten
    ow = read_features(s.out)
    assert set(ow.data) == set(RESUME_FILES)
    assert rel_err(ow.data["a/y"], ref.data["a/y"]) <= BATCH_TOL, "--overwrite kept an old utterance"


def check_early(r, out: Path) -> None:
    assert not out.exists(), f"OUTPUT was created\n{r}"
    assert r.stdout == "", r
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r
    assert r.err_lines, f"no message\n{r}"


@pytest.mark.parametrize("name", EARLY_ONE_LINE)
def test_early_errors_one_line(name, jobs):
    """A missing INPUT, a missing output folder, a bad --subnet or checkpoint: one clear line, exit 1
    or 2, nothing written."""
    out, r = jobs[f"early:{name}"]
    assert r.returncode in (EXIT_FAIL, EXIT_USAGE), r
    check_early(r, out)
    assert len(r.err_lines) == 1, f"expected one clear line\n{r}"


@pytest.mark.parametrize("name", EARLY_USAGE + EARLY_PARSER)
def test_bad_usage_exits_2(name, jobs):
    out, r = jobs[f"early:{name}"]
    assert r.returncode == EXIT_USAGE, r
    check_early(r, out)
    if name.startswith("batch_seconds"):
        # the library's range, not the parser's "must be >= 1" (which NaN is not below)
        value = name.rsplit("_", 1)[1].replace("zero", "0.0")
        assert r.err_lines == [f"lhb: error: --batch-seconds: {value} is not a number of seconds from 1 to 86400"], r


# ============================================================================= lhb subnet


def spec_fixed_params() -> int:
    """The parameters outside the cut parts, from SPEC §2's six reference counts and the per-layer
    formula; all six must give the same value (which checks the formula)."""
    fixed = set()
    for (space, preset), count in SPEC_COUNTS.items():
        embeds, heads, ratios, depths = SPACE_TABLE[space]
        e, h, r, n = {"default": (640, 10, 4.0, 12) if space == "base" else (384, 6, 4.0, 12),
                      "max": (max(embeds), max(heads), max(ratios), max(depths)),
                      "min": (min(embeds), min(heads), min(ratios), min(depths))}[preset]
        fixed.add(count - variable_params(make_subnet(e, [h] * n, [r] * n)))
    assert len(fixed) == 1, fixed
    return fixed.pop()


def check_subnet_item(item: dict, authors_models, space: str | None = None) -> None:
    """An item printed by `lhb subnet`: the authors' dict format (plus supernet, params), a subnet of
    its space, its parameter count as the authors count it."""
    assert set(SUBNET_KEYS) <= set(item) <= set(SUBNET_KEYS) | {"ffn_ratio", "supernet", "params"}
    name = item.get("supernet", space)
    assert space is None or name == space
    embeds, heads, ratios, depths = SPACE_TABLE[name]
    e, n = item["embed_dim"], item["layer_num"]
    assert e in embeds and n in depths
    assert len(item["heads_num"]) == n and all(h in heads for h in item["heads_num"])
    assert item["atten_dim"] == [64 * h for h in item["heads_num"]]
    assert len(item["ffn_embed"]) == n and all(f in {int(r * e) for r in ratios} for f in item["ffn_embed"])
    assert item["slide_wsz"] == ["global"] * n
    if "params" in item:
        assert item["params"] == authors_count(authors_models[name], core(item))


def subnet_result(jobs, name):
    return jobs[f"subnet:{name}"][1]


@pytest.mark.parametrize("name, budget, spaces", [("30M", 30_000_000, ["base", "small"]),
                                                  ("small30M", 30_000_000, ["small"]),
                                                  ("base50M", 50_000_000, ["base"])])
def test_subnet_params_budget(name, budget, spaces, jobs, authors_models):
    """--params: the subnet with the most parameters not above the budget (checked by exhaustive
    enumeration of the SPEC §2 counts), JSON on stdout, a per-layer table on stderr."""
    r = subnet_result(jobs, name)
    assert r.returncode == EXIT_OK, r
    item = json.loads(r.stdout)
    check_subnet_item(item, authors_models, spaces[0] if len(spaces) == 1 else None)
    fixed = spec_fixed_params()
    count = fixed + variable_params(item)
    assert count <= budget
    assert count == best_count_under(budget, fixed, spaces), "not the largest subnet within the budget"
    assert item.get("params", count) == count
    assert len(r.err_lines) >= item["layer_num"], f"expected a per-layer table on stderr\n{r}"


def test_subnet_budget_spellings(jobs):
    runs = [subnet_result(jobs, n) for n in ("30M", "30m", "3e7", "30000000")]
    for r in runs:
        assert r.returncode == EXIT_OK, r
    assert len({json.dumps(json.loads(r.stdout), sort_keys=True) for r in runs}) == 1, \
        "30M, 30m, 3e7 and 30000000 must give the same subnet"


def test_subnet_budget_below_every_subnet(jobs):
    r = subnet_result(jobs, "1M")
    assert r.returncode != EXIT_OK, r
    assert r.stdout == "" and r.err_lines and "Traceback" not in r.stderr, r


@pytest.mark.parametrize("name, space, preset", [("base_default", "base", "default"), ("small_max", "small", "max")])
def test_subnet_presets(name, space, preset, jobs, authors_space, authors_models):
    r = subnet_result(jobs, name)
    assert r.returncode == EXIT_OK, r
    ref = {"default": authors_space[space].subnet, "max": authors_space[space].max_subnet,
           "min": authors_space[space].min_subnet}[preset]
    item = json.loads(r.stdout)
    check_subnet_item(item, authors_models, space)
    for k in set(item) & set(ref):
        assert item[k] == ref[k], k
    assert item.get("params", SPEC_COUNTS[(space, preset)]) == SPEC_COUNTS[(space, preset)]
    assert len(r.err_lines) >= item["layer_num"], f"expected a per-layer table on stderr\n{r}"
    if name == "base_default":
        written = json.loads((jobs.ctx.tmp / "sub.json").read_text())
        assert written == item, "-o FILE must hold the JSON printed on stdout"


def test_subnet_sample(jobs, authors_models):
    a, b, c = (json.loads(subnet_result(jobs, n).stdout) for n in ("sample5", "sample5again", "sample6small"))
    assert a == b, "the same --seed must give the same subnets"
    assert isinstance(a, list) and len(a) == 3 and len(c) == 3
    assert a != c
    for item in a:
        check_subnet_item(item, authors_models)
    for item in c:
        check_subnet_item(item, authors_models, "small")
    # one space: the authors' sequence for that seed (random.seed(6) then sample_subnet() three times), as
    # SearchSpace.sample gives it; before, a draw of the space before each subnet shifted it
    theirs = authors_models["small"]
    random.seed(6)
    want = [core(theirs.supernet.sample_subnet()) for _ in range(3)]
    assert [core(item) for item in c] == want


# ============================================================================= lhb info


@pytest.mark.parametrize("kind", KINDS)
def test_info_checkpoint_json(kind, jobs, ckpt_files, ckpt_dicts, authors_models, authors_space):
    """--json: one object with supernet, default_subnet_params, normalize; and somewhere in it the
    other facts the issue lists (sha256, file size, min/max counts, number of subnets, weight dtype,
    extractor mode, default subnet)."""
    r = jobs[f"info:{kind}"][1]
    assert r.returncode == EXIT_OK, r
    d = json.loads(r.stdout)
    space, model, path = SUPERNET_TYPE[kind], authors_models[kind], ckpt_files[kind]
    default = authors_default_subnet(kind)
    default_count = authors_count(model, default)
    assert d["supernet"] == space
    assert d["normalize"] is normalize_of(ckpt_dicts, kind)
    assert d["default_subnet_params"] == default_count
    if kind != "stage1":
        assert default_count == SPEC_COUNTS[(space, "default")]
    values = find_values(d)
    assert sha256_of(path) in values
    assert path.stat().st_size in values
    assert authors_count(model, authors_space[space].min_subnet) in values
    assert authors_count(model, authors_space[space].max_subnet) in values
    assert SPEC_NUM_SUBNETS[space] in values
    assert "float16" in values
    assert ("default" if kind == "stage1" else "layer_norm") in values
    assert any(isinstance(v, dict) and set(SUBNET_KEYS) <= set(v) and core(v) == core(default) for v in values)


def test_info_checkpoint_text(jobs, authors_models, authors_space):
    r = jobs["info:text"][1]
    assert r.returncode == EXIT_OK, r
    model, space = authors_models["small"], authors_space["small"]
    text = r.stdout.replace(",", "")
    for fact in ("small", "float16", "layer_norm", str(authors_count(model, space.subnet)),
                 str(authors_count(model, space.min_subnet)), str(authors_count(model, space.max_subnet))):
        assert fact in text, f"{fact!r} is not in the description\n{r}"


def test_info_checkpoint_text_shows_full_sha256(jobs, ckpt_files):
    r = jobs["info:text"][1]
    assert r.returncode == EXIT_OK, r
    assert sha256_of(ckpt_files["small"]) in r.stdout, r


def test_info_features_file(jobs, speech):
    """A features file: utterance count, total frames, audio duration, layers, dims."""
    run, r_json, r_text = jobs["info:features"]
    assert run.returncode == EXIT_OK, run
    assert r_json.returncode == EXIT_OK, r_json
    assert r_text.returncode == EXIT_OK, r_text
    values = find_values(json.loads(r_json.stdout))
    speech = [(rel, w) for rel, w in speech if rel in JSON_FILES]  # what json:small extracted
    frames = sum(frames_for(len(w)) for _, w in speech)
    seconds = sum(len(w) for _, w in speech) / 16000
    sub = JSON_SUBNETS["small"]
    assert len(speech) in values
    assert frames in values
    assert any(isinstance(v, float) and abs(v - seconds) < 0.01 for v in values), f"no duration of {seconds:.2f} s"
    assert list(range(sub["layer_num"] + 1)) in values
    assert sub["embed_dim"] in values
    text = r_text.stdout.replace(",", "")
    for fact in (str(len(speech)), str(frames), str(sub["embed_dim"])):
        assert fact in text, f"{fact!r} is not in the description\n{r_text}"
    shape = f"({sub['layer_num'] + 1}, T, {sub['embed_dim']})"  # (L, T, D), the frames axis named (before: (L, D))
    assert any(line.split() == ["feature", "shape", *shape.split()] for line in r_text.stdout.splitlines()), r_text
