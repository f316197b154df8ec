"""Checkpoints: exported subnets, refusals (safe loading), released names (cache, download) and
random checkpoints."""

from __future__ import annotations

import io
import os
import re
import pickle
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

import lighthubert
from lighthubert import CheckpointError, SubnetError, load_checkpoint


def save_variant(path: Path, ckpt: dict, model_cfg: dict | None = None, state: dict | None = None) -> Path:
    """torch.save a copy of a checkpoint dict with another cfg['model'] and/or state dict."""
    obj = dict(ckpt)
    obj["cfg"] = {**ckpt["cfg"], "model": model_cfg if model_cfg is not None else ckpt["cfg"]["model"]}
    obj["model"] = state if state is not None else ckpt["model"]
    torch.save(obj, path)
    return path


def refused(path, *words) -> str:
    """Loading ``path`` raises CheckpointError naming the file (and ``words``); returns the message."""
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ----------------------------------------------------------------------------- the random files


@pytest.mark.slow
def test_written_file_holds_the_random_dict(ckpts, ckpt_dicts):
    """write_random_checkpoint(path, kind, seed) writes random_checkpoint(kind, seed)."""
    for kind in ("small", "stage1"):
        state, d = ckpts[kind].state, ckpt_dicts[kind]
        assert set(state) == set(d["model"])
        assert all(torch.equal(state[k], d["model"][k]) for k in state)
        assert all(v.dtype == torch.float16 for v in state.values())
    assert ckpts["stage1"].cfg.extractor_mode == "default" and not ckpts["stage1"].normalize
    assert ckpts["small"].cfg.extractor_mode == "layer_norm" and ckpts["small"].normalize
    assert ckpts["small"].space.name == "small" and ckpts["base"].space.name == "base"
    assert ckpts["stage1"].kind == "student_hubert" and ckpts["small"].kind == "hubert_pruner"


@pytest.mark.slow
def test_random_file_layout_matches_the_authors_model(authors_models):
    """The authors' model takes the random state dicts with no missing key and only the
    training-only extras unexpected (SPEC §1)."""
    for kind in ("base", "stage1"):
        result = authors_models[kind].load_result
        assert result.missing_keys == []
        expected = {"label_embs_concat", "final_proj.weight", "final_proj.bias"} if kind == "base" else set()
        assert set(result.unexpected_keys) == expected


# ----------------------------------------------------------------------------- export


