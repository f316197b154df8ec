"""CPU, whole process: `lhb extract` against a process that loads the authors' model and loops over
the same files (both: float32, last layer, default subnet of a Base checkpoint with random weights,
features written to HDF5). Runs alternate; medians and the ratio are printed.

    python benchmarks/cpu_e2e.py [--seconds 100] [--repeats 3]

The authors' implementation comes from the s3prl sdist (see tests/oracle.py), cached once.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"


def make_corpus(folder: Path, seconds: float) -> tuple[list[Path], float]:
    """Copies of the example speech (16 kHz mono wav) until about ``seconds`` of audio."""
    import numpy as np
    import soundfile as sf

    import lighthubert

    sources = sorted(p for p in SPEECH.rglob("*") if p.suffix in (".wav", ".flac"))
    waves = [lighthubert.load_audio(p) for p in sources]
    files, total, i = [], 0.0, 0
    while total < seconds:
        w = waves[i % len(waves)]
        path = folder / f"utt{i:04d}.wav"
        sf.write(path, (w / max(1.0, float(np.abs(w).max()))).astype(np.float32), 16000, subtype="PCM_16")
        files.append(path)
        total += len(w) / 16000
        i += 1
    return files, total


def authors_loop(ckpt_path: str, out: str, files: list[str]) -> None:
    """What a user of the authors' code writes: load the model, loop over files, save features."""
    import h5py
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO / "tests"))
    from oracle import _load

    import lighthubert  # only for the SPEC's audio recipe (soundfile + torchaudio resample)

    mod = _load()
    ckpt = torch.load(ckpt_path, weights_only=False)
    cfg = mod.LightHuBERTConfig(ckpt["cfg"]["model"])
    cfg.supernet_type = "base"
    model = mod.LightHuBERT(cfg).eval()
    model.load_state_dict(ckpt["model"], strict=False)
    model.set_sample_config(model.supernet.subnet)
    with h5py.File(out, "w") as f, torch.no_grad():
        for path in files:
            w = torch.from_numpy(lighthubert.load_audio(path))
            w = F.layer_norm(w, w.shape)
            rep = model.extract_features(w[None])[0][0]
            f.create_dataset(f"features/{Path(path).stem}", data=rep.numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=100.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--authors-loop", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.authors_loop:
        authors_loop(args.authors_loop[0], args.authors_loop[1], args.authors_loop[2:])
        return

    import lighthubert

    work = Path(tempfile.mkdtemp(prefix="lhb-bench-"))
    try:
        audio = work / "audio"
        audio.mkdir()
        files, total = make_corpus(audio, args.seconds)
        ckpt = work / "base_random.pt"
        lighthubert.write_random_checkpoint(ckpt, "base", seed=0)
        ours_cmd = ["lhb", "extract", str(audio), str(work / "ours.h5"), "-c", str(ckpt), "--device", "cpu",
                    "--dtype", "float32", "--layers", "last", "--overwrite", "-q"]
        theirs_cmd = [sys.executable, __file__, "--authors-loop", str(ckpt), str(work / "theirs.h5"), *map(str, files)]
        times: dict[str, list[float]] = {"lhb extract": [], "authors' loop": []}
        for r in range(args.repeats):
            for name, cmd in (("lhb extract", ours_cmd), ("authors' loop", theirs_cmd)):
                t = time.perf_counter()
                subprocess.run(cmd, check=True)
                times[name].append(time.perf_counter() - t)
                print(f"run {r + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
        _check_same(work / "ours.h5", work / "theirs.h5")
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"{len(files)} files, {total:.1f} s of audio; torch threads default")
        for k, v in med.items():
            print(f"{k:15s} median {v:6.2f} s  ({total / v:5.1f}x real time)  runs: {', '.join(f'{x:.2f}' for x in times[k])}")
        ratio = med["authors' loop"] / med["lhb extract"]
        print(f"speed-up (authors' loop / lhb extract): {ratio:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_same(ours: Path, theirs: Path) -> None:
    import h5py
    import numpy as np

    with h5py.File(ours) as a, h5py.File(theirs) as b:
        worst = 0.0
        for k in b["features"]:
            x, y = a["features"][k][()], b["features"][k][()]
            worst = max(worst, float(np.abs(x - y).max() / np.abs(y).max()))
    print(f"max relative difference between the two outputs: {worst:.2e}")


if __name__ == "__main__":
    main()
