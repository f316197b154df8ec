"""Listing the keys of a large features file: ``lighthubert.storage.hdf5.keys`` (HDF5's object visit
with its info) against h5py's ``visititems`` (a Python object per key, what it used before), in the
same process, on the same file; then ``open_features`` as a whole. A LibriSpeech-sized file holds
281,241 keys.

    python benchmarks/open_keys.py [--keys 30000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def old_keys(f: h5py.File) -> list[str]:
    out: list[str] = []
    f["features"].visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=30000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import lighthubert
    from lighthubert.storage import run_attrs
    from lighthubert.storage.hdf5 import FeatureWriter, keys

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "many.h5"
        attrs = run_attrs(layers=[12], subnet={"a": 1}, checkpoint="c.pt", checkpoint_sha256="ab", normalize=True,
                          random_weights=True, params=10, dtype="float32", compute_dtype="float32", version="b",
                          exact_seconds=120.0, window_seconds=60.0, context_seconds=10.0, num_layers=12, embed_dim=4)
        w = FeatureWriter(path, attrs)
        per = 300  # utterances per speaker folder, as LibriSpeech's speaker/chapter keys nest
        for i in range(args.keys):
            w.write(f"spk{i // per}/u{i % per}", np.zeros((5, 4), np.float32), source=f"/a/{i}.wav", num_samples=1680)
        w.close(complete=True)
        print(f"{args.keys:,} keys; {platform.machine()}, {platform.python_version()}, h5py {h5py.__version__}")
        times: dict[str, list[float]] = {"h5py visititems (before)": [], "keys()": [], "open_features": []}
        for _ in range(args.repeats):  # alternated
            with h5py.File(path, "r") as f:
                t = time.perf_counter()
                a = old_keys(f)
                times["h5py visititems (before)"].append(time.perf_counter() - t)
                t = time.perf_counter()
                b = keys(f)
                times["keys()"].append(time.perf_counter() - t)
            assert a == b
            t = time.perf_counter()
            with lighthubert.open_features(path) as feats:
                assert len(feats) == args.keys
            times["open_features"].append(time.perf_counter() - t)
        base = statistics.median(times["h5py visititems (before)"])
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"{name:26s} median {m:6.3f} s  ({', '.join(f'{t:.3f}' for t in ts)})  {base / m:5.2f}x of before")


if __name__ == "__main__":
    main()