EXPORTS = [
    ("small", {"atten_dim": [256, 512, 384, 256, 512, 384, 256, 512, 384, 512], "embed_dim": 384,
               "ffn_embed": [1152, 1344, 1536, 1344, 1152, 1536, 1344, 1344, 1152, 1536],
               "heads_num": [4, 8, 6, 4, 8, 6, 4, 8, 6, 8], "layer_num": 10, "slide_wsz": ["global"] * 10}),
    ("stage1", "min"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kind,subnet", EXPORTS, ids=["small-10-layers", "stage1-min"])
def test_export_round_trip(kind, subnet, ckpts, ckpt_files, authors_counters, short_speech, tmp_path):
    ckpt = ckpts[kind]
    sub = ckpt.resolve_subnet(subnet)
    path = lighthubert.export_subnet(ckpt, subnet, tmp_path / "sub.pt")
    assert Path(path).is_file()

    # only the subnet's weights are in the file
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw["model"]
    assert not [k for k in state if k.startswith("encoder.layers.")]
    assert not [k for k in state if k in ("label_embs_concat",) or k.startswith("final_proj")]
    fc1 = sorted(t.shape[0] for k, t in state.items() if k.endswith("fc1.weight"))
    assert fc1 == sorted(sub["ffn_embed"])
    assert all(t.shape[1] == sub["embed_dim"] for k, t in state.items() if k.endswith("fc1.weight"))
    assert all(max(t.shape) < 3072 for t in state.values())
    authors_model = authors_counters[kind]
    authors_model.set_sample_config(sub)
    count = authors_model.calc_sampled_param_num()
    total = sum(t.numel() for t in state.values())
    assert count - 768 <= total <= count  # the subnet's parameters (mask_emb is training-only)
    assert total < 0.6 * sum(t.numel() for t in ckpt.state.values())
    assert os.path.getsize(path) < 0.6 * os.path.getsize(ckpt_files[kind])

    # it loads, knows its subnet, and gives identical numbers
    exported = load_checkpoint(path)
    assert exported.subnet == sub and exported.resolve_subnet(None) == sub
    assert exported.params(sub) == count
    assert "RANDOM WEIGHTS" in exported.name
    assert exported.normalize == ckpt.normalize
    with pytest.raises(SubnetError, match=re.escape(  # one readable line, not the subnet dict
            f"is an exported subnet and holds only its own ({sub['layer_num']} layers, width {sub['embed_dim']}, "
            f"{count:,} params): leave out the subnet, or give the supernet checkpoint it was cut from")):
        exported.resolve_subnet("max")
    original, again = ckpt.model(sub), exported.model()
    w = torch.from_numpy(short_speech[1])
    if ckpt.normalize:
        w = torch.nn.functional.layer_norm(w, w.shape)
    with torch.no_grad():
        a, b = original(w[None]), again(w[None])
    assert sorted(a.hidden) == sorted(b.hidden) == list(range(sub["layer_num"] + 1))
    for i in a.hidden:
        assert torch.equal(a.hidden[i], b.hidden[i]), i

    ext = lighthubert.load(str(path), device="cpu")
    assert ext.subnet == sub
    ref = lighthubert.Extractor(ckpt, sub, device="cpu")
    assert torch.equal(ext([short_speech[0]], layers="all")[0], ref([short_speech[0]], layers="all")[0])


# ----------------------------------------------------------------------------- refusals


def test_refuses_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(10_000))
    refused(path)


def test_refuses_an_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    refused(path)


def test_refuses_a_wav_file(tmp_path, speech):
    path = tmp_path / "speech.wav"
    sf.write(path, speech[0][1], 16000)
    refused(path)


def test_refuses_an_hdf5_file(tmp_path):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features/a", data=np.zeros((10, 4), dtype=np.float32))
        f.attrs["format"] = "lighthubert-features"
    refused(path)


def test_refuses_a_truncated_checkpoint(tmp_path, ckpt_files):
    data = ckpt_files["small"].read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    refused(path)


def test_a_zeroed_file_and_a_subnet_json_given_as_checkpoints_are_named(tmp_path):
    """Before: both were "not a PyTorch checkpoint (a text file)": zero bytes decode as text, and a
    subnet JSON given to -c (or lhb info) got no hint where it goes."""
    import json

    zeros, sub = tmp_path / "z.pt", tmp_path / "sub.json"
    zeros.write_bytes(bytes(1 << 20))
    sub.write_text(json.dumps(lighthubert.SPACES["small"].min_subnet))
    with pytest.raises(CheckpointError, match=r"z\.pt: not a PyTorch checkpoint: only zero bytes at its start"):
        load_checkpoint(zeros)
    import resource

    big = tmp_path / "feats.h5"  # refused from its first bytes: the whole file was read first (3.7 GB for 3 GiB)
    with open(big, "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n")
        f.truncate(6 << 30)  # sparse
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=r"feats\.h5: this is an HDF5 file \(a features file\?\), not a checkpoint"):
        load_checkpoint(big)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    with pytest.raises(CheckpointError, match=r"sub\.json: a subnet JSON file, not a checkpoint \(lhb subnet --subnet "
                       r".*sub\.json describes it; lhb extract takes it as --subnet, with the supernet as -c\)"):
        load_checkpoint(sub)


def test_refuses_missing_and_folder(tmp_path):
    refused(tmp_path / "nope.pt")
    refused(tmp_path)


def test_refuses_an_unknown_model_name(tmp_path, ckpt_dicts):
    d = ckpt_dicts["small"]
    path = save_variant(tmp_path / "w2v.pt", d, {**d["cfg"]["model"], "_name": "wav2vec2"})
    refused(path, "wav2vec2")


def test_refuses_a_missing_weight(tmp_path, ckpt_dicts):
    d = ckpt_dicts["small"]
    state = {k: v for k, v in d["model"].items() if k != "encoder.layers.3.fc1.weight"}
    refused(save_variant(tmp_path / "missing.pt", d, state=state), "encoder.layers.3.fc1.weight")


