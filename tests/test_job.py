"""The extraction job as a library call (lighthubert.extract / lighthubert.job) and its pure parts:
batch planning, chunking, the resume identity check, merging; one default per setting; "last" decided
once (pre-norm checkpoints). The CLI's end-to-end behaviour is in test_cli.py."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import warnings

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lighthubert
from helpers import SPEECH_DIR, authors_hidden_states, rel_err
from lighthubert.inputs import Item
from lighthubert.job import BATCH_SECONDS, ExtractJob, prepare
from lighthubert.pipeline import MAX_BATCH, plan_batches
from lighthubert.storage import HDF5, OutputError, check_identity, run_attrs
from lighthubert.storage.hdf5 import FeatureWriter
from oracle import build_model

# ----------------------------------------------------------------------------- plan_batches


def _items(lengths: list[int]) -> list[tuple[Item, int]]:
    return [(Item(f"k{i:04d}", SPEECH_DIR / f"k{i}.wav"), n) for i, n in enumerate(lengths)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50_000), max_size=300), st.integers(400, 200_000), st.sampled_from([0, 16_000, 32_000]))
def test_plan_batches_packs_every_file_once_within_budget(lengths, budget, chunk):
    sizes = _items(lengths)
    batches = plan_batches(sizes, budget, chunk)
    flat = [it.key for b in batches for it, _ in b]
    assert sorted(flat) == sorted(it.key for it, _ in sizes)  # each file exactly once
    for b in batches:
        longest = max(n for _, n in b)
        assert len(b) <= MAX_BATCH
        if chunk and longest > chunk:
            assert len(b) == 1  # a long file runs alone
        elif len(b) > 1:
            assert len(b) * longest <= budget  # padded audio within the budget
    order = [max(n for _, n in b) for b in batches]
    assert order == sorted(order, reverse=True)  # longest first: padding stays small


def test_plan_batches_examples():
    sizes = _items([100, 300, 200, 250, 50])
    batches = plan_batches(sizes, 600, 0)
    assert [[n for _, n in b] for b in batches] == [[300, 250], [200, 100, 50]]
    assert [[n for _, n in b] for b in plan_batches(_items([10] * 600), 10**9, 0)] == [[10] * 256, [10] * 256, [10] * 88]
    assert plan_batches([], 1000, 0) == []


# ----------------------------------------------------------------------------- resume identity, merge


def _attrs(**change) -> dict:
    base = dict(layers=[2], subnet={"a": 1}, checkpoint="c.pt", checkpoint_sha256="ab", normalize=True,
                random_weights=False, params=10, dtype="float32", compute_dtype="float32", version="t",
                exact_seconds=120.0, window_seconds=60.0, context_seconds=10.0, num_layers=2, embed_dim=4)
    return run_attrs(**{**base, **change})


def test_identity_includes_compute_dtype(tmp_path):
    path = tmp_path / "f.h5"
    check_identity(path, _attrs(), _attrs(params=99))  # not part of the identity
    with pytest.raises(OutputError, match=r"f\.h5: was made with a different compute_dtype \(--dtype: 'float32', now 'float16'\)"):
        check_identity(path, _attrs(), _attrs(compute_dtype="float16"))
    with pytest.raises(OutputError, match=r"a different dtype \(--save-dtype: 'float32', now 'float16'\)"):
        check_identity(path, _attrs(), _attrs(dtype="float16"))  # the option, not only the attribute
    old = {k: v for k, v in _attrs().items() if k != "compute_dtype"}  # a file from before the attribute
    with pytest.raises(OutputError, match="compute_dtype"):
        check_identity(path, old, _attrs())
    for change in ({"layers": [-1]}, {"dtype": "float16"}, {"exact_seconds": 0.0}, {"window_seconds": 30.0}, {"context_seconds": 5.0}, {"subnet": {"a": 2}}):
        with pytest.raises(OutputError, match=next(iter(change))):
            check_identity(path, _attrs(), _attrs(**change))


def _write(path, attrs, data: dict[str, np.ndarray], complete=True, resume=False) -> None:
    w = FeatureWriter(path, attrs, resume=resume)
    for k, v in data.items():
        w.write(k, v, source=f"/a/{k}.wav", num_samples=320 * len(v))
    w.close(complete=complete)


def test_writer_resume_keeps_keys_and_refuses_other_settings(tmp_path):
    path = tmp_path / "f.h5"
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    _write(path, _attrs(), {"a/b": x}, complete=False)
    w = FeatureWriter(path, _attrs(), resume=True)
    assert w.done == {"a/b"}
    w.close(complete=True)
    with pytest.raises(OutputError, match="compute_dtype"):
        FeatureWriter(path, _attrs(compute_dtype="bfloat16"), resume=True)
    with h5py.File(path) as f:  # the refused resume left the file as it was
        assert f.attrs["compute_dtype"] == "float32" and bool(f.attrs["complete"])
        np.testing.assert_array_equal(f["features/a/b"][()], x)


def test_merge_joins_parts_and_reports_conflicts(tmp_path):
    x, y = np.ones((3, 4), np.float32), np.zeros((2, 4), np.float32)
    p1, p2, p3, p4 = (tmp_path / f"part-{i}.h5" for i in range(4))
    _write(p1, _attrs(), {"s/u1": x})
    _write(p2, _attrs(), {"s/u2": y, "s/u1": x})  # the same key with equal values: fine
    out = tmp_path / "out.h5"
    assert HDF5.merge(out, [p1, p2], include_output=False) == 2
    with h5py.File(out) as f:
        assert bool(f.attrs["complete"]) and f.attrs["merged_from"] == 2
        np.testing.assert_array_equal(f["features/s/u2"][()], y)
    _write(p3, _attrs(), {"s/u1": x + 1})
    with pytest.raises(OutputError, match=f"part-2\\.h5: key 's/u1' is also in {out}, with other values "
                                          r"\(largest difference 1\.0e\+00 of the largest value\)$"):
        HDF5.merge(out, [p3], include_output=True)
    _write(p4, _attrs(compute_dtype="bfloat16"), {"s/u9": y}, complete=False)
    with pytest.raises(OutputError, match=r"part-3\.h5: made with different settings \(compute_dtype\)"):
        HDF5.merge(out, [p4], include_output=True)
    with h5py.File(out) as f:  # a failed merge leaves OUTPUT as it was
        assert sorted(f["features/s"]) == ["u1", "u2"]
    assert not list(tmp_path.glob(".out.h5.*"))  # and no temporary file
    # a key that is the other file's group, either way round (was "internal error: TypeError: Accessing a group ...")
    p5 = tmp_path / "nested.h5"
    _write(p5, _attrs(), {"s": y})
    with pytest.raises(OutputError, match=f"^{re.escape(str(p5))}: key 's' is a group in {re.escape(str(out))}, which holds 's/u1'"):
        HDF5.merge(out, [p5], include_output=True)
    with pytest.raises(OutputError, match=f"^{re.escape(str(out))}: key 's/u1' needs a group 's', which {re.escape(str(p5))} holds as a key"):
        HDF5.merge(tmp_path / "other.h5", [p5, out], include_output=False)
    assert not (tmp_path / "other.h5").exists()
    # an empty group another tool left (its keys deleted) gives way to a key of that name, in either order
    p6 = tmp_path / "emptied.h5"
    _write(p6, _attrs(), {"t/gone": x, "k": y})
    with h5py.File(p6, "a") as f:
        del f["features/t/gone"]
    p7 = tmp_path / "t.h5"
    _write(p7, _attrs(), {"t": x})
    for order in ([p6, p7], [p7, p6]):
        joined = tmp_path / f"joined{len(list(tmp_path.iterdir()))}.h5"
        assert HDF5.merge(joined, order, include_output=False) == 2
        with h5py.File(joined) as f:
            np.testing.assert_array_equal(f["features/t"][()], x)


# ----------------------------------------------------------------------------- the job


def test_one_default_per_setting():
    """The library's job and `lhb extract` share their defaults (the CLI passes every option)."""
    import inspect

    from lighthubert_cli.main import extract

    job = ExtractJob("in", "out")
    params = inspect.signature(extract).parameters
    for name in ("checkpoint", "subnet", "layers", "device", "exact_seconds", "window_seconds", "context_seconds",
                 "max_chunk_seconds", "num_workers", "batch_seconds",
                 "resume", "overwrite", "strict", "keep_parts", "seed", "trust_checkpoint"):
        assert params[name].default == getattr(job, name), name
    for name in ("dtype", "save_dtype", "compression"):
        assert params[name].default.value == getattr(job, name), name
    assert job.batch_seconds is None and BATCH_SECONDS == {"cuda": 200.0, "cpu": 30.0}


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    """The two shortest 16 kHz wav files of the speech data, in a folder."""
    if not SPEECH_DIR.is_dir():
        pytest.skip(f"no speech data at {SPEECH_DIR}")
    import soundfile as sf

    at16k = [p for p in SPEECH_DIR.rglob("*.wav") if sf.info(str(p)).samplerate == 16000]
    files = sorted(at16k, key=lambda p: p.stat().st_size)[:2] or pytest.skip("no 16 kHz wav files")
    folder = tmp_path_factory.mktemp("two")
    for p in files:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")  # two speakers' utt01.wav stay two files
    return folder


