"""Whole-process time of short ``lhb`` commands: ``lhb`` (which ends at once when its work is done,
see ``lighthubert_cli/entry.py``) against the same command ending through Python's usual exit (every
module torn down), run alternately in fresh processes.

    python benchmarks/exit.py [--runs 5]

Uses the example speech (../shared/data/speech, first file) and the random Small checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"
USUAL_EXIT = "import sys; from lighthubert_cli.main import run; sys.exit(run())"


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lhb-exit-"))
    try:
        one = work / "one"
        one.mkdir()
        shutil.copy(sorted(SPEECH.rglob("*.wav"))[0], one / "a.wav")
        ckpt = work / "small.pt"
        write = f"import lighthubert; lighthubert.write_random_checkpoint({str(ckpt)!r}, 'small')"
        subprocess.run([sys.executable, "-c", write], check=True)
        commands = {
            "info CKPT": ["info", str(ckpt)],
            "extract (one file, Small min)": ["extract", str(one), str(work / "o.h5"), "-c", str(ckpt),
                                              "--subnet", "min", "--overwrite", "-q", "--device", "cpu"],
            "usage error (--layers abc)": ["extract", str(one), str(work / "o.h5"), "--layers", "abc"],
        }
        lhb = shutil.which("lhb") or str(Path(sys.executable).with_name("lhb"))
        print(f"{'command':34} {'usual exit':>12} {'lhb':>12} {'saved':>8}   (median of {args.runs}, wall seconds)")
        for name, argv in commands.items():
            usual, fast = [], []
            for _ in range(args.runs):  # alternated, so both see the same machine
                usual.append(wall([sys.executable, "-c", USUAL_EXIT, *argv]))
                fast.append(wall([lhb, *argv]))
            u, f = statistics.median(usual), statistics.median(fast)
            print(f"{name:34} {u:12.3f} {f:12.3f} {u - f:8.3f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
