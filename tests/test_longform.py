"""Long recordings: exact mode equals an uncut run of the authors' model, windowed mode equals the
authors' encoder run on the same windows, every file keeps the frame count of an uncut run, and a
5-minute file runs in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

import lighthubert
from cli_helpers import Run, _env, lhb, lhb_command, read_features
from conftest import SUPERNET_TYPE
from helpers import SPEECH_DIR, authors_hidden_states, frames_for, rel_err
from lighthubert.audio import load_audio
from lighthubert.features import keys
from lighthubert.longform import LongForm, encode, hidden_states
from oracle import authors

TOL = 1e-5


def speech(seconds: float) -> np.ndarray:
    """Real speech (the example files, concatenated and repeated) of the given length, 16 kHz."""
    waves = [load_audio(p) for p in sorted(SPEECH_DIR.rglob("*")) if p.suffix in (".wav", ".flac")]
    return np.resize(np.concatenate(waves), int(seconds * 16000)).astype(np.float32)


def min_subnet(kind: str) -> dict:
    space = authors().LightHuBERTSupernetConfig(SUPERNET_TYPE[kind])
    return space.min_subnet


def authors_windowed(model, wave: np.ndarray, normalize: bool, window: int, context: int) -> list[np.ndarray]:
    """The authors' hidden state 0 of the whole file, then their encoder on each of ceil(T / window)
    equal windows (sizes within one frame), each run on ``window + 2 * context`` frames centred on it
    (moved inside the file at its ends); context dropped, windows joined: (T, E) per layer."""
    full = authors_hidden_states(model, wave, normalize)
    x0 = full[0][None]
    frames = x0.shape[1]
    layers: list[list[torch.Tensor]] = [[] for _ in range(len(full) - 1)]
    n = -(-frames // window)
    with torch.no_grad():
        for s, e in zip([k * frames // n for k in range(n)], [(k + 1) * frames // n for k in range(n)]):
            width = min(frames, window + 2 * context)
            lo = min(max(0, s - (width - (e - s)) // 2), frames - width)
            hi = lo + width
            _, results = model.encoder(x0[:, lo:hi], padding_mask=None, layer=None)
            for i, (hs, _, _) in enumerate(results):
                layers[i].append(hs.transpose(0, 1)[0, s - lo:s - lo + e - s])
    return [full[0].numpy()] + [torch.cat(parts).numpy() for parts in layers]


@pytest.mark.parametrize("kind", ["small", "stage1"])  # layer_norm extractor / default (GroupNorm) extractor
def test_exact_mode_equals_the_authors_uncut(kind, ckpts, authors_models):
    """The conv extractor in pieces of 37 frames (so many piece borders), GroupNorm statistics over
    the whole file first: every hidden state equals the authors' uncut run on 12.3 s of real speech."""
    wave = speech(12.3)
    model = authors_models[kind]
    model.set_sample_config(min_subnet(kind))
    ref = authors_hidden_states(model, wave, ckpts[kind].normalize)
    ext = lighthubert.Extractor(ckpts[kind], min_subnet(kind), "cpu")
    x = ext.batch([wave])[0][0]
    out = hidden_states(ext.model, x, list(range(ext.num_layers + 1)), piece_frames=37)
    assert out.hidden[0].shape[1] == frames_for(len(wave)) == ref[0].shape[0]
    for i, r in enumerate(ref):
        assert rel_err(out.hidden[i][0], r) <= TOL, (kind, i)


@pytest.mark.parametrize("kind", ["small", "stage1"])
def test_windowed_mode_equals_the_authors_encoder_on_windows(kind, ckpts, authors_models):
    """Windows of 2 s with 1 s of context: frames are neither lost nor repeated, hidden state 0 is
    exact, and each layer equals the authors' encoder run on the same windows."""
    wave = speech(9.1)
    model = authors_models[kind]
    model.set_sample_config(min_subnet(kind))
    ref = authors_windowed(model, wave, ckpts[kind].normalize, window=100, context=50)
    ext = lighthubert.Extractor(ckpts[kind], min_subnet(kind), "cpu")
    stacked = ext.run_long(ext.batch([wave])[0][0], list(range(ext.num_layers + 1)), LongForm("windowed", 2.0, 1.0))
    assert stacked.shape[1] == frames_for(len(wave))
    for i, r in enumerate(ref):
        assert rel_err(stacked[i], r) <= TOL, (kind, i)


