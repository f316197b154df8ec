"""CPU, forward pass only: seconds of audio per second for the Base default, Base max and Small default
subnets against torchaudio's `hubert_base` (an independent implementation of the Base max
architecture), in the same process on the same input; and the achieved FLOP/s (FLOPs counted
analytically from the subnet) over the fp32 matrix-multiply peak measured in the same run.

    python benchmarks/cpu_forward.py [--seconds 10] [--batch 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import lighthubert
from lighthubert.model import SubnetModel, conv_frames


def forward_flops(model: SubnetModel, num_samples: int, batch: int) -> float:
    """Multiply-adds x 2 of the convolutions, projections, attention and FFNs (norms, activations and
    biases left out)."""
    cfg, sub = model.cfg, model.subnet
    flops, n, c_in = 0.0, torch.tensor([num_samples]), 1
    for dim, k, s in cfg.conv_layers:
        n = conv_frames(n, [(dim, k, s)])
        flops += 2 * int(n) * dim * c_in * k
        c_in = dim
    t, e = int(n), sub["embed_dim"]
    flops += 2 * t * c_in * e  # post_extract_proj
    flops += 2 * t * e * (e // cfg.conv_pos_groups) * cfg.conv_pos  # positional convolution
    for a, f in zip(sub["atten_dim"], sub["ffn_embed"]):
        flops += 2 * t * e * 3 * a + 2 * 2 * t * t * a + 2 * t * a * e + 2 * 2 * t * e * f
    return flops * batch


def matmul_peak(repeats: int = 5) -> float:
    """Best fp32 GEMM FLOP/s over a few square-ish sizes."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 1024, 3072), (4096, 4096, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t))
    return best


def timeit(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each utterance")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    n = int(args.seconds * 16000)
    wave = torch.randn(args.batch, n)
    audio = args.batch * args.seconds
    peak = matmul_peak()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; input {args.batch} x {args.seconds:g} s; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")

    import torchaudio

    ta = torchaudio.models.hubert_base().eval()
    with torch.inference_mode():
        t_ta = timeit(lambda: ta.extract_features(wave), args.repeats)
    print(f"{'torchaudio hubert_base':28s} {audio / t_ta:7.1f} s audio/s   (median {t_ta:.3f} s)")
    rows = []
    for kind, preset in (("base", "default"), ("base", "max"), ("small", "default")):
        ext = lighthubert.load(f"random:{kind}", subnet=preset, device="cpu")
        with torch.inference_mode():
            x, lengths = ext.batch(list(wave))
            t = timeit(lambda: ext.run(x, None, [ext.num_layers]), args.repeats)
        flops = forward_flops(ext.model, n, args.batch)
        rows.append((f"{kind} {preset} ({ext.params / 1e6:.1f}M)", t, flops))
        print(f"{rows[-1][0]:28s} {audio / t:7.1f} s audio/s   (median {t:.3f} s)  "
              f"{flops / t / 1e9:6.1f} GFLOP/s = {flops / t / peak:5.1%} of peak"
              + (f"   {t_ta / t:.2f}x torchaudio" if preset == "max" else ""))


if __name__ == "__main__":
    main()
