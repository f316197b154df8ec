"""Discrete units: mini-batch k-means on the frames of one layer, in torch (GPU when present).

``km.pt`` is a plain dict, loadable with ``torch.load(path, weights_only=True)``:
``centroids`` (K, D) float32, ``layer``, ``clusters``, ``inertia`` (mean squared distance of the
training frames to their centroid), ``frames`` (training frames), ``seed``, ``features`` (the file
learnt from), ``format`` = ``"lighthubert-kmeans"``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import KM_FORMAT, check_seed
from .defaults import BATCH_SIZE, DEVICE, ITERATIONS, KMEANS_SEED, MAX_FRAMES
from .errors import LightHubertError, SettingError
from .extractor import resolve_device
from .files import write_atomic
from .model import no_tf32
from .reader import FeaturesError, layer_positions, one_layer, open_features
from .storage import UNITS_FORMAT, OutputError, hdf5_name, os_reason, os_words, plain, refuse_existing, same_file, special_kind


def sample_frames(features: str | os.PathLike, layer: int, max_frames: int, seed: int = KMEANS_SEED) -> torch.Tensor:
    """Up to ``max_frames`` frames (N, D) float32 of ``layer``: utterances are taken in a seeded
    random order until ``max_frames`` is reached, then frames are drawn from them without
    replacement."""
    rng = np.random.default_rng(seed)
    with open_features(features) as f:
        if not f.keys:
            raise FeaturesError(f"{features}: holds no utterances")
        order = rng.permutation(len(f.keys))
        parts, total = [], 0
        for i in order:
            x = f.get(f.keys[i], layer).float()
            check_values(x, features, f.keys[i])
            parts.append(x)
            total += len(x)
            if total >= max_frames:
                break
    x = torch.cat(parts)
    if len(x) > max_frames:
        x = x[torch.from_numpy(np.sort(rng.choice(len(x), max_frames, replace=False)))]
    return x


MAX_VALUE = 1e15
"""Larger feature values overflow float32 squared distances: k-means would give NaN centroids or fail."""


def check_values(x: torch.Tensor, features: str | os.PathLike, key: str) -> None:
    """A :class:`FeaturesError` naming the key when ``x`` holds NaN, infinite or absurdly large values
    (a damaged or hand-edited file): k-means would learn NaN centroids from them, or give no units."""
    top = float(x.abs().max()) if x.numel() else 0.0
    if not top <= MAX_VALUE:  # NaN compares False
        what = "NaN or infinite values" if not math.isfinite(top) else f"a value of {top:.3g} (features are far smaller)"
        raise FeaturesError(f"{features}: {key}: holds {what}; k-means needs finite features (extract them again)")


def _dist2(x: torch.Tensor, c: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, K) of x (N, D) to centroids c (K, D), c2 = |c|^2 (K,)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c2).clamp_min_(0)


@no_tf32()
def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each frame: (labels (N,) int64, squared distances (N,)), in true float32.
    Frames and centroids are taken relative to the centroids' mean first: |x|^2 - 2 x.c + |c|^2 loses
    the difference between two centroids' distances when |x| is far larger than the distances (features
    with a large common offset: +1000 on some channels picked another centroid for 3,207 of 5,000
    frames); the distances returned are then taken directly, |x - c|^2."""
    c = centroids.to(x.device, torch.float32)
    mean = c.mean(0)
    c = c - mean
    c2 = c.pow(2).sum(1)
    labels, dists = [], []
    for i in range(0, len(x), chunk):
        xi = x[i:i + chunk].float() - mean
        j = _dist2(xi, c, c2).argmin(1)
        labels.append(j)
        dists.append((xi - c[j]).pow(2).sum(1))
    if not labels:
        return torch.zeros(0, dtype=torch.long, device=x.device), torch.zeros(0, device=x.device)
    return torch.cat(labels), torch.cat(dists)


def kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (greedy, 2 + log k candidates per step, as scikit-learn): (K, D)."""
    n = len(x)
    trials = 2 + int(np.log(k))
    first = torch.randint(n, (1,), generator=gen, device="cpu").item()
    centers = [x[first]]
    closest = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        probs = closest / closest.sum() if closest.sum() > 0 else torch.full_like(closest, 1.0 / n)
        cand = torch.multinomial(probs.cpu(), trials, replacement=True, generator=gen).to(x.device)
        d = torch.cdist(x[cand], x).pow(2)  # (trials, N)
        new = torch.minimum(closest[None], d)
        best = int(new.sum(1).argmin())
        centers.append(x[cand[best]])
        closest = new[best]
    return torch.stack(centers)


def cluster_sums(labels: torch.Tensor, x: torch.Tensor, k: int, chunk: int = 65536,
                 ordered: bool | None = None) -> torch.Tensor:
    """Per-cluster sums (K, D) of the frames x (N, D) labelled ``labels`` (N,). ``ordered`` (default:
    on CUDA) as one-hot matrix products, chunk by chunk, in a fixed order: ``index_add_`` adds on CUDA
    with atomics in any order, and the same seed then learnt other centroids from run to run."""
    if not (x.device.type == "cuda" if ordered is None else ordered):
        return torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    clusters = torch.arange(k, device=x.device)[:, None]
    for i in range(0, len(x), chunk):
        onehot = (clusters == labels[None, i:i + chunk]).to(x.dtype)  # (K, chunk)
        sums += onehot @ x[i:i + chunk]
    return sums


@no_tf32()
def learn(x: torch.Tensor, clusters: int, *, batch_size: int = BATCH_SIZE, iterations: int = ITERATIONS, seed: int = KMEANS_SEED,
          init_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Mini-batch k-means (Sculley 2010, per-centroid learning rate 1/count) on x (N, D) float32, on
    x's device. k-means++ seeding on ``init_size`` frames (default 3 * batch_size, at least 3 * K).
    ``iterations`` mini-batches of ``batch_size`` frames; a batch as large as x makes each step a
    full Lloyd step. ``progress(done, iterations)``: with 0 before the k-means++ start, then after each
    step. Returns the centroids (K, D). Distances and sums are true float32 whatever the
    caller set for TensorFloat-32 (its 10-bit mantissa picks wrong nearest centroids)."""
    n = len(x)
    check_seed(seed)
    check_steps(batch_size, iterations)
    if clusters < 1 or clusters > n:
        raise SettingError(f"cannot make {clusters} clusters from {n} frames", "clusters")
    gen = torch.Generator().manual_seed(seed)
    m = min(n, max(init_size or 3 * batch_size, 3 * clusters))
    init_idx = torch.randperm(n, generator=gen)[:m].to(x.device)
    if progress:  # the k-means++ start comes first (about 20 s on a CPU for 20,000 clusters)
        progress(0, iterations)
    c = kmeans_pp(x[init_idx], clusters, gen)
    counts = torch.zeros(clusters, device=x.device)
    full = batch_size >= n
    for it in range(iterations):
        b = x if full else x[torch.randint(n, (batch_size,), generator=gen).to(x.device)]
        labels, _ = assign(b, c)
        sums = cluster_sums(labels, b, clusters)
        nb = torch.bincount(labels, minlength=clusters).to(c.dtype)
        hit = nb > 0
        if full:  # Lloyd step: the mean of each cluster
            c[hit] = sums[hit] / nb[hit, None]
        else:
            counts += nb
            c[hit] += (sums[hit] - nb[hit, None] * c[hit]) / counts[hit, None]
        if progress:
            progress(it + 1, iterations)
    return c


def inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Mean squared distance of the frames x (N, D) to their nearest centroid."""
    return float(assign(x, centroids)[1].double().mean())


def check_steps(batch_size: int, iterations: int, max_frames: int | None = None) -> None:
    """:class:`SettingError` naming the first k-means setting below 1 (or above 1,000,000 iterations),
    as lhb units learn's options allow them (``batch_size`` 0 returned the k-means++ start)."""
    for name, value, top in (("batch_size", batch_size, None), ("iterations", iterations, 1_000_000),
                             ("max_frames", max_frames, None)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or (top and value > top):
            # lhb's options stop these before: the keyword is the caller's word
            raise SettingError(f"{name}={value!r} is not a whole number from 1{f' to {top:,}' if top else ' up'}", name)


def learn_file(features: str | os.PathLike, layer: int | None, clusters: int, *, max_frames: int = MAX_FRAMES,
               batch_size: int = BATCH_SIZE, iterations: int = ITERATIONS, seed: int = KMEANS_SEED, device: str = DEVICE,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Learn ``clusters`` centroids from up to ``max_frames`` frames of ``layer`` (None: the file's
    only layer); the km.pt dict."""
    check_seed(seed)
    check_steps(batch_size, iterations, max_frames)
    with open_features(features) as f:
        layer = one_layer(f.layers, layer, features)
        model = model_of(f.attrs)
    x = sample_frames(features, layer, max_frames, seed)
    if len(x) < clusters:
        limit = f" (--max-frames {max_frames:,})" if len(x) == max_frames else ""  # else the file holds no more
        raise FeaturesError(f"{features}: {len(x):,} frames to learn from{limit}, fewer than the {clusters:,} clusters "
                            "asked for")
    dev = resolve_device(device)
    try:
        x = x.to(dev)
        c = learn(x, clusters, batch_size=batch_size, iterations=iterations, seed=seed, progress=progress)
    except (torch.OutOfMemoryError, MemoryError):
        raise LightHubertError(f"{features}: {len(x):,} frames of width {x.shape[1]} ({x.numel() * 4 / 2**30:.1f} GiB) "
                               f"and the k-means steps do not fit in the memory of {dev}; give --max-frames fewer "
                               "frames, a smaller --batch-size, or --device cpu") from None
    return {"format": KM_FORMAT, "centroids": c.cpu().contiguous(), "layer": int(layer), "clusters": int(clusters),
            "inertia": inertia(x, c), "frames": len(x), "seed": int(seed), "features": str(Path(features).absolute()),
            "model": model}


def model_of(attrs: dict) -> dict[str, str]:
    """What made a features file, as a k-means file records it: the supernet's weights (the sha256
    of the supernet file, also when an exported subnet of it ran; for random weights, the checkpoint's
    name with the seed) and the subnet (canonical JSON)."""
    ckpt = str(attrs.get("supernet_sha256") or attrs.get("checkpoint_sha256") or "") or str(attrs.get("checkpoint", ""))
    return {"checkpoint": ckpt, "subnet": json.dumps(attrs.get("subnet"), sort_keys=True)}


def load_km(path: str | os.PathLike) -> dict:
    """A km.pt written by :func:`learn_file` (loaded with ``weights_only=True``)."""
    kind = special_kind(path)
    if kind and kind != "a folder":  # torch.load would wait on a FIFO forever, or read a device without end
        raise FeaturesError(f"{path}: is {kind}, not a k-means file")
    try:
        km = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FeaturesError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FeaturesError(f"{path}: is a folder, not a k-means file") from None
    except Exception:  # noqa: BLE001 - pickle/zip errors of many kinds
        raise FeaturesError(f"{path}: not a k-means file made by lhb units learn (torch cannot load it)") from None
    if not isinstance(km, dict) or km.get("format") != KM_FORMAT:
        raise FeaturesError(f"{path}: not a k-means file made by lhb units learn")
    problem = km_problem(km)
    if problem:
        raise FeaturesError(f"{path}: a damaged k-means file: {problem}")
    return km


def km_problem(km: dict) -> str | None:
    """What is wrong with the centroids of a km.pt dict, or None: (K, D) finite floats, K >= 1, as
    many as its ``clusters`` says, and a whole-number ``layer``. (One NaN centroid gave every frame
    its unit; none at all an internal error.)"""
    c = km.get("centroids")
    if not isinstance(c, torch.Tensor) or c.ndim != 2 or not c.is_floating_point():
        return "its centroids are not a (clusters, dim) float tensor"
    if c.shape[0] < 1 or c.shape[1] < 1:
        return f"its centroids are empty {tuple(c.shape)}"
    if not bool(torch.isfinite(c).all()):
        return "its centroids hold NaN or infinite values"
    if km.get("clusters") != c.shape[0]:
        return f"it says {km.get('clusters')!r} clusters but holds {c.shape[0]} centroids"
    if isinstance(km.get("layer"), bool) or not isinstance(km.get("layer"), int):
        return f"its layer {km.get('layer')!r} is not a whole number"
    return None


def apply_file(features: str | os.PathLike, km: dict | str | os.PathLike, output: str | os.PathLike, *, keys: bool = False,
               device: str = DEVICE, overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> int:
    """Units of every utterance (in the file's key order) with the centroids of ``km`` (the dict of
    :func:`learn_file`, or the path of its km.pt) on its layer. ``output`` named as HDF5 (:func:`~lighthubert.storage.hdf5_name`: ``.h5``, ``.hdf5``, ... in any
    case): ``/units/KEY`` int16/int32 datasets (T,); otherwise text,
    one line per utterance: the units separated by spaces (fairseq's ``.km``), preceded by the key
    when ``keys``. An ``output`` that is an existing regular file (also through a link) is an
    :class:`~lighthubert.storage.OutputError` unless ``overwrite``; a FIFO or device is written to.
    Returns the number of utterances."""
    out = Path(output)
    if same_file(out, features):  # whatever overwrite says: the features would be lost
        raise OutputError(f"{out}: is FEATURES itself; give another file to write the units to")
    if isinstance(km, (str, os.PathLike)) and same_file(out, km):  # nor the k-means file
        raise OutputError(f"{out}: is the k-means file itself; give another file to write the units to")
    refuse_existing([out], overwrite)
    if isinstance(km, (str, os.PathLike)):
        km = load_km(km)
    elif problem := km_problem(km):
        raise SettingError(f"a damaged k-means dict: {problem}", "km")
    dev = resolve_device(device)
    c = km["centroids"].to(dev)
    dtype = np.int16 if km["clusters"] <= np.iinfo(np.int16).max else np.int32
    with open_features(features) as f:
        layer_positions(f.layers, km["layer"], features)  # the layer is there (also in a file without utterances)
        if f.dim != c.shape[1]:
            raise FeaturesError(f"{features}: features are {f.dim} wide, the centroids {c.shape[1]}")
        learnt = km.get("model")  # absent from older k-means files: not checked
        if isinstance(learnt, dict) and (now := model_of(f.attrs)) != learnt:
            what = " and ".join(k for k in ("checkpoint", "subnet") if now.get(k) != learnt.get(k))
            raise FeaturesError(f"{features}: made with another {what} than the features the k-means file was learnt "
                                f"from ({km.get('features')}); its units would mean nothing here")
        def write(target: Path) -> None:
            _write_units(f, km, c, target, h5=hdf5_name(out), features=features, keys=keys,
                         dtype=dtype, progress=progress)

        try:
            if _written_in_place(out):
                write(out)
            else:  # an old OUTPUT (or a link's target) stays whole until the new one is
                write_atomic(out, write)
        except BrokenPipeError:
            raise  # standard output's reader left: lhb ends quietly
        except (OSError, RuntimeError) as e:  # a full disk (h5py says it in a RuntimeError), a size limit
            if isinstance(e, RuntimeError) and os_words(e) is None:
                raise
            raise OutputError(f"{out}: cannot write ({os_reason(e)})") from None
        return len(f)


DESCRIPTOR = re.compile(r"/dev/std(in|out|err)$|/dev/fd/|/proc/[^/]+/fd/")
"""Names of a process's open descriptors (they lead to what the caller opened, which may be a file)."""


def _written_in_place(path: Path) -> bool:
    """Whether ``path`` is written to rather than replaced: standard output or another open descriptor
    (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``: replacing the file behind one would cut what
    the caller wrote there, ``>> all.km``), a FIFO or a device. A regular file, also through a
    symbolic link, and a new one are replaced whole."""
    # special_kind is None for a regular file (also through a link) and for one not there yet
    return bool(DESCRIPTOR.match(os.path.abspath(path))) or special_kind(path) is not None


def _write_units(f, km: dict, c: torch.Tensor, out: Path, *, h5: bool, features: str | os.PathLike, keys: bool,
                 dtype: type, progress: Callable[[int, int], None] | None) -> None:
    """The units of every utterance of the open features file ``f`` into ``out`` (HDF5 or text)."""
    dev = c.device

    def units_of(k: str) -> torch.Tensor:
        x = f.get(k, km["layer"])
        check_values(x, features, k)
        return assign(x.to(dev), c)[0]

    if keys and not h5:  # "KEY u1 u2 ...": a key with white space would read as more units
        if bad := next((k for k in f.keys if any(ch.isspace() for ch in k)), None):
            raise FeaturesError(f"{features}: key {bad!r} has white space, which a line 'KEY units...' cannot hold; "
                                "leave out --keys (lines are in the file's key order)")
    if h5:  # built in memory (2 bytes a frame: ~350 MB for 960 h), then written by Python: HDF5 writes
        import h5py  # its datasets late, and a full disk or size limit there crashed lhb (SIGSEGV) instead of one line

        image = io.BytesIO()
        with h5py.File(image, "w") as h:
            h.attrs.update({"format": UNITS_FORMAT, "layer": km["layer"], "clusters": km["clusters"],
                            "features": str(Path(features).absolute())})
            g = h.create_group("units")
            for i, k in enumerate(f.keys):
                g.create_dataset(k, data=units_of(k).cpu().numpy().astype(dtype))
                if progress:
                    progress(i + 1, len(f))
        with open(out, "wb") as b:
            b.write(image.getbuffer())
    else:
        # standard output is written through its own descriptor: reopening /dev/stdout would cut a file
        # the caller opened (`>> all.km`) or write beside the caller's offset (`{ echo a; lhb ...; } > f`)
        stdout = out == Path("/dev/stdout")
        with open(sys.stdout.fileno(), "w", closefd=False, encoding="utf-8") if stdout else open(out, "w", encoding="utf-8") as t:
            for i, k in enumerate(f.keys):
                units = units_of(k).tolist()
                t.write((f"{k} " if keys else "") + " ".join(map(str, units)) + "\n")
                if progress:
                    progress(i + 1, len(f))


def describe_km(km: dict) -> dict:
    """What a k-means file from :func:`learn_file` holds, without its centroids: layer, clusters,
    width, inertia, frames, seed and the features file it was learnt from; ``damaged``: what makes it
    unusable (:func:`km_problem`), or None."""
    c = km.get("centroids")
    out = {k: km.get(k) for k in ("format", "layer", "clusters", "inertia", "frames", "seed", "features", "model")}
    out["dim"] = int(c.shape[1]) if isinstance(c, torch.Tensor) and c.dim() == 2 else None
    out["damaged"] = km_problem(km)
    return out


def describe_units(path: str | os.PathLike) -> dict | None:
    """What a units .h5 from :func:`apply_file` holds (its attributes, utterances, frames, the units
    used; ``damaged``: the first dataset that is not a 1-D array of whole numbers, or None), or None
    when ``path`` is not one."""
    import h5py

    try:
        with h5py.File(path, "r") as h:
            if plain(h.attrs.get("format")) != UNITS_FORMAT or not isinstance(h.get("units"), h5py.Group):
                return None
            seen: set[int] = set()
            frames = 0
            keys: list[str] = []
            damaged: list[str] = []

            def visit(name: str, obj) -> None:
                nonlocal frames
                if not isinstance(obj, h5py.Dataset):
                    return
                keys.append(name)
                if obj.ndim != 1 or obj.dtype.kind not in "iu":  # a hand-edited file (a scalar was an internal error)
                    damaged.append(f"units/{name} is not a 1-D array of whole numbers ({obj.dtype}, shape {obj.shape})")
                    return
                data = obj[()]
                frames += len(data)
                seen.update(np.unique(data).tolist())
            h["units"].visititems(visit)
            attrs = {k: plain(v) for k, v in h.attrs.items()}
    except OSError:
        return None
    return {"attributes": attrs, "utterances": len(keys), "frames": frames, "units_used": len(seen),
            "damaged": damaged[0] if damaged else None}