def test_prepare_refuses_a_resume_with_other_settings_before_any_work(tmp_path, two_files):
    """prepare() checks a resumed OUTPUT's run identity (execute() checks it again with the lock held):
    lhb extract --resume with other settings said its start line, then the error."""
    out = tmp_path / "o.h5"
    lighthubert.extract(two_files, out, checkpoint="random:small", subnet="min", device="cpu", layers="0")
    before = out.read_bytes()
    with pytest.raises(OutputError, match=r"o\.h5: was made with a different layers \(--layers: \[0\], now \[10\]\)"):
        prepare(ExtractJob(two_files, out, checkpoint="random:small", subnet="min", device="cpu", resume=True))
    assert out.read_bytes() == before
    plan = prepare(ExtractJob(two_files, out, checkpoint="random:small", subnet="min", device="cpu", layers="0", resume=True))
    assert plan.layers == [0]


def test_prepare_resolves_device_dependent_defaults(tmp_path, two_files):
    plan = prepare(ExtractJob(two_files, tmp_path / "o.h5", checkpoint="random:small", device="cpu"))
    assert plan.options.batch_seconds == 30.0 and (plan.options.exact_seconds, plan.options.window_seconds, plan.options.context_seconds) == (120.0, 60.0, 10.0)
    assert plan.attrs["compute_dtype"] == "float32" and plan.attrs["dtype"] == "float32"
    assert not (tmp_path / "o.h5").exists()  # nothing is created before the run


