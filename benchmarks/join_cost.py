"""What the crash-safe writing costs: a run writes committed segments and joins them with OUTPUT at the
end (a copy of the features). Extracts COPIES copies of the example speech with every layer into a
temporary folder and reports the whole run, the join alone, and the bytes on disk.

    python benchmarks/join_cost.py [--copies 25] [--dir /tmp/join_cost]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import lighthubert
import lighthubert.storage.hdf5 as hdf5

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=25)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="join_cost."))
    audio = root / "audio"
    if not audio.exists():
        for i in range(args.copies):
            shutil.copytree(SPEECH, audio / f"c{i:03d}", copy_function=os.link)
    out = root / "o.h5"
    out.unlink(missing_ok=True)
    stats: dict[str, float] = {}
    join = hdf5.join

    def timed(output: Path, **kw):  # the module function the backend calls
        segments = hdf5.find_segments(output, hdf5.SUFFIX)
        stats["segments"], stats["bytes"] = len(segments), sum(p.stat().st_size for p in segments)
        t = time.monotonic()
        n = join(output, **kw)
        stats["join"] = time.monotonic() - t
        return n

    hdf5.join = timed
    flush = hdf5.SegmentWriter.flush
    stats["commit"] = 0.0

    def timed_flush(self) -> None:  # a commit: close, fsync, rename (in the writer thread)
        t = time.monotonic()
        flush(self)
        stats["commit"] += time.monotonic() - t

    hdf5.SegmentWriter.flush = timed_flush
    t = time.monotonic()
    s = lighthubert.extract(audio, out, checkpoint="random:small", subnet="min", layers="all", device="cpu",
                            batch_seconds=30)
    total = time.monotonic() - t
    print(f"{s.files} utterances, {s.seconds:.0f} s of audio; run {total:.1f} s; {stats['segments']:.0f} segments "
          f"({stats['bytes'] / 2**20:.0f} MB); OUTPUT {out.stat().st_size / 2**20:.0f} MB; join {stats['join']:.1f} s "
          f"({100 * stats['join'] / total:.1f} % of the run, {out.stat().st_size / 2**20 / stats['join']:.0f} MB/s); "
          f"commits {stats['commit']:.1f} s in the writer thread; pipeline wait for the writer "
          f"{s.timings['write_wait']:.1f} s")


if __name__ == "__main__":
    main()
