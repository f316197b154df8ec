"""Long files: how far windowed attention is from an uncut run, per layer, for a few (W, C).

    python benchmarks/longform.py [--minutes 10] [--checkpoint random:small] [--subnet default]

Builds a real-speech-like file by concatenating the example speech (../shared/data/speech) to the
given length, runs it once in exact mode (conv extractor in pieces, transformer over the whole
sequence: equal to an uncut run within float32 rounding) and once per (W, C) in windowed mode, and
prints the maximum and mean relative difference of every hidden state to the exact run
(max |a - b| / max |b| and mean |a - b| / mean |b|), plus the time of each run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import lighthubert
from lighthubert.audio import load_audio
from lighthubert.longform import LongForm, hidden_states

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
SETTINGS = [(10, 2), (20, 5), (30, 5), (30, 10), (60, 10)]


def speech_of(minutes: float) -> np.ndarray:
    waves = [load_audio(p) for p in sorted(SPEECH.rglob("*")) if p.suffix in (".wav", ".flac")]
    one = np.concatenate(waves)
    n = int(minutes * 60 * 16000)
    return np.resize(one, n).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--checkpoint", default="random:small")
    ap.add_argument("--subnet", default="default")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ext = lighthubert.load(args.checkpoint, subnet=args.subnet, device="cpu")
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
