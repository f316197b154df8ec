"""GPU, end to end: `lhb extract` over at least an hour of generated audio (copies of the example
speech with random gains) with a Base checkpoint (random weights, default subnet, last layer), in
float16 and bfloat16: times real time, GPU memory peak, and where the time goes (decode, compute incl.
transfers, write). Then a 10-minute file (chunked by default, and uncut), and the float16 / bfloat16
error against float32 on real speech.

    python benchmarks/gpu.py [--hours 1.0] [--out results.txt]

Needs CUDA. Prints everything and appends it to --out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import lighthubert

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"


def log(out: Path, text: str) -> None:
    print(text, flush=True)
    with open(out, "a") as f:
        f.write(text + "\n")


def corpus(folder: Path, hours: float) -> float:
    rng = np.random.default_rng(0)
    waves = [lighthubert.load_audio(p) for p in sorted(SPEECH.rglob("*")) if p.is_file()]
    total, i = 0.0, 0
    while total < hours * 3600:
        w = waves[i % len(waves)] * rng.uniform(0.3, 1.0)
        w = np.clip(w / max(1.0, float(np.abs(w).max())), -1, 1)
        sub = folder / f"d{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"u{i:06d}.wav", w.astype(np.float32), 16000, subtype="PCM_16")
        total += len(w) / 16000
        i += 1
    return total


def lhb(out: Path, args: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(["lhb", "extract", *args, "-v"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    log(out, f"$ lhb extract {' '.join(args)} -v   -> exit {proc.returncode}, {wall:.1f} s wall")
    for line in proc.stderr.strip().splitlines()[-3:]:
        log(out, "    " + line)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path("gpu_results.txt"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    out = args.out
    log(out, f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    work = Path(tempfile.mkdtemp(prefix="lhb-gpu-"))
    ckpt = work / "base.pt"
    lighthubert.write_random_checkpoint(ckpt, "base", seed=0)
    audio = work / "audio"
    audio.mkdir()
    seconds = corpus(audio, args.hours)
    log(out, f"corpus: {seconds / 3600:.2f} h in {len(list(audio.rglob('*.wav')))} files")
    lhb(out, [str(audio / "d000"), str(work / "warm.h5"), "-c", str(ckpt), "--overwrite", "-q"])  # warm-up, caches
    for dtype in ("float16", "bfloat16"):
        for workers in (4, 8):
            wall = lhb(out, [str(audio), str(work / f"{dtype}.h5"), "-c", str(ckpt), "--dtype", dtype,
                             "--save-dtype", "float16", "-j", str(workers), "--overwrite"])
            log(out, f"  => {dtype}, {workers} decode workers: {seconds / wall:,.0f}x real time (whole process)")
    long = work / "long"
    long.mkdir()
    w = np.concatenate([lighthubert.load_audio(p) for p in sorted(SPEECH.rglob("*")) if p.is_file()] * 13)[: 600 * 16000]
    sf.write(long / "ten_minutes.wav", w, 16000, subtype="PCM_16")
    lhb(out, [str(long), str(work / "long.h5"), "-c", str(ckpt), "--overwrite"])
    lhb(out, [str(long), str(work / "long0.h5"), "-c", str(ckpt), "--overwrite", "--max-chunk-seconds", "0"])
    # float16 / bfloat16 against float32 on the real speech, on this device
    ref = lighthubert.load(str(ckpt), device="cuda", dtype="float32")
    waves = [lighthubert.load_audio(p) for p in sorted(SPEECH.rglob("*")) if p.is_file()]
    base = ref(waves, layers="all")
    for dtype in ("float16", "bfloat16"):
        ext = lighthubert.load(str(ckpt), device="cuda", dtype=dtype)
        got = ext(waves, layers="all")
        err = max(float((g - b).abs().max() / b.abs().max()) for g, b in zip(got, base))
        log(out, f"{dtype} vs float32 (all layers, real speech): max relative error {err:.2e}")
    cpu = lighthubert.load(str(ckpt), device="cpu")(waves[:3], layers="all")
    err = max(float((g - b).abs().max() / b.abs().max()) for g, b in zip(base[:3], cpu))
    log(out, f"float32 CUDA vs float32 CPU: max relative error {err:.2e}")


if __name__ == "__main__":
    main()
