"""A second adversarial pass over the command and the library: each case is a defect that was found
(it failed before its fix) and is now one clear line naming the file and the reason, with nothing
already written lost."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from cli_helpers import Run, _env, lhb_prefix, one_line
from helpers import SPEECH_DIR
from lighthubert.storage import HDF5, OutputError, run_attrs
from lighthubert.storage.hdf5 import FeatureWriter

UTT = SPEECH_DIR / "spk2" / "utt03.wav"  # about 1 s of real speech at 16 kHz
needs_speech = pytest.mark.skipif(not UTT.is_file(), reason="needs the speech data")


def lhb(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(lhb_prefix() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=_env(), stdin=subprocess.DEVNULL)


def _attrs() -> dict:
    return run_attrs(layers=[1], subnet={"a": 1}, checkpoint="c.pt", checkpoint_sha256="ab", normalize=True,
                     random_weights=True, params=10, dtype="float32", compute_dtype="float32", version="t",
                     exact_seconds=120.0, window_seconds=60.0, context_seconds=10.0, num_layers=1, embed_dim=4)


def _features_file(path) -> None:
    w = FeatureWriter(path, _attrs())
    w.write("u", np.ones((3, 4), np.float32), source="/a/u.wav", num_samples=960)
    w.close(complete=True)


# ----------------------------------------------------------------------------- OUTPUT that is not ours


def test_resume_or_merge_of_an_hdf5_file_that_is_not_ours_says_so(tmp_path):
    """Before: resuming listed eleven 'differing settings' (None, now ...) in a 700-character line."""
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2]
    before = foreign.read_bytes()
    for call in (lambda: HDF5.committed(foreign, _attrs(), include_output=True),
                 lambda: FeatureWriter(foreign, _attrs(), resume=True)):
        with pytest.raises(OutputError) as e:
            call()
        assert str(e.value).startswith(f"{foreign}: an HDF5 file, but not a lighthubert features file"), e.value
        assert "None" not in str(e.value)
    units = tmp_path / "units.h5"  # lhb units apply's file, given as OUTPUT by mistake: named as what it is
    with h5py.File(units, "w") as f:
        f.attrs["format"] = "lighthubert-units"
        f["units/u"] = [1, 2]
    with pytest.raises(OutputError, match=f"^{units}: a units file \\(lhb units apply\\), but not a lighthubert features file"):
        FeatureWriter(units, _attrs(), resume=True)
    ours = tmp_path / "ours.h5"
    _features_file(ours)
    with pytest.raises(OutputError, match="other.h5: an HDF5 file, but not a lighthubert features file$"):
        HDF5.merge(tmp_path / "m.h5", [ours, foreign], include_output=False)
    assert foreign.read_bytes() == before and not (tmp_path / "m.h5").exists()


def test_a_truncated_or_non_hdf5_output_is_named_as_such(tmp_path):
    """Before: '(Unable to synchronously open file)', h5py's reason cut off."""
    good = tmp_path / "good.h5"
    _features_file(good)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:1000])
    text = tmp_path / "text.h5"
    text.write_text("not features\n")
    size = good.stat().st_size
    for path, reason in ((cut, f"truncated: 1,000 of its {size:,} bytes are there"), (text, "not an HDF5 file")):
        with pytest.raises(OutputError) as e:
            HDF5.committed(path, _attrs(), include_output=True)
        assert str(e.value) == f"{path}: cannot be read to resume ({reason}); use --overwrite to start again"
        with pytest.raises(OutputError, match=f"cannot be opened \\({reason}\\)"):
            HDF5.merge(tmp_path / "m.h5", [good, path], include_output=False)
        with pytest.raises(OutputError, match=f"{path.name}: cannot be read \\({reason}\\)$"):
            HDF5.describe(path)
    assert HDF5.describe(good)["utterances"] == 1


def test_info_of_a_broken_h5_file_speaks_of_hdf5_not_checkpoints(tmp_path):
    text = tmp_path / "feats.h5"
    text.write_text("hello\n")
    p = lhb("info", text)
    assert p.returncode == 1 and one_line(p) == f"lhb: error: {text}: cannot be read (not an HDF5 file)", p.stderr
    assert p.stdout == ""


# ----------------------------------------------------------------------------- lists and folders


