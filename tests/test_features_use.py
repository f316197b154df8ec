"""Using the features (README "Using the features"): the reader, the training Dataset with DataLoader
workers, pad_collate and LengthGroupedSampler, ``lhb convert`` read back exactly as fairseq's
simple_kmeans scripts read it, ``lhb units`` against scikit-learn's k-means, and the README snippets.

One small features file is made per module with ``lhb extract`` on the real speech; expected values
come from plain h5py / numpy reads of it, never from the code under test.
"""

from __future__ import annotations

import pickle
import json
import random
import re
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

import lighthubert
from cli_helpers import Run, lhb, read_features
from helpers import copy_speech
from lighthubert import FeaturesDataset, FeaturesError, LengthGroupedSampler, open_features, pad_collate

README = Path(__file__).resolve().parents[1] / "README.md"
FILES = ["spk1/utt01.wav", "spk1/utt03.wav", "spk2/utt02.wav", "spk2/utt03.wav", "spk2/utt04.wav",
         "spk3/utt01.wav", "spk3/utt03.flac"]
LAYER = 6

pytestmark = pytest.mark.slow  # end-to-end: many lhb runs (README: the quick subset)


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    """A features file of all layers (min subnet of random:small) and its contents read with h5py."""
    d = tmp_path_factory.mktemp("use")
    copy_speech(d / "wav", FILES)
    out = d / "feats.h5"
    r = lhb("extract", d / "wav", out, "-c", "random:small", "--subnet", "min", "--layers", "all", "--device", "cpu")
    assert r.returncode == 0, r
    return out, read_features(out)


def layer_of(ref, key: str, layer: int) -> np.ndarray:
    return ref.data[key][ref.layers.index(layer)]


def test_open_features_reads_what_h5py_reads(feats):
    path, ref = feats
    with open_features(path) as f:
        assert sorted(f.keys) == sorted(ref.data) and len(f) == len(FILES)
        assert f.layers == ref.layers == list(range(11))
        assert f.attrs["subnet"] == ref.subnet and f.attrs["complete"] is True
        assert f.dim == 256
        for k, x in ref.data.items():
            assert f.lengths[k] == x.shape[1]
            assert torch.equal(f[k], torch.from_numpy(x))
            assert torch.equal(f.get(k, LAYER), torch.from_numpy(layer_of(ref, k, LAYER)))
            assert torch.equal(f.get(k, [LAYER, 2]), torch.from_numpy(x[[LAYER, 2]]))
            assert torch.equal(f.get(k, [LAYER, LAYER]), torch.from_numpy(x[[LAYER, LAYER]]))
            assert f.get(k, "all").shape == x.shape
            assert f.num_samples(k) == ref.meta[k]["num_samples"] and f.source(k) == ref.meta[k]["source"]
        with pytest.raises(FeaturesError, match=f"{re.escape(str(path))}: has no layer 11"):
            f.get(k, 11)
        with pytest.raises(FeaturesError, match="has no layer -1 .*not counted from the end"):
            f.get(k, -1)  # -1 names a pre-norm model's final output, never "the last stored"
        with pytest.raises(KeyError, match="nope"):
            f["nope"]
        # indices from numpy and torch as lists and scalars; a bool or an empty list is not an index
        # (before: True read layer 1, [] an empty (0, T, D) tensor, a 0-d tensor a TypeError)
        assert torch.equal(f.get(k, torch.tensor(LAYER)), f.get(k, LAYER))
        assert torch.equal(f.get(k, np.array([LAYER, 2])), f.get(k, [LAYER, 2]))
        for bad in (True, [], [LAYER, 2.0], "last"):
            with pytest.raises(FeaturesError, match="layer must be an index, a non-empty list of indices or 'all'"):
                f.get(k, bad)
    with pytest.raises(ValueError, match="the batch is empty"):
        pad_collate([])
    with open_features(path) as f, pytest.raises(TypeError, match="not a mapping"):
        LengthGroupedSampler(f.lengths, 2)  # Features.lengths, key -> frames: the keys were sorted, not lengths


