"""CPU, exported subnet: ONNX Runtime and TorchScript against this package's PyTorch forward, same
subnet, same input, same thread count; seconds of audio per second (median of the runs, the three
sides alternated in one process so that load from other processes hits them alike) and file sizes.

    python benchmarks/onnx_cpu.py [-c random:small] [--subnet default] [--seconds 10] [--batch 1]
                                  [--repeats 5] [--threads 2]

Needs the onnx extra (pip install '.[onnx]'). Random weights are as fast as released ones.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import lighthubert
from lighthubert import deploy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--checkpoint", default="random:small")
    ap.add_argument("--subnet", default="default")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each utterance")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    ckpt = lighthubert.load_checkpoint(args.checkpoint)
    ext = lighthubert.Extractor(ckpt, args.subnet, device="cpu", dtype="float32")
    n = int(args.seconds * 16000)
    g = torch.Generator().manual_seed(0)
    waves = [(torch.randn(n - 1601 * b, generator=g) * 0.1).numpy() for b in range(args.batch)]  # padded batch
    wave = np.zeros((args.batch, n), np.float32)
    for b, w in enumerate(waves):
        wave[b, : len(w)] = w
    lengths = np.array([len(w) for w in waves], np.int64)
    audio = float(lengths.sum()) / 16000
    layers = [ext.num_layers]

    with tempfile.TemporaryDirectory() as tmp:
        files = {fmt: Path(tmp) / f"subnet.{fmt}" for fmt in ("pt", "onnx", "ts")}
        for fmt, path in files.items():
            t = time.perf_counter()
            deploy.export(ckpt, ext.subnet, path)
            print(f"export {fmt}: {time.perf_counter() - t:.1f} s, {path.stat().st_size / 1e6:.1f} MB")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        sess = ort.InferenceSession(str(files["onnx"]), opts, providers=["CPUExecutionProvider"])
        ts = torch.jit.load(str(files["ts"]))
        sizes = {fmt: path.stat().st_size for fmt, path in files.items()}

    wt, lt = torch.from_numpy(wave), torch.from_numpy(lengths)

    def pytorch():
        return ext.run(*ext.batch(waves), layers)[0]

    def onnxruntime():
        return torch.from_numpy(sess.run(["hidden_states"], {"waveform": wave, "lengths": lengths})[0])

    def torchscript():
        with torch.inference_mode():
            return ts(wt, lt)[0]

    sides = {"PyTorch (lighthubert)": pytorch, "ONNX Runtime": onnxruntime, "TorchScript": torchscript}
    ref = pytorch()
    for name, fn in sides.items():  # warm-up, and a parity check on the benchmark input
        err = float((fn() - ref).abs().max() / ref.abs().max())
        print(f"{name}: max rel. difference to PyTorch {err:.1e}")
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)

    sub = ext.subnet
    print(f"\n{platform.machine()}, {args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"{args.checkpoint} subnet {args.subnet}: {ext.params:,} params, width {sub['embed_dim']}, "
          f"{sub['layer_num']} layers; batch {args.batch} x {args.seconds:g} s (padded), median of {args.repeats}")
    base = statistics.median(times["PyTorch (lighthubert)"])
    print("| runtime | median s | audio s / s | vs PyTorch |\n| --- | ---: | ---: | ---: |")
    for name, ts_ in times.items():
        med = statistics.median(ts_)
        print(f"| {name} | {med:.3f} | {audio / med:.1f} | {base / med:.2f}x |")
    print("\n| file | size |\n| --- | ---: |")
    for fmt, label in (("pt", ".pt (compact checkpoint, this package)"), ("onnx", ".onnx"), ("ts", ".ts (TorchScript)")):
        print(f"| {label} | {sizes[fmt] / 1e6:.1f} MB |")
    if ckpt.path is not None:
        print(f"| supernet checkpoint | {ckpt.path.stat().st_size / 1e6:.1f} MB |")


if __name__ == "__main__":
    main()