def test_tsv_without_its_root_line_or_with_a_missing_root_is_refused(tmp_path):
    """Before: a manifest missing its root line was 'the list holds no entries' (its first entry was
    taken for the root); a missing root skipped every file one by one; '#' lines, which the README says
    are ignored in lists, were taken for the root or for files."""
    from lighthubert.inputs import InputError, list_inputs

    (tmp_path / "spk1").mkdir()
    shutil.copy(UTT, tmp_path / "spk1" / "a.wav")
    headless = tmp_path / "headless.tsv"
    headless.write_text("spk1/a.wav\t16000\n")
    with pytest.raises(InputError) as e:
        list_inputs(headless)
    assert str(e.value).startswith(f"{headless}:1: expected the root folder, found an entry ('spk1/a.wav')"), e.value
    missing = tmp_path / "missing.tsv"
    missing.write_text(f"{tmp_path}/nowhere\nspk1/a.wav\t16000\n")
    with pytest.raises(InputError, match=f"missing.tsv:1: the root folder {tmp_path}/nowhere does not exist$"):
        list_inputs(missing)
    commented = tmp_path / "commented.tsv"
    commented.write_text(f"# made by hand\r\n{tmp_path}\r\n\r\nspk1/a.wav\t16000\r\n# spk1/b.wav\t16000\r\n")
    assert [(it.key, it.path) for it in list_inputs(commented)] == [("spk1/a", tmp_path / "spk1" / "a.wav")]


def test_list_lines_end_at_newlines_only(tmp_path):
    """Lists were split with str.splitlines(), which also ends a line at U+2028, U+0085, form feeds...,
    and trimmed with strip(), which drops U+00A0: a .scp key '\u2028x' was stored as 'x', and a file
    name ending in a no-break space was not found. Only \n ends a line (\r\n too), only ASCII blanks
    are trimmed; the line numbers in messages stay right."""
    from lighthubert.inputs import InputError, list_inputs

    odd = "b\u2028c\u00a0"
    (tmp_path / "spk1").mkdir()
    for name in ("a", odd):
        shutil.copy(UTT, tmp_path / "spk1" / f"{name}.wav")
    scp = tmp_path / "x.scp"
    scp.write_text(f"\u2028k1 spk1/a.wav\r\nk\u00852\tspk1/{odd}.wav\n", encoding="utf-8")
    assert [(it.key, it.path.name) for it in list_inputs(scp)] == [("\u2028k1", "a.wav"), ("k\u00852", f"{odd}.wav")]
    txt = tmp_path / "x.txt"
    txt.write_text(f"spk1/{odd}.wav\n\x0c\nspk1/missing\u2028.wav \n", encoding="utf-8")
    items = list_inputs(txt)
    assert [it.key for it in items] == [f"spk1/{odd}", "spk1/missing\u2028"] and items[0].path.is_file()
    bad = tmp_path / "bad.scp"
    bad.write_text("k1 spk1/a.wav\u2028k2\nk3\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.scp:2: expected 'key path'"):
        list_inputs(bad)


def _without_root_powers(code: str, cwd) -> subprocess.CompletedProcess:
    """Python ``code`` run where file permissions apply: as root, without the capabilities that
    bypass them (``chmod 000`` means nothing to root otherwise)."""
    import sys

    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("as root, needs setpriv to drop the capabilities that bypass file permissions")
        caps = "-dac_override,-dac_read_search"
        cmd = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd, env=_env())


@needs_speech
def test_unreadable_files_and_subfolders_are_skipped_with_their_reason(tmp_path):
    """Before: a subfolder that could not be listed was passed over without a word (its files simply
    missing), an unreadable file was skipped as 'cannot decode: System error.' and an empty one as
    'cannot decode: Format not recognised.'."""
    root = tmp_path / "in"
    (root / "locked").mkdir(parents=True)
    shutil.copy(UTT, root / "a.wav")
    shutil.copy(UTT, root / "locked" / "b.wav")
    shutil.copy(UTT, root / "noread.wav")
    (root / "empty.wav").write_bytes(b"")
    os.chmod(root / "noread.wav", 0)
    os.chmod(root / "locked", 0)
    try:
        p = _without_root_powers(
            "from lighthubert.audio import load_audio, AudioError\n"
            "from lighthubert.inputs import list_inputs\n"
            "for it in list_inputs('in'):\n"
            "    try:\n"
            "        print(it.key, load_audio(it.path).shape[0])\n"
            "    except AudioError as e:\n"
            "        print(it.key, e.reason)\n", tmp_path)
    finally:
        os.chmod(root / "locked", 0o755)
        os.chmod(root / "noread.wav", 0o644)
    assert p.returncode == 0, p.stderr
    n = int(p.stdout.split()[1])
    assert p.stdout.splitlines() == [
        f"a {n}",
        "empty empty file (0 bytes)",
        "locked a folder that cannot be read (Permission denied): its files were not listed",
        "noread cannot read: Permission denied",
    ], p.stdout


