"""Waveform standardisation of a padded batch on the CPU: ``lighthubert.extractor.normalize_rows``
(``F.layer_norm`` row by row, since 2026-12-02) against the one masked pass over the batch it used
before (sums of the masked rows), alternated in one process; median of 7.

    python benchmarks/normalize.py [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lighthubert.extractor import normalize_rows


def one_pass(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The batch-at-once version (until 2026-12-02)."""
    pad = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    n = lengths.clamp(min=1)[:, None].to(x.dtype)
    x.sub_(x.sum(1, keepdim=True) / n).masked_fill_(pad, 0.0)
    var = x.square().sum(1, keepdim=True) / n
    return x.mul_(torch.rsqrt(var + eps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2 * 16000, 16 * 16000, (16,), generator=g)  # 16 utterances of 2-16 s
    batch = torch.randn(16, int(lengths.max()), generator=g) * 0.1 + 0.05
    times: dict[str, list[float]] = {"normalize_rows (F.layer_norm per row)": [], "one masked pass": []}
    for _ in range(7):
        for (name, runs), fn in zip(times.items(), (normalize_rows, one_pass)):
            x = batch.clone()
            t = time.perf_counter()
            fn(x, lengths)
            runs.append(time.perf_counter() - t)
    print(f"torch {torch.__version__}, {args.threads} thread(s), 16 utterances of 2-16 s ({int(lengths.sum()) / 16000:.0f} s)")
    for name, runs in times.items():
        print(f"{name}: {statistics.median(runs) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
