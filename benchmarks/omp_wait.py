"""CPU, whole process: `lhb extract` as installed (it sets OMP_WAIT_POLICY=PASSIVE before torch is
imported, so torch's idle OpenMP threads sleep) against the same command with that line skipped
(libgomp's default: idle threads spin). Runs alternate; medians of wall and CPU time (user + system of
the child) and the load average before each run are printed.

    python benchmarks/omp_wait.py [--seconds 60] [--repeats 4] [--checkpoint small|base]

OMP_WAIT_POLICY must not be set in the environment (the script refuses to run otherwise).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_e2e import make_corpus  # noqa: E402

SKIP_IT = "from lighthubert_cli import entry; entry._let_threads_sleep = lambda: None; entry.main()"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--checkpoint", default="small", choices=("small", "base"))
    args = ap.parse_args()
    if "OMP_WAIT_POLICY" in os.environ:
        sys.exit("unset OMP_WAIT_POLICY first: the comparison is of lhb's default against libgomp's")
    import lighthubert

    work = Path(tempfile.mkdtemp(prefix="lhb-omp-"))
    try:
        audio = work / "audio"
        audio.mkdir()
        files, total = make_corpus(audio, args.seconds)
        ckpt = lighthubert.write_random_checkpoint(work / "random.pt", args.checkpoint, seed=0)
        extract = ["extract", str(audio), str(work / "out.h5"), "-c", str(ckpt), "--device", "cpu", "--overwrite", "-q"]
        commands = {"lhb (PASSIVE)": [sys.executable, "-m", "lighthubert_cli", *extract],
                    "spinning (libgomp default)": [sys.executable, "-c", SKIP_IT, *extract]}
        wall: dict[str, list[float]] = {k: [] for k in commands}
        cpu: dict[str, list[float]] = {k: [] for k in commands}
        for r in range(args.repeats):
            for name, cmd in commands.items():
                load = os.getloadavg()[0]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t = time.perf_counter()
                subprocess.run(cmd, check=True)
                wall[name].append(time.perf_counter() - t)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                print(f"run {r + 1}: {name:28s} wall {wall[name][-1]:6.2f} s  cpu {cpu[name][-1]:6.2f} s  "
                      f"(load before {load:.2f})", flush=True)
        print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {len(files)} files, "
              f"{total:.1f} s of audio; {args.checkpoint} default subnet, float32, last layer")
        med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in commands}
        for k, (w, c) in med.items():
            print(f"{k:28s} median wall {w:6.2f} s ({total / w:5.1f}x real time), cpu {c:6.2f} s")
        (pw, pc), (sw, sc) = med["lhb (PASSIVE)"], med["spinning (libgomp default)"]
        print(f"PASSIVE / spinning: wall {pw / sw:.2f}x, cpu {pc / sc:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
