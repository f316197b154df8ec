"""Long files: how far windowed attention is from an uncut run, per layer, for a few (W, C).

    python benchmarks/longform.py [--minutes 10] [--checkpoint random:small] [--subnet default]
    python benchmarks/longform.py --lengths 121,125,150,180,245,300 --checkpoint random:stage1

Builds a real-speech-like file by concatenating the example speech (../shared/data/speech) to the
given length, runs it once in exact mode (conv extractor in pieces, transformer over the whole
sequence: equal to an uncut run within float32 rounding) and once per (W, C) in windowed mode, and
prints the maximum and mean relative difference of every hidden state to the exact run
(max |a - b| / max |b| and mean |a - b| / mean |b|), plus the time of each run.

``--lengths`` instead compares, for the default W and C at each file length (seconds), the worst
layer's max difference and the windowed time of the library's windows (equal windows, each in a run
of W + 2C frames) with the previous geometry (fixed W windows, a short last one, C frames of context
where the file has them), run on the same conv features in the same process.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import lighthubert
from lighthubert.audio import load_audio
from lighthubert.defaults import CONTEXT_SECONDS, WINDOW_SECONDS
from lighthubert.longform import LongForm, conv_features, hidden_states
from lighthubert.model import kernel_choices

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
SETTINGS = [(10, 2), (20, 5), (30, 5), (30, 10), (60, 10)]


def speech_of(minutes: float) -> np.ndarray:
    waves = [load_audio(p) for p in sorted(SPEECH.rglob("*")) if p.suffix in (".wav", ".flac")]
    one = np.concatenate(waves)
    n = int(minutes * 60 * 16000)
    return np.resize(one, n).astype(np.float32)


def previous_windows(frames: int, window: int, context: int) -> list[tuple[int, int, int, int]]:
    """The geometry before 2026-11-30: fixed windows of W frames (the last one short), C frames of
    context on each side where the file has them."""
    return [(s, min(frames, s + window), max(0, s - context), min(frames, s + window + context))
            for s in range(0, frames, window)]


def worst(model, x: torch.Tensor, want: list[int], cuts, exact) -> tuple[float, float]:
    """Max over layers of max |windowed - exact| / max |exact| for the windows ``cuts``, and the
    seconds the windowed run took."""
    t = time.perf_counter()
    out = {i: [] for i in want}
    for s, e, lo, hi in cuts:
        h = model.encode(x[:, lo:hi], None, want, False).hidden
        for i in want:
            out[i].append(h[i][:, s - lo:e - lo])
    joined = {i: torch.cat(out[i], 1) for i in want}
    took = time.perf_counter() - t
    return max(float((joined[i] - exact[i]).abs().max() / exact[i].abs().max()) for i in want), took


def sweep(ext, lengths: list[float]) -> None:
    form = LongForm("windowed", WINDOW_SECONDS, CONTEXT_SECONDS)
    w, c = round(WINDOW_SECONDS * 50), round(CONTEXT_SECONDS * 50)
    want = list(range(1, ext.num_layers + 1))
    print(f"W={WINDOW_SECONDS:g} s, C={CONTEXT_SECONDS:g} s; worst layer, max |windowed - exact| / max |exact|")
    print("length s  windows (now)           previous  now       previous/now  exact s  previous s  now s")
    for sec in lengths:
        wave = ext.batch([speech_of(sec / 60)])[0][0]
        with torch.inference_mode(), kernel_choices(wave.device, wave.dtype):
            x = ext.model.project(conv_features(ext.model, wave))
            t = time.perf_counter()
            exact = ext.model.encode(x, None, want, False).hidden
            took = time.perf_counter() - t
            frames = x.shape[1]
            before, t_before = worst(ext.model, x, want, previous_windows(frames, w, c), exact)
            now, t_now = worst(ext.model, x, want, form.windows(frames), exact)
        sizes = "/".join(f"{(e - s) / 50:g}" for s, e, _, _ in form.windows(frames))
        print(f"{sec:8g}  {sizes:22s}  {before:.2e}  {now:.2e}  {before / now:12.2f}  {took:7.1f}  {t_before:10.1f}"
              f"  {t_now:5.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--checkpoint", default="random:small")
    ap.add_argument("--subnet", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lengths", help="comma-separated file lengths in seconds: compare window geometries")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ext = lighthubert.load(args.checkpoint, subnet=args.subnet, device="cpu")
    if args.lengths:
        print(f"{args.checkpoint} subnet {args.subnet} ({ext.params / 1e6:.1f}M), concatenated example speech, "
              f"float32, CPU, {args.threads} threads")
        return sweep(ext, [float(v) for v in args.lengths.split(",")])
    wave = ext.batch([speech_of(args.minutes)])[0][0]
    want = list(range(ext.num_layers + 1))
    print(f"{args.checkpoint} subnet {args.subnet} ({ext.params / 1e6:.1f}M), {args.minutes:g} min of concatenated "
          f"example speech, float32, {args.threads} threads")
    with torch.inference_mode():
        t = time.perf_counter()
        ref = hidden_states(ext.model, wave, want)
        print(f"exact: {time.perf_counter() - t:.1f} s, {ref.hidden[0].shape[1]} frames")
        print("W s  C s  time s  " + "  ".join(f"L{i:<2d} max/mean" for i in want))
        for w, c in SETTINGS:
            t = time.perf_counter()
            out = hidden_states(ext.model, wave, want, form=LongForm("windowed", w, c))
            took = time.perf_counter() - t
            cells = []
            for i in want:
                a, b = out.hidden[i].double(), ref.hidden[i].double()
                d = (a - b).abs()
                cells.append(f"{float(d.max() / b.abs().max()):.1e}/{float(d.mean() / b.abs().mean()):.1e}")
            print(f"{w:4g} {c:4g} {took:7.1f}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