def test_refuses_a_misshaped_weight(tmp_path, ckpt_dicts):
    d = ckpt_dicts["small"]
    state = dict(d["model"])
    state["encoder.layers.5.self_attn.k_proj.weight"] = state["encoder.layers.5.self_attn.k_proj.weight"][:, :700]
    refused(save_variant(tmp_path / "shape.pt", d, state=state), "encoder.layers.5.self_attn.k_proj.weight")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_refuses_a_weight_with_nan_or_inf(bad, tmp_path, ckpt_dicts):
    d = ckpt_dicts["small"]
    state = dict(d["model"])
    w = state["encoder.layers.7.fc2.weight"].clone()
    w[100, 3] = bad
    state["encoder.layers.7.fc2.weight"] = w
    refused(save_variant(tmp_path / "nan.pt", d, state=state), "encoder.layers.7.fc2.weight", "NaN or infinite")


@pytest.mark.parametrize("supernet", ["config/pruner/Large.yaml", "", "Base.yml"])
def test_refuses_an_unknown_pruner_supernet(supernet, tmp_path, ckpt_dicts):
    d = ckpt_dicts["small"]
    path = save_variant(tmp_path / "pruner.pt", d, {**d["cfg"]["model"], "pruner_supernet": supernet})
    refused(path, "pruner_supernet")


def test_accepts_pruner_supernet_in_any_case(tmp_path, ckpt_dicts):
    d = ckpt_dicts["small"]
    path = save_variant(tmp_path / "case.pt", d, {**d["cfg"]["model"], "pruner_supernet": "/x/y/SMALL.YAML"})
    assert load_checkpoint(path).space.name == "small"


def test_refuses_a_hostile_conv_feature_layers(tmp_path, ckpt_dicts):
    marker = tmp_path / "HACKED"
    hostile = f"__import__('os').system('touch {marker}')"
    d = ckpt_dicts["small"]
    path = save_variant(tmp_path / "conv.pt", d, {**d["cfg"]["model"], "conv_feature_layers": hostile})
    refused(path, "conv_feature_layers")
    assert not marker.exists()
    # the drop-in config must not evaluate it either
    cfg = lighthubert.LightHuBERTConfig({**d["cfg"]["model"], "conv_feature_layers": hostile})
    with pytest.raises(ValueError):
        lighthubert.LightHuBERT(cfg)
    assert not marker.exists()


def test_extraction_refuses_a_conv_stack_of_another_frame_rate(tmp_path, ckpt_dicts):
    """Before: a stack of 100 frames per second loaded and extracted, while the file said 50 frames
    per second and windows of --window-seconds came out half as long."""
    from lighthubert.extractor import Extractor

    d = ckpt_dicts["small"]
    state = {k: v for k, v in d["model"].items() if not k.startswith("feature_extractor.conv_layers.6.")}
    path = save_variant(tmp_path / "hop160.pt", d, {**d["cfg"]["model"], "conv_feature_layers":
                                                   "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)]"}, state)
    ckpt = load_checkpoint(path)  # the drop-in API may use it; extraction may not
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: its conv feature extractor gives a frame of 240 "
                                                        "samples every 160; features are extracted with the released "
                                                        "stack's (400 every 320, 50 frames per second)")):
        Extractor(ckpt, "min", device="cpu")
    from lighthubert.deploy import ExportError, export

    with pytest.raises(ExportError, match="its conv feature extractor gives a frame of 240 samples every 160"):
        export(ckpt, "min", tmp_path / "hop160.ts")  # its bounds (at least 400 samples) would be wrong
    assert not (tmp_path / "hop160.ts").exists()


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch-zip", "torch-legacy", "pickle-protocol-2"])
def test_refuses_a_hostile_pickle(how, tmp_path):
    marker = tmp_path / "MARKER"
    obj = {"cfg": {"model": {"_name": "hubert_pruner"}}, "model": {}, "extra_state": _Hostile(marker)}
    path = tmp_path / "evil.pt"
    if how == "torch-zip":
        torch.save(obj, path)
    elif how == "torch-legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    assert b"system" in path.read_bytes()
    if how == "pickle-protocol-2":  # pickle.dump's file, not torch.save's: refused before unpickling
        refused(path, "not a PyTorch checkpoint (a plain pickle, not a file written by torch.save)")
    else:
        msg = refused(path, "--trust-checkpoint")
        assert f"would call {os.system.__module__}.system," in msg, msg  # the global named whole, not cut
        # the Python keywords of both ways in (before: 'trust=True', which lighthubert.extract does not take)
        assert "trust=True to load or load_checkpoint, trust_checkpoint=True to extract" in msg, msg
    assert not marker.exists()