@pytest.mark.slow
def test_extract_resume_with_another_compute_dtype_is_refused(tmp_path, two_files):
    out = tmp_path / "f.h5"
    seen = []
    s = lighthubert.extract(two_files, out, checkpoint="random:small", subnet="min", device="cpu",
                            progress=lambda *a: seen.append(a))
    assert s.files == 2 and not s.skipped and s.output == out
    assert seen[0][:2] == (0, 2) and seen[-1][:2] == (2, 2)
    with h5py.File(out) as f:
        assert f.attrs["compute_dtype"] == "float32"
        before = {k: f["features"][k][()] for k in f["features"]}
    with pytest.raises(OutputError, match="different compute_dtype .dtype: 'float32', now 'bfloat16'."):
        lighthubert.extract(two_files, out, checkpoint="random:small", subnet="min", device="cpu", dtype="bfloat16",
                            resume=True)
    s = lighthubert.extract(two_files, out, checkpoint="random:small", subnet="min", device="cpu", resume=True)
    assert s.files == 0 and s.done_before == 2
    with h5py.File(out) as f:
        assert {k: f["features"][k][()] for k in f["features"]}.keys() == before.keys()


def test_a_progress_callback_that_raises_stops_the_run_and_keeps_the_work(tmp_path, two_files, ckpt_files):
    """A ``progress`` callback that raises (a notebook's display failing, a user's own limit) ends the
    run after the current batch: the work done is joined into OUTPUT (valid, not complete), no parts
    folder is left, the callback's own exception reaches the caller with a note on how to resume, and
    resume=True completes the job. It was raised out of the middle of the run, OUTPUT's work left in
    its parts folder."""
    src, out = tmp_path / "in", tmp_path / "o.h5"
    src.mkdir()
    for i, p in enumerate(sorted(two_files.iterdir()) * 2):
        shutil.copy(p, src / f"{i}.wav")
    settings = dict(checkpoint=ckpt_files["small"], subnet="min", device="cpu", batch_seconds=1)  # a file a batch
    calls = []

    def progress(files, total, seconds, total_seconds):
        calls.append(files)
        if files == 1:
            raise RuntimeError("the display broke")

    with pytest.raises(RuntimeError, match="the display broke") as caught:
        lighthubert.extract(src, out, progress=progress, **settings)
    assert caught.value.__notes__ == [f"raised by the progress callback; lighthubert.extract stopped after the current "
                                      f"batch: what was done is kept in {out}, and the same call with resume=True "
                                      "completes it"]
    assert calls == [0, 1]  # not called again once it raised
    assert not (tmp_path / "o.h5.parts").exists()
    with h5py.File(out) as f:
        kept = len(f["features"])
        assert 1 <= kept < 4 and not f.attrs["complete"]  # the batch reported, and the one running then
    again = lighthubert.extract(src, out, resume=True, **settings)
    assert again.files == 4 - kept and again.done_before == kept
    with h5py.File(out) as f:
        assert len(f["features"]) == 4 and f.attrs["complete"]

    def interrupt_then(files, total, seconds, total_seconds):  # the callback's own KeyboardInterrupt, or sys.exit()
        if files == 1:
            raise KeyboardInterrupt("from the callback")

    with pytest.raises(KeyboardInterrupt, match="from the callback") as caught:
        lighthubert.extract(src, out, progress=interrupt_then, overwrite=True, **settings)
    assert "resume=True completes it" in caught.value.__notes__[0]
    assert not (tmp_path / "o.h5.parts").exists()
    with h5py.File(out) as f:
        assert 1 <= len(f["features"]) < 4 and not f.attrs["complete"]

    def done_then(files, total, seconds, total_seconds):  # raised on the last call: the run had ended well
        if files == total:
            raise ValueError("after the end")

    with pytest.raises(ValueError, match="after the end") as caught:
        lighthubert.extract(src, out, progress=done_then, overwrite=True, **settings)
    assert caught.value.__notes__ == [f"raised by the progress callback once the work was done: {out} is complete"]
    with h5py.File(out) as f:
        assert len(f["features"]) == 4 and f.attrs["complete"]