def test_single_layer_file_and_bad_files(feats, tmp_path):
    path, ref = feats
    one = tmp_path / "one.h5"
    with h5py.File(path) as src, h5py.File(one, "w") as dst:  # the (T, D) layout of --layers 6
        dst.attrs.update({k: v for k, v in src.attrs.items()})
        dst.attrs["layers"] = np.array([LAYER])
        for k in ref.data:
            dst[f"features/{k}"] = layer_of(ref, k, LAYER)
    key = next(iter(ref.data))
    with open_features(one) as f:
        assert f.layers == [LAYER]
        assert torch.equal(f[key], torch.from_numpy(layer_of(ref, key, LAYER)))
        assert torch.equal(f.get(key, LAYER), f[key])
        assert f.get(key, [LAYER]).shape == (1, *f[key].shape)
        # a repeated layer is repeated, as from a file of several layers (before: (1, T, D) here)
        assert torch.equal(f.get(key, [LAYER, LAYER]), torch.stack([f[key], f[key]]))
    with pytest.raises(FeaturesError, match="not a lighthubert features file"):
        with h5py.File(tmp_path / "other.h5", "w") as h:
            h["x"] = 1
        open_features(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(FeaturesError, match="text.h5: not an HDF5 file"):
        open_features(tmp_path / "text.h5")
    with pytest.raises(FeaturesError, match="missing.h5: no such file"):
        open_features(tmp_path / "missing.h5")


def test_a_file_of_a_stopped_run_warns_when_opened(feats, tmp_path):
    """Before: only the CLI said so; a Python user training on the file of an interrupted run got a
    partial set of utterances without a word."""
    import warnings

    path, ref = feats
    stopped = tmp_path / "stopped.h5"
    shutil.copy(path, stopped)
    with h5py.File(stopped, "a") as h:
        h.attrs["complete"] = False
    with pytest.warns(lighthubert.LightHubertWarning, match=re.escape(
            f"{stopped}: incomplete (its extraction stopped or is still running; the same run with --resume, or resume=True in Python, completes it); "
            f"using the {len(ref.data)} utterances it holds")):
        open_features(stopped).close()
    with pytest.warns(lighthubert.LightHubertWarning, match="incomplete"):
        FeaturesDataset(stopped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_features(path).close()


def test_dataset_keys_must_be_a_list(feats):
    """Before: keys="utt03" was iterated letter by letter: "no utterance 'u'"."""
    path, ref = feats
    key = sorted(ref.data)[0]
    with pytest.raises(lighthubert.SettingError, match=re.escape(f"keys: give a list of keys (keys=[{key!r}]), not one string")):
        FeaturesDataset(path, layer=LAYER, keys=key)
    assert FeaturesDataset(path, layer=LAYER, keys=[key]).keys == [key]


def test_dataset_with_two_workers(feats):
    path, ref = feats
    data = FeaturesDataset(path, layer=LAYER)
    assert data.lengths == [ref.data[k].shape[1] for k in data.keys]
    data[0]  # the parent opens the file: each forked worker must open its own
    pickle.dumps(data)  # no h5py handle travels to spawned workers
    loader = DataLoader(data, batch_size=None, num_workers=2)
    seen = {}
    for key, x in loader:
        seen[key] = x
    assert sorted(seen) == sorted(ref.data)
    for k, x in seen.items():
        assert x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(layer_of(ref, k, LAYER)))


def test_dataset_all_layers_collate_and_sampler(feats):
    path, ref = feats
    data = FeaturesDataset(path, layer="all")
    assert data.item_layers == ref.layers == data.layers
    picked = FeaturesDataset(path, layer=[10, 3])  # README's L = len(data.item_layers) with a selection
    assert picked.item_layers == [10, 3] and picked.layers == ref.layers
    assert torch.equal(picked[0][1], torch.from_numpy(ref.data[picked.keys[0]][[ref.layers.index(10), ref.layers.index(3)]]))
    assert FeaturesDataset(path, layer=LAYER).item_layers == [LAYER]
    sampler = LengthGroupedSampler(data.lengths, batch_size=3, seed=1)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=pad_collate, num_workers=2)
    got = []
    for keys, x, lengths in loader:
        assert x.shape == (len(keys), 11, int(lengths.max()), 256) and lengths.dtype == torch.long
        for i, k in enumerate(keys):
            n = ref.data[k].shape[1]
            assert lengths[i] == n
            assert torch.equal(x[i, :, :n], torch.from_numpy(ref.data[k]))
            assert not x[i, :, n:].any()  # zero padding
        got.append(keys)
    flat = [k for b in got for k in b]
    assert sorted(flat) == sorted(ref.data)  # every utterance once
    # grouped by length: the padding is that of batches cut from the sorted lengths
    pad = sum(max(ref.data[k].shape[1] for k in b) * len(b) - sum(ref.data[k].shape[1] for k in b) for b in got)
    s = sorted(data.lengths)
    best = sum(max(s[i:i + 3]) * len(s[i:i + 3]) - sum(s[i:i + 3]) for i in range(0, len(s), 3))
    assert pad == best
    assert len(sampler) == len(got) == 3
    # seeded, a new order each epoch
    assert list(LengthGroupedSampler(data.lengths, 3, seed=1)) == list(sampler)
    orders = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        orders.add(tuple(map(tuple, sampler)))
    assert len(orders) > 1
    ordered = list(LengthGroupedSampler(data.lengths, 3, shuffle=False))
    assert [data.lengths[i] for b in ordered for i in b] == s
    # several processes: the same batches, dealt out, the same count each (one repeated here)
    parts = [list(LengthGroupedSampler(data.lengths, 3, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(LengthGroupedSampler(data.lengths, 3, num_replicas=2)) == 2
    dealt = [b for pair in zip(*parts) for b in pair]
    assert dealt[:3] == list(LengthGroupedSampler(data.lengths, 3, seed=1)) and dealt[3] == dealt[0]


def test_convert_fairseq_layout(feats, tmp_path):
    path, ref = feats
    out = tmp_path / "km_feats"
    r = lhb("convert", path, out, "--layer", LAYER, "--format", "fairseq", "--nshard", 2, "--split", "valid")
    assert r.returncode == 0, r
    assert r.stdout == ""
    assert f"wrote 7 files to {out}: {len(FILES)} utterances" in r.err_lines, r
    keys = []
    for rank in range(2):
        # exactly as fairseq's examples/hubert/simple_kmeans/dump_km_label.py get_feat_iterator
        feat_path, leng_path = f"{out}/valid_{rank}_2.npy", f"{out}/valid_{rank}_2.len"
        with open(leng_path) as f:
            lengs = [int(line.rstrip()) for line in f]
            offsets = [0] + np.cumsum(lengs[:-1]).tolist()
        feat = np.load(feat_path, mmap_mode="r")
        assert feat.dtype == np.float32 and feat.shape == (offsets[-1] + lengs[-1], 256)
        shard_keys = Path(f"{out}/valid_{rank}_2.keys").read_text().splitlines()
        assert len(shard_keys) == len(lengs)
        for k, offset, leng in zip(shard_keys, offsets, lengs):
            np.testing.assert_array_equal(feat[offset:offset + leng], layer_of(ref, k, LAYER))
        keys += shard_keys
    with open_features(path) as f:
        assert keys == f.keys  # the file's key order, cut in contiguous shards
    # fairseq's manifest of the same utterances, in the same order: root, then rel_path<TAB>samples, the
    # samples as stored (soundfile's frames, as fairseq's wav2vec_manifest.py writes them; before, the
    # count at 16 kHz, which differs for the 8 kHz file)
    root, *rows = (out / "valid.tsv").read_text(encoding="utf-8").splitlines()
    assert [str(Path(root) / row.split("\t")[0]) for row in rows] == [ref.meta[k]["source"] for k in keys]
    assert [int(row.split("\t")[1]) for row in rows] == [sf.info(ref.meta[k]["source"]).frames for k in keys]
    # fairseq's HuBERT training reads the listed files as stored and needs 16 kHz: the others are named
    odd = [(ref.meta[k]["source"], sf.info(ref.meta[k]["source"]).samplerate) for k in keys]
    odd = [(src, rate) for src, rate in odd if rate != 16000]
    assert len(odd) == 1 and (
        f"lhb: warning: {out / 'valid.tsv'}: 1 of {len(keys)} audio files are not stored at 16 kHz (first: {odd[0][0]}, "
        f"{odd[0][1]} Hz); fairseq's HuBERT training reads them as stored and needs 16 kHz: resample them first"
    ) in r.err_lines, r


def test_convert_of_a_file_without_utterances_says_the_files_are_empty(tmp_path):
    """A run whose every input was skipped leaves a features file of 0 utterances; converting it
    writes the (empty) layout, and the closing line says so rather than only "wrote 4 files"."""
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav" / "a.wav").write_bytes(b"not audio")
    feats = tmp_path / "empty.h5"
    r = lhb("extract", tmp_path / "wav", feats, "-c", "random:small", "--subnet", "min", "--device", "cpu", "-q")
    assert r.returncode == 3, r  # every input skipped
    r = lhb("convert", feats, tmp_path / "out", "--layer", "10")  # the min subnet's last
    assert r.returncode == 0, r
    assert r.err_lines == [f"wrote 4 files to {tmp_path / 'out'}: 0 utterances ({feats} holds none, so the files are empty)"], r
    assert (tmp_path / "out" / "train_0_1.len").read_text() == ""


def test_layer_may_be_left_out_only_when_the_file_holds_one(feats, tmp_path):
    """After a default extract (``--layers last``: one stored layer) ``lhb convert`` and ``lhb units
    learn`` take that layer without ``--layer``; a file of several layers asks which, listing them,
    before anything is written."""
    path, ref = feats
    for args in (["convert", path, tmp_path / "c"], ["units", "learn", path, tmp_path / "km.pt"]):
        r = lhb(*args)
        assert r.returncode == 2, r
        assert r.err_lines == [f"lhb: error: --layer: {path} holds layers {list(range(11))}; say which one"], r
        assert not args[-1].exists()
    copy_speech(tmp_path / "wav", FILES[:2])
    one = tmp_path / "last.h5"
    assert lhb("extract", tmp_path / "wav", one, "-c", "random:small", "--subnet", "min", "--device", "cpu", "-q").returncode == 0
    stored = read_features(one)
    assert stored.attrs["layers"] == [10], stored.attrs  # the min subnet's 10 layers: hidden state 10
    r = lhb("convert", one, tmp_path / "npy", "-f", "npy", "-q")
    assert r.returncode == 0, r
    for k, x in stored.data.items():
        np.testing.assert_array_equal(np.load(tmp_path / "npy" / f"{k}.npy"), x)
    r = lhb("units", "learn", one, tmp_path / "km.pt", "--clusters", 4)
    assert r.returncode == 0, r
    assert torch.load(tmp_path / "km.pt", weights_only=True)["layer"] == 10
    assert r.err_lines[-1].startswith(f"wrote {tmp_path / 'km.pt'}: 4 clusters of layer 10 from "), r
    # the k-means++ start (long with many clusters) is said before it runs, then ten of the 100 steps
    assert r.err_lines[0] == "k-means++ start: 4 centroids, then 100 steps", r
    assert r.err_lines[1:-1] == [f"k-means step: {n}/100" for n in range(10, 101, 10)], r


def test_convert_npy_and_kaldi(feats, tmp_path):
    path, ref = feats
    assert lhb("convert", path, tmp_path / "npy", "-l", 3, "-f", "npy", "-q").returncode == 0
    for k in ref.data:
        x = np.load(tmp_path / "npy" / f"{k}.npy")
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, layer_of(ref, k, 3))
    r = lhb("convert", path, tmp_path / "kaldi", "-l", 3, "-f", "kaldi", "-q")
    assert r.returncode == 0 and r.stderr == "", r
    lines = (tmp_path / "kaldi" / "train.scp").read_text().splitlines()
    assert len(lines) == len(ref.data)
    blob = (tmp_path / "kaldi" / "train.ark").read_bytes()
    for line in lines:  # Kaldi binary matrix: "\0B" "FM " then (size byte, int32) rows and cols
        key, where = line.split(" ")
        ark, offset = where.rsplit(":", 1)
        assert Path(ark) == (tmp_path / "kaldi" / "train.ark").resolve()
        o = int(offset)
        assert blob[o - len(key) - 1:o] == f"{key} ".encode() and blob[o:o + 5] == b"\0BFM "
        _, rows, _, cols = struct.unpack("<bibi", blob[o + 5:o + 15])
        x = np.frombuffer(blob, "<f4", rows * cols, o + 15).reshape(rows, cols)
        np.testing.assert_array_equal(x, layer_of(ref, key, 3))


def test_cli_errors_are_one_line(feats, tmp_path):
    path, _ = feats
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    runs = [Run(args) for args in (  # independent: all at once
        ["convert", path, tmp_path / "x", "--layer", 12],
        ["units", "learn", tmp_path / "a.wav", tmp_path / "km1.pt", "--layer", 1],
        ["units", "learn", path, tmp_path / "km.pt", "--layer", 1, "--clusters", 50, "--max-frames", 40],
        ["units", "apply", path, path, tmp_path / "u.km"],
        ["units", "apply", path, path, tmp_path / "u.h5", "--keys"])]  # before: --keys ignored, exit 0
    r = runs[4].result()
    assert r.returncode == 2 and r.err_lines == [f"lhb: error: --keys is for text output; {tmp_path / 'u.h5'} is written "
                                                 "as HDF5, whose datasets are named by key"], r
    r = runs[0].result()
    # bad usage (2), as extract's --layers 99 and a missing --layer are (before: 1)
    assert r.returncode == 2 and r.err_lines == [f"lhb: error: --layer: {path}: has no layer 12 (it holds layers {list(range(11))})"]
    assert not (tmp_path / "x").exists()
    r = runs[1].result()
    assert r.returncode == 1 and r.err_lines == [f"lhb: error: {tmp_path / 'a.wav'}: not an HDF5 file (lhb extract writes features files)"], r
    r = runs[2].result()
    assert r.returncode == 1 and r.err_lines == [
        f"lhb: error: {path}: 40 frames to learn from (--max-frames 40), fewer than the 50 clusters asked for"], r
    assert not (tmp_path / "km.pt").exists()
    r = runs[3].result()
    assert r.returncode == 1 and len(r.err_lines) == 1 and r.err_lines[0].startswith(f"lhb: error: {path}: not a k-means file"), r


def test_library_errors_share_one_base_class(feats, tmp_path):
    """A library user catching LightHubertError (the documented base) gets every bad setting of the
    features tools, not a bare ValueError from some of them; a SettingError is still a ValueError."""
    from lighthubert.convert import convert
    from lighthubert.deploy import check_export
    from lighthubert.errors import LightHubertError, SettingError
    from lighthubert.longform import LongForm
    from lighthubert.units import learn

    path, _ = feats
    calls = [lambda: convert(path, tmp_path / "a", "parquet", LAYER),
             lambda: convert(path, tmp_path / "b", "fairseq", LAYER, nshard=0),
             lambda: check_export(tmp_path / "sub.pt", None, "float16"),
             lambda: check_export(tmp_path / "sub.ts", None, "int8"),
             lambda: learn(torch.zeros(3, 4), 5),
             lambda: LongForm("sliding"),
             lambda: lighthubert.write_random_checkpoint(tmp_path / "r.pt", "large")]
    for call in calls:
        with pytest.raises(SettingError) as info:
            call()
        assert isinstance(info.value, (LightHubertError, ValueError)), info.value
        assert len(str(info.value).splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_units_learn_matches_sklearn_and_apply(feats, tmp_path):
    sklearn_cluster = pytest.importorskip("sklearn.cluster", reason="pip install -e .[test] (scikit-learn)")
    path, ref = feats
    km_path = tmp_path / "km.pt"
    r = lhb("units", "learn", path, km_path, "--layer", LAYER, "--clusters", 20, "--batch-size", 256,
            "--iterations", 300, "--seed", 3, "--device", "cpu", "-q")
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r
    km = torch.load(km_path, weights_only=True)
    c = km["centroids"].numpy().astype(np.float64)
    assert c.shape == (20, 256) and km["layer"] == LAYER and km["clusters"] == 20
    x = np.concatenate([layer_of(ref, k, LAYER) for k in sorted(ref.data)]).astype(np.float64)
    assert km["frames"] == len(x)  # the default --max-frames takes every frame here
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)  # (N, K)
    ours = d.min(1).mean()
    assert km["inertia"] == pytest.approx(ours, rel=1e-4)
    theirs = sklearn_cluster.KMeans(20, n_init=3, random_state=0).fit(x).inertia_ / len(x)
    assert ours == pytest.approx(theirs, rel=0.03), (ours, theirs)

    # apply: the nearest centroid of each frame, one line per utterance in the key order
    out = tmp_path / "train.km"
    assert lhb("units", "apply", path, km_path, out, "--device", "cpu", "-q").returncode == 0
    with open_features(path) as f:
        keys = f.keys
    lines = out.read_text().splitlines()
    assert len(lines) == len(keys)
    for k, line in zip(keys, lines):
        units = np.array([int(u) for u in line.split()])
        d = ((layer_of(ref, k, LAYER).astype(np.float64)[:, None, :] - c[None]) ** 2).sum(-1)
        assert len(units) == len(d)
        chosen = d[np.arange(len(d)), units]
        np.testing.assert_allclose(chosen, d.min(1), rtol=1e-5)  # nearest (ties within rounding)
    keyed, h5 = tmp_path / "keyed.txt", tmp_path / "units.HDF5"  # any case of an HDF5 name
    runs = [Run(["units", "apply", path, km_path, keyed, "--keys", "--device", "cpu", "-q"]),  # all at once
            Run(["units", "apply", path, km_path, h5, "--device", "cpu", "-q"]),
            Run(["units", "apply", path, km_path, "-", "--keys", "--device", "cpu"], cwd=tmp_path),
            Run(["info", km_path, "--json"])]  # the k-means file described, not refused as a checkpoint
    info = runs[3].result()
    assert info.returncode == 0 and json.loads(info.stdout) == {
        "format": "lighthubert-kmeans", "layer": LAYER, "clusters": 20, "dim": 256, "inertia": km["inertia"],
        "frames": km["frames"], "seed": 3, "features": str(path.resolve()), "model": km["model"], "damaged": None}, info
    with h5py.File(path) as f:  # what made the features, which units apply checks
        assert km["model"] == {"checkpoint": f.attrs["checkpoint"], "subnet": json.dumps(json.loads(f.attrs["subnet"]), sort_keys=True)}
    assert runs[0].result().returncode == 0, runs[0].result()
    assert keyed.read_text().splitlines() == [f"{k} {line}" for k, line in zip(keys, lines)]
    stdout = runs[2].result()  # "-": the text on standard output, the message on standard error
    assert stdout.returncode == 0 and stdout.stdout == keyed.read_text(), stdout
    assert stdout.err_lines[-1] == f"wrote the units of {len(keys)} utterances to standard output", stdout
    assert not (tmp_path / "-").exists()
    assert runs[1].result().returncode == 0, runs[1].result()
    with h5py.File(h5) as h:
        for k, line in zip(keys, lines):
            assert h[f"units/{k}"][()].tolist() == [int(u) for u in line.split()]
    # lhb info describes the units file; the features readers name it as one
    every = [int(u) for line in lines for u in line.split()]
    described = lhb("info", h5, "--json")
    assert described.returncode == 0, described
    assert json.loads(described.stdout) == {
        "attributes": {"format": "lighthubert-units", "layer": LAYER, "clusters": 20, "features": str(path.absolute())},
        "utterances": len(keys), "frames": len(every), "units_used": len(set(every)), "damaged": None}
    assert km["features"] == str(path.absolute())
    with pytest.raises(FeaturesError, match=f"{re.escape(str(h5))}: a units file \\(lhb units apply\\), not a features file"):
        open_features(h5)


def test_kmeans_is_seeded_and_plain_kmeans_with_a_full_batch(feats):
    from lighthubert.units import inertia, learn

    path, ref = feats
    x = torch.from_numpy(np.concatenate([layer_of(ref, k, 2) for k in sorted(ref.data)]))
    a = learn(x, 8, batch_size=128, iterations=50, seed=5)
    assert torch.equal(a, learn(x, 8, batch_size=128, iterations=50, seed=5))
    assert not torch.equal(a, learn(x, 8, batch_size=128, iterations=50, seed=6))
    # a full batch is Lloyd's k-means: each step makes every centroid the mean of the frames nearest to it
    # before the step (one seed, one start: 29 steps, then the 30th; whether 30 steps converged depends
    # on the CPU's rounding, so convergence is not what is checked)
    before = learn(x, 8, batch_size=len(x), iterations=29, seed=5)
    full = learn(x, 8, batch_size=len(x), iterations=30, seed=5)
    labels = ((x[:, None] - before[None]) ** 2).sum(-1).argmin(1)
    for j in labels.unique():
        torch.testing.assert_close(full[j], x[labels == j].mean(0), rtol=1e-4, atol=1e-4)
    labels = ((x[:, None] - full[None]) ** 2).sum(-1).argmin(1)
    assert inertia(x, full) == pytest.approx(float(((x - full[labels]) ** 2).sum(1).double().mean()), rel=1e-5)


def test_readme_snippets_run(feats, tmp_path, monkeypatch):
    path, _ = feats
    text = README.read_text()
    section = text[text.index("## Using the features"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    shutil.copy(path, tmp_path / "feats.h5")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        scope: dict = {}
        exec(compile(block, str(README), "exec"), scope)
    assert scope["weights"].grad is not None and scope["loss"].isfinite()
    assert lighthubert.FeaturesDataset is FeaturesDataset


def test_units_command_and_library_share_their_defaults():
    """``lhb units learn`` shows the defaults :func:`lighthubert.units.learn_file` uses."""
    import inspect

    import lighthubert_cli.main  # noqa: F401 - the app, which registers the units commands
    from lighthubert.units import learn_file
    from lighthubert_cli.use import learn

    cli, lib = inspect.signature(learn).parameters, inspect.signature(learn_file).parameters
    for name in ("max_frames", "batch_size", "iterations", "seed", "device"):
        assert cli[name].default == lib[name].default, name
    from lighthubert.convert import convert as convert_file
    from lighthubert_cli.use import convert

    cli, lib = inspect.signature(convert).parameters, inspect.signature(convert_file).parameters
    assert cli["fmt"].default.value == lib["fmt"].default
    for name in ("split", "nshard"):
        assert cli[name].default == lib[name].default, name


def test_drop_last_leaves_out_other_items_each_epoch():
    """Before: each pool was sorted, then its short last batch (its longest items) was dropped, so the
    longest utterances of a small set were never trained on, in any epoch."""
    lengths = random.Random(0).sample(range(10, 501), 100)
    sampler = LengthGroupedSampler(lengths, 8, seed=0, drop_last=True)
    seen = set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 12 and all(len(b) == 8 for b in batches)
        flat = [i for b in batches for i in b]
        assert len(set(flat)) == 96
        for b in batches:  # still grouped: no other item of the epoch lies strictly inside a batch's range
            lo, hi = min(lengths[i] for i in b), max(lengths[i] for i in b)
            assert not any(lo < lengths[i] < hi for i in set(flat) - set(b))
        seen.update(flat)
    assert seen == set(range(100))
