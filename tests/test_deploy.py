"""Exported subnets (``lhb subnet --export OUT.onnx`` / ``OUT.ts``): ONNX Runtime (CPU) and the
TorchScript file give the features ``lighthubert.load(...)`` gives, on real speech in a padded batch of
different lengths, for a Small-space subnet (layer_norm extractor, normalize true) and a Base-space
subnet of Stage 1 (default extractor, normalize false); they run in a process that cannot import
this package; ``lhb info`` describes them; without the onnx extra, one line says what to install.

onnx, onnxruntime and onnxscript come with the test extra: nothing here is skipped for lack of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lighthubert
from lighthubert import deploy
from cli_helpers import Run, lhb
from helpers import SPEECH_DIR, frames_for, rel_err

# torch 2.14 marks torch.jit deprecated; the TorchScript file is still what libtorch (C++) users load
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning"), pytest.mark.slow]

TOL = 1e-4
SPEC_SMALL_MIN_PARAMS = 11_449_088  # SPEC.md §2
# kind -> (subnet, layers exported): small = layer_norm extractor, stage1 = default (GroupNorm) extractor
CASES = {"small": ("min", None), "stage1": ("min", "0,5,-1")}
CROPS = (16_000 + 123, 48_000, 30_001)  # 1-3 s; the first is not a multiple of the 320-sample hop


@pytest.fixture(scope="module")
def batch(speech) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A zero-padded batch of three real utterances of different lengths: (B, N) float32, (B,) int64, the crops."""
    by_len = sorted((w for _, w in speech), key=len, reverse=True)
    crops = [by_len[i][2000:2000 + n].astype(np.float32) for i, n in enumerate(CROPS)]
    assert [len(c) for c in crops] == list(CROPS)
    wave = np.zeros((len(crops), max(CROPS)), np.float32)
    for i, c in enumerate(crops):
        wave[i, : len(c)] = c
    return wave, np.array(CROPS, np.int64), crops


@pytest.fixture(scope="module")
def exported(ckpt_files, tmp_path_factory) -> dict:
    """kind -> {"onnx": path, "ts": path, "subnet": dict, "layers": [..]}; the small ONNX file is written
    by the ``lhb`` command, the others by ``lighthubert.deploy.export``."""
    folder = tmp_path_factory.mktemp("deploy")
    by_cli = folder / "small.onnx"  # the command exports it while this process makes the others
    command = Run(["subnet", "-c", ckpt_files["small"], "--preset", CASES["small"][0], "--export", by_cli])
    out = {}
    for kind, (spec, layers) in CASES.items():
        ckpt = lighthubert.load_checkpoint(ckpt_files[kind])
        sub = ckpt.resolve_subnet(spec)
        paths = {"onnx": folder / f"{kind}.onnx", "ts": folder / f"{kind}.ts"}
        if paths["onnx"] != by_cli:
            deploy.export(ckpt, spec, paths["onnx"], layers=layers)
        deploy.export(ckpt, spec, paths["ts"], layers=layers)
        idx = lighthubert.resolve_layers(layers, sub["layer_num"])
        out[kind] = {**paths, "subnet": sub, "layers": idx, "params": ckpt.params(sub)}
    r = command.result()
    assert r.returncode == 0, r
    assert r.err_lines[-1].startswith(f"wrote {by_cli}"), r
    return out