# ----------------------------------------------------------------------------- arguments


def test_an_empty_path_argument_is_refused_not_taken_for_the_current_folder(tmp_path):
    """Before: ``lhb extract "$UNSET" out.h5`` extracted every audio file under the current folder
    (Path("") is "."), and ``-c ""`` said '.: is a folder'."""
    import lighthubert
    from lighthubert.checkpoint import CheckpointError, load_checkpoint
    from lighthubert.errors import SettingError

    shutil.copy(UTT, tmp_path / "here.wav")  # what an empty INPUT used to pick up
    for args, line in (((" ", "o.h5"), "lhb: error: INPUT: an empty path"),
                       (("here.wav", ""), "lhb: error: OUTPUT: an empty path")):
        p = subprocess.run(lhb_prefix() + ["extract", *args, "-c", "random:small"], capture_output=True, text=True,
                           timeout=120, env=_env(), stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert p.returncode == 2 and one_line(p) == line, p.stderr
    p = lhb("info", "")
    assert p.returncode == 2 and "the checkpoint is an empty string" in one_line(p), p.stderr  # bad usage
    p = lhb("info", "random:tiny")  # before: exit 1, as for a file that cannot be read
    assert p.returncode == 2 and one_line(p) == ("lhb: error: random:tiny: random checkpoints are random:base, "
                                                 "random:small or random:stage1[:SEED]"), p.stderr
    with pytest.raises(CheckpointError, match="empty string"):
        load_checkpoint("")
    with pytest.raises(SettingError, match="INPUT is an empty path"):
        lighthubert.extract("", tmp_path / "o.h5", checkpoint="random:small")
    assert sorted(os.listdir(tmp_path)) == ["here.wav"]


def test_a_file_name_too_long_is_one_line_naming_it(tmp_path):
    """Before: 'lhb: internal error: OSError: [Errno 36] File name too long' for INPUT, OUTPUT and info."""
    long = tmp_path / ("y" * 300)
    for args in (("extract", f"{long}.wav", tmp_path / "o.h5", "-c", "random:small"), ("info", f"{long}.pt")):
        p = lhb(*args)
        line = one_line(p)
        assert p.returncode == 1 and line.startswith(f"lhb: error: {long}") and line.endswith(": File name too long"), line
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- lhb units


def _units_inputs(tmp_path):
    """A features file of three utterances (layer 1, 4 wide) and a k-means file of two centroids."""
    import torch

    from lighthubert.units import KM_FORMAT

    feats = tmp_path / "f.h5"
    w = FeatureWriter(feats, _attrs())
    rng = np.random.default_rng(0)
    for k in ("a", "b", "c"):
        w.write(k, rng.standard_normal((5, 4)).astype(np.float32), source=f"/x/{k}.wav", num_samples=1600)
    w.close(complete=True)
    km = tmp_path / "km.pt"
    torch.save({"format": KM_FORMAT, "centroids": torch.eye(2, 4), "layer": 1, "clusters": 2}, km)
    return feats, km


def test_units_learn_refuses_a_bad_km_path_or_device_before_learning(tmp_path):
    """Before: KM a folder gave 'internal error: RuntimeError: [enforce fail at inline_container.cc...'
    after the whole k-means; --device xyz or cuda without CUDA gave internal errors too."""
    feats, _ = _units_inputs(tmp_path)
    cases = [(tmp_path, f"lhb: error: {tmp_path}: is a folder; give a file name"),
             (tmp_path / "no" / "km.pt", f"lhb: error: {tmp_path}/no/km.pt: the folder {tmp_path}/no does not exist")]
    runs = [Run(["units", "learn", feats, km, "--layer", "1", "--clusters", "2"]) for km, _ in cases]  # all at once
    runs += [Run(["units", "learn", feats, tmp_path / "k.pt", "--layer", "1", "--clusters", "2", "--device", "xyz"]),
             Run(["units", "apply", feats, tmp_path / "km.pt", tmp_path / "u.txt", "--device", "cuda:99"])]
    for (_, line), run in zip(cases, runs):
        p = run.result()
        assert p.returncode == 1 and one_line(p) == line, p.stderr  # no "k-means step" line: nothing was learnt
    p = runs[2].result()
    assert p.returncode == 2 and one_line(p) == "lhb: error: --device: unknown device 'xyz'; use auto, cpu, cuda or cuda:N"
    p = runs[3].result()
    assert p.returncode == 2 and one_line(p).startswith("lhb: error: --device: device 'cuda:99' asked for")
    assert not (tmp_path / "k.pt").exists() and not (tmp_path / "u.txt").exists()


@pytest.mark.parametrize("name", ["u.txt", "u.h5"])
def test_units_apply_keeps_the_old_output_until_the_new_one_is_whole(tmp_path, name):
    """Before: OUTPUT was truncated first and written in place, so a stop (Ctrl-C, a full disk) half-way
    lost the previous good file and left a partial one."""
    from lighthubert.units import apply_file, load_km

    feats, km_path = _units_inputs(tmp_path)
    out = tmp_path / name
    km = load_km(km_path)
    assert apply_file(feats, km, out) == 3
    before = out.read_bytes()

    def stop_after_one(done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        apply_file(feats, km, out, keys=True, overwrite=True, progress=stop_after_one)
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == sorted(["f.h5", "km.pt", name])
    if name.endswith(".txt"):  # the km.pt path does what its dict does (before: TypeError 'string indices')
        assert apply_file(feats, km_path, out, overwrite=True) == 3 and out.read_bytes() == before
        km_bytes = km_path.read_bytes()
        with pytest.raises(OutputError, match="is the k-means file itself"):  # never written over, whatever overwrite says
            apply_file(feats, km_path, km_path, overwrite=True)
        assert km_path.read_bytes() == km_bytes
    assert apply_file(feats, km, out, keys=True, overwrite=True) == 3
    if name.endswith(".h5"):
        with h5py.File(out, "r") as f:
            assert sorted(f["units"]) == ["a", "b", "c"]
    else:
        assert [line.split()[0] for line in out.read_text().splitlines()] == ["a", "b", "c"]


# ----------------------------------------------------------------------------- lhb subnet


@pytest.mark.parametrize("args,line", [
    (["--params", "30MB"], "lhb: error: --params: '30MB' is not a parameter budget; write e.g. 30M, 30m, 3e7 or 30000000"),
    (["--params", "0"], "lhb: error: --params: '0' is not a parameter budget; it must be a positive number"),
    (["--preset", "huge"], "lhb: error: --preset: unknown preset 'huge'; choose one of: default, max, min"),
    (["--sample", "1000000000"], "lhb: error: --sample: must be less than or equal to 10000"),
])
def test_subnet_usage_errors_name_their_option(args, line):
    """Before: budget and preset errors did not say which option was wrong; --sample 1e9 ran for hours
    (every sample printed as a table) before printing anything on stdout."""
    p = lhb("subnet", *args, "--supernet", "small", timeout=60)
    assert p.returncode == 2 and one_line(p) == line and p.stdout == "", p.stderr


def test_an_export_from_random_weights_says_so(tmp_path):
    """`lhb subnet --export` from a random:* checkpoint said only 'wrote min.pt (22.9 MB)'."""
    p = lhb("subnet", "--preset", "min", "-c", "random:small", "--export", tmp_path / "min.pt", timeout=120)
    assert p.returncode == 0 and p.stderr.splitlines()[-1].endswith(" from RANDOM WEIGHTS"), p.stderr
    p = lhb("extract", UTT, tmp_path / "o2.h5", "-c", tmp_path / "min.pt", timeout=120)
    assert p.returncode == 0 and p.stderr.startswith("RANDOM WEIGHTS: these features mean nothing"), p.stderr


def test_a_subnet_that_is_no_file_name_is_a_usage_error(tmp_path):
    """A --subnet value longer than a file name may be was tried as a file: 'File name too long',
    exit 1, with the whole value echoed; lhb subnet said the same twice (once per space)."""
    value = "a" * 300
    p = lhb("extract", UTT, tmp_path / "o.h5", "-c", "random:small", "--subnet", value, timeout=60)
    assert p.returncode == 2 and one_line(p) == (
        f"lhb: error: --subnet: {'a' * 60!r} ... (300 characters) is not a preset (default, max, min), "
        "inline JSON or an existing JSON file"), p.stderr
    p = lhb("subnet", "--subnet", "maxi", timeout=60)
    assert p.returncode == 2 and one_line(p) == (
        "lhb: error: --subnet: 'maxi' is not a preset (default, max, min), inline JSON or an existing JSON file")
    assert os.listdir(tmp_path) == []


def test_many_sampled_subnets_are_summed_up_on_stderr():
    """`lhb subnet --sample N` drew one table of layers per subnet on stderr: 165,039 lines and 80 s
    for --sample 10000, even with stderr thrown away. One subnet keeps its table of layers, a few get
    one row each, many one line; the JSON on stdout holds every subnet."""
    import json

    p = lhb("subnet", "--sample", "500", "--seed", "3", timeout=120)
    subs = json.loads(p.stdout)
    params = [s["params"] for s in subs]
    assert p.returncode == 0 and len(subs) == 500
    assert one_line(p) == f"500 subnets, {min(params):,} to {max(params):,} parameters (JSON on stdout)"
    p = lhb("subnet", "--sample", "3", "--seed", "3", timeout=120)
    subs = json.loads(p.stdout)
    rows = [line for line in p.stderr.splitlines() if line.startswith("│")]
    assert p.returncode == 0 and len(rows) == 3 and "3 subnets" in p.stderr
    assert [row.split("│")[3].strip() for row in rows] == [f"{s['params']:,}" for s in subs]
    p = lhb("subnet", "--preset", "min", "--supernet", "small", timeout=120)
    rows = [line for line in p.stderr.splitlines() if line.startswith("│")]
    assert p.returncode == 0 and len(rows) == json.loads(p.stdout)["layer_num"]  # one row per layer


def test_files_a_command_reads_are_never_written_over(tmp_path, ckpt_files):
    """`lhb subnet --preset min -c src.pt --export src.pt` replaced the 190 MB supernet with its 23 MB
    subnet (exit 0), and `lhb extract wav src.pt -c src.pt --overwrite` (or OUTPUT = the --subnet file)
    replaced the checkpoint with features. Such targets are refused whatever --overwrite says; other
    existing files need --overwrite, except a subnet JSON rewritten by -o."""
    import hashlib
    import json

    src = tmp_path / "src.pt"
    shutil.copy(ckpt_files["small"], src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps(lighthubert_space_min()), encoding="utf-8")
    sub_text = sub.read_text()
    for args, line in (
        (["subnet", "--preset", "min", "-c", src, "--export", src, "--overwrite"], f"{src}: is the checkpoint (-c)"),
        (["subnet", "--preset", "min", "-c", src, "-o", src, "--overwrite"], f"{src}: is the checkpoint (-c)"),
        (["subnet", "-s", sub, "-o", sub], f"{sub}: is the --subnet file"),
        (["extract", UTT, src, "-c", src, "--overwrite"], f"{src}: is also an input ({src})"),
        (["extract", UTT, sub, "-c", "random:small", "-s", sub, "--overwrite"], f"{sub}: is also an input ({sub})"),
    ):
        p = lhb(*args, timeout=120)
        assert p.returncode in (1, 2) and one_line(p).startswith(f"lhb: error: {line}"), (args, p.stderr)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest and sub.read_text() == sub_text
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    p = lhb("subnet", "--preset", "min", "--supernet", "small", "-o", notes, timeout=60)
    assert p.returncode == 1 and one_line(p) == f"lhb: error: {notes}: already exists; pass --overwrite to replace it"
    assert notes.read_text() == "mine"
    out = tmp_path / "again.json"
    for _ in range(2):  # a subnet JSON written by -o is rewritten without --overwrite
        p = lhb("subnet", "--preset", "max", "--supernet", "small", "-o", out, timeout=60)
        assert p.returncode == 0 and json.loads(out.read_text())["layer_num"] == 12, p.stderr
    p = lhb("subnet", "--preset", "min", "--supernet", "small", "-o", notes, "--overwrite", timeout=60)
    assert p.returncode == 0 and json.loads(notes.read_text())["supernet"] == "small"


def test_subnet_output_to_a_stream_and_seeds_of_samples(tmp_path):
    """`-o /dev/stdout` hung: the check for an existing subnet JSON read the pipe lhb itself writes to.
    A stream or device is written, never read; and with --sample, --seed seeds the sampling, so
    `-c random:small:5 --sample 2 --seed 7` is not a conflict of seeds."""
    import json

    p = subprocess.run(lhb_prefix() + ["subnet", "--preset", "min", "--supernet", "small", "-o", "/dev/stdout"],
                       capture_output=True, text=True, timeout=60, env=_env(), stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and [json.loads(line)["layer_num"] for line in p.stdout.splitlines()] == [10, 10], p.stderr
    p = lhb("subnet", "--preset", "min", "--supernet", "small", "-o", "/dev/null", timeout=60)
    assert p.returncode == 0, p.stderr
    a = lhb("subnet", "-c", "random:small:5", "--sample", "2", "--seed", "7", timeout=120)
    b = lhb("subnet", "--supernet", "small", "--sample", "2", "--seed", "7", timeout=120)
    assert a.returncode == 0 and a.stdout == b.stdout, a.stderr


def lighthubert_space_min() -> dict:
    from lighthubert import SPACES

    return SPACES["small"].min_subnet


def test_subnet_output_that_cannot_be_written_is_refused_before_printing(tmp_path, ckpt_files):
    """Before: the JSON went to stdout and the table to stderr (for --export after loading the
    checkpoint), then 'cannot write: Is a directory' or 'No such file or directory'."""
    for out, line in ((tmp_path, f"lhb: error: {tmp_path}: is a folder; give a file name such as {tmp_path}/subnet.json"),
                      (tmp_path / "no" / "s.json", f"lhb: error: {tmp_path}/no/s.json: the folder {tmp_path}/no does not exist")):
        p = lhb("subnet", "--preset", "min", "--supernet", "small", "-o", out)
        assert p.returncode == 1 and one_line(p) == line and p.stdout == "", p.stderr
    for out, line in ((tmp_path, f"lhb: error: {tmp_path}: is a folder; give a file name such as {tmp_path}/subnet.pt"),
                      (tmp_path / "no" / "s.pt", f"lhb: error: {tmp_path}/no/s.pt: the folder {tmp_path}/no does not exist")):
        p = lhb("subnet", "--preset", "min", "-c", ckpt_files["small"], "--export", out)
        assert p.returncode == 1 and one_line(p) == line and p.stdout == "", p.stderr
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- lhb merge, lhb convert


def test_merge_into_a_folder_or_a_missing_folder_is_one_clear_line(tmp_path):
    """Before: OUTPUT a folder gave h5py's many-line 'file read failed: time = ...' text; a missing
    folder named the lock file ('nod/.m.h5.lock: No such file or directory')."""
    part = tmp_path / "p.h5"
    _features_file(part)
    folder = tmp_path / "out"
    folder.mkdir()
    for out, line in ((folder, f"lhb: error: {folder}: is a folder, not a features file"),
                      (tmp_path / "no" / "m.h5", f"lhb: error: {tmp_path}/no/m.h5: the folder {tmp_path}/no does not exist")):
        p = lhb("merge", out, part)
        assert p.returncode == 1 and one_line(p) == line, p.stderr
    with pytest.raises(OutputError) as e:  # the library says the OS reason, on one line
        HDF5.describe(folder)
    assert str(e.value) == f"{folder}: cannot be read (Is a directory)"
    assert sorted(os.listdir(tmp_path)) == ["out", "p.h5"] and os.listdir(folder) == []


def test_merge_of_a_joined_output_says_there_is_nothing_to_join(tmp_path):
    """Before: 'lhb merge f.h5' after a stopped (and so already joined) run said 'f.h5.parts: no such
    file or folder', as if the user had named a wrong folder."""
    from lighthubert.storage import merge_parts

    out = tmp_path / "f.h5"
    _features_file(out)
    with pytest.raises(OutputError, match=f"^{re.escape(str(out))}: nothing to join: {re.escape(str(out))}.parts does not "
                                          "exist \\(a stopped run joins what it did into"):
        merge_parts(out)
    with pytest.raises(OutputError, match=f"^{re.escape(str(tmp_path))}/new.h5.parts: no such file or folder$"):
        merge_parts(tmp_path / "new.h5")  # no OUTPUT either: the folder is what is missing
    assert sorted(os.listdir(tmp_path)) == ["f.h5"]


def test_convert_split_must_be_a_plain_name(tmp_path):
    """Before: --split ../escaped wrote escaped_0_1.npy (and .len, .keys, .tsv) outside OUTPUT."""
    feats = tmp_path / "f.h5"
    _features_file(feats)
    out = tmp_path / "sub" / "conv"
    splits = ["../escaped", "/abs/name", "", ".."]
    runs = [Run(["convert", feats, out, "--layer", "1", "--split", split]) for split in splits]  # all at once
    for split, run in zip(splits, runs):
        p = run.result()
        line = one_line(p)
        assert p.returncode == 2 and line == f"lhb: error: --split: {split!r} is not a plain file name (no '/', not empty)", line
    assert sorted(os.listdir(tmp_path)) == ["f.h5"]


# ----------------------------------------------------------------------------- exported subnets


def test_export_errors_are_lighthubert_errors_naming_the_file(tmp_path, ckpts):
    """Before: ExportError was a bare Exception (the README: errors are LightHubertError), and without
    the onnx extra 'lhb info x.onnx' did not name the file."""
    import sys

    import lighthubert
    from lighthubert.deploy import export

    with pytest.raises(lighthubert.LightHubertError, match=r"x\.bad: unknown export format '\.bad'"):
        export(ckpts["small"], "min", tmp_path / "x.bad")
    stub = tmp_path / "stub" / "onnx"  # an onnx that cannot be imported, as when the extra is missing
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named onnx')\n")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07")
    code = (f"import sys; sys.path.insert(0, {str(stub.parent)!r}); sys.argv = ['lhb', 'info', {str(fake)!r}]\n"
            "from lighthubert_cli.main import main; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    line = one_line(p)
    assert p.returncode == 1 and line.startswith(f"lhb: error: {fake}: reading an ONNX file needs the optional 'onnx' extra"), line


# ----------------------------------------------------------------------------- the Python extractor


def test_extractor_refuses_nan_waveforms_and_takes_an_empty_batch(ckpts):
    """Before: a NaN or infinite sample gave all-NaN features without a word (lhb extract skips such
    files); ``ext([])`` failed with 'max() arg is an empty sequence'."""
    import torch

    from lighthubert.extractor import Extractor

    ext = Extractor(ckpts["small"], "min", "cpu")
    good = np.random.default_rng(0).standard_normal(1600).astype(np.float32) * 0.1
    assert ext([]) == []
    for bad in (np.where(np.arange(1600) == 7, np.nan, good).astype(np.float32), torch.full((1600,), float("inf"))):
        with pytest.raises(ValueError, match="waveform 1 holds NaN or infinite samples"):
            ext([good, bad])
    assert torch.isfinite(ext(good)).all()


def test_reading_a_truncated_features_file_or_a_folder_says_so(tmp_path):
    """Before: open_features (lhb convert, lhb units) said 'cannot be read: Unable to synchronously
    open file' for a truncated file and 'no such file' for a folder."""
    import lighthubert
    from lighthubert.reader import FeaturesError

    good = tmp_path / "good.h5"
    _features_file(good)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(FeaturesError, match=f"cut.h5: cannot be read: truncated: 1,000 of its {good.stat().st_size:,} bytes"):
        lighthubert.open_features(cut)
    with pytest.raises(FeaturesError, match=f"{tmp_path}: is a folder, not a features file$"):
        lighthubert.open_features(tmp_path)
    p = lhb("convert", cut, tmp_path / "out", "--layer", "1")
    assert p.returncode == 1 and "truncated" in one_line(p) and not (tmp_path / "out").exists()


@needs_speech
def test_a_file_where_the_parts_folder_goes_is_refused_before_anything(tmp_path):
    """Before: OUTPUT was created, then the first segment failed with the same reason printed twice
    ('o.h5: writing failed: o.h5: writing failed: [Errno 17] File exists ...; ...; ...')."""
    from lighthubert.storage.hdf5 import SegmentWriter

    out = tmp_path / "o.h5"
    (tmp_path / "o.h5.parts").write_text("mine\n")
    p = lhb("extract", UTT, out, "-c", "random:small", "-q")
    assert p.returncode == 1 and one_line(p) == (
        f"lhb: error: {out}.parts: is not a folder; lhb keeps the work of a run for {out} there: move or remove it")
    assert sorted(os.listdir(tmp_path)) == ["o.h5.parts"] and (tmp_path / "o.h5.parts").read_text() == "mine\n"
    w = SegmentWriter(out, _attrs())  # the library alone: one reason, said once
    with pytest.raises(OutputError) as e:
        w.write("k", np.zeros((3, 4), np.float32), source="s", num_samples=960)
    assert str(e.value).count("writing failed") == 1 and "File exists" in str(e.value), e.value


def test_messages_write_undecodable_bytes_of_a_path_as_in_the_features_file(tmp_path):
    """Before: 'lhb: error: out\\udcff.h5: ...' (Python's escape); keys and sources write such a byte %FF."""
    out = os.fsencode(tmp_path) + b"/out\xff.h5"
    with open(out, "wb"):
        pass
    p = subprocess.run(lhb_prefix() + ["extract", str(UTT), os.fsdecode(out), "-c", "random:small"],
                       capture_output=True, text=True, timeout=120, env=_env(), stdin=subprocess.DEVNULL)
    assert p.returncode == 1 and one_line(p) == (
        f"lhb: error: {tmp_path}/out%FF.h5: already exists and is not a features file; choose another OUTPUT "
        f"(--overwrite would replace it)")


def test_an_existing_output_that_is_not_a_features_file_is_not_offered_resume(tmp_path):
    """`lhb extract wavs notes.txt` (a slip of the hand) was told "pass --resume to complete it or
    --overwrite to replace it": --resume then failed, and --overwrite replaced the notes. Only a
    features file is offered --resume; the other file is left as it was."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    p = lhb("extract", UTT, notes, "-c", "random:small", "-q")
    assert p.returncode == 1 and one_line(p) == (
        f"lhb: error: {notes}: already exists and is not a features file; choose another OUTPUT (--overwrite would replace it)")
    p = lhb("extract", UTT, notes, "-c", "random:small", "--resume")  # said before the model is loaded
    assert p.returncode == 1 and one_line(p) == (f"lhb: error: {notes}: already exists and is not a features file "
                                                 "to resume; choose another OUTPUT (--overwrite would replace it)")
    assert notes.read_text() == "my notes\n"
    feats = tmp_path / "feats.h5"
    assert lhb("extract", UTT, feats, "-c", "random:small", "--subnet", "min", "-q").returncode == 0
    p = lhb("extract", UTT, feats, "-c", "random:small", "--subnet", "min", "-q")
    assert p.returncode == 1 and one_line(p) == (
        f"lhb: error: {feats}: already exists; pass --resume to complete it or --overwrite to replace it")


def test_input_that_is_a_looping_or_broken_link_says_so(tmp_path):
    """Before: a link loop or a dangling link as INPUT was "no such file or folder", though `ls` shows it."""
    from lighthubert.errors import LightHubertError
    from lighthubert.inputs import list_inputs

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing.wav")
    for link in (tmp_path / "a", tmp_path / "gone"):
        with pytest.raises(LightHubertError) as e:
            list_inputs(link)
        assert str(e.value) == f"{link}: a symbolic link to nothing (broken, or a loop)"
    with pytest.raises(LightHubertError) as e:
        list_inputs(tmp_path / "missing")
    assert str(e.value) == f"{tmp_path / 'missing'}: no such file or folder"


@needs_speech
def test_a_features_file_or_checkpoint_as_input_is_refused_before_anything(tmp_path, ckpt_files):
    """Before: `lhb extract out.h5 new.h5` (arguments swapped) or a checkpoint as INPUT was decoded as
    audio, skipped, and left a new empty OUTPUT with exit 3. Now one line, exit 1, nothing written."""
    feats = tmp_path / "feats.h5"
    _features_file(feats)
    before = feats.read_bytes()
    for wrong, kind in ((feats, "an HDF5 file"), (ckpt_files["small"], "a PyTorch file")):
        r = lhb("extract", wrong, tmp_path / "new.h5", "-c", "random:small")
        assert r.returncode == 1
        assert one_line(r) == f"lhb: error: {wrong}: {kind}, not audio or a list of audio files " \
                              "(lhb extract takes INPUT first, then OUTPUT)"
        assert not (tmp_path / "new.h5").exists()
    r = lhb("extract", feats, UTT.parent, "-c", "random:small")  # the whole swap: OUTPUT kept as it was
    assert r.returncode == 1 and "an HDF5 file" in one_line(r)
    assert feats.read_bytes() == before