@pytest.mark.slow
def test_cli_long_files_exact_and_windowed(tmp_path, ckpt_files, authors_models):
    """Through the installed lhb, Stage 1 (GroupNorm extractor, no normalisation): with
    --exact-seconds 0 and --batch-seconds 1 every file runs alone through the exact long-file path
    and equals the authors' uncut run; the deprecated --max-chunk-seconds 1.5 gives 1.5 s windows
    without context (a note says so), the uncut frame count, and the attributes say how."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(str(src / "a.wav"), speech(4.3), 16000, subtype="FLOAT")
    wave = sf.read(str(src / "a.wav"), dtype="float32")[0]
    model = authors_models["stage1"]
    model.set_sample_config(min_subnet("stage1"))
    common = ["-c", ckpt_files["stage1"], "--subnet", "min", "--layers", "all", "-q"]

    exact, windowed = tmp_path / "exact.h5", tmp_path / "windowed.h5"
    runs = [Run(["extract", src, exact, "--exact-seconds", "0", "--batch-seconds", "1", *common]),  # both at once
            Run(["extract", src, windowed, "--max-chunk-seconds", "1.5", *common])]
    r = runs[0].result()
    assert r.returncode == 0, r
    f = read_features(exact)
    ref = authors_hidden_states(model, wave, normalize=False)
    assert f.data["a"].shape[1] == frames_for(len(wave))
    for i, layer in enumerate(f.layers):
        assert rel_err(f.data["a"][i], ref[layer]) <= TOL, i
    assert f.attrs["long_files"] == "exact" and f.attrs["exact_seconds"] == 0.0
    assert "windows" not in f.meta["a"]

    r = runs[1].result()
    assert r.returncode == 0, r
    assert any("--max-chunk-seconds is deprecated" in ln for ln in r.err_lines), r
    f = read_features(windowed)
    ref = authors_windowed(model, wave, normalize=False, window=75, context=0)
    assert f.data["a"].shape[1] == frames_for(len(wave))
    for i, layer in enumerate(f.layers):
        assert rel_err(f.data["a"][i], ref[layer]) <= TOL, i
    assert (f.attrs["exact_seconds"], f.attrs["window_seconds"], f.attrs["context_seconds"]) == (1.5, 1.5, 0.0)
    assert f.meta["a"]["windows"] == 3
    info = lhb("info", windowed, "--json")
    assert info.returncode == 0, info
    assert "windowed (1.5 s windows, 0 s context)" in json.loads(info.stdout)["attributes"]["long_files"]

    # --resume refuses to mix modes
    r = lhb("extract", src, windowed, "--resume", "--window-seconds", "30", "--exact-seconds", "1.5",
            "--context-seconds", "0", *common)
    assert r.returncode == 1 and len(r.err_lines) == 1 and "window_seconds" in r.err_lines[0], r


@pytest.mark.slow
def test_five_minutes_on_the_cpu_in_bounded_memory(tmp_path):
    """A 5-minute file with the CPU defaults (exact up to 120 s, then 60 s windows with 10 s of
    context): the uncut frame count, and the process stays under 2.5 GiB of resident memory (about
    1.6 GiB measured; the first conv block's output for the whole file alone would take 1.8 GiB)."""
    src = tmp_path / "in"
    src.mkdir()
    wave = speech(300.0)
    sf.write(str(src / "long.wav"), wave, 16000, subtype="FLOAT")
    out = tmp_path / "long.h5"
    cmd = lhb_command() + ["extract", str(src), str(out), "-c", "random:small", "--subnet", "min", "-q",
                           "--device", "cpu"]
    # a fresh parent whose only child is lhb: its RUSAGE_CHILDREN peak is lhb's own
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    env = {**_env(), "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}  # the only process running: both cores
    proc = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, text=True,
                          timeout=1200, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    peak_gib = int(proc.stdout.split()[-1]) / 2**20  # ru_maxrss is in KiB on Linux
    assert peak_gib < 2.5, f"peak RSS {peak_gib:.2f} GiB"
    f = read_features(out)
    assert f.data["long"].shape[0] == frames_for(len(wave)) == 14999
    assert f.meta["long"]["windows"] == 5
    assert f.attrs["long_files"] == "exact up to 120 s, then windowed (60 s windows, 10 s context)"


def test_the_library_runs_a_long_waveform_in_pieces_with_the_numbers_of_an_uncut_run(tmp_path):
    """``ext(wave)`` on minutes of audio ran the conv extractor over the whole waveform at once: 3
    minutes took 2.26 GB more memory (0.38 GB in pieces), 75 s 0.94 GB. A waveform over a minute runs
    alone as ``lhb extract`` runs it (exact mode), in a list beside short ones too, with the uncut numbers."""
    wave = speech(75.0)
    np.save(tmp_path / "w.npy", wave)
    probe = ("import resource, sys, numpy as np, torch, lighthubert; torch.set_num_threads(1); "
             "ext = lighthubert.load('random:small', subnet='min', device='cpu'); w = np.load(sys.argv[1]); "
             "ext(w[:16000]); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
             "got = ext([w, w[:32000]], layers=[0, 4, -1]); "
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before); torch.save(got, sys.argv[2])")
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "w.npy"), str(tmp_path / "got.pt")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) < 500 * 1024, f"{int(proc.stdout.split()[-1]) / 1024:.0f} MB more for 75 s"
    got_long, got_short = torch.load(tmp_path / "got.pt")
    ext = lighthubert.load("random:small", subnet="min", device="cpu")
    with torch.inference_mode():
        w = torch.from_numpy(wave)
        out = ext.model(torch.nn.functional.layer_norm(w, w.shape)[None], None, layers=[0, 4])
    assert got_long.shape == (3, frames_for(len(wave)), 256) == (3, 3749, 256)
    assert rel_err(got_long[0], out.hidden[0][0]) <= TOL and rel_err(got_long[1], out.hidden[4][0]) <= TOL
    assert torch.equal(got_short, ext(wave[:32000], layers=[0, 4, -1]))