def run_onnx(path: Path, wave: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    hidden, frames = sess.run(["hidden_states", "frames"], {"waveform": wave, "lengths": lengths})
    return hidden, frames


def run_ts(path: Path, wave: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        hidden, frames = module(torch.from_numpy(wave), torch.from_numpy(lengths))
    return hidden.numpy(), frames.numpy()


@pytest.mark.parametrize("fmt", ["onnx", "ts"])
@pytest.mark.parametrize("kind", list(CASES))
def test_exported_file_matches_load(kind, fmt, exported, ckpt_files, batch):
    """Padded batch of 1-3 s utterances, and one utterance alone (another batch size and length):
    the file's features equal ``lighthubert.load(...)``'s within 1e-4 relative, frame counts exact."""
    e = exported[kind]
    wave, lengths, crops = batch
    ext = lighthubert.load(str(ckpt_files[kind]), subnet=e["subnet"], device="cpu")
    ref = ext(crops, layers=e["layers"])
    ref = [r[None] if r.dim() == 2 else r for r in ref]  # (K, T, E)
    run = run_onnx if fmt == "onnx" else run_ts
    hidden, frames = run(e[fmt], wave, lengths)
    assert hidden.dtype == np.float32
    assert hidden.shape[:2] == (len(crops), len(e["layers"])) and hidden.shape[3] == e["subnet"]["embed_dim"]
    assert frames.tolist() == [frames_for(n) for n in CROPS]
    for b, r in enumerate(ref):
        got = torch.from_numpy(hidden[b, :, : frames[b]])
        assert rel_err(got, r) <= TOL, (kind, fmt, b, rel_err(got, r))
    alone, n = run(e[fmt], wave[1:2, : CROPS[1]], lengths[1:2])
    assert n.tolist() == [frames_for(CROPS[1])]
    assert rel_err(torch.from_numpy(alone[0]), ref[1]) <= TOL
    # a length beyond the samples given counts only those: frames never exceeds the frames returned
    over, n = run(e[fmt], wave[1:2, : CROPS[1]], lengths[1:2] + 5000)
    assert n.tolist() == [frames_for(CROPS[1])] and np.array_equal(over, alone)
    # a row of no samples (an empty slot in a fixed-size batch): no frames, finite values, others unchanged
    empty, n = run(e[fmt], wave[:2], np.array([0, lengths[1]]))
    assert n.tolist() == [0, frames_for(CROPS[1])] and np.isfinite(empty).all()
    assert rel_err(torch.from_numpy(empty[1, :, : n[1]]), ref[1]) <= TOL
    # one length for three rows, or three for two: an error (ONNX Runtime spread one over every row;
    # TorchScript gave one row)
    for w, n in ((wave, lengths[:1]), (wave[:2], lengths)):
        with pytest.raises(Exception, match=r"(?i)index|shape"):
            run(e[fmt], w, n)


@pytest.mark.parametrize("fmt", ["onnx", "ts"])
def test_exported_file_standardises_speech_with_a_dc_offset_as_load_does(fmt, exported, ckpt_files, batch):
    """Speech with a DC offset of 0.1, padded (the Small file asks for normalisation; its layer-norm conv
    extractor amplifies a constant shift of the standardised wave on quiet stretches): within 1e-5 of
    ``lighthubert.load``. Float32 statistics in the graph gave 9.7e-5 (Small default subnet)."""
    e = exported["small"]
    wave, lengths, crops = batch
    shifted = [c + np.float32(0.1) for c in crops]
    padded = wave.copy()
    for b, c in enumerate(shifted):
        padded[b, : len(c)] = c
    ref = lighthubert.load(str(ckpt_files["small"]), subnet=e["subnet"], device="cpu")(shifted, layers=e["layers"])
    hidden, frames = (run_onnx if fmt == "onnx" else run_ts)(e[fmt], padded, lengths)
    for b, r in enumerate(ref):
        err = rel_err(torch.from_numpy(hidden[b, :, : frames[b]]), r[None] if r.dim() == 2 else r)
        assert err <= 1e-5, (fmt, b, err)


def test_torchscript_file_is_not_tied_to_the_device_it_was_traced_on(exported):
    """A trace keeps the device of every tensor it creates with ``device=``: the float32 ``.ts`` (traced
    on the CPU) held ``torch.arange(..., device="cpu")`` twice (the frame masks), so loading it with
    ``map_location="cuda"`` failed on CUDA inputs. No device constant is left in its graph; on a GPU,
    tests/test_gpu.py runs it there."""
    for kind in CASES:
        graph = str(torch.jit.load(str(exported[kind]["ts"]), map_location="cpu").inlined_graph)
        fixed = [line.strip() for line in graph.splitlines() if "Device = prim::Constant" in line]
        assert fixed == [], (kind, fixed)


def test_files_run_without_the_package(exported, batch, tmp_path):
    """A process where ``import lighthubert`` fails runs both files and gets the same numbers."""
    wave, lengths, _ = batch
    stub = tmp_path / "stub" / "lighthubert"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('lighthubert is not installed here')\n")
    e = exported["stage1"]
    np.save(tmp_path / "wave.npy", wave)
    np.save(tmp_path / "lengths.npy", lengths)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np, onnxruntime as ort, torch
        try:
            import lighthubert
            sys.exit("lighthubert imported")
        except ImportError:
            pass
        w, n = np.load({str(tmp_path / 'wave.npy')!r}), np.load({str(tmp_path / 'lengths.npy')!r})
        h1, f1 = ort.InferenceSession({str(e['onnx'])!r}, providers=["CPUExecutionProvider"]).run(None, {{"waveform": w, "lengths": n}})
        h2, f2 = torch.jit.load({str(e['ts'])!r})(torch.from_numpy(w), torch.from_numpy(n))
        np.save({str(tmp_path / 'h1.npy')!r}, h1)
        np.save({str(tmp_path / 'h2.npy')!r}, h2.numpy())
    """)
    env = {**os.environ, "PYTHONPATH": str(stub.parent), "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)  # not the repository root, where ./lighthubert would be importable
    assert r.returncode == 0, r.stderr[-2000:]
    expect, _ = run_onnx(e["onnx"], wave, lengths)
    for name in ("h1.npy", "h2.npy"):
        assert rel_err(torch.from_numpy(np.load(tmp_path / name)), torch.from_numpy(expect)) <= TOL


def test_an_export_given_as_a_checkpoint_says_what_it_is(exported, tmp_path):
    """Before: ``-c small.ts`` was refused as a zip with a compressed record (as if hostile), and ``-c
    small.onnx`` as "not a PyTorch checkpoint", though lhb wrote both."""
    e = exported["small"]
    runs = {fmt: Run(["extract", str(SPEECH_DIR), str(tmp_path / f"{fmt}.h5"), "-c", e[fmt]]) for fmt in ("ts", "onnx")}
    what = {"ts": "a TorchScript export (lhb info describes it; torch.jit.load runs it)",
            "onnx": "an ONNX export (lhb info describes it; ONNX Runtime runs it)"}
    for fmt, run in runs.items():
        r = run.result()
        assert r.returncode == 1 and r.err_lines == [
            f"lhb: error: {e[fmt]}: {what[fmt]}, not a checkpoint; -c takes a .pt file (lhb subnet --export NAME.pt "
            "writes one of a subnet)"], r
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", list(CASES))
def test_info_describes_exported_files(kind, exported, ckpt_dicts):
    """``lhb info OUT.onnx --json`` / ``OUT.ts``: subnet, params, layers, normalisation, inputs and
    outputs with dynamic axes, opset; the table form names the subnet and the opset."""
    e = exported[kind]
    normalize = ckpt_dicts[kind]["cfg"]["task"]["normalize"]
    runs = {fmt: Run(["info", e[fmt], "--json"]) for fmt in ("onnx", "ts")}  # all three at once
    table_run = Run(["info", e["onnx"]])
    for fmt in ("onnx", "ts"):
        r = runs[fmt].result()
        assert r.returncode == 0, r
        d = json.loads(r.stdout)
        m = d["metadata"]
        assert d["format"] == {"onnx": "onnx", "ts": "torchscript"}[fmt]
        assert m["subnet"] == e["subnet"] and m["layers"] == e["layers"] and m["params"] == e["params"]
        assert m["normalize"] is normalize and m["sample_rate"] == 16000 and m["dtype"] == "float32"
        assert m["lighthubert_version"] == lighthubert.__version__ and m["random_weights"] is True
        assert [i["name"] for i in d["inputs"]] == ["waveform", "lengths"]
        assert d["inputs"][0]["shape"] == ["batch", "samples"] and d["inputs"][1]["dtype"] == "int64"
        assert d["outputs"][0]["shape"] == ["batch", len(e["layers"]), "frames", e["subnet"]["embed_dim"]] \
            if fmt == "onnx" else d["outputs"][0]["shape"][0] == "batch"
        assert d["file_size"] == Path(e[fmt]).stat().st_size
        if fmt == "onnx":
            assert d["opset"] == deploy.DEFAULT_OPSET
    if kind == "small":
        assert m["params"] == SPEC_SMALL_MIN_PARAMS
    table = table_run.result()
    assert table.returncode == 0, table
    assert f"{e['params']:,} params" in table.stdout and "opset 18" in table.stdout


@pytest.mark.parametrize("fmt", ["onnx", "ts"])
def test_float16_export(fmt, ckpt_files, batch, tmp_path):
    """--export-dtype float16: weights and outputs in float16, close to the float32 features (layers
    0 and 2 only: a shorter trace)."""
    path = tmp_path / f"half.{fmt}"
    r = lhb("subnet", "-c", ckpt_files["small"], "--preset", "min", "--export", path, "--export-dtype", "float16",
            "--layers", "0,2")
    assert r.returncode == 0, r
    wave, lengths, crops = batch
    half, frames = (run_onnx if fmt == "onnx" else run_ts)(path, wave, lengths)
    full = lighthubert.load(str(ckpt_files["small"]), subnet="min", device="cpu")(crops, layers=[0, 2])
    assert half.dtype == np.float16 and half.shape[1] == 2
    for b, n in enumerate(frames):
        assert rel_err(torch.from_numpy(half[b, :, :n]).float(), full[b]) < 2e-2
    assert json.loads(lhb("info", path, "--json").stdout)["metadata"]["dtype"] == "float16"


def test_bad_export_requests_are_one_line(ckpt_files, tmp_path):
    """Unknown suffix, --layers with .pt, a layer out of range: one line, nothing written."""
    ck = ckpt_files["small"]
    cases = [
        (["--export", tmp_path / "x.onnxx"], "unknown export format '.onnxx'"),
        (["--export", tmp_path / "x.pt", "--layers", "3"], "(--layers and --export-dtype) are for .onnx and .ts"),
        (["--export", tmp_path / "x.ts", "--layers", "11"], "layer 11 is out of range"),
        (["--layers", "3"], "--export-dtype and --layers go with --export"),
    ]
    runs = [Run(["subnet", "-c", ck, "--preset", "min", *args]) for args, _ in cases]  # independent: all at once
    for (_, message), run in zip(cases, runs):
        r = run.result()
        assert r.returncode in (1, 2), r
        assert message in r.err_lines[-1] and "Traceback" not in r.stderr, r
    assert not list(tmp_path.iterdir())


def test_missing_onnx_extra_is_one_line(ckpt_files, tmp_path):
    """With ``import onnx`` failing: the .onnx export and ``lhb info x.onnx`` say what to install in one
    line; the rest of the package works (a .ts export)."""
    stub = tmp_path / "stub" / "onnx"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named onnx')\n")
    (tmp_path / "fake.onnx").write_bytes(b"\x08\x07")
    env_code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(stub.parent)!r})
        sys.argv = ["lhb"] + sys.argv[1:]
        from lighthubert_cli.main import main
        main()
    """)

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", env_code, *map(str, args)], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)

    for r in (run("subnet", "-c", ckpt_files["small"], "--preset", "min", "--export", tmp_path / "x.onnx"),
              run("info", tmp_path / "fake.onnx")):
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1, r.stderr
        assert len(lines) == 1 and "pip install 'lighthubert[onnx]'" in lines[0], r.stderr
    assert not (tmp_path / "x.onnx").exists()
    r = run("subnet", "-c", ckpt_files["small"], "--preset", "min", "--export", tmp_path / "x.ts", "--layers", "0")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x.ts").is_file()


def test_describing_a_missing_file_says_so(tmp_path):
    """Before: 'not an exported ONNX or TorchScript file' for a name that is not there."""
    for path, says in ((tmp_path / "gone.onnx", "no such file"), (tmp_path, "is a folder")):
        with pytest.raises(deploy.ExportError, match=f"^{path}: {says}, not an exported ONNX or TorchScript file$"):
            deploy.describe(path)



def test_an_exported_subnet_checkpoint_exports_its_own_subnet(exported, ckpt_files, batch, tmp_path):
    """``lhb subnet -c small_min.pt --export small_min.ts``: the compact checkpoint holds one subnet,
    which the command shows and exports as ``lighthubert.deploy.export`` does (it was refused: "is an
    exported subnet; give the supernet checkpoint"). Asking it for another subnet stays a usage error."""
    e = exported["small"]
    compact = lighthubert.export_subnet(lighthubert.load_checkpoint(ckpt_files["small"]), "min", tmp_path / "min.pt")
    r = lhb("subnet", "-c", compact, "--export", tmp_path / "min.ts", "-q")
    assert r.returncode == 0, r
    shown = json.loads(r.stdout)
    assert {k: shown[k] for k in e["subnet"]} == e["subnet"] and shown["params"] == e["params"]
    wave, lengths, _ = batch
    assert np.array_equal(run_ts(tmp_path / "min.ts", wave, lengths)[0], run_ts(e["ts"], wave, lengths)[0])
    for args, option in ((["--params", "20M"], "--params"), (["--preset", "max"], "--preset")):
        r = lhb("subnet", "-c", compact, *args)
        assert r.returncode == 2 and r.stderr == (f"lhb: error: {compact}: is an exported subnet and holds only its own; "
                                                  f"{option} needs the supernet checkpoint\n"), r
