"""GPU benchmark, one run, everything side by side (issue 10). Base checkpoint with random weights,
default subnet, last layer, float16 unless said otherwise:

1. start-up: imports, checkpoint load (read + SHA-256), subnet cut and move to the device, planning
   (file headers + batch plan), first batch; each timed in a fresh process.
2. forward only, B x S s (and the conv blocks 1-6 four ways, for the move to tensor cores): ours (Base default, Base max), the authors' model, torchaudio's
   `hubert_base` and Hugging Face's `HubertModel` (sdpa) when importable: audio seconds per second
   and GPU memory peak.
3. pipeline compute in-process: 12 padded batches of new lengths (2-16 s, 60 s of padded audio each)
   through `Extractor.prepare` / `submit` with one batch in flight, first sight and seen again, in
   float16 and bfloat16; the rate over the forward-only rate.
4. whole process: `lhb extract -v` over a generated corpus (copies of the example speech with
   random gains and lengths 2-16 s) in float16 and bfloat16; one long file exact (the CUDA default) and windowed, with GPU memory peaks.
5. accuracy on the real speech: our float32 / float16 / bfloat16 on the device against the authors'
   float32 on the CPU, worst hidden state; batched = alone in float32 on the device.

    python benchmarks/gpu.py [--hours 10] [--long-minutes 60] [--out results.txt]
    python benchmarks/gpu.py --dry-run     # tiny sizes, runs on the CPU too: checks the script

Needs CUDA (except --dry-run). The authors' model comes from tests/oracle.py
($LIGHTHUBERT_ORACLE_DIR); the speech from $LHB_SPEECH or ../shared/data/speech.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the authors' model (tests/oracle.py)
SPEECH = Path(os.environ.get("LHB_SPEECH", REPO.parent / "shared" / "data" / "speech"))
OUT: Path = Path("gpu_results.txt")


def log(text: str) -> None:
    print(text, flush=True)
    with open(OUT, "a") as f:
        f.write(text + "\n")


def guarded(title: str, fn: Callable[[], None]) -> None:
    """Run one section; a failure is logged and the next section runs."""
    log(f"\n== {title}")
    t = time.perf_counter()
    try:
        fn()
    except Exception:  # noqa: BLE001 - a benchmark section must not stop the others
        log("   FAILED:\n" + "".join("   " + line for line in traceback.format_exc().splitlines(True)[-6:]))
    log(f"   ({time.perf_counter() - t:.1f} s)")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], object], dev: torch.device, repeats: int) -> float:
    """Median wall seconds of ``fn`` after one warm-up, synchronised."""
    fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak(dev: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB" if dev.type == "cuda" else "-"


def speech_waves() -> list[np.ndarray]:
    import lighthubert

    files = sorted(p for p in SPEECH.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"no speech files under {SPEECH} (set LHB_SPEECH)")
    return [lighthubert.load_audio(p) for p in files]


# ----------------------------------------------------------------------------- 1. start-up

STARTUP = r"""
import sys, time, json
t0 = time.perf_counter(); r = {}
import torch; r["import torch"] = time.perf_counter() - t0
t = time.perf_counter(); import lighthubert; lighthubert.Extractor; r["import lighthubert (its modules load on first use)"] = time.perf_counter() - t
t = time.perf_counter(); import lighthubert_cli.main; r["import lighthubert_cli (typer, rich)"] = time.perf_counter() - t
dev = torch.device(sys.argv[3])
t = time.perf_counter(); torch.zeros(1, device=dev); r["device init"] = time.perf_counter() - t
t = time.perf_counter(); ck = lighthubert.load_checkpoint(sys.argv[1]); r["checkpoint load + sha256"] = time.perf_counter() - t
t = time.perf_counter(); ext = lighthubert.Extractor(ck, "default", dev, sys.argv[4]); torch.cuda.synchronize() if dev.type == "cuda" else None
r["subnet cut + to device"] = time.perf_counter() - t
from lighthubert.inputs import list_inputs
from lighthubert.pipeline import estimate_samples, plan_batches
t = time.perf_counter(); items = list_inputs(sys.argv[2]); sizes = [(i, estimate_samples(i)) for i in items]
plan_batches(sizes, 60 * 16000, 30 * 16000); r[f"planning ({len(items)} files: list, headers, plan)"] = time.perf_counter() - t
w = [torch.randn(160000) * 0.1 for _ in range(4)]
t = time.perf_counter(); ext.submit(ext.prepare(w), [ext.num_layers]).result(); r["first batch (4 x 10 s)"] = time.perf_counter() - t
r["total until first batch done"] = time.perf_counter() - t0
print(json.dumps(r))
"""


def startup(ckpt: Path, corpus: Path, dev: torch.device, dtype: str) -> None:
    import json

    proc = subprocess.run([sys.executable, "-c", STARTUP, str(ckpt), str(corpus), str(dev), dtype],
                          capture_output=True, text=True, env=os.environ)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    for name, sec in json.loads(proc.stdout.strip().splitlines()[-1]).items():
        log(f"   {name:48s} {sec:6.2f} s")


# ----------------------------------------------------------------------------- 2. forward only


def forward_only(ckpt: Path, dev: torch.device, batch: int, seconds: float, repeats: int, hf: bool,
                 rates: dict[str, float]) -> None:
    """Fills ``rates`` (name -> s of audio per s) as it goes: a peer that fails to import or run is
    one FAILED line, and the rows before it are kept for the pipeline's ratio."""
    import lighthubert

    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    wave = torch.randn(batch, int(seconds * 16000), generator=torch.Generator().manual_seed(0)) * 0.1
    audio = batch * seconds

    def row(name: str, fn: Callable[[], object]) -> None:
        peak_reset(dev)
        try:
            with torch.inference_mode():
                t = timed(fn, dev, repeats)
        except Exception as err:  # noqa: BLE001 - one model failing must not hide the others
            log(f"   {name:34s} FAILED: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            return
        rates[name] = audio / t
        log(f"   {name:34s} {audio / t:9,.0f} s audio/s  (median {t * 1e3:7.1f} ms, peak {peak(dev)})")

    log(f"   input {batch} x {seconds:g} s, {dtype}, last layer")
    for preset in ("default", "max"):
        ext = lighthubert.load(str(ckpt), subnet=preset, device=dev, dtype=dtype)
        x, _ = ext.batch(list(wave))  # rows of one length: no mask, as the others run (and as submit does)
        row(f"ours Base {preset}", lambda: ext.run(x, None, [ext.num_layers]))
        del ext
    xa = wave.to(dev, dtype)

    def authors_model():
        from oracle import authors, build_model

        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        model = build_model(ck["cfg"]["model"], "base", ck["model"])
        model.set_sample_config(authors().LightHuBERTSupernetConfig("base").subnet)
        return model.to(dev, dtype)

    def torchaudio_model():
        import torchaudio

        return torchaudio.models.hubert_base().eval().to(dev, dtype)

    for name, build, call in (("authors' LightHuBERT Base default", authors_model, lambda m: m.extract_features(xa)[0]),
                              ("torchaudio hubert_base (= Base max)", torchaudio_model, lambda m: m(xa)[0])):
        try:
            model = build()
        except Exception as err:  # noqa: BLE001 - a peer that cannot be built must not hide the others
            log(f"   {name:34s} FAILED to build: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            continue
        row(name, lambda: call(model))
        del model
    if hf:
        try:
            from transformers import HubertConfig, HubertModel
        except ImportError:
            log("   HF HubertModel: transformers is not importable here, skipped")
        else:
            m = HubertModel(HubertConfig(attn_implementation="sdpa")).eval().to(dev, dtype)
            row("HF HubertModel sdpa (= Base max)", lambda: m(xa).last_hidden_state)
            del m
    for ref in ("torchaudio hubert_base (= Base max)", "HF HubertModel sdpa (= Base max)"):
        if ref in rates and "ours Base max" in rates:
            log(f"   ours Base max / {ref.split(' (')[0]}: {rates['ours Base max'] / rates[ref]:.2f}x")


# ----------------------------------------------------------------------------- 2b. conv blocks


def conv_variants(dev: torch.device, batch: int, seconds: float, repeats: int) -> None:
    """The conv feature extractor's blocks 1-6 (512 -> 512, kernel 3/2, stride 2) four ways, for the
    next step on tensor cores: channels_last conv2d of height 1 (what the model runs), plain conv1d on
    (B, C, T), a matmul over the windows ((B, T', k*C) @ (k*C, C'): a view when kernel = stride,
    a copy of the overlapping windows otherwise), and one GEMM over stride groups (a view) with a
    shifted add. Time per variant and error against float32."""
    import torch.nn.functional as F

    from lighthubert.model import DEFAULT_CONV, conv_frames, no_tf32, parse_conv_layers

    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    layers = parse_conv_layers(DEFAULT_CONV)

    def cl(x, w, s):
        x4 = x.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x4, w.unsqueeze(2), stride=(1, s)).squeeze(2).transpose(1, 2)

    def c1(x, w, s):
        return F.conv1d(x.transpose(1, 2), w, stride=s).transpose(1, 2)

    def mm(x, w, s):
        b, t, c = x.shape
        o, _, k = w.shape
        tt = (t - k) // s + 1
        win = x.as_strided((b, tt, k, c), (x.stride(0), s * c, c, 1)).reshape(b, tt, k * c)
        return win @ w.permute(0, 2, 1).reshape(o, k * c).T

    def grouped(x, w, s):
        # x (B, T, C) seen as (B, T/s, s*C) stride groups (a view); one GEMM against the kernel's
        # taps split into g = ceil(k/s) groups of s, then output t = sum_j P[t + j, group j]. No
        # overlapping-window copy; (g*s/k - 1) extra multiply-adds on zero taps (1/3 for k=3, s=2).
        b, t, c = x.shape
        o, _, k = w.shape
        g = -(-k // s)
        tt = (t - k) // s + 1
        m = tt + g - 1
        if m * s > t:  # the last window's zero taps reach past the end
            x = F.pad(x, (0, 0, 0, m * s - t))
        xg = x[:, : m * s].reshape(b, m, s * c)
        wg = F.pad(w, (0, g * s - k)).reshape(o, c, g, s).permute(2, 3, 1, 0).reshape(g, s * c, o)
        p = xg @ wg.permute(1, 0, 2).reshape(s * c, g * o)
        y = p[:, :tt, :o]
        for j in range(1, g):
            y = y + p[:, j : j + tt, j * o : (j + 1) * o]
        return y

    total = {name: 0.0 for name in ("channels_last conv2d", "conv1d (B, C, T)", "window matmul", "stride-group GEMM")}
    n = torch.tensor([int(seconds * 16000)])
    for i, (dim, k, s) in enumerate(layers):
        n_in = int(n)
        n = conv_frames(n, [(dim, k, s)])
        if i == 0:
            continue
        x32 = torch.randn(batch, n_in, dim, device=dev)
        w32 = torch.randn(dim, dim, k, device=dev) * (dim * k) ** -0.5
        with no_tf32():
            ref = cl(x32, w32, s)
        x, w = x32.to(dtype), w32.to(dtype)
        cells = []
        for name, fn in (("channels_last conv2d", cl), ("conv1d (B, C, T)", c1), ("window matmul", mm),
                         ("stride-group GEMM", grouped)):
            with torch.inference_mode():
                t = timed(lambda: fn(x, w, s), dev, repeats)
                err = float((fn(x, w, s).float() - ref).abs().max() / ref.abs().max())
            total[name] += t
            cells.append(f"{name} {t * 1e3:6.2f} ms ({err:.0e})")
        log(f"   block {i} k={k} s={s} T_in={n_in}: " + ", ".join(cells))
    log("   blocks 1-6 total: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in total.items()))


# ----------------------------------------------------------------------------- 3. pipeline compute


def pipeline_compute(ckpt: Path, dev: torch.device, batches: int, batch_seconds: float, forward_rate: float | None) -> None:
    import lighthubert

    rng = np.random.default_rng(1)
    plan: list[list[np.ndarray]] = []
    for _ in range(batches):  # like plan_batches: longest x count <= batch_seconds, new lengths each time
        longest = rng.uniform(2, 16)
        count = max(1, int(batch_seconds // longest))
        lengths = [int(longest * 16000)] + [int(rng.uniform(2, longest) * 16000) for _ in range(count - 1)]
        plan.append([(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths])
    audio = sum(len(w) for b in plan for w in b) / 16000
    dtypes = ("float16", "bfloat16") if dev.type == "cuda" else ("float32",)
    for dtype in dtypes:
        ext = lighthubert.load(str(ckpt), subnet="default", device=dev, dtype=dtype)
        layers = [ext.num_layers]
        out = torch.float16 if dtype != "float32" else torch.float32
        for sight in ("first sight", "seen"):
            peak_reset(dev)
            sync(dev)
            t = time.perf_counter()
            pending = None
            for waves in plan:  # one batch in flight: batch k+1 is queued before k's results are read
                nxt = ext.submit(ext._prepare(waves), layers, out)  # as the pipeline: decoded audio is checked
                if pending is not None:
                    [f.numpy() for f in pending.result(own=True)]
                pending = nxt
            [f.numpy() for f in pending.result(own=True)]
            wall = time.perf_counter() - t
            ratio = f" = {audio / wall / forward_rate:.0%} of forward-only" if forward_rate else ""
            log(f"   {dtype:9s} {sight:12s} {audio / wall:9,.0f} s audio/s over {audio:.0f} s in {batches} batches"
                f"{ratio}, peak {peak(dev)}")
        del ext


# ----------------------------------------------------------------------------- 4. whole process


def lhb_cmd() -> list[str]:
    exe = shutil.which("lhb")
    return [exe] if exe else [sys.executable, "-m", "lighthubert_cli"]


def lhb(args: list[str], seconds: float | None = None) -> None:
    t = time.perf_counter()
    proc = subprocess.run([*lhb_cmd(), "extract", *args, "-v"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    rate = f", {seconds / wall:,.0f}x real time" if seconds else ""
    log(f"   $ lhb extract {' '.join(Path(a).name if '/' in a else a for a in args)} -v -> exit {proc.returncode}, "
        f"{wall:.1f} s wall{rate}")
    for line in proc.stderr.strip().splitlines()[-3:]:
        log("       " + line)


def make_corpus(folder: Path, hours: float, waves: list[np.ndarray]) -> float:
    import soundfile as sf

    rng = np.random.default_rng(0)
    speech = np.concatenate(waves)
    total, i = 0.0, 0
    while total < hours * 3600:
        n = int(rng.uniform(2, 16) * 16000)
        start = int(rng.integers(0, max(1, len(speech) - n)))
        w = np.resize(speech[start:start + n], n) * rng.uniform(0.3, 1.0)
        sub = folder / f"d{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"u{i:06d}.wav", np.clip(w, -1, 1).astype(np.float32), 16000, subtype="PCM_16")
        total += n / 16000
        i += 1
    return total


def whole_process(ckpt: Path, work: Path, hours: float, long_minutes: float, dev: torch.device,
                  waves: list[np.ndarray]) -> None:
    import soundfile as sf

    audio = work / "audio"
    audio.mkdir(exist_ok=True)
    seconds = make_corpus(audio, hours, waves)
    log(f"   corpus: {seconds / 3600:.2f} h in {len(list(audio.rglob('*.wav')))} files of 2-16 s")
    common = ["-c", str(ckpt), "--overwrite", "--device", str(dev)]
    lhb([str(audio / "d000"), str(work / "warm.h5"), *common, "-q"])  # page cache, compile caches
    for dtype in ("float16", "bfloat16") if dev.type == "cuda" else ("float32",):
        lhb([str(audio), str(work / f"{dtype}.h5"), *common, "--dtype", dtype, "--save-dtype", "float16", "-j", "8"], seconds)
    long = work / "long"
    long.mkdir(exist_ok=True)
    n = int(long_minutes * 60 * 16000)
    sf.write(long / "long.wav", np.resize(np.concatenate(waves), n), 16000, subtype="PCM_16")
    # defaults on CUDA: exact up to 3600 s (target: an hour under 16 GB); then forced windowed
    lhb([str(long), str(work / "long.h5"), *common], n / 16000)
    lhb([str(long), str(work / "long_w.h5"), *common, "--exact-seconds", "60"], n / 16000)


# ----------------------------------------------------------------------------- 5. accuracy


def accuracy(ckpt: Path, dev: torch.device, waves: list[np.ndarray]) -> None:
    import lighthubert
    from oracle import authors, build_model

    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = build_model(ck["cfg"]["model"], "base", ck["model"])
    model.set_sample_config(authors().LightHuBERTSupernetConfig("base").subnet)
    refs = []
    for w in waves:  # the authors' float32 on the CPU, as their README runs it
        x = torch.from_numpy(w).float()
        x = torch.nn.functional.layer_norm(x, x.shape) if ck["cfg"]["task"]["normalize"] else x
        with torch.no_grad():
            refs.append([h[0] for h in model.extract_features(x[None], ret_hs=True)[0]])

    def worst(feats: list[torch.Tensor], base: list[list[torch.Tensor]]) -> tuple[float, int]:
        errs = [(float((f[i].float() - r.float()).abs().max() / r.abs().max()), i)
                for f, rs in zip(feats, base) for i, r in enumerate(rs)]
        return max(errs)

    f32 = None
    for dtype in ("float32", "float16", "bfloat16") if dev.type == "cuda" else ("float32", "bfloat16"):
        ext = lighthubert.load(str(ckpt), subnet="default", device=dev, dtype=dtype)
        feats = ext(waves, layers="all")
        err, layer = worst(feats, refs)
        line = f"   {dtype:9s} on {dev.type} vs authors' float32 CPU: max relative error {err:.2e} (hidden state {layer})"
        if dtype == "float32":
            f32 = [list(f) for f in feats]
            alone = [ext([w], layers="all")[0] for w in waves]
            b_err, _ = worst(feats, [list(a) for a in alone])
            line += f"; batched vs alone {b_err:.2e}"
        else:
            err32, _ = worst(feats, f32)
            line += f"; vs our float32 {err32:.2e}"
        log(line)


# ----------------------------------------------------------------------------- main


# in the order they run by default: accuracy early, the one correctness section, not to be lost to a
# time limit; conv (exploration) last
SECTIONS = ("startup", "accuracy", "forward", "pipeline", "process", "conv")


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=10.0, help="corpus for the whole-process runs")
    ap.add_argument("--long-minutes", type=float, default=60.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes; runs on the CPU when there is no GPU")
    ap.add_argument("--out", type=Path, default=Path("gpu_results.txt"))
    args = ap.parse_args()
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown --sections {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})")
    OUT = args.out
    if args.dry_run:
        args.hours, args.long_minutes, args.batch, args.seconds, args.repeats = 0.01, 0.5, 2, 2.0, 1
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" and not args.dry_run:
        sys.exit("no CUDA device (use --dry-run to check the script on the CPU)")
    import lighthubert

    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (dry run)"
    log(f"device: {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, sections {args.sections}")
    work = Path(tempfile.mkdtemp(prefix="lhb-gpu-"))
    ckpt = work / "base.pt"
    lighthubert.write_random_checkpoint(ckpt, "base", seed=0)
    waves = speech_waves()
    sections = args.sections.split(",")
    rates: dict[str, float] = {}
    if "startup" in sections:
        (work / "few").mkdir()
        for i, w in enumerate(waves[:4]):
            import soundfile as sf

            sf.write(work / "few" / f"f{i}.wav", w, 16000)
        guarded("start-up (fresh process)", lambda: startup(ckpt, work / "few", dev, "float16" if dev.type == "cuda" else "float32"))
    runs = {
        "accuracy": ("accuracy on real speech", lambda: accuracy(ckpt, dev, waves[:3] if args.dry_run else waves)),
        "forward": ("forward only", lambda: forward_only(ckpt, dev, args.batch, args.seconds, args.repeats, True, rates)),
        "pipeline": ("pipeline compute (in-process, one batch in flight)",
                     lambda: pipeline_compute(ckpt, dev, 3 if args.dry_run else 12, 8.0 if args.dry_run else 60.0,
                                              rates.get("ours Base default"))),
        "process": ("whole process (lhb extract)", lambda: whole_process(ckpt, work, args.hours, args.long_minutes, dev, waves)),
        "conv": ("conv blocks 1-6, four ways", lambda: conv_variants(dev, args.batch, args.seconds, args.repeats)),
    }
    for section in sections:  # in the order asked
        if section in runs:
            guarded(*runs[section])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