def test_windows_cover_every_frame_once_in_equal_windows_with_context():
    """The geometry README states: ceil(T / W) windows of at most W frames, sizes within one frame,
    joined without gap or overlap; each run spans W + 2C frames (or the whole file) around its
    window, so at least C frames of context on each side or the file's edge."""
    from lighthubert.longform import windows

    for frames in range(1, 320):
        for window in (1, 2, 7, 50, 100, 300):
            for context in (0, 1, 10, 50):
                ws = windows(frames, window, context)
                assert len(ws) == -(-frames // window)
                assert ws[0][0] == 0 and ws[-1][1] == frames and all(a[1] == b[0] for a, b in zip(ws, ws[1:]))
                sizes = [e - s for s, e, _, _ in ws]
                assert max(sizes) <= window and max(sizes) - min(sizes) <= 1
                for s, e, lo, hi in ws:
                    assert 0 <= lo <= s < e <= hi <= frames and hi - lo == min(frames, window + 2 * context)
                    assert s - lo >= min(context, s) and hi - e >= min(context, frames - e)
                    assert abs((s - lo) - (hi - e)) <= 1 or lo == 0 or hi == frames  # centred inside the file
    assert windows(6250, 3000, 500) == [(0, 2083, 0, 4000), (2083, 4166, 1125, 5125), (4166, 6250, 2250, 6250)]


@pytest.mark.slow
@pytest.mark.parametrize("kind, bound", [("small", 2e-2), ("stage1", 6e-2)])
def test_windowed_defaults_stay_within_the_stated_bound(kind, bound, ckpts):
    """The default windows (W=60 s, C=10 s) on 125 s of real speech, the spaces' default subnets (on
    Stage 1 the Base space's, 66.9M, not the checkpoint's own default, the Base max): no frame
    lost, hidden state 0 exact, every layer within the bound README states of its largest value of
    the uncut run: 2e-2 in the Small space, 6e-2 in the Base space. (Fixed 60 s windows ended this
    file in a 5 s one and drifted 3.6e-2 in Small, 1.0e-1 in Stage 1: this test failed on them.)"""
    from lighthubert.defaults import CONTEXT_SECONDS, WINDOW_SECONDS

    wave = speech(125.0)
    ext = lighthubert.Extractor(ckpts[kind], ckpts[kind].space.default_subnet, "cpu")
    layers = list(range(ext.num_layers + 1))
    with torch.inference_mode():  # both modes on one computation of the conv features (a third of the time)
        x = hidden_states(ext.model, ext.batch([wave])[0][0], [0]).hidden[0]  # hidden state 0: no layer runs
        exact = encode(ext.model, x, layers, form=LongForm("exact")).hidden
        windowed = encode(ext.model, x, layers, form=LongForm("windowed", WINDOW_SECONDS, CONTEXT_SECONDS)).hidden
    assert windowed[0].shape == exact[0].shape and exact[0].shape[1] == frames_for(len(wave))
    assert all(windowed[i].shape == exact[i].shape for i in layers) and torch.equal(windowed[0], exact[0])
    errors = [rel_err(windowed[i], exact[i]) for i in layers[1:]]
    assert max(errors) <= bound, errors


def test_progress_moves_with_each_window_of_a_long_file(tmp_path, ckpt_files):
    """A windowed long file reports its audio window by window (files done unchanged until it is
    written), not in one step at the end; the seconds add up to the audio of the run."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(str(src / "long.wav"), speech(12.0), 16000, subtype="FLOAT")
    sf.write(str(src / "short.wav"), speech(3.0), 16000, subtype="FLOAT")
    calls: list[tuple[int, int, float, float]] = []
    lighthubert.extract(src, tmp_path / "o.h5", checkpoint=ckpt_files["small"], subnet="min", device="cpu",
                        exact_seconds=5, window_seconds=2, context_seconds=1, progress=lambda *a: calls.append(a))
    assert calls[0] == (0, 2, 0.0, 15.0) and calls[-1][:3] == (2, 2, 15.0), calls
    during_long = [c for c in calls[1:] if c[0] == 0]  # the long file runs first (longest first)
    assert len(during_long) >= 5, calls  # 6 windows of 2 s, the last reported with the file
    seconds = [c[2] for c in calls]
    assert seconds == sorted(seconds) and 0 < during_long[0][2] <= 2.5, calls


def test_a_finished_long_file_is_committed_before_the_next_one_runs(tmp_path, ckpt_files):
    """A kill loses at most the last moments of work. Before: batch k-1 was handed to the writer only
    once batch k had run (on the CPU, and for every long file), so a finished long file waited in
    memory for the whole next file, and a kill then lost both. Here, while the second long file runs,
    the first must be in a committed segment of OUTPUT.parts (what a kill leaves for --resume)."""
    import time

    src = tmp_path / "in"
    src.mkdir()
    sf.write(str(src / "first.wav"), speech(12.0), 16000, subtype="FLOAT")  # the longest runs first
    sf.write(str(src / "second.wav"), speech(10.0), 16000, subtype="FLOAT")
    out, found = tmp_path / "o.h5", []

    def committed() -> set[str]:
        held = set()
        for seg in (tmp_path / "o.h5.parts").glob("seg-*.h5"):  # closed and renamed: committed
            with h5py.File(seg, "r") as f:
                held |= set(keys(f))
        return held

    def progress(files: int, total: int, seconds: float, total_seconds: float) -> None:
        if 12.5 < seconds < 22.0 and not found:  # inside the second file's windows
            deadline = time.monotonic() + 10
            while "first" not in committed() and time.monotonic() < deadline:
                time.sleep(0.05)
            found.append(sorted(committed()))

    lighthubert.extract(src, out, checkpoint=ckpt_files["small"], subnet="min", device="cpu", exact_seconds=5,
                        window_seconds=2, context_seconds=1, flush_seconds=0.01, progress=progress)
    assert found == [["first"]]
    with h5py.File(out, "r") as f:
        assert sorted(keys(f)) == ["first", "second"]


def test_stop_during_a_long_file_ends_after_its_current_window(tmp_path, ckpt_files):
    """A stop signal does not wait for the rest of a windowed file: the run ends after the current
    window, the file is left out of OUTPUT (a valid, incomplete file), and --resume completes the job."""
    src = tmp_path / "in"
    src.mkdir()
    sf.write(str(src / "long.wav"), speech(12.0), 16000, subtype="FLOAT")
    sf.write(str(src / "short.wav"), speech(3.0), 16000, subtype="FLOAT")
    stop, calls = threading.Event(), []

    def progress(files, total, seconds, total_seconds):
        calls.append((files, seconds))
        if files == 0 and seconds > 0:  # the long file's first window is done (longest runs first)
            stop.set()

    settings = dict(checkpoint=ckpt_files["small"], subnet="min", device="cpu", exact_seconds=5, window_seconds=2,
                    context_seconds=1)
    out = tmp_path / "o.h5"
    summary = lighthubert.extract(src, out, progress=progress, stop=stop, **settings)
    assert summary.interrupted and summary.files == 0, (summary, calls)
    assert len([c for c in calls if c[0] == 0 and c[1] > 0]) == 1, calls  # one window of six ran
    with h5py.File(out) as f:
        assert keys(f) == [] and not f.attrs["complete"]
    again = lighthubert.extract(src, out, resume=True, **settings)
    assert again.files == 2 and not again.interrupted
    with h5py.File(out) as f:
        assert sorted(keys(f)) == ["long", "short"] and f.attrs["complete"]
        assert f["features"]["long"].shape[0] == frames_for(12 * 16000)
