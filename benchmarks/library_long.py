"""``ext(wave)`` on one long waveform: peak memory and time, in pieces (the library since 2026-12-02)
against the uncut forward it ran before, each in a fresh process, back to back.

    python benchmarks/library_long.py [--seconds 75,180] [--checkpoint random:small] [--subnet min]

A waveform longer than ``lighthubert.longform.LONG_SECONDS`` runs alone with the convolutional
extractor in pieces (exact mode, as ``lhb extract`` runs a long file); the baseline sets that
threshold out of reach, so the same call pads and runs it whole. Memory is the rise of the process's
peak resident set during the call (after a 1 s warm-up call); the features of the two runs are
compared (max |a - b| / max |b| over all layers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"

CHILD = """
import json, resource, sys, time, numpy as np, torch, lighthubert
import lighthubert.extractor as E
wave_path, out_path, checkpoint, subnet, mode = sys.argv[1:]
torch.set_num_threads(1)
if mode == "uncut":
    E.LONG_SECONDS = float("inf")
ext = lighthubert.load(checkpoint, subnet=subnet, device="cpu")
w = np.load(wave_path)
ext(w[:16000])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
feats = ext(w, layers="all")
seconds = time.perf_counter() - t
torch.save(feats, out_path)
print(json.dumps({"mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "s": seconds}))
"""


def speech_of(seconds: float) -> np.ndarray:
    from lighthubert.audio import load_audio

    waves = [load_audio(p) for p in sorted(SPEECH.rglob("*")) if p.suffix in (".wav", ".flac")]
    return np.resize(np.concatenate(waves), int(seconds * 16000)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", default="75,180")
    ap.add_argument("--checkpoint", default="random:small")
    ap.add_argument("--subnet", default="min")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, 1 thread, {args.checkpoint} {args.subnet}, all layers")
    print(f"{'seconds':>8} {'pieces MB':>10} {'uncut MB':>9} {'ratio':>6} {'pieces s':>9} {'uncut s':>8} {'max rel diff':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (float(s) for s in args.seconds.split(",")):
            wave = Path(tmp) / "w.npy"
            np.save(wave, speech_of(seconds))
            got = {}
            for mode in ("pieces", "uncut"):
                out = Path(tmp) / f"{mode}.pt"
                r = subprocess.run([sys.executable, "-c", CHILD, str(wave), str(out), args.checkpoint, args.subnet,
                                    mode], capture_output=True, text=True, check=True)
                got[mode] = json.loads(r.stdout.splitlines()[-1])
            a, b = (torch.load(Path(tmp) / f"{m}.pt") for m in ("pieces", "uncut"))
            diff = float((a - b).abs().max() / b.abs().max())
            p, u = got["pieces"], got["uncut"]
            print(f"{seconds:8.0f} {p['mb']:10.0f} {u['mb']:9.0f} {u['mb'] / p['mb']:6.2f} {p['s']:9.1f} {u['s']:8.1f} "
                  f"{diff:13.1e}")


if __name__ == "__main__":
    main()