def test_a_hostile_pickle_protocol_5_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil5.pt"
    path.write_bytes(pickle.dumps({"x": _Hostile(marker)}, protocol=5))
    refused(path, "a plain pickle")
    with pytest.raises(CheckpointError):  # trusted or not: torch.load would unpickle it looking for its magic number
        load_checkpoint(path, trust=True)
    assert not marker.exists()


def test_pickles_torch_cannot_read_safely_are_named_in_one_line(tmp_path):
    """A plain pickle (pickle.dump) or a legacy torch.save file with pickle protocol 4 printed torch's
    two-line UserWarning before 'not a PyTorch checkpoint (Unsupported operand 149)'."""
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"model": {}}, protocol=4))
    legacy = tmp_path / "legacy4.pt"
    torch.save({"cfg": {}, "model": {}}, legacy, _use_new_zipfile_serialization=False, pickle_protocol=4)
    zipped = tmp_path / "zip4.pt"  # the zip format's pickle record: was "not a PyTorch checkpoint (Unsupported operand 149)"
    torch.save({"cfg": {}, "model": {}}, zipped, pickle_protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape
        refused(plain, "not a PyTorch checkpoint (a plain pickle, not a file written by torch.save)")
        refused(legacy, "written by torch.save with pickle protocol 4", "--trust-checkpoint")
        refused(zipped, "written by torch.save with pickle protocol 4", "--trust-checkpoint")
    with pytest.raises(CheckpointError, match="not a LightHuBERT checkpoint"):  # trusted, it is read
        load_checkpoint(legacy, trust=True)


def test_a_checkpoint_of_the_wrong_shape_says_what_is_wrong(tmp_path):
    """Before: {'cfg': 0, 'model': ...} was 'no 'cfg' and 'model' entries' (both were there), and a bad
    config value 'a malformed field: invalid literal for int()', naming no field."""
    import copy

    from lighthubert.checkpoint import random_checkpoint

    good = random_checkpoint("small", 1)
    for name, edit, says in (
            ("list", lambda d: [1, 2], "it holds a list, not a dict with 'cfg' and 'model' entries"),
            ("cfg0", lambda d: {**d, "cfg": 0}, "its 'cfg' entry is an int, not a dict"),
            ("nomodel", lambda d: {"cfg": d["cfg"]}, "no 'model' entry; it needs 'cfg' and 'model'"),
            ("twelve", lambda d: {**d, "cfg": {**d["cfg"], "model": {**d["cfg"]["model"], "encoder_layers": "twelve"}}},
             "model config has a malformed field encoder_layers: invalid literal")):
        path = tmp_path / f"{name}.pt"
        torch.save(edit(copy.copy(good)), path)
        with pytest.raises(CheckpointError, match=re.escape(f"{path}: {says}" if name == "twelve" else
                                                            f"{path}: not a LightHuBERT checkpoint ({says}")):
            load_checkpoint(path)
    # fields of the wrong type: "false" was true (a post-norm file read as pre-norm, silently); the others were
    # internal errors (int('16k'), a str fixed_params added to an int)
    for section, field, value, says in (
            ("model", "layer_norm_first", "false", "layer_norm_first is 'false', not true or false"),
            ("task", "normalize", "false", "task normalize is 'false', not true or false"),
            ("model", "conv_bias", "False", "conv_bias is 'False', not true or false"),
            ("task", "sample_rate", "16k", "sample_rate '16k' is not supported (LightHuBERT works at 16000 Hz)"),
            ("task", "sample_rate", 16000.5, "sample_rate 16000.5 is not supported"),
            ("model", "fixed_params", "lots", "fixed_params is 'lots', not a count of parameters")):
        bad = {"cfg": copy.deepcopy(good["cfg"]), "model": {}}  # the config is judged before the weights
        bad["cfg"][section][field] = value
        path = tmp_path / f"{field}.pt"
        torch.save(bad, path)
        with pytest.raises(CheckpointError, match=re.escape(f"{path}: {says}")):
            load_checkpoint(path)
    import argparse  # what older fairseq files hold: said so, not "a checkpoint never needs" it

    namespace = tmp_path / "args.pt"
    torch.save({"args": argparse.Namespace(arch="hubert"), "model": {}}, namespace)
    refused(namespace, "would call argparse.Namespace, how older fairseq files hold their settings, as 'args'")
    torch.save({"cfg": {"model": argparse.Namespace(arch="hubert")}, "model": {}}, namespace)
    with pytest.raises(CheckpointError, match=re.escape("(cfg['model'] is a Namespace, not a dict)")):
        load_checkpoint(namespace, trust=True)
    not_torch = tmp_path / "notorch.pt"  # a zip torch.save did not write: torch's C++ check was quoted whole
    with zipfile.ZipFile(not_torch, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match=re.escape(f"{not_torch}: not a PyTorch checkpoint (file in archive is not "
                                                        "in a subdirectory: hello.txt)")):
        load_checkpoint(not_torch)


def _numpy1_zip(data: bytes) -> bytes:
    """Rewrite a torch.save zip so its pickle names numpy scalars as numpy 1 did."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                body = body.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info.filename, body)
    return out.getvalue()


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_numpy1_scalar_names_load(layout, tmp_path, ckpt_dicts):
    """Released files were written under numpy 1: their numpy scalars are pickled as
    numpy.core.multiarray.scalar. They must load with weights_only."""
    d = ckpt_dicts["small"]
    assert isinstance(d["extra_state"]["best"], np.generic)
    buf = io.BytesIO()
    torch.save(d, buf, _use_new_zipfile_serialization=(layout == "zip"))
    data = buf.getvalue()
    if layout == "zip":
        data = _numpy1_zip(data)
    else:
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\nscalar" in data and b"numpy._core" not in data
    path = tmp_path / "numpy1.pt"
    path.write_bytes(data)
    ckpt = load_checkpoint(path)
    assert ckpt.space.name == "small" and ckpt.kind == "hubert_pruner"
    assert torch.equal(ckpt.state["encoder.layers.0.fc1.weight"], d["model"]["encoder.layers.0.fc1.weight"])


@pytest.mark.parametrize("numpy_name", ["numpy._core", "numpy.core"])
def test_numpy_arrays_in_extra_state_load(numpy_name, tmp_path, ckpt_dicts):
    """A fairseq checkpoint may keep numpy arrays, not only scalars, in ``extra_state``: they are
    rebuilt by numpy, which runs no code, so the file loads without --trust-checkpoint (it was
    refused, with the global's name cut in the middle of torch's advice)."""
    d = dict(ckpt_dicts["small"])
    d["extra_state"] = {**d["extra_state"], "meters": np.arange(6, dtype=np.float64).reshape(2, 3)}
    buf = io.BytesIO()
    torch.save(d, buf)
    data = buf.getvalue() if numpy_name == "numpy._core" else _numpy1_zip(buf.getvalue())
    assert f"{numpy_name}.multiarray\n_reconstruct".encode() in data
    path = tmp_path / "arrays.pt"
    path.write_bytes(data)
    ckpt = load_checkpoint(path)
    assert ckpt.space.name == "small"
    assert torch.equal(ckpt.state["encoder.layers.0.fc1.weight"], d["model"]["encoder.layers.0.fc1.weight"])
    with pytest.raises(pickle.UnpicklingError):  # allowed in lighthubert's loader only, not in torch's
        torch.load(path)


def test_plain_torch_load_still_works_after_load_checkpoint(ckpt_files):
    """The authors' README calls plain ``torch.load`` on a released file (numpy scalars inside):
    importing lighthubert allows those, and loading a checkpoint through lighthubert first must not
    take that away again."""
    path = ckpt_files["small"]
    load_checkpoint(path)
    obj = torch.load(path)
    assert isinstance(obj["extra_state"]["best"], np.generic)


# ----------------------------------------------------------------------------- random names


@pytest.mark.slow
def test_random_names_are_labelled_and_seedable():
    a = load_checkpoint("random:small:7")
    b = load_checkpoint("random:small:7")
    c = load_checkpoint("random:small:8")
    for ck in (a, b, c):
        assert "RANDOM WEIGHTS" in ck.name and ck.random
        assert ck.space.name == "small"
    assert set(a.state) == set(c.state)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    differ = [k for k in a.state if not torch.equal(a.state[k], c.state[k])]
    assert "encoder.layers.0.fc1.weight" in differ and len(differ) > 0.9 * len(a.state)
    base = load_checkpoint("random:base")
    assert "RANDOM WEIGHTS" in base.name and base.space.name == "base" and base.kind == "hubert_pruner"
    assert not torch.equal(base.state["post_extract_proj.weight"], a.state["post_extract_proj.weight"])


@pytest.mark.parametrize("name", ["random:large", "random:small:x", "random:small:1:2"])
def test_bad_random_names(name):
    with pytest.raises(CheckpointError, match="random"):
        load_checkpoint(name)


def test_a_random_name_and_another_seed_is_refused():
    """`-c random:small:5 --seed 7` ran with seed 5 without a word about --seed 7."""
    with pytest.raises(CheckpointError, match=r"^random:small:5: names seed 5, and seed 7 \(--seed\) was given too"):
        load_checkpoint("random:small:5", seed=7)


def test_file_checkpoint_is_not_labelled_random_unless_it_is(ckpts, tmp_path, ckpt_dicts):
    assert "RANDOM WEIGHTS" in ckpts["small"].name  # written by write_random_checkpoint
    d = ckpt_dicts["stage1"]
    real_looking = {**d["cfg"]["model"]}
    real_looking.pop("random", None)
    path = save_variant(tmp_path / "plain.pt", d, real_looking)
    assert "RANDOM WEIGHTS" not in load_checkpoint(path).name


def test_exports_never_replace_their_checkpoint_and_replace_a_file_only_when_asked(ckpt_files, tmp_path):
    """Before: export_subnet and deploy.export wrote over any file, the supernet they were cut from
    included (it became the small exported subnet), and a missing folder was a FileNotFoundError
    naming lhb's temporary file. lhb subnet --export already refused; the library now does too."""
    from lighthubert.deploy import ExportError, export

    supernet = tmp_path / "super.pt"
    supernet.write_bytes(Path(ckpt_files["small"]).read_bytes())
    ckpt = load_checkpoint(supernet)
    (tmp_path / "link.pt").symlink_to(supernet)
    for target in (supernet, tmp_path / "link.pt"):
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(target))}: is the checkpoint the subnet is cut from"):
            lighthubert.export_subnet(ckpt, "min", target, overwrite=True)
        with pytest.raises(ExportError, match=f"^{re.escape(str(target))}: is the checkpoint the subnet is cut from"):
            export(ckpt, "min", target, overwrite=True)
    assert load_checkpoint(supernet).subnet is None  # still the supernet
    missing = tmp_path / "nodir" / "x.pt"
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(missing))}: the folder {re.escape(str(missing.parent))} does not exist$"):
        lighthubert.export_subnet(ckpt, "min", missing)
    old = tmp_path / "min.pt"
    old.write_bytes(b"mine")
    for call, error in ((lambda **kw: lighthubert.export_subnet(ckpt, "min", old, **kw), CheckpointError),
                        (lambda **kw: export(ckpt, "min", old, **kw), ExportError)):
        with pytest.raises(error, match="already exists; pass overwrite=True to replace it"):
            call()
        assert old.read_bytes() == b"mine"
    lighthubert.export_subnet(ckpt, "min", old, overwrite=True)
    assert load_checkpoint(old).subnet == ckpt.resolve_subnet("min")
    ts = tmp_path / "min.ts"
    ts.write_bytes(b"mine")
    with pytest.raises(ExportError, match="already exists"):
        export(ckpt, "min", ts)
    assert ts.read_bytes() == b"mine"


def test_a_checkpoint_named_in_bytes_that_are_not_utf8_is_named_with_them_escaped(tmp_path, ckpt_files):
    """``-c $'real\\xe9.pt'``: its name went unescaped into the features file's ``checkpoint`` attribute
    ("internal error: UnicodeEncodeError ... surrogates not allowed", nothing extracted), into an
    ONNX file's metadata and onto ``lhb info``'s first line; it is written ``%E9`` as file names are."""
    path = os.fsencode(tmp_path) + b"/real\xe9.pt"
    os.link(ckpt_files["small"], path)
    ckpt = load_checkpoint(os.fsdecode(path))
    assert ckpt.name == "real%E9.pt (RANDOM WEIGHTS)"
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "a.wav", (rng.standard_normal(8000) * 0.1).astype(np.float32), 16000)
    lighthubert.extract(tmp_path / "a.wav", tmp_path / "out.h5", checkpoint=os.fsdecode(path), subnet="min")
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f.attrs["checkpoint"] == "real%E9.pt (RANDOM WEIGHTS)"