@pytest.mark.slow
def test_resume_from_other_files_under_the_same_names_says_so(tmp_path, two_files):
    """`--resume` with INPUT another folder whose files have the same names kept the old features
    silently (a mistake, or a corpus that moved). A sample of the kept keys has its recorded source
    compared with INPUT's: one warning names an example; the features are kept; the same INPUT again,
    or the same files named through a link, give no warning."""
    from lighthubert.errors import LightHubertWarning

    out = tmp_path / "f.h5"
    args = dict(checkpoint="random:small", subnet="min", device="cpu")
    lighthubert.extract(two_files, out, **args)
    with h5py.File(out) as f:
        before = {k: f["features"][k][()] for k in f["features"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", LightHubertWarning)
        assert lighthubert.extract(two_files, out, resume=True, **args).done_before == 2
    other = tmp_path / "elsewhere"
    shutil.copytree(two_files, other)
    first = sorted(before)[0]
    with pytest.warns(LightHubertWarning, match=(
            rf"^{re.escape(str(out))}: 2 of 2 utterances checked were made from other files than INPUT names for the "
            rf"same keys \(e\.g\. '{first}': {re.escape(str(two_files / first))}\.wav, now "
            rf"{re.escape(str(other / first))}\.wav\); they are kept as they are")):
        s = lighthubert.extract(other, out, resume=True, **args)
    assert s.files == 0
    with h5py.File(out) as f:
        assert all(np.array_equal(f["features"][k][()], x) for k, x in before.items())
    linked = tmp_path / "via"  # the same files again through a link (/data -> /mnt/nfs/...): not other files
    linked.symlink_to(two_files)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LightHubertWarning)
        assert lighthubert.extract(linked, tmp_path / "g.h5", **args).files == 2
        assert lighthubert.extract(two_files, tmp_path / "g.h5", resume=True, **args).done_before == 2


def test_bad_settings_are_setting_errors(tmp_path, two_files):
    for change, setting in (({"layers": "1,99"}, "layers"), ({"layers": 99}, "layers"), ({"layers": 2.5}, "layers"),
                            ({"layers": [1, None]}, "layers"), ({"dtype": "float16", "device": "cpu"}, "dtype"),
                            ({"subnet": '{"x": 1}'}, "subnet"), ({"save_dtype": "int8"}, "save_dtype"),
                            ({"max_chunk_seconds": 0.02}, "max_chunk_seconds"), ({"exact_seconds": 0.5}, "exact_seconds"),
                            ({"window_seconds": float("inf")}, "window_seconds"),
                            ({"context_seconds": -1.0}, "context_seconds"), ({"exact_seconds": float("nan")}, "exact_seconds"),
                            ({"seed": -1}, "seed"), ({"seed": 2**63}, "seed"), ({"seed": True}, "seed")):
        with pytest.raises(lighthubert.SettingError) as info:
            lighthubert.extract(two_files, tmp_path / "o.h5", checkpoint="random:small", **change)
        assert info.value.setting == setting
        assert isinstance(info.value, lighthubert.LightHubertError)
    assert not (tmp_path / "o.h5").exists()
    # a numpy integer is a seed, as for load_checkpoint and lhb units (before: "3 is not a whole number")
    lighthubert.extract(two_files, tmp_path / "o.h5", checkpoint="random:small", subnet="min", layers=1, device="cpu",
                        seed=np.int64(3))
    # what lhb extract says, a Python caller is told too (before: only the command said these)
    with pytest.warns(lighthubert.LightHubertWarning) as said:
        lighthubert.extract(two_files, tmp_path / "o.npy", checkpoint="random:small", subnet="min", layers=1,
                            device="cpu", max_chunk_seconds=30)
    assert [str(w.message) for w in said] == [
        f"{tmp_path / 'o.npy'}: is written as HDF5 whatever its name says (lhb convert writes .npy, fairseq and Kaldi "
        "files from it)", "max_chunk_seconds is deprecated; use exact_seconds, window_seconds and "
        "context_seconds (long files now keep every frame)"]  # in the call's keywords


def test_an_output_named_as_audio_is_refused_even_with_overwrite(tmp_path, two_files):
    """``lhb extract a.wav b.wav`` (two inputs meant): OUTPUT is never written as or over audio. Before,
    an existing b.wav was refused with the advice '--overwrite would replace it', and --overwrite
    replaced the recording with an HDF5 file."""
    audio = sorted(two_files.iterdir())
    victim = tmp_path / "b.WAV"
    shutil.copy(audio[1], victim)
    before = victim.read_bytes()
    for out, overwrite in ((victim, True), (victim, False), (tmp_path / "new.flac", False)):
        with pytest.raises(OutputError, match=(
                rf"^{re.escape(str(out))}: OUTPUT is named as audio; features go to an HDF5 file such as feats.h5 "
                r"\(to extract several audio files, give their folder or a list of them as INPUT\)$")):
            lighthubert.extract(audio[0], out, checkpoint="random:small", subnet="min", device="cpu", overwrite=overwrite)
    assert victim.read_bytes() == before and not (tmp_path / "new.flac").exists()
    link = tmp_path / "feats.h5"  # through a link, too
    link.symlink_to(victim)
    with pytest.raises(OutputError, match=rf"^{re.escape(str(link))}: OUTPUT is named as audio \(a link to "):
        lighthubert.extract(audio[0], link, checkpoint="random:small", subnet="min", device="cpu", overwrite=True)
    assert victim.read_bytes() == before


@pytest.mark.slow
def test_last_layer_of_a_pre_norm_checkpoint(tmp_path, two_files):
    """'last' is the final (normed) output, recorded as layer -1; a number is always that hidden state,
    alone or with others; both equal the authors' numbers."""
    ckpt = lighthubert.write_random_checkpoint(tmp_path / "prenorm.pt", "small", seed=3, layer_norm_first=True)
    ext = lighthubert.load(str(ckpt), subnet="min", device="cpu")
    L = ext.num_layers
    runs = {"last": "last", "one": str(L), "pair": f"{L - 1},{L}"}
    for name, layers in runs.items():
        lighthubert.extract(two_files, tmp_path / f"{name}.h5", checkpoint=str(ckpt), subnet="min", device="cpu",
                            layers=layers)
    d = lighthubert.random_checkpoint("small", seed=3, layer_norm_first=True)
    model = build_model(d["cfg"]["model"], "small", d["model"])
    model.set_sample_config(lighthubert.SPACES["small"].min_subnet)
    files = {name: h5py.File(tmp_path / f"{name}.h5") for name in runs}
    try:
        assert list(files["last"].attrs["layers"]) == [-1]
        assert list(files["one"].attrs["layers"]) == [L] and list(files["pair"].attrs["layers"]) == [L - 1, L]
        for wav in sorted(two_files.glob("*.wav")):
            wave = lighthubert.load_audio(wav)
            w = torch.nn.functional.layer_norm(torch.from_numpy(wave), wave.shape)
            with torch.no_grad():
                final = model.extract_features(w[None])[0][0]  # the authors' final output (normed)
            hidden = authors_hidden_states(model, wave, normalize=True)[L]
            last, one, pair = (files[n]["features"][wav.stem][()] for n in ("last", "one", "pair"))
            assert rel_err(last, final) < 1e-4
            assert rel_err(one, hidden) < 1e-4
            np.testing.assert_array_equal(pair[1], one)  # index L is the same tensor alone or with others
            assert rel_err(last, hidden) > 1e-2  # the normed output is another tensor
            # the Python API decides the same way
            np.testing.assert_allclose(ext([wave], layers="last")[0].numpy(), last, rtol=0, atol=1e-5)
            np.testing.assert_allclose(ext([wave], layers=[L])[0].numpy(), one, rtol=0, atol=1e-5)
    finally:
        for f in files.values():
            f.close()


def test_resampler_unavailable_stops_the_run_with_a_valid_file(tmp_path, two_files, monkeypatch):
    """torchaudio that cannot load is the installation's problem, not the input's: the run stops with
    one line naming the file, and OUTPUT is closed, valid and marked incomplete."""
    import soundfile as sf

    from lighthubert import audio

    folder = tmp_path / "in"
    shutil.copytree(two_files, folder)
    wave = lighthubert.load_audio(sorted(two_files.glob("*.wav"))[0])
    sf.write(folder / "z8k.wav", wave[::2], 8000)

    def broken():
        raise audio.ResamplerUnavailable("libtorchaudio.so: undefined symbol")

    monkeypatch.setattr(audio, "_resampler", broken)
    out = tmp_path / "o.h5"
    with pytest.raises(lighthubert.LightHubertError, match=r"z8k\.wav: needs resampling from 8000 Hz.*torchaudio cannot be loaded"):
        lighthubert.extract(folder, out, checkpoint="random:small", subnet="min", device="cpu", num_workers=1)
    with h5py.File(out) as f:
        assert not bool(f.attrs["complete"]) and "z8k" not in f["features"]
        assert json.loads(f.attrs["skipped"]) == []  # not recorded as a bad input


def test_fairseq_defaults_are_the_authors():
    """One source of the config keys: the authors' LightHuBERTConfig defaults, and what ModelConfig writes."""
    from lighthubert.fairseq_cfg import MODEL_DEFAULTS, TRAINING_DEFAULTS, init_constant
    from lighthubert.model import ModelConfig, parse_conv_layers
    from oracle import authors

    theirs = authors().LightHuBERTConfig()
    for key, value in {**MODEL_DEFAULTS, **TRAINING_DEFAULTS}.items():
        assert getattr(theirs, key) == value, key
    ours = ModelConfig().to_dict()
    assert set(ours) == set(MODEL_DEFAULTS)
    for key, value in ours.items():
        if key == "conv_feature_layers":
            assert parse_conv_layers(value) == parse_conv_layers(MODEL_DEFAULTS[key])
        else:
            assert value == MODEL_DEFAULTS[key], key
    cfg = lighthubert.random_checkpoint("small")["cfg"]["model"]
    assert all(cfg[k] == v for k, v in TRAINING_DEFAULTS.items() if k in cfg)
    assert init_constant("encoder.layers.0.self_attn_layer_norm.weight") == 1.0
    assert init_constant("feature_extractor.conv_layers.3.2.1.bias") == 0.0  # layer_norm extractor's LayerNorm
    assert init_constant("feature_extractor.conv_layers.0.2.weight") == 1.0  # default extractor's GroupNorm
    assert init_constant("encoder.layers.0.fc1.bias") == 0.0 and init_constant("encoder.layers.0.fc1.weight") is None


def test_cli_reports_library_setting_errors_as_usage(tmp_path, two_files):
    """A setting the job refuses (here an infinite window) is one line and exit 2, before anything is
    written."""
    from cli_helpers import lhb

    r = lhb("extract", two_files, tmp_path / "o.h5", "-c", "random:small", "--window-seconds", "inf")
    assert r.returncode == 2, r
    assert r.err_lines == ["lhb: error: --window-seconds: inf is not from 1 to 3600 seconds"], r
    assert not (tmp_path / "o.h5").exists()


def test_a_shortened_list_in_a_refusal_ends_at_an_item():
    """Before: '(--layers: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1 ..., now [12])', which reads as a layer 1."""
    old = {"format": "lighthubert-features", "layers": list(range(13))}
    with pytest.raises(OutputError) as e:
        check_identity(pathlib.Path("f.h5"), old, {**old, "layers": [12]})
    assert "(--layers: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ..., now [12])" in str(e.value), e.value


def test_bfloat16_on_a_gpu_before_ampere_is_warned_of(monkeypatch):
    """Below compute capability 8.0 torch has no fused attention for bfloat16: a long file's scores
    fill the GPU. The choice is warned of there (the capability is the one the GPU reports; faked here)."""
    from lighthubert.extractor import resolve_dtype

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    for capability, warned in (((7, 5), True), ((8, 0), False), ((9, 0), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            assert resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
        messages = [str(w.message) for w in said if issubclass(w.category, lighthubert.LightHubertWarning)]
        assert messages == ([
            "bfloat16 on Tesla T4 (compute capability 7.5, before Ampere): attention memory grows with the square of "
            "a file's length and the convolutions are slow; use float16 or float32"] if warned else []), capability
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16


@pytest.mark.slow  # a Python subprocess
@pytest.mark.skipif(not SPEECH_DIR.is_dir(), reason="needs the speech data")
def test_ctrl_c_in_a_notebook_keeps_the_work_in_output(tmp_path):
    """Ctrl-C during lighthubert.extract (a notebook's interrupt is SIGINT): before, KeyboardInterrupt
    came out at once and OUTPUT held no utterance (the work sat in OUTPUT.parts, and opening OUTPUT
    said to run lhb merge). Now the current batch ends, the work is joined into OUTPUT, then
    KeyboardInterrupt; resume=True completes the job."""
    import os
    import signal
    import subprocess
    import sys

    folder = tmp_path / "in"
    for i in range(30):  # many small batches, so that the interrupt lands mid-run
        (folder / f"s{i:02d}").mkdir(parents=True)
        shutil.copy(SPEECH_DIR / "spk1" / "utt01.wav", folder / f"s{i:02d}" / "a.wav")
    out = tmp_path / "o.h5"
    script = (
        "import sys, lighthubert\n"
        "try:\n"
        f"    lighthubert.extract({str(folder)!r}, {str(out)!r}, checkpoint='random:small', subnet='min', layers='0',\n"
        "                        device='cpu', batch_seconds=3, num_workers=1,\n"
        "                        progress=lambda files, *_: print('DONE', files, flush=True))\n"
        "except KeyboardInterrupt as e:\n"
        "    print('INTERRUPTED', e, flush=True)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("DONE") and int(line.split()[1]) >= 2:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in err, err
    lines = rest.splitlines()
    if not any(ln.startswith("INTERRUPTED") for ln in lines):
        pytest.skip("the run finished before the interrupt landed")
    assert f"what was done is kept in {out}: run the same call with resume=True" in lines[-1], lines[-1]
    assert "lighthubert: stopping after the current batch (interrupt again to stop at once)" in err, err
    with pytest.warns(lighthubert.LightHubertWarning, match="incomplete"), lighthubert.open_features(out) as f:
        kept = len(f)
    assert 2 <= kept < 30 and not (tmp_path / "o.h5.parts").exists()
    summary = lighthubert.extract(folder, out, checkpoint="random:small", subnet="min", layers="0", device="cpu",
                                  resume=True)
    assert summary.done_before == kept and summary.done_before + summary.files == 30


def test_errors_of_lighthubert_extract_name_its_keywords(tmp_path, two_files):
    """A notebook cell run twice: lighthubert.extract's refusal said 'pass --resume ... or --overwrite',
    flags a Python caller has no use for; it names the keywords (the CLI keeps its flags)."""
    out = tmp_path / "o.h5"
    args = dict(checkpoint="random:small", subnet="min", layers="0", device="cpu")
    lighthubert.extract(two_files, out, **args)
    with pytest.raises(OutputError) as info:
        lighthubert.extract(two_files, out, **args)
    assert str(info.value) == f"{out}: already exists; pass resume=True to complete it or overwrite=True to replace it"
    with pytest.raises(lighthubert.SettingError, match="^resume=True and overwrite=True exclude each other$"):
        lighthubert.extract(two_files, out, resume=True, overwrite=True, **args)
    # a bad value leads with its keyword (lhb leads with the flag); -c is the checkpoint keyword
    for kw, says in ((dict(batch_seconds=0), "batch_seconds: 0 is not"), (dict(num_workers=0), "num_workers: 0 is not"),
                     (dict(window_seconds=0), "window_seconds: 0 is not")):
        with pytest.raises(lighthubert.SettingError, match=f"^{says}"):
            lighthubert.extract(two_files, tmp_path / "new.h5", **args, **kw)
    from lighthubert.job import in_python_words

    hint = "(lhb: -c /path/to/small.pt; Python: lighthubert.load('/path/to/small.pt'))"
    assert in_python_words(hint) == hint  # the offline hint's own lhb clause stays lhb's
    with pytest.raises(OutputError, match=r"different checkpoint \(checkpoint: 'random:small:0 .*\); use overwrite=True"):
        lighthubert.extract(two_files, out, **{**args, "checkpoint": "random:small:3"}, resume=True)


def test_a_python_list_of_files_is_an_input(tmp_path, two_files, monkeypatch):
    """Before: lighthubert.extract(sorted(glob(...)), out) was 'TypeError: expected str, bytes or
    os.PathLike object, not list'. A list is taken as a .txt list written in the current folder."""
    args = dict(checkpoint="random:small", subnet="min", layers="0", device="cpu")
    files = sorted(two_files.iterdir())
    (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in files))
    by_txt = lighthubert.extract(tmp_path / "list.txt", tmp_path / "txt.h5", **args)
    monkeypatch.chdir(two_files)
    for paths in ([str(p) for p in files], tuple(files), [p.name for p in files]):  # absolute, Path, relative
        out = tmp_path / f"list{len(list(tmp_path.iterdir()))}.h5"
        summary = lighthubert.extract(paths, out, **args)
        assert summary.files == 2 and not summary.skipped
        with lighthubert.open_features(out) as got, lighthubert.open_features(tmp_path / "txt.h5") as want:
            assert got.keys == want.keys == [p.stem for p in files]
            for k in want.keys:
                assert np.array_equal(got[k], want[k])
    assert by_txt.files == 2
    with pytest.raises(lighthubert.LightHubertError, match="^the list of inputs is empty$"):
        lighthubert.extract([], tmp_path / "none.h5", **args)
    with pytest.raises(lighthubert.LightHubertError, match="^3 in the list of inputs is not a file path$"):
        lighthubert.extract([files[0], 3], tmp_path / "none.h5", **args)
    assert not (tmp_path / "none.h5").exists()


def test_warnings_of_lighthubert_extract_name_its_keywords_at_the_callers_line(tmp_path, two_files):
    """Before: '--keep-parts has no effect ...', '--max-chunk-seconds is deprecated ...', shown at a
    line of job.py; now in the call's keywords, at the caller's line."""
    args = dict(checkpoint="random:small", subnet="min", layers="0", device="cpu")
    for kw, says in ((dict(keep_parts=True), "^keep_parts=True has no effect in a run with one process"),
                     (dict(max_chunk_seconds=30), "^max_chunk_seconds is deprecated; use exact_seconds, window_seconds")):
        with pytest.warns(lighthubert.LightHubertWarning, match=says) as seen:
            lighthubert.extract(two_files, tmp_path / "o.h5", overwrite=True, **args, **kw)
        assert [w.filename for w in seen if re.search(says, str(w.message))] == [__file__]


def test_a_tsv_entry_is_keyed_by_its_path_relative_to_the_root(tmp_path):
    """Before: an absolute entry (inside the root) got the absolute path without its "/" as its key,
    so one file could be stored twice under two keys; an entry outside the root was keyed the same way;
    "a/../a/x.wav" was refused though a .txt list resolves ".." in the text."""
    from lighthubert.inputs import InputError, list_inputs

    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.wav").write_bytes(b"")
    (root / "a" / "y.wav").write_bytes(b"")
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"{root}\n{root}/a/x.wav\t16000\na/../a/y.wav\t16000\n")
    assert [it.key for it in list_inputs(manifest)] == ["a/x", "a/y"]
    manifest.write_text(f"{root}\n{root}/a/x.wav\t16000\na/x.wav\t16000\n")
    with pytest.raises(InputError, match=re.escape(f"{manifest}:3: key 'a/x' is also given by {manifest}:2")):
        list_inputs(manifest)
    manifest.write_text(f"{root}\n../elsewhere.wav\t16000\n")
    with pytest.raises(InputError, match=re.escape(f"{manifest}:2: '../elsewhere.wav' is outside the root folder {root}")):
        list_inputs(manifest)


def test_layers_and_seconds_at_their_stated_limits(tmp_path):
    """numpy layers (np.array([0, -1]) raised "The truth value of an array ... is ambiguous"; np.int64(3)
    was refused), and --exact-seconds 1e6, inside the range its own refusal stated ("from 1 to 1e6")."""
    from lighthubert.extractor import parse_layers

    assert parse_layers(np.array([0, -1])) == [0, -1] and parse_layers(np.int64(3)) == [3]
    assert parse_layers(torch.tensor([2])) == [2]
    from lighthubert.job import _check_values

    _check_values(ExtractJob(tmp_path, tmp_path / "o.h5", exact_seconds=1e6, layers=np.array([0, -1])))
    with pytest.raises(lighthubert.SettingError, match="from 1 to 1e6 seconds"):
        _check_values(ExtractJob(tmp_path, tmp_path / "o.h5", exact_seconds=1e6 + 1))


def test_arguments_of_the_wrong_kind_are_named_before_any_work(tmp_path):
    """Before: raw TypeErrors (a generator, a set, bytes, None as OUTPUT), and progress=1 or stop=True
    failed after OUTPUT was made, leaving an incomplete file the same call then refused to replace."""
    out = tmp_path / "o.h5"
    folder = str(SPEECH_DIR)
    for bad, says in (((p for p in [folder]), "input: INPUT is a folder, an audio file, a list file or a list of "
                                               "paths (str or Path), not a generator"),
                      ({folder}, "not a set"), (b"/tmp", "not a bytes"), (3, "not an int")):
        with pytest.raises(lighthubert.SettingError, match=re.escape(says)):
            lighthubert.extract(bad, out, checkpoint="random:small", subnet="min", device="cpu")
    with pytest.raises(lighthubert.SettingError, match="OUTPUT is a path"):
        lighthubert.extract(folder, None, checkpoint="random:small", subnet="min", device="cpu")
    for kw, says in ((dict(progress=1), "progress is a function"), (dict(stop=True), "stop is a threading.Event")):
        with pytest.raises(lighthubert.SettingError, match=says):
            lighthubert.extract(folder, out, checkpoint="random:small", subnet="min", device="cpu", **kw)
    assert not out.exists() and not list(tmp_path.iterdir())
    for name in ("batch_seconds", "exact_seconds", "num_workers"):  # said "10 is not ... from 1 to 86400"
        with pytest.raises(lighthubert.SettingError, match=re.escape(f"{name}: '10' is a str, not a number")):
            lighthubert.extract(folder, out, checkpoint="random:small", subnet="min", device="cpu", **{name: "10"})


def test_numeric_settings_take_numpy_numbers_and_refuse_huge_ones_in_one_line(tmp_path):
    """Before: np.int64(30) as window_seconds said "30 is not from 1 to 3600 seconds" (the same for numpy
    floats, Fractions and the other seconds settings, and num_workers), and 10**400 as exact_seconds
    raised a bare OverflowError."""
    import fractions

    from lighthubert.job import ExtractJob, _check_values, prepare

    for kw in (dict(window_seconds=np.int64(30)), dict(context_seconds=np.float32(5.0)), dict(exact_seconds=np.int32(10)),
               dict(batch_seconds=fractions.Fraction(15, 2)), dict(num_workers=np.int64(2)),
               dict(flush_seconds=np.float32(0.5))):
        _check_values(ExtractJob(tmp_path, tmp_path / "o.h5", **kw))
    plan = prepare(ExtractJob(SPEECH_DIR, tmp_path / "o.h5", checkpoint="random:small", subnet="min", device="cpu",
                              batch_seconds=fractions.Fraction(15, 2), window_seconds=np.int64(30)))
    assert plan.options.batch_seconds == 7.5 and type(plan.options.batch_seconds) is float
    assert plan.options.window_seconds == 30.0 and plan.attrs["window_seconds"] == 30.0
    for name in ("exact_seconds", "batch_seconds"):
        with pytest.raises(lighthubert.SettingError, match="^a number of 401 digits is far out of range$") as err:
            _check_values(ExtractJob(tmp_path, tmp_path / "o.h5", **{name: 10**400}))
        assert err.value.setting == name
    with pytest.raises(lighthubert.SettingError, match=r"^window_seconds: 1e\+300 is not from 1 to 3600 seconds$"):
        lighthubert.extract(tmp_path, tmp_path / "o.h5", window_seconds=1e300)


def test_a_stop_with_much_to_join_leaves_the_committed_segments_for_resume(tmp_path, monkeypatch):
    """A stop joined OUTPUT and the segments into a new OUTPUT: a copy of everything done so far, for
    a corpus's features minutes past a preempted job's grace period (measured: 7 s to stop a resume of a
    30,000-key file with 100 new keys). Beyond ``STOP_JOIN_BYTES`` the segments stay committed in
    OUTPUT.parts (the message says so) and ``resume=True`` joins and completes them. Here the bound is 0."""
    import lighthubert.job

    monkeypatch.setattr(lighthubert.job, "STOP_JOIN_BYTES", 0)
    folder = tmp_path / "in"
    for i in range(6):
        (folder / f"s{i}").mkdir(parents=True)
        shutil.copy(SPEECH_DIR / "spk1" / "utt01.wav", folder / f"s{i}" / "a.wav")
    out = tmp_path / "o.h5"
    kw = dict(checkpoint="random:small", subnet="min", layers="0", device="cpu", batch_seconds=5, num_workers=1,
              flush_seconds=0.01)

    def enough(files, *_):
        if files >= 2:
            raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough") as e:
        lighthubert.extract(folder, out, progress=enough, **kw)
    assert f"what was done is kept in {out}.parts" in " ".join(e.value.__notes__)
    committed = sorted(p.name for p in (tmp_path / "o.h5.parts").glob("seg-*.h5"))
    assert committed, "nothing was committed"
    with pytest.warns(lighthubert.LightHubertWarning), lighthubert.open_features(out) as f:
        assert len(f) == 0  # OUTPUT as the run found it (here: created empty at its start)
    summary = lighthubert.extract(folder, out, resume=True, **kw)
    assert summary.output == out and not (tmp_path / "o.h5.parts").exists()
    with lighthubert.open_features(out) as f:
        assert len(f) == 6


def test_a_long_run_commits_less_often_as_it_goes_on(monkeypatch):
    """A run committed its segment every second however long it ran: a 64-hour CPU run would leave
    230,000 segment files for --resume to check (~1.2 ms each) and the join to open (~2 ms each). After
    FLUSH_SECONDS / FLUSH_SHARE (1,000 s) it commits every thousandth of its time so far: a kill still
    loses at most about 0.1% of the run. Here the writer runs 20,000 s of one write a second, on a clock
    the writes move."""
    import lighthubert.pipeline as pipeline
    from lighthubert.defaults import FLUSH_SHARE

    clock = [0.0]
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: clock[0])

    class Segments:
        path, flushes = "out.h5", []

        def write(self, *args, **kwargs):
            clock[0] += 1.0

        def flush(self):
            self.flushes.append(clock[0])

    store = Segments()
    writer = pipeline._Writer(store, 1.0)
    writer.queue = __import__("queue").Queue()
    for _ in range(20_000):
        writer.queue.put(("k", None, "", 0, 0))
    writer.queue.put(None)
    writer.run()  # here, not as a thread: each write moves the clock by a second
    assert writer.error is None
    gaps = [(b - a, b) for a, b in zip([0.0] + store.flushes, store.flushes)]
    assert all(gap <= 2 for gap, at in gaps if at <= 1000)  # a short run: every second or two, as before
    assert all(gap <= max(2.0, at * FLUSH_SHARE + 1) for gap, at in gaps)
    assert 1_500 <= len(store.flushes) <= 3_500, len(store.flushes)  # every 2 s throughout: 10,000
