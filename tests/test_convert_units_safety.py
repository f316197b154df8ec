"""lhb convert and lhb units on a newcomer's path (README "Using the features"): a stop half-way
keeps what the folder held, a layer the file lacks is refused even when the file has no utterances,
an empty path (an unset shell variable) is refused rather than meaning the current folder. Each case
failed before its fix. Features files are written with the storage writer (no model needed)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cli_helpers import Run, one_line
from lighthubert.convert import convert
from lighthubert.errors import SettingError
from lighthubert.reader import FeaturesError, open_features
from lighthubert.storage import OutputError, run_attrs
from lighthubert.storage.hdf5 import FeatureWriter
from lighthubert.units import apply_file

# _features() names audio (/audio/u0.wav) that is not there: a fairseq .tsv of it warns so, rightly
pytestmark = pytest.mark.filterwarnings("ignore:.*audio files cannot be read where the features file says")


def _features(path: Path, n: int, layers: list[int] = [1, 2], dim: int = 4) -> Path:
    """A features file of ``n`` utterances ``u0..`` with (len(layers), 3 + i, dim) features."""
    attrs = run_attrs(layers=layers, subnet={"a": 1}, checkpoint="c.pt", checkpoint_sha256="ab", normalize=True,
                      random_weights=True, params=10, dtype="float32", compute_dtype="float32", version="t",
                      exact_seconds=120.0, window_seconds=60.0, context_seconds=10.0, num_layers=2, embed_dim=dim)
    w = FeatureWriter(path, attrs)
    for i in range(n):
        x = np.full((len(layers), 3 + i, dim), float(i), np.float32)
        w.write(f"u{i}", x, source=f"/audio/u{i}.wav", num_samples=320 * (3 + i) + 80)
    w.close(complete=True)
    return path


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Stop(KeyboardInterrupt):
    pass


def _stop_at(n: int):
    def progress(done: int, total: int) -> None:
        if done == n:
            raise Stop  # as Ctrl-C would, half-way through the utterances
    return progress


@pytest.mark.parametrize("fmt", ["fairseq", "npy", "kaldi"])
def test_convert_stopped_half_way_keeps_the_old_conversion(tmp_path, fmt):
    """Before: the new .npy was written in place over the old one, so a stop left a new, half-filled
    .npy beside the old .len/.keys (fairseq then reads rows that do not match the lengths)."""
    small, big = _features(tmp_path / "small.h5", 2), _features(tmp_path / "big.h5", 6)
    out = tmp_path / "conv"
    convert(small, out, fmt, 2)
    before = _tree(out)
    with pytest.raises(Stop):
        convert(big, out, fmt, 1, overwrite=True, progress=_stop_at(4))
    assert _tree(out) == before  # no temporary file left, nothing replaced
    convert(big, out, fmt, 1, overwrite=True)  # the next run replaces it whole
    if fmt == "fairseq":
        x = np.load(out / "train_0_1.npy")
        lens = [int(v) for v in (out / "train_0_1.len").read_text().split()]
        assert x.shape == (sum(lens), 4) and lens == [3, 4, 5, 6, 7, 8]
        assert (out / "train_0_1.keys").read_text().split() == [f"u{i}" for i in range(6)]
        assert x[-8:].tolist() == [[5.0] * 4] * 8
    assert not [p for p in out.rglob(".*")]


def test_a_layer_the_file_lacks_is_refused_also_without_utterances(tmp_path):
    """Before: a features file without utterances converted (and took units) of any layer, writing
    empty files as if the layer were there."""
    empty = _features(tmp_path / "empty.h5", 0)
    with pytest.raises(SettingError, match=r"empty.h5: has no layer 6 \(it holds layers \[1, 2\]\)"):
        convert(empty, tmp_path / "out", "fairseq", 6)
    assert not (tmp_path / "out").exists()
    km = {"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 6, "clusters": 2}
    with pytest.raises(FeaturesError, match="has no layer 6"):
        apply_file(empty, km, tmp_path / "u.km")
    assert not (tmp_path / "u.km").exists()
    assert convert(empty, tmp_path / "ok", "fairseq", 2)  # a layer it holds: empty files, as asked


def test_empty_paths_are_refused_not_taken_as_the_current_folder(tmp_path):
    """Before: ``lhb convert feats.h5 "$OUT"`` with OUT unset wrote train_0_1.npy and friends into
    the current folder; the units commands said '.: is a folder'."""
    feats = _features(tmp_path / "f.h5", 2)
    km = tmp_path / "km.pt"
    torch.save({"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}, km)
    work = tmp_path / "work"
    work.mkdir()
    calls = [["convert", feats, "", "--layer", "1"], ["convert", "", "out", "--layer", "1"],
             ["units", "apply", feats, km, ""], ["units", "apply", feats, "", "u.km"],
             ["units", "learn", feats, "", "--layer", "1"]]
    runs = [Run(c, cwd=work) for c in calls]  # all at once
    for run in runs:
        p = run.result()
        line = one_line(p)
        assert p.returncode == 2 and "an empty path" in line, line
    assert os.listdir(work) == []


def test_a_file_that_is_not_a_kmeans_file_says_so(tmp_path):
    """Before: a text file given as KM said 'not a k-means file (KeyError)'."""
    from lighthubert.units import load_km

    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    with pytest.raises(FeaturesError, match=r"notes.txt: not a k-means file made by lhb units learn \(torch cannot load it\)$"):
        load_km(notes)
    with pytest.raises(FeaturesError, match=f"{tmp_path}: is a folder, not a k-means file$"):
        load_km(tmp_path)


def test_a_kmeans_file_given_as_a_checkpoint_is_named_as_such(tmp_path, ckpts):
    """Before: 'km.pt: not a LightHuBERT checkpoint (no 'cfg' and 'model' entries)' (both are .pt
    files, easily swapped); and lhb info wrote an exported subnet's weights as "['float16', 'float32']"."""
    import lighthubert
    from lighthubert.checkpoint import CheckpointError

    km = tmp_path / "km.pt"
    torch.save({"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}, km)
    with pytest.raises(CheckpointError, match=r"km.pt: a k-means file made by lhb units learn \(lhb units apply reads it\), not a LightHuBERT checkpoint$"):
        lighthubert.load_checkpoint(km)
    exported = lighthubert.export_subnet(ckpts["small"], "min", tmp_path / "min.pt")
    p = Run(["info", exported]).result()
    weights = [ln.split(None, 1)[1] for ln in p.stdout.splitlines() if ln.strip().startswith("weights")]
    assert p.returncode == 0 and len(weights) == 1 and "[" not in weights[0] and "'" not in weights[0], p.stdout


def test_export_layers_are_checked_before_anything_is_printed(tmp_path, ckpt_files):
    """Before: 'lhb subnet ... --export x.ts --layers 0,99' printed the subnet and wrote -o, then
    failed naming x.ts (lhb extract names --layers); --sample 2 with --export printed both first."""
    small = ckpt_files["small"]
    cases = {("--preset", "min", "--layers", "0,99"): "lhb: error: --layers: layer 99 is out of range: this subnet has hidden states 0..10",
             ("--preset", "min", "--layers", "foo"): "lhb: error: --layers: layers must be last, all or comma-separated integers, got 'foo'",
             ("--sample", "2"): "lhb: error: --export takes one subnet"}
    runs = {args: Run(["subnet", *args, "-c", small, "--export", tmp_path / "x.ts", "-o", tmp_path / "s.json"])
            for args in cases}
    for args, line in cases.items():
        p = runs[args].result()
        assert p.returncode == 2 and p.stdout == "" and p.err_lines[-1] == line, p
        assert "Traceback" not in p.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_stop_in_a_log_prints_no_blank_line(tmp_path):
    """Before: the 'stopping after the current batch' line began with a new line meant for the
    terminal's ^C echo, so a log (stderr not a terminal) got an empty line (README: one line each)."""
    import signal
    import subprocess

    import soundfile as sf

    from cli_helpers import _env, lhb_command
    from helpers import SPEECH_DIR
    from lighthubert.audio import load_audio

    utt = SPEECH_DIR / "spk1" / "utt03.wav"
    if not utt.is_file():
        pytest.skip("needs the speech data")
    wave = load_audio(utt)
    # two files of about 40 s in two batches: the Ctrl-C lands during the first, so a second is left to
    # skip (with one batch, a signal that came after its launch let the whole run finish, exit 0)
    (tmp_path / "wav").mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / "wav" / name, np.tile(wave, 40 * 16000 // len(wave)), 16000)
    proc = subprocess.Popen(lhb_command() + ["extract", str(tmp_path / "wav"), str(tmp_path / "o.h5"), "-c",
                                             "random:small", "--subnet", "min", "--device", "cpu",
                                             "--batch-seconds", "45"],
                            stderr=subprocess.PIPE, text=True, env=_env(), stdin=subprocess.DEVNULL)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("extracting"):
                proc.send_signal(signal.SIGINT)
                break
        lines += proc.stderr.readlines()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and any(ln.startswith("stopping after the current batch (SIGINT)") for ln in lines), lines
    assert all(ln.strip() for ln in lines), lines


def test_merge_counts_in_words(tmp_path):
    """Before: 'merged 1 parts into m.h5: 1 utterances'."""
    part = _features(tmp_path / "p.h5", 1)
    p = Run(["merge", tmp_path / "m.h5", part]).result()
    assert p.returncode == 0 and p.err_lines[-1].startswith(f"merged 1 part into {tmp_path / 'm.h5'}: 1 utterance ("), p
    assert part.is_file()  # kept without --remove-parts
    p = Run(["merge", tmp_path / "m.h5", part, "-q"]).result()  # -q, as the other commands that write files have
    assert p.returncode == 0 and p.err_lines == [] and part.is_file(), p


def test_info_of_a_torchscript_export_gives_its_output_shape(tmp_path, ckpts):
    """Before: lhb info showed a .ts file's output as (batch, layers, frames, embed_dim), where an
    .onnx file of the same export shows (batch, 2, frames, 256)."""
    from lighthubert.deploy import describe, export

    path = export(ckpts["small"], "min", tmp_path / "min.ts", layers="0,2")
    out = describe(path)["outputs"][0]
    assert out["name"] == "hidden_states" and out["shape"] == ["batch", 2, "frames", 256], out


def test_units_never_write_over_the_files_they_read(tmp_path):
    """Before: 'lhb units apply f.h5 km.pt f.h5' replaced the features file by the units (also
    through a link), 'lhb units apply f.h5 km.pt km.pt' the k-means file by text, and 'lhb units
    learn f.h5 f.h5' the features file by the centroids."""
    feats = _features(tmp_path / "f.h5", 3)
    km = tmp_path / "km.pt"
    torch.save({"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}, km)
    (tmp_path / "link.h5").symlink_to("f.h5")
    before = _tree(tmp_path)
    cases = [(["units", "apply", feats, km, feats], f"{feats}: is the input {feats} itself"),
             (["units", "apply", feats, km, tmp_path / "link.h5"], f"{tmp_path / 'link.h5'}: is the input {feats} itself"),
             (["units", "apply", feats, km, km], f"{km}: is the input {km} itself"),
             (["units", "learn", feats, feats, "--layer", "1", "-k", "2"], f"{feats}: is the input {feats} itself")]
    runs = [Run(args) for args, _ in cases]  # all at once
    for (_, line), run in zip(cases, runs):
        p = run.result()
        assert p.returncode == 1 and one_line(p) == f"lhb: error: {line}; give another file to write", p
    assert _tree(tmp_path) == before


def test_fifos_are_neither_read_as_k_means_nor_replaced_by_files(tmp_path):
    """Before: units apply with a FIFO as KM waited forever; units learn KM=FIFO, subnet --export FIFO and
    units apply OUT.h5=FIFO replaced the FIFO with a file (or failed in two lines of HDF5's words)."""
    import stat

    feats = _features(tmp_path / "f.h5", 3)
    km = tmp_path / "km.pt"
    torch.save({"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}, km)
    fifo_km, fifo_h5, fifo_pt = tmp_path / "kf.pt", tmp_path / "uf.h5", tmp_path / "ex.pt"
    for f in (fifo_km, fifo_h5, fifo_pt):
        os.mkfifo(f)
    never = "is a FIFO, not a regular file; it is never replaced by one: give a file name"
    cases = [(["units", "apply", feats, fifo_km, tmp_path / "u.km"], f"{fifo_km}: is a FIFO, not a k-means file"),
             (["units", "learn", feats, fifo_km, "--layer", "1", "-k", "2"], f"{fifo_km}: {never}"),
             (["units", "apply", feats, km, fifo_h5], f"{fifo_h5}: {never}"),
             (["subnet", "--preset", "min", "-c", "random:small", "--export", fifo_pt], f"{fifo_pt}: {never}")]
    runs = [Run(args) for args, _ in cases]
    for (_, line), run in zip(cases, runs):
        p = run.result()
        assert p.returncode == 1 and one_line(p) == f"lhb: error: {line}", p
    assert all(stat.S_ISFIFO(f.stat().st_mode) for f in (fifo_km, fifo_h5, fifo_pt))


def test_existing_outputs_are_kept_without_overwrite(tmp_path):
    """Before: lhb convert and lhb units learn/apply replaced what they found (a k-means file that
    units had been taken with, say) without a word, where lhb extract refuses an existing OUTPUT. Now
    each refuses before any work, naming the file, and --overwrite replaces it."""
    feats = _features(tmp_path / "f.h5", 3)
    km, units, conv = tmp_path / "km.pt", tmp_path / "u.km", tmp_path / "conv"
    conv.mkdir()
    (conv / "train.tsv").write_text("old\n")  # one of the four files fairseq's layout writes
    (conv / "notes.txt").write_text("mine\n")  # not one of them
    km.write_bytes(b"old km")
    units.write_text("old units\n")
    (tmp_path / "link.km").symlink_to("u.km")
    before = _tree(tmp_path)
    cases = [(["convert", feats, conv, "--layer", "1"], conv / "train.tsv"),
             (["units", "learn", feats, km, "--layer", "1", "-k", "2"], km),
             (["units", "apply", feats, km, units], units),
             (["units", "apply", feats, km, tmp_path / "link.km"], tmp_path / "link.km")]
    runs = [Run(args) for args, _ in cases]  # all at once
    for (_, path), run in zip(cases, runs):
        p = run.result()
        assert p.returncode == 1 and one_line(p) == f"lhb: error: {path}: already exists; pass --overwrite to replace it", p
    assert _tree(tmp_path) == before
    runs = [Run(["convert", feats, conv, "--layer", "1", "-q", "--overwrite"]),
            Run(["units", "learn", feats, km, "--layer", "1", "-k", "2", "-q", "--overwrite"])]
    for run in runs:
        assert run.result().returncode == 0, run.result()
    p = Run(["units", "apply", feats, km, units, "-q", "--overwrite"]).result()
    assert p.returncode == 0, p
    assert (conv / "notes.txt").read_text() == "mine\n" and (conv / "train.tsv").read_text() != "old\n"
    assert torch.load(km, weights_only=True)["clusters"] == 2
    assert len(units.read_text().splitlines()) == 3 and (tmp_path / "link.km").is_symlink()
    assert sorted(p.name for p in convert(feats, conv, "npy", 1)) == ["u0.npy", "u1.npy", "u2.npy"]
    with pytest.raises(OutputError, match=re.escape(f"{conv}/u0.npy: already exists (and 2 more of the files to write)")):
        convert(feats, conv, "npy", 1)


def test_k_means_settings_below_one_are_refused_naming_them(tmp_path):
    """Before: learn_file(batch_size=0) returned the k-means++ start as if learnt, iterations=0 the
    same; lhb units learn refused both (its options start at 1), the library did not."""
    from lighthubert.units import learn_file

    feats = _features(tmp_path / "f.h5", 3)
    for kwargs, setting in ((dict(batch_size=0), "batch_size"), (dict(iterations=0), "iterations"),
                            (dict(max_frames=0), "max_frames"), (dict(iterations=2.5), "iterations")):
        with pytest.raises(SettingError, match=rf"^{setting}=.* is not a whole number from 1") as e:
            learn_file(feats, 1, 2, device="cpu", **kwargs)
        assert e.value.setting == setting
    km = learn_file(feats, 1, 2, device="cpu", batch_size=np.int64(4), iterations=np.int64(2), max_frames=np.int64(9))
    assert km["clusters"] == 2  # numpy integers are whole numbers (as before the check)


def test_a_damaged_k_means_file_is_refused_naming_what_is_wrong(tmp_path):
    """Before: one NaN centroid gave every frame unit 0 (exit 0), no centroids an internal error, and a
    'clusters' entry other than the centroids' count was taken; lhb info described them all."""
    from lighthubert.units import describe_km, load_km

    feats = _features(tmp_path / "f.h5", 3)
    good = {"format": "lighthubert-kmeans", "centroids": torch.arange(8.0).reshape(2, 4), "layer": 1, "clusters": 2}
    nan = good["centroids"].clone()
    nan[0, 0] = float("nan")
    cases = {"nan": ({"centroids": nan}, "its centroids hold NaN or infinite values"),
             "empty": ({"centroids": torch.zeros(0, 4), "clusters": 0}, r"its centroids are empty \(0, 4\)"),
             "count": ({"clusters": 999}, "it says 999 clusters but holds 2 centroids"),
             "ints": ({"centroids": torch.zeros(2, 4, dtype=torch.int64)}, r"its centroids are not a \(clusters, dim\) float tensor"),
             "layer": ({"layer": "1"}, "its layer '1' is not a whole number"),
             "noclusters": ({"clusters": None}, "it says None clusters but holds 2 centroids")}  # was a KeyError later
    for name, (change, says) in cases.items():
        km = tmp_path / f"{name}.pt"
        torch.save({**good, **change}, km)
        with pytest.raises(FeaturesError, match=f"^{re.escape(str(km))}: a damaged k-means file: {says}$"):
            apply_file(feats, km, tmp_path / f"{name}.km")
        with pytest.raises(SettingError, match=f"^a damaged k-means dict: {says}$"):
            apply_file(feats, {**good, **change}, tmp_path / f"{name}.km")
        assert re.fullmatch(says, describe_km({**good, **change})["damaged"])
        assert not (tmp_path / f"{name}.km").exists()
    torch.save(good, tmp_path / "good.pt")
    assert describe_km(load_km(tmp_path / "good.pt"))["damaged"] is None
    assert apply_file(feats, tmp_path / "good.pt", tmp_path / "good.km") == 3


def test_features_files_edited_by_other_tools_are_read_right_or_refused_in_one_line(tmp_path):
    """What h5py lets another tool write. Before: a bytes 'source' put b'...' into every train.tsv line; a
    second (hard) link to a dataset hid one key from every reader; a key with a new line split the .keys
    file from the .len file; a missing 'source' listed the current folder as audio; big-endian floats
    failed with numpy's words and no file named; '/features' as a dataset and a non-numeric
    'num_samples' were internal errors."""
    from lighthubert.storage.hdf5 import describe

    def edited(name: str, edit) -> Path:
        path = _features(tmp_path / f"{name}.h5", 3)
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    f = edited("bytes", lambda f: [f[f"features/u{i}"].attrs.__setitem__("source", np.bytes_(f"/audio/u{i}.wav".encode()))
                                   for i in range(3)])
    convert(f, tmp_path / "bytes", "fairseq", 1)
    assert (tmp_path / "bytes" / "train.tsv").read_text().splitlines()[:2] == ["/audio", "u0.wav\t1040"]
    f = edited("linked", lambda f: f.__setitem__("features/alias", f["features/u1"]))
    with open_features(f) as got:
        assert got.keys == ["alias", "u0", "u1", "u2"] and torch.equal(got["alias"], got["u1"])
    f = edited("bigendian", lambda f: (f.move("features/u2", "old"), f.create_dataset("features/u2", data=f["old"][()].astype(">f4")),
                                       f["features/u2"].attrs.update(f["old"].attrs), f.__delitem__("old")))
    with open_features(f) as got:
        assert torch.equal(got["u2"], torch.full((2, 5, 4), 2.0))
    convert(f, tmp_path / "bigendian", "npy", 2)
    assert np.load(tmp_path / "bigendian" / "u2.npy").tolist() == [[2.0] * 4] * 5
    cases = [("newline", lambda f: f.move("features/u1", "features/u\n1"), FeaturesError,
              r"dataset 'features/u\\n1' has a control character in its key"),
             ("nosource", lambda f: f["features/u1"].attrs.__delitem__("source"), FeaturesError,
              "u1: no 'source' attribute \\(the audio file\\), which fairseq's .tsv lists; use --format npy or kaldi"),
             ("dataset", lambda f: (f.__delitem__("features"), f.create_dataset("features", data=np.zeros((3, 4), "f4"))),
              FeaturesError, "'/features' is not a group of features \\(it is a dataset\\)"),
             ("samples", lambda f: f["features/u1"].attrs.__setitem__("num_samples", "abc"), FeaturesError,
              "u1: attribute 'num_samples' is not a number of samples \\('abc'\\)"),
             ("nolayers", lambda f: f.attrs.__delitem__("layers"), FeaturesError,  # was "--layer: ... say which one"
              "has no 'layers' attribute \\(which hidden states it holds\\)")]
    for name, edit, error, says in cases:
        f = edited(name, edit)
        with pytest.raises(error, match=f"^{re.escape(str(f))}: {says}"):
            convert(f, tmp_path / name, "fairseq", 1)
        assert not (tmp_path / name).exists()
    with pytest.raises(FeaturesError, match="attribute 'num_samples' is not a number of samples"):
        describe(tmp_path / "samples.h5")


def test_files_replaced_with_overwrite_keep_their_permissions(tmp_path):
    """Before: a features, k-means, units or converted file replaced with --overwrite (or by a merge)
    came back with the umask's mode: a file made group-only (0640) or private (0600) became readable
    by everyone. Only lhb subnet -o kept the mode; now every file written whole keeps it."""
    from lighthubert.checkpoint import save_atomic
    from lighthubert.storage import merge_parts

    def mode(p: Path) -> int:
        return p.stat().st_mode & 0o777

    feats = _features(tmp_path / "f.h5", 3)
    feats.chmod(0o440)  # read-only: the new file must still be reopened to be written (as any user, root or not)
    _features(feats, 4)  # as lhb extract --overwrite writes it
    assert mode(feats) == 0o640
    feats.chmod(0o640)
    _features(feats, 4)
    assert mode(feats) == 0o640
    part = _features(tmp_path / "part.h5", 2)
    with h5py.File(part, "a") as f:
        f["features"].move("u0", "v0")  # keys not in f.h5, so the merge adds them
        f["features"].move("u1", "v1")
    feats.chmod(0o600)
    assert merge_parts(feats, [part])[0] == 6 and mode(feats) == 0o600
    km = tmp_path / "km.pt"
    km.write_bytes(b"old")
    km.chmod(0o640)
    save_atomic({"clusters": 2}, km)  # as lhb units learn --overwrite writes it
    units, conv = tmp_path / "u.km", tmp_path / "conv"
    units.write_text("old\n")
    units.chmod(0o600)
    torch.save({"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}, tmp_path / "k.pt")
    apply_file(feats, tmp_path / "k.pt", units, overwrite=True)
    convert(feats, conv, "npy", 1)
    (conv / "u0.npy").chmod(0o604)
    convert(feats, conv, "npy", 1, overwrite=True)
    assert (mode(km), mode(units), mode(conv / "u0.npy")) == (0o640, 0o600, 0o604)
    assert len(units.read_text().splitlines()) == 6 and torch.load(km)["clusters"] == 2


def test_a_file_of_a_stopped_run_is_used_with_one_line_saying_so(tmp_path):
    """Before: converting (or taking units of) the file of an interrupted lhb extract gave a partial
    set of utterances without a word."""
    import h5py

    feats = _features(tmp_path / "f.h5", 3)
    with h5py.File(feats, "a") as h:
        h.attrs["complete"] = False
    km = tmp_path / "km.pt"
    torch.save({"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}, km)
    line = (f"lhb: warning: {feats}: incomplete (its extraction stopped or is still running; the same run with --resume, or resume=True in Python, completes it); "
            "using the 3 utterances it holds")
    # npy: the fairseq layout would also warn that its .tsv lists audio (/audio/u0.wav) that is not there
    runs = [Run(["convert", feats, tmp_path / "out", "--layer", "1", "-q", "-f", "npy"]), Run(["units", "apply", feats, km, "-", "-q"]),
            Run(["units", "learn", feats, tmp_path / "k2.pt", "--layer", "1", "-k", "2", "-q"])]
    for run in runs:
        p = run.result()
        assert p.returncode == 0 and p.err_lines == [line], p
    assert len(runs[1].result().stdout.splitlines()) == 3
    _features(tmp_path / "done.h5", 2)
    p = Run(["convert", tmp_path / "done.h5", tmp_path / "out2", "--layer", "1", "-q", "-f", "npy"]).result()
    assert p.returncode == 0 and p.err_lines == [], p


def test_file_arguments_read_alike_in_every_help():
    """Before: extract and merge showed file arguments as <Path>, convert and units as <path>, and
    subnet's -o as <path>; now every file argument is <Path> (and -o names a FILE)."""
    commands = [["extract"], ["merge"], ["convert"], ["units", "learn"], ["units", "apply"], ["subnet"]]
    runs = [Run([*c, "--help"]) for c in commands]
    for c, run in zip(commands, runs):
        p = run.result()
        assert p.returncode == 0 and "<path>" not in p.stdout, (c, p.stdout)
        assert ("<Path>" in p.stdout) == (c != ["subnet"]), (c, p.stdout)


def test_convert_into_a_read_only_folder_names_the_file_asked_for(tmp_path):
    """The failure names train_0_1.npy, not the temporary '.train_0_1.npy.PID.XXXX.part' it writes first.
    The folder is read-only by its mode, or for root (who writes anyway) a read-only filesystem."""
    feats = _features(tmp_path / "f.h5", 2)
    out = tmp_path / "ro"
    out.mkdir()
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)], capture_output=True).returncode:
            pytest.skip("root, and no read-only tmpfs can be mounted here")
        reason = "Read-only file system"
    else:
        out.chmod(0o555)
        reason = "Permission denied"
    try:
        p = Run(["convert", feats, out, "--layer", "1"]).result()
        left = os.listdir(out)
    finally:
        subprocess.run(["umount", str(out)]) if as_root else out.chmod(0o755)
    assert p.returncode == 1 and one_line(p) == f"lhb: error: {out}/train_0_1.npy: cannot write ({reason})", p
    assert left == []


def test_a_features_path_that_is_a_fifo_or_a_broken_link_says_which(tmp_path):
    """Before: open_features (lhb convert, lhb units, lhb merge's reader) said 'no such file' for a
    FIFO and for a broken link, which ls shows."""
    import lighthubert

    os.mkfifo(tmp_path / "fifo.h5")
    (tmp_path / "broken.h5").symlink_to("nowhere.h5")
    for name, why in (("fifo.h5", r"not a regular file \(a FIFO, device or socket\)"),
                      ("broken.h5", r"a symbolic link to nothing \(broken, or a loop\)"),
                      ("missing.h5", "no such file")):
        with pytest.raises(FeaturesError, match=f"{name}: {why}$"):
            lighthubert.open_features(tmp_path / name)


def test_leftovers_of_killed_conversions_and_merges_are_removed(tmp_path):
    """Before: after a kill -9, a conversion's `.NAME.PID.HEX.part` and a merge's `.NAME.PID.HEX.merging`
    (hundreds of MB) stayed through every later run; only lhb extract removed its own. A live process's
    temporary file is left alone. Also before: convert made a chain of missing folders from a typo."""
    feats = _features(tmp_path / "f.h5", 2)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    out = tmp_path / "conv"
    out.mkdir()
    stale = out / f".train_0_1.npy.{dead.pid}.0a1b2c3d.part"
    live = out / f".train_0_1.len.{os.getppid()}.0a1b2c3d.part"
    # not temporary files of this conversion's files (before: removed, as anything '.*.part' at any depth)
    mine, other = out / "sub" / ".dataset.2024.v1.part", out / f".valid_0_1.npy.{dead.pid}.0a1b2c3d.part"
    mine.parent.mkdir()
    for f in (stale, live, mine, other):
        f.write_bytes(b"half")
    convert(feats, out, "fairseq", 2)
    assert not stale.exists() and live.exists() and mine.exists() and other.exists()
    merging = tmp_path / f".m.h5.{dead.pid}.0a1b2c3d.merging"
    merging.write_bytes(b"half a merge")
    p = Run(["merge", tmp_path / "m.h5", feats]).result()
    assert p.returncode == 0 and not merging.exists(), p
    with pytest.raises(OutputError, match="the folder .*nope does not exist"):
        convert(feats, tmp_path / "nope" / "conv", "npy", 2)
    assert not (tmp_path / "nope").exists()


def test_keys_as_long_as_a_file_name_allows_convert_to_npy(tmp_path):
    """A key of 251 bytes is a 255-byte KEY.npy, which the file system takes; its temporary file was
    23 bytes longer ('.KEY.npy.PID.HEX.part') and the conversion failed with 'File name too long'.
    Such names (also of several bytes a character) are cut and hashed in the temporary name, and a
    killed conversion's leftover of that kind is still recognised and removed. A longer key is
    refused before anything is written."""
    from lighthubert.files import new_temp_beside

    attrs = run_attrs(layers=[1], subnet={"a": 1}, checkpoint="c.pt", checkpoint_sha256="ab", normalize=True,
                      random_weights=True, params=10, dtype="float32", compute_dtype="float32", version="t",
                      exact_seconds=120.0, window_seconds=60.0, context_seconds=10.0, num_layers=2, embed_dim=4)
    names = ["a" * 251, "é" * 125 + "b"]  # 251 bytes each
    feats = tmp_path / "f.h5"
    w = FeatureWriter(feats, attrs)
    for i, name in enumerate(names):
        w.write(name, np.full((1, 3, 4), float(i), np.float32), source=f"/audio/{i}.wav", num_samples=1040)
    w.close(complete=True)
    out = tmp_path / "npy"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    left = new_temp_beside(out / f"{names[0]}.npy")  # as a killed conversion leaves it
    assert len(os.fsencode(left.name)) <= 255
    stale = left.with_name(left.name.replace(f".{os.getpid()}.", f".{dead.pid}."))
    left.rename(stale)
    convert(feats, out, "npy", 1)
    assert sorted(os.listdir(out)) == sorted(f"{n}.npy" for n in names)  # the leftover was removed
    for i, name in enumerate(names):
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), np.full((3, 4), float(i), np.float32))
    # a byte more: KEY.npy cannot be named at all, which is said before anything is written (the short
    # temporary names let every file be written and only the last renames fail, the others in place)
    w = FeatureWriter(feats, attrs)
    for i, name in enumerate(["a", "c" * 252]):
        w.write(name, np.full((1, 3, 4), float(i), np.float32), source=f"/audio/{i}.wav", num_samples=1040)
    w.close(complete=True)
    with pytest.raises(OutputError, match=re.escape(f"{tmp_path / 'new' / ('c' * 252)}.npy: the name is too long for a "
                                                    "file name (256 bytes; the folder takes 255); give the utterance")):
        convert(feats, tmp_path / "new", "npy", 1)
    assert not (tmp_path / "new").exists()


def test_convert_never_writes_over_its_features_file_or_a_folder(tmp_path):
    """Before: with --overwrite, FEATURES named like a file to write (lhb extract wavs data/train.ark)
    was replaced by the conversion, and a folder named like one failed after other files were in place."""
    (tmp_path / "data").mkdir()
    feats = _features(tmp_path / "data" / "train.ark", 2)
    before = feats.read_bytes()
    with pytest.raises(OutputError, match=re.escape(f"{feats}: is FEATURES itself ({feats}), which would be replaced")):
        convert(feats, tmp_path / "data", "kaldi", 2, overwrite=True)
    assert feats.read_bytes() == before
    km = {"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}
    with pytest.raises(OutputError, match=re.escape(f"{feats}: is FEATURES itself; give another file")):
        apply_file(feats, km, feats, overwrite=True)  # the command refused it; the library did not
    assert feats.read_bytes() == before
    (tmp_path / "out" / "u0.npy").mkdir(parents=True)
    with pytest.raises(OutputError, match=re.escape(f"{tmp_path / 'out' / 'u0.npy'}: is a folder, where a file is to be written")):
        convert(feats, tmp_path / "out", "npy", 2, overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["u0.npy"]


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    """Before: the fairseq .npy was memory-mapped, so a full disk killed lhb convert with SIGBUS and
    left its temporary file; torch's writers said 'unexpected pos' (or, for TorchScript, aborted)."""
    import h5py

    import lighthubert

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        feats = _features(tmp_path / "f.h5", 3, dim=40_000)  # 4.8 MB of layer 1
        with pytest.raises(OutputError, match=re.escape(f"{disk / 'c'}: cannot write the fairseq files (no space left "
                                                        "on the device); nothing was changed there")):
            convert(feats, disk / "c", "fairseq", 1)
        p = Run(["convert", feats, disk / "k", "--layer", "1", "-f", "kaldi", "-q"]).result()
        assert p.returncode == 1 and p.err_lines == [f"lhb: error: {disk / 'k'}: cannot write the kaldi files (no space "
                                                     "left on the device); nothing was changed there"], p
        with pytest.raises(OSError, match="No space left on device"):
            lighthubert.write_random_checkpoint(disk / "r.pt", "small")
        nested = _features(tmp_path / "nested.h5", 0)
        with h5py.File(nested, "a") as f:  # keys in a subfolder: npy files in one
            f["features/spk/u0"] = np.full((2, 100_000, 4), 1.0, np.float32)
        with pytest.raises(OutputError, match=re.escape(f"{disk / 'n'}: cannot write the npy files (no space left on the "
                                                        "device, or a file size limit (a short write))")):
            convert(nested, disk / "n", "npy", 1)
        assert list(disk.iterdir()) == []  # no temporary file, and not the folders made for them
        with open(disk / "filler", "wb") as fh:  # the rest of the disk
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        km = {"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}
        for name in ("u.km", "u.h5"):  # before: 'No space left on device' naming no file, or h5py's many lines
            with pytest.raises(OutputError, match=re.escape(f"{disk / name}: cannot write (no space left on the device)")):
                apply_file(nested, km, disk / name)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)])


def test_units_refuse_features_k_means_cannot_use(tmp_path):
    """Before: a NaN in the features gave a k-means file with a NaN centroid (exit 0) and units taken
    with it, a value of 1e30 'internal error: RuntimeError: invalid multinomial distribution', and
    --keys wrote a key with a space so that the line read as one more unit."""
    import h5py

    from lighthubert.units import learn_file

    km = {"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}
    for value, what in ((float("nan"), "NaN or infinite values"), (1e30, "a value of 1e+30 (features are far smaller)")):
        feats = _features(tmp_path / f"{value}.h5", 3)
        with h5py.File(feats, "a") as f:
            f["features/u1"][0, 2, 1] = value
        message = re.escape(f"{feats}: u1: holds {what}; k-means needs finite features (extract them again)")
        with pytest.raises(FeaturesError, match=message):
            learn_file(feats, 1, 2, iterations=2)
        with pytest.raises(FeaturesError, match=message):
            apply_file(feats, km, tmp_path / "u.km", overwrite=True)
        assert not (tmp_path / "u.km").exists()
    spaced = tmp_path / "spaced.h5"
    w = FeatureWriter(spaced, run_attrs(layers=[1, 2], subnet={"a": 1}, checkpoint="c.pt", checkpoint_sha256="ab",
                                        normalize=True, random_weights=True, params=10, dtype="float32",
                                        compute_dtype="float32", version="t", exact_seconds=120.0, window_seconds=60.0,
                                        context_seconds=10.0, num_layers=2, embed_dim=4))
    w.write("a b", np.zeros((2, 3, 4), np.float32), source="/audio/a b.wav", num_samples=1040)
    w.close(complete=True)
    with pytest.raises(FeaturesError, match=re.escape("key 'a b' has white space, which a line 'KEY units...' cannot hold")):
        apply_file(spaced, km, tmp_path / "k.km", keys=True)
    assert apply_file(spaced, km, tmp_path / "k.km") == 1  # without the keys, a line of units
    from lighthubert.convert import convert

    with pytest.raises(FeaturesError, match=re.escape(
            "key 'a b' has white space, which Kaldi cannot hold; extract from a .scp list ('key path' lines) to choose "
            "keys without it, or use --format npy or fairseq")):
        convert(spaced, tmp_path / "kaldi", "kaldi", 1)
    assert not (tmp_path / "kaldi").exists()


def test_units_are_taken_only_with_features_of_the_model_the_k_means_was_learnt_on(tmp_path):
    """Before: only the width was checked, so a k-means file learnt on one checkpoint or subnet gave
    meaningless units on the features of another of the same width, with exit 0."""
    import h5py

    from lighthubert.units import learn_file

    ours = _features(tmp_path / "ours.h5", 4)
    other_ckpt, other_subnet = _features(tmp_path / "oc.h5", 4), _features(tmp_path / "os.h5", 4)
    with h5py.File(other_ckpt, "a") as f:
        f.attrs["checkpoint_sha256"] = f.attrs["supernet_sha256"] = "cd"
    with h5py.File(other_subnet, "a") as f:
        f.attrs["subnet"] = '{"a": 2}'
    km = learn_file(ours, 1, 2, seed=0)
    assert km["model"] == {"checkpoint": "ab", "subnet": '{"a": 1}'}
    assert apply_file(ours, km, tmp_path / "ok.km") == 4
    for path, what in ((other_ckpt, "checkpoint"), (other_subnet, "subnet")):
        with pytest.raises(FeaturesError, match=f"^{re.escape(str(path))}: made with another {what} than the features "
                           f"the k-means file was learnt from \\({re.escape(str(ours))}\\); its units would mean nothing"):
            apply_file(path, km, tmp_path / f"{what}.km")
        assert not (tmp_path / f"{what}.km").exists()
    older = {k: v for k, v in km.items() if k != "model"}  # a k-means file from before the check: not judged
    assert apply_file(other_ckpt, older, tmp_path / "old.km") == 4


def test_features_of_an_exported_subnet_name_the_supernet_they_come_from(ckpts, tmp_path):
    """A k-means file learnt on features of `-c small --subnet X` applies to those of `-c x.pt` (X
    exported from it): the same numbers. `supernet_sha256` is the supernet's for both."""
    import lighthubert
    from lighthubert.job import ExtractJob, prepare

    wav = tmp_path / "a.wav"
    import soundfile as sf
    sf.write(str(wav), np.zeros(16000, np.float32), 16000)
    exported = lighthubert.export_subnet(ckpts["small"], "min", tmp_path / "min.pt")
    direct = prepare(ExtractJob(input=wav, output=tmp_path / "d.h5", checkpoint=ckpts["small"].source, subnet="min"))
    via = prepare(ExtractJob(input=wav, output=tmp_path / "e.h5", checkpoint=exported))
    assert ckpts["small"].sha256 and direct.attrs["supernet_sha256"] == via.attrs["supernet_sha256"] == ckpts["small"].sha256
    assert via.attrs["checkpoint_sha256"] != ckpts["small"].sha256


def test_a_dataset_declaring_more_than_memory_is_named(tmp_path):
    """A damaged or hostile 1 MB file declaring a (1e10, 4) chunked dataset. Before: 'lhb: internal
    error: MemoryError: Unable to allocate ...', naming neither the file nor the key."""
    import h5py

    from lighthubert.reader import open_features

    path = _features(tmp_path / "f.h5", 2, layers=[1])
    with h5py.File(path, "a") as f:
        attrs = dict(f["features/u0"].attrs)
        del f["features/u0"]
        f.create_dataset("features/u0", shape=(10**13, 4), dtype="float32", chunks=(1024, 4)).attrs.update(attrs)
    with open_features(path) as f, pytest.raises(FeaturesError, match=rf"^{re.escape(str(path))}: u0: declares "
                                                                       r"\(10000000000000, 4\) features \(149,011.6 GiB\), more than memory holds"):
        f.get("u0")
    p = Run(["convert", path, tmp_path / "npy", "--format", "npy"]).result()
    assert p.returncode == 1 and one_line(p).startswith(f"lhb: error: {path}: u0: declares"), p


def test_kaldi_is_sorted_and_the_fairseq_manifest_lists_samples_as_stored_in_any_locale(tmp_path):
    """Kaldi's tools read scp/ark in C-sorted key order (``scp,s,cs:``, validate_data_dir.sh); the
    file's own order put ``spk1/u`` before ``spk1-b/u``. The fairseq ``.tsv`` gives each file's frames
    as stored (fairseq's wav2vec_manifest.py), not the 16 kHz count; sources that cannot be read where
    the features file says are named, as those not at 16 kHz are. Text files are UTF-8 also in the C
    locale without UTF-8 mode (an 'ascii' codec error, exit 2, before)."""
    import soundfile as sf

    from cli_helpers import _env, lhb_command

    audio = tmp_path / "audio"
    (audio / "spk1").mkdir(parents=True)
    (audio / "spk1-b").mkdir()
    stored = {"spk1/u": (audio / "spk1" / "u.wav", 16000, 4000), "spk1-b/u": (audio / "spk1-b" / "u.wav", 8000, 2000),
              "café": (audio / "café.wav", 16000, 4400), "spk1.x": (audio / "moved.wav", 16000, 4800)}
    attrs = run_attrs(layers=[1], subnet={"a": 1}, checkpoint="c.pt", checkpoint_sha256="ab", normalize=True,
                      random_weights=True, params=10, dtype="float32", compute_dtype="float32", version="t",
                      exact_seconds=120.0, window_seconds=60.0, context_seconds=10.0, num_layers=1, embed_dim=4)
    feats = tmp_path / "f.h5"
    w = FeatureWriter(feats, attrs)
    for i, (key, (path, rate, n)) in enumerate(stored.items()):
        if key != "spk1.x":  # its audio was moved away after the extraction
            sf.write(path, np.zeros(n, np.float32), rate)
        w.write(key, np.full((1, 3 + i, 4), float(i), np.float32), source=str(path), num_samples=n * 16000 // rate)
    w.close(complete=True)
    env = {**_env(), "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}

    def convert_in_c_locale(*args):
        return subprocess.run(lhb_command() + ["convert", str(feats), *map(str, args), "--layer", "1"], env=env,
                              capture_output=True, text=True, encoding="utf-8", timeout=120)

    kaldi = convert_in_c_locale(tmp_path / "k", "--format", "kaldi")
    assert kaldi.returncode == 0, kaldi.stderr
    scp = (tmp_path / "k" / "train.scp").read_text(encoding="utf-8").splitlines()
    assert [line.split(" ")[0] for line in scp] == ["café", "spk1-b/u", "spk1.x", "spk1/u"]  # LC_ALL=C sort
    ark = (tmp_path / "k" / "train.ark").read_bytes()
    for i, key in enumerate(sorted(stored, key=str.encode)):
        offset = int(scp[i].rsplit(":", 1)[1])
        assert ark[:offset].endswith(f"{key} ".encode()) and ark[offset:offset + 5] == b"\0BFM "
    # (in the C locale this process cannot open café.wav, whose name is UTF-8: the manifest is checked in UTF-8)
    fairseq = Run(["convert", feats, tmp_path / "fs", "--layer", "1"]).result()
    assert fairseq.returncode == 0, fairseq
    root, *rows = (tmp_path / "fs" / "train.tsv").read_text(encoding="utf-8").splitlines()
    assert root == str(audio)
    keys = (tmp_path / "fs" / "train_0_1.keys").read_text(encoding="utf-8").splitlines()
    with open_features(feats) as f:
        assert keys == f.keys  # the file's order, as the .npy and .len
    listed = {"spk1/u": "spk1/u.wav\t4000", "spk1-b/u": "spk1-b/u.wav\t2000", "café": "café.wav\t4400",
              "spk1.x": "moved.wav\t4800"}  # moved.wav: no header to read, so the count at 16 kHz
    assert rows == [listed[k] for k in keys]
    warned = [line for line in fairseq.stderr.splitlines() if line.startswith("lhb: warning: ")]
    assert warned == [
        f"lhb: warning: {tmp_path / 'fs' / 'train.tsv'}: 1 of 4 audio files are not stored at 16 kHz (first: "
        f"{stored['spk1-b/u'][0]}, 8000 Hz); fairseq's HuBERT training reads them as stored and needs 16 kHz: "
        "resample them first",
        f"lhb: warning: {tmp_path / 'fs' / 'train.tsv'}: 1 of 4 audio files cannot be read where the features file "
        f"says they are (first: {stored['spk1.x'][0]}): fairseq reads them from there"], fairseq


def test_cluster_sums_in_a_fixed_order_equal_index_add():
    """The sums k-means takes on CUDA (one-hot products in a fixed order, for the same centroids from
    the same seed) are the sums index_add_ takes on the CPU, up to float32 rounding; and learning does
    not follow a TensorFloat-32 setting of the caller's."""
    from lighthubert.units import cluster_sums, learn

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 32, generator=gen) * 3
    labels = torch.randint(7, (5000,), generator=gen)
    labels[labels == 3] = 4  # a cluster without frames: a row of zeros either way
    plain = cluster_sums(labels, x, 7)
    ordered = cluster_sums(labels, x, 7, chunk=1000, ordered=True)
    torch.testing.assert_close(ordered, plain, rtol=1e-5, atol=1e-4)
    assert not ordered[3].any()
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        c1 = learn(x, 5, batch_size=500, iterations=20, seed=1)
        assert torch.get_float32_matmul_precision() == "high"  # the caller's setting is back
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(c1, learn(x, 5, batch_size=500, iterations=20, seed=1))


def test_k_means_out_of_memory_is_one_line_saying_what_to_give(tmp_path, monkeypatch):
    """Before: 'lhb: internal error: OutOfMemoryError' when the sample and the steps did not fit."""
    from lighthubert import units
    from lighthubert.errors import LightHubertError

    feats = _features(tmp_path / "f.h5", 3)

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    monkeypatch.setattr(units, "learn", no_room)
    with pytest.raises(LightHubertError, match=(
            rf"^{re.escape(str(feats))}: \d+ frames of width 4 \(0.0 GiB\) and the k-means steps do not fit in the "
            r"memory of cpu; give --max-frames fewer frames, a smaller --batch-size, or --device cpu$")):
        units.learn_file(feats, 1, 2, iterations=2)


def test_npy_refuses_a_key_whose_file_is_another_keys_folder_before_any_work(tmp_path):
    """Keys ``x`` and ``x.npy/y`` are both valid, but ``x.npy`` cannot be a file and a folder. Before:
    every utterance was converted, then 'lhb: error: OUT/.x.npy.PID.HEX.part: Is a directory', a
    line naming a temporary file, not the keys."""
    attrs = run_attrs(layers=[1], subnet={"a": 1}, checkpoint="c.pt", checkpoint_sha256="ab", normalize=True,
                      random_weights=True, params=10, dtype="float32", compute_dtype="float32", version="t",
                      exact_seconds=120.0, window_seconds=60.0, context_seconds=10.0, num_layers=1, embed_dim=4)
    feats = tmp_path / "f.h5"
    w = FeatureWriter(feats, attrs)
    for key in ("a/x", "a/x.npy/b/y", "z"):
        w.write(key, np.ones((3, 4), np.float32), source=f"/audio/{key}.wav", num_samples=1040)
    w.close(complete=True)
    with pytest.raises(OutputError, match=re.escape(f"{feats}: keys 'a/x' and 'a/x.npy/b/y' need a/x.npy as a file "
                                                    "and as a folder; rename one")):
        convert(feats, tmp_path / "out", "npy", 1, progress=lambda *a: pytest.fail("work began"))
    assert not (tmp_path / "out").exists()
    convert(feats, tmp_path / "kaldi", "kaldi", 1)  # other formats take both keys


def test_units_into_hdf5_beyond_a_size_limit_is_one_line_and_keeps_the_old_file(tmp_path):
    """Before: HDF5 wrote the units' datasets when their handles were freed, so a file size limit or a
    full disk there gave ~180 lines of h5py's 'Exception ignored' tracebacks and then SIGSEGV (139),
    leaving its temporary file. (In process the library raised its one line; the crash came after.)"""
    import signal

    from cli_helpers import _env, lhb_command

    feats = _features(tmp_path / "f.h5", 0)
    with h5py.File(feats, "a") as f:  # many small datasets: HDF5 keeps them in its cache and writes them late
        for i in range(20):
            f[f"features/u{i}"] = np.zeros((2, 2000, 4), np.float32)  # 80 KB of int16 units in all
    km = tmp_path / "km.pt"
    torch.save({"format": "lighthubert-kmeans", "centroids": torch.zeros(2, 4), "layer": 1, "clusters": 2}, km)
    out = tmp_path / "u.h5"
    out.write_bytes(b"old units")

    def limit():  # in the child: no file grows past 16 KB (EFBIG, as Python ignores SIGXFSZ)
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    p = subprocess.run([*lhb_command(), "units", "apply", str(feats), str(km), str(out), "--overwrite", "-q"],
                       capture_output=True, text=True, env=_env(), timeout=300, preexec_fn=limit)
    assert (p.returncode, p.stderr) == (1, f"lhb: error: {out}: cannot write (file too large for this filesystem or limit)\n")
    assert out.read_bytes() == b"old units" and sorted(x.name for x in tmp_path.iterdir()) == ["f.h5", "km.pt", "u.h5"]


def test_outputs_through_a_symbolic_link_replace_its_target_whole_and_keep_the_link(tmp_path):
    """Before: units apply wrote through a link in place, so a stop or a damaged utterance half-way
    left the link's target cut short (a .km of 15 of 20 lines, an .h5 that looked whole); a k-means
    file or converted file named through a link replaced the link by a file, leaving its target old."""
    feats = _features(tmp_path / "f.h5", 4)
    km = {"format": "lighthubert-kmeans", "centroids": torch.tensor([[0.0] * 4, [2.0] * 4]), "layer": 1, "clusters": 2}
    for name in ("t.km", "t.h5"):
        target, link = tmp_path / name, tmp_path / f"link-{name}"
        target.write_bytes(b"old units")
        link.symlink_to(name)
        with pytest.raises(Stop):
            apply_file(feats, km, link, overwrite=True, progress=_stop_at(2))
        assert target.read_bytes() == b"old units"
        apply_file(feats, km, link, overwrite=True)
        apply_file(feats, km, tmp_path / f"direct-{name}")
        assert link.is_symlink() and target.read_bytes() == (tmp_path / f"direct-{name}").read_bytes()
    out, elsewhere = tmp_path / "conv", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "train_0_1.npy").write_bytes(b"old")
    (out / "train_0_1.npy").symlink_to(elsewhere / "train_0_1.npy")
    convert(feats, out, "fairseq", 1, overwrite=True)
    convert(feats, tmp_path / "conv2", "fairseq", 1)
    assert (out / "train_0_1.npy").is_symlink()
    assert (elsewhere / "train_0_1.npy").read_bytes() == (tmp_path / "conv2" / "train_0_1.npy").read_bytes()
    (tmp_path / "km-link.pt").symlink_to("km-real.pt")
    p = Run(["units", "learn", feats, tmp_path / "km-link.pt", "--layer", "1", "--clusters", "2", "-q"]).result()
    assert p.returncode == 0, p
    assert (tmp_path / "km-link.pt").is_symlink() and torch.load(tmp_path / "km-real.pt", weights_only=True)["clusters"] == 2
    assert not [p for p in tmp_path.rglob(".*.part")]  # no temporary file left


def test_units_are_the_nearest_centroid_also_for_features_with_a_large_offset():
    """Before: distances as |x|^2 - 2 x.c + |c|^2 in float32 lost the difference between centroids when
    the features carry a large common offset (+1000 on 8 of 64 channels): 3,207 of 5,000 frames got
    another centroid than the nearest, and the k-means file's inertia was 13.77 where it is 14.12."""
    from lighthubert.units import assign, inertia, learn

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 64, generator=gen) * 0.5
    x[:, :8] += 1000.0
    c = learn(x, 100, batch_size=1000, iterations=20, seed=0)
    labels, dist = assign(x, c)
    exact = torch.cdist(x.double(), c.double()).pow(2)
    best = exact.min(1).values
    assert torch.allclose(exact.gather(1, labels[:, None])[:, 0], best, rtol=1e-6, atol=0)  # the nearest (or a tie)
    assert torch.allclose(dist.double(), best, rtol=1e-4, atol=1e-4)
    assert inertia(x, c) == pytest.approx(float(best.mean()), rel=1e-6)


def test_info_of_a_units_file_holding_a_scalar_marks_it_damaged(tmp_path):
    """Before: 'lhb: internal error: TypeError: object of type 'numpy.int16' has no len()'."""
    path = tmp_path / "u.h5"
    with h5py.File(path, "w") as h:
        h.attrs["format"] = "lighthubert-units"
        h.create_group("units").create_dataset("a", data=np.int16(3))
        h["units/b"] = np.array([1, 2, 2], np.int16)
    p = Run(["info", path]).result()
    assert p.returncode == 0 and not p.stderr, p
    assert re.search(r"utterances\s+2\n\s+frames\s+3\n\s+units used\s+2\n", p.stdout), p.stdout
    assert re.search(r"DAMAGED\s+units/a is not a 1-D array of whole numbers \(int16, shape \(\)\)", p.stdout), p.stdout
