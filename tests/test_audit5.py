"""Found by a fresh-eyes audit of the command as a speech researcher uses it (README, literally)."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest
import torch

from cli_helpers import Run, _env, lhb, lhb_command, lhb_prefix
from helpers import SPEECH_DIR, copy_speech

FILES = ["spk1/utt01.wav", "spk1/utt02.wav", "spk2/utt01.wav"]


@pytest.fixture(scope="module")
def feats_km(tmp_path_factory):
    """A features file (layers 0 and 3 of random:small's min subnet) and a 4-cluster k-means of layer 3."""
    d = tmp_path_factory.mktemp("audit5")
    copy_speech(d / "wav", FILES)
    feats, km = d / "feats.h5", d / "km.pt"
    r = lhb("extract", d / "wav", feats, "-c", "random:small", "--subnet", "min", "--layers", "0,3", "--device", "cpu", "-q")
    assert r.returncode == 0, r
    r = lhb("units", "learn", feats, km, "--layer", "3", "--clusters", "4", "--iterations", "5", "-q")
    assert r.returncode == 0, r
    return feats, km


@pytest.mark.slow  # lhb subprocesses
def test_units_apply_to_a_closed_stdout_ends_quietly(feats_km):
    """README: `lhb units apply feats.h5 km.pt - --keys | head`, and a reader that closes the pipe
    early ends lhb quietly with exit 141. Before: 'lhb: error: : Broken pipe', exit 1."""
    feats, km = feats_km
    proc = subprocess.Popen(lhb_prefix() + ["units", "apply", str(feats), str(km), "-", "--keys", "-q"], env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: the reader is gone before lhb writes
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and err == b"", err


def test_unusable_scp_key_is_not_told_to_use_a_scp_list(tmp_path):
    """A .scp key with '.' or empty parts is refused naming its line; the advice 'give keys of your
    own with a .scp list' is for keys made from paths, not for a key the user already wrote in one."""
    from lighthubert.errors import LightHubertError
    from lighthubert.inputs import list_inputs

    wav = SPEECH_DIR / FILES[0]
    scp = tmp_path / "k.scp"
    scp.write_text(f"ok {wav}\na//b {wav}\n")
    with pytest.raises(LightHubertError, match=r"k\.scp:2: 'a//b' is not a usable key \(empty, '\.' or '\.\.' parts\)$"):
        list_inputs(scp)
    lst = tmp_path / "k.txt"
    lst.write_text("./.\n")
    with pytest.raises(LightHubertError, match=r"give keys of your own with a \.scp list"):
        list_inputs(lst)


def test_prepare_refuses_what_the_call_refuses():
    """README's overlapped loop, ext.submit(ext.prepare(waves), ...), took a (N, 2) stereo array as
    2N interleaved samples (twice the frames, features of garbage) where ext(waves) refuses it."""
    import numpy as np
    import soundfile as sf

    import lighthubert

    ext = lighthubert.load("random:small", subnet="min", device="cpu")
    wave, sr = sf.read(SPEECH_DIR / FILES[0], dtype="float32")
    assert sr == 16000 and wave.ndim == 1
    stereo = np.stack([wave, wave], axis=1)  # (N, 2), as soundfile gives a 2-channel file
    for bad, words in ((stereo, r"waveform 1 has shape \(\d+, 2\)"), (wave[:399], "waveform 1 has fewer than 400"),
                       (np.full(1000, np.nan, np.float32), "waveform 1 holds NaN")):
        with pytest.raises(ValueError, match=words):
            ext.prepare([wave, bad])
    (got,) = ext.submit(ext.prepare([wave[None]]), [ext.num_layers]).result()  # (1, N) is one channel
    assert got.shape == (1, (len(wave) - 400) // 320 + 1, ext.embed_dim)


COMMON_RATES = [5512, 8000, 11025, 12000, 22050, 24000, 32000, 37800, 44056, 44100, 47952, 48000, 88200, 96000,
                176400, 192000, 352800, 384000]


def test_an_odd_sample_rate_is_skipped_before_its_filter_exhausts_memory(tmp_path):
    """torchaudio's resample builds a (16000/g, rate/g + 2w) filter, g = gcd(rate, 16000): a 16 KB
    file declaring 16001 Hz took 2 GB, 44101 Hz 6 GB, 383999 Hz (inside the accepted 1-384 kHz)
    55 GB, so one small file could end a run out of memory. Such a file is now a bad input named
    with the reason; every common rate still resamples."""
    import numpy as np
    import soundfile as sf
    from torchaudio.functional.functional import _get_sinc_resample_kernel

    from lighthubert.audio import AudioError, MAX_FILTER, check_rate, filter_size, load_audio

    for rate in COMMON_RATES:  # the size checked is the one torchaudio builds
        g = np.gcd(rate, 16000)
        kernel, _ = _get_sinc_resample_kernel(rate, 16000, int(g), dtype=torch.float32)
        assert filter_size(rate) == kernel.numel() <= MAX_FILTER, rate
        check_rate(rate)
    odd = tmp_path / "odd.wav"
    sf.write(odd, np.zeros(8000, np.float32), 16001)
    with pytest.raises(AudioError, match=r"odd.wav: sample rate 16001 Hz: resampling it to 16 kHz \(16001:16000\) would need "
                                         r"a filter of 256 million coefficients"):
        load_audio(odd)
    ok = tmp_path / "ok.wav"
    sf.write(ok, np.zeros(8000, np.float32), 44100)
    assert load_audio(ok).shape == (int(np.ceil(8000 * 16000 / 44100)),)


@pytest.mark.slow  # lhb subprocesses
def test_features_output_dash_is_refused_not_a_file_named_dash(tmp_path, feats_km):
    """`lhb units apply ... -` writes to standard output; `lhb extract wavs -` (or `lhb merge -`)
    silently created a file named '-' in the current folder and exited 0, `lhb convert f.h5 -` a
    folder '-' and `lhb units learn f.h5 -` a file '-'."""
    wav, (feats, _) = SPEECH_DIR / FILES[0], feats_km
    hdf5 = "OUTPUT: '-' (standard output) cannot hold an HDF5 features file; give a file name such as feats.h5"
    cases = [(["extract", wav, "-", "-c", "random:small"], hdf5), (["merge", "-", tmp_path / "none.h5"], hdf5),
             (["convert", feats, "-", "--layer", "3"],
              "OUTPUT: '-' (standard output) cannot hold the files of a folder; give a folder name such as km_feats"),
             (["units", "learn", feats, "-", "--layer", "3", "-k", "2"],
              "KM: '-' (standard output) cannot hold a k-means file; give a file name such as km.pt")]
    runs = [Run(args, cwd=tmp_path) for args, _ in cases]  # all at once
    for (_, line), run in zip(cases, runs):
        r = run.result()
        assert r.returncode == 2 and r.err_lines == [f"lhb: error: {line}"], r
    assert list(tmp_path.iterdir()) == []
    r = lhb("extract", wav, "./-", "-c", "random:small", "--subnet", "min", "-q", cwd=tmp_path)  # a file named so, asked for
    assert r.returncode == 0 and (tmp_path / "-").is_file(), r


@pytest.mark.parametrize("n, batch_size, replicas", [(4, 3, 5), (1, 1, 8), (7, 2, 3), (10, 4, 2)])
def test_length_grouped_sampler_gives_every_rank_its_announced_batches(n, batch_size, replicas):
    """With DistributedDataParallel every process must run the same number of steps, else the one
    with fewer waits forever in a collective. With fewer batches than processes (2 batches, 5
    ranks) the last ranks got no batch at all while len() said 1."""
    from lighthubert import LengthGroupedSampler

    lengths = [50 + 7 * i for i in range(n)]
    seen = set()
    for rank in range(replicas):
        s = LengthGroupedSampler(lengths, batch_size=batch_size, seed=3, num_replicas=replicas, rank=rank)
        batches = list(s)
        assert len(batches) == len(s) == -(-(-(-n // batch_size)) // replicas), (rank, batches)
        assert all(1 <= len(b) <= batch_size for b in batches)
        seen.update(i for b in batches for i in b)
    assert seen == set(range(n))  # every item is used


def test_length_grouped_sampler_refuses_bad_settings_naming_them():
    """pool=0 failed only when iterated ('range() arg 3 must not be zero'); each bad value is now a
    SettingError naming it, when the sampler is made."""
    from lighthubert import LengthGroupedSampler, SettingError

    for kwargs, setting in ((dict(batch_size=0), "batch_size"), (dict(batch_size=2, pool=0), "pool"),
                            (dict(batch_size=2, num_replicas=2, rank=2), "rank")):
        with pytest.raises(SettingError, match=f"^{setting} must be") as e:
            LengthGroupedSampler([3, 4, 5], **kwargs)
        assert e.value.setting == setting


@pytest.mark.slow  # lhb subprocesses
def test_a_seed_out_of_range_is_one_usage_line_naming_seed_in_every_command(tmp_path, feats_km):
    """lhb extract refuses --seed outside 0..2^63-1 naming it; lhb units learn said 'expected
    non-negative integer' (no option named) or 'Overflow when unpacking long long', lhb subnet -c
    random:small an 'internal error', and lhb subnet --sample / lhb info random:* took -1 silently."""
    feats, _ = feats_km
    commands = (["units", "learn", feats, tmp_path / "km.pt", "--layer", "3", "--clusters", "2"],
                ["subnet", "--sample", "2"], ["subnet", "--preset", "min", "-c", "random:small"],
                ["info", "random:small"], ["extract", SPEECH_DIR / FILES[0], tmp_path / "f.h5", "-c", "random:small"])
    seeds = ["-1", str(2**64)] * 3  # each command one of both (2**63: test_library_seed_range)
    runs = [Run([*args, "--seed", seed]) for args, seed in zip(commands, seeds)]  # all at once
    for run, seed in zip(runs, seeds):
        r = run.result()
        assert r.returncode == 2 and r.err_lines == [f"lhb: error: --seed: {seed} is not a whole number from 0 to 2^63-1"], r
        assert r.stdout == "", r
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_library_seed_range():
    import lighthubert
    from lighthubert.errors import SettingError

    for seed in (-1, 2**63, 1.5):
        with pytest.raises(SettingError, match=r"is not a whole number from 0 to 2\^63-1$"):
            lighthubert.load_checkpoint("random:small", seed=seed)


@pytest.mark.slow  # lhb subprocesses
def test_convert_refuses_more_shards_than_utterances(tmp_path, feats_km):
    """--nshard above the utterance count wrote empty shards; --nshard 10**20 ran without end."""
    feats, _ = feats_km
    runs = {n: Run(["convert", feats, tmp_path / "out", "--layer", "3", "--nshard", n, "-q"]) for n in ("4", str(10**20))}
    for n, run in runs.items():
        r = run.result()
        assert r.returncode == 2, r
        assert r.err_lines == [f"lhb: error: --nshard: {n} shards of 3 utterances would leave some empty; give at most 3"], r
        assert not (tmp_path / "out").exists()
    r = lhb("convert", feats, tmp_path / "out", "--layer", "3", "--nshard", "3", "-q")
    assert r.returncode == 0, r
    assert [(tmp_path / "out" / f"train_{i}_3.len").read_text().count("\n") for i in range(3)] == [1, 1, 1]


def test_a_list_written_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Windows editors (Notepad, Excel's 'CSV UTF-8') start UTF-8 text with U+FEFF. It became part
    of the first line: a .tsv root 'did not exist', a .txt's first file was 'no such file', and a
    .scp's first key silently began with an invisible character."""
    from lighthubert.inputs import list_inputs

    bom, wav = "\ufeff", SPEECH_DIR / FILES[0]
    cases = {"l.tsv": f"{SPEECH_DIR}\r\n{FILES[0]}\t1\r\n", "l.txt": f"{wav}\r\n{SPEECH_DIR / FILES[1]}\r\n",
             "l.scp": f"a {wav}\r\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(bom + text, encoding="utf-8")
        (tmp_path / ("plain" + name)).write_text(text, encoding="utf-8")
        with_bom, without = list_inputs(tmp_path / name), list_inputs(tmp_path / ("plain" + name))
        assert [(i.key, i.path) for i in with_bom] == [(i.key, i.path) for i in without], name
        assert with_bom[0].path.is_file() and not with_bom[0].key.startswith(bom), name


@pytest.mark.slow  # lhb subprocesses
def test_merge_remove_parts_removes_the_parts_merged_and_nothing_else(tmp_path, feats_km):
    """`lhb merge out.h5 exp --remove-parts` ran rmtree on exp: notes and audio beside the parts went
    too; `lhb merge f.h5 f.h5 --remove-parts` (or a folder holding OUTPUT) deleted OUTPUT itself
    after saying 'merged 1 part into f.h5'."""
    feats, _ = feats_km
    exp = tmp_path / "exp"
    (exp / "sub").mkdir(parents=True)
    shutil.copy(feats, exp / "part.h5")
    (exp / "notes.txt").write_text("mine\n")
    shutil.copy(SPEECH_DIR / FILES[0], exp / "sub" / "a.wav")
    r = lhb("merge", tmp_path / "out.h5", exp, "--remove-parts")
    assert r.returncode == 0, r
    assert sorted(p.relative_to(exp).as_posix() for p in exp.rglob("*")) == ["notes.txt", "sub", "sub/a.wav"], r
    assert (tmp_path / "out.h5").is_file()

    own = tmp_path / "own.h5"
    shutil.copy(feats, own)
    r = lhb("merge", own, own, "--remove-parts")
    assert r.returncode == 1 and r.err_lines == [f"lhb: error: {own}: is OUTPUT itself, not a part; name the parts to join into it"], r
    assert own.read_bytes() == feats.read_bytes()

    solo = tmp_path / "solo"
    solo.mkdir()
    shutil.copy(feats, solo / "a.h5")
    shutil.copy(tmp_path / "out.h5", solo / "all.h5")
    r = lhb("merge", solo / "all.h5", solo, "--remove-parts")  # OUTPUT inside the folder of parts
    assert r.returncode == 0, r
    assert sorted(p.name for p in solo.iterdir()) == ["all.h5"], r


@pytest.mark.slow  # lhb subprocesses
def test_subnet_output_dash_is_standard_output(tmp_path):
    """`lhb subnet ... -o -` wrote a file named '-' (the JSON is on standard output anyway)."""
    r = lhb("subnet", "--preset", "min", "--supernet", "small", "-o", "-", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.count('"layer_num": 10') == 1, r
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # lhb subprocesses
@pytest.mark.parametrize("closed", [1, 2])
def test_a_closed_standard_stream_never_writes_into_a_file(tmp_path, feats_km, closed):
    """With stdout closed (`lhb units apply f.h5 km.pt - >&-`) the features file, opened first, took
    descriptor 1 and the units were written over it; with stderr closed (`2>&-`) lhb extract ended
    in 'internal error: AttributeError ... isatty'. A closed stream now reads as /dev/null."""
    import os

    feats, km = feats_km
    copy = tmp_path / "feats.h5"
    shutil.copy(feats, copy)
    before = copy.read_bytes()

    def run(*args: object) -> int:
        proc = subprocess.run(lhb_command() + [str(a) for a in args], env=_env(), stdin=subprocess.DEVNULL,
                              stdout=None if closed == 2 else subprocess.DEVNULL, stderr=None if closed == 1 else subprocess.DEVNULL,
                              preexec_fn=lambda: os.close(closed), timeout=300)
        return proc.returncode

    assert run("units", "apply", copy, km, "-", "--keys") == 0
    assert copy.read_bytes() == before
    out = tmp_path / "out.h5"
    assert run("extract", SPEECH_DIR / FILES[0], out, "-c", "random:small", "--subnet", "min") == 0
    from lighthubert import open_features

    with open_features(out) as f:
        assert f.keys == [FILES[0].split("/")[1][:-4]]


@pytest.mark.slow  # lhb subprocesses
def test_units_to_standard_output_keep_what_the_caller_wrote_there(tmp_path, feats_km):
    """`lhb units apply f.h5 km.pt - >> all.km` reopened /dev/stdout with "w": the lines all.km held
    were cut away; `{ echo header; lhb units apply ... -; } > f` lost the header the same way."""
    feats, km = feats_km
    ref = lhb("units", "apply", feats, km, "-", "--keys", "-q")
    assert ref.returncode == 0 and ref.stdout.count("\n") == len(FILES), ref
    target = tmp_path / "all.km"
    target.write_text("earlier line\n")
    with open(target, "ab") as out:
        r = subprocess.run(lhb_prefix() + ["units", "apply", str(feats), str(km), "-", "--keys", "-q"], env=_env(),
                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, timeout=300)
    assert r.returncode == 0, r.stderr
    assert target.read_text() == "earlier line\n" + ref.stdout
    group = tmp_path / "group.km"
    q = shlex.quote
    script = (f"{{ echo header; {' '.join(map(q, lhb_prefix()))} units apply {q(str(feats))} {q(str(km))} - --keys -q; "
              f"echo footer; }} > {q(str(group))}")
    assert subprocess.run(["bash", "-c", script], env=_env(), timeout=300).returncode == 0
    assert group.read_text() == "header\n" + ref.stdout + "footer\n"


def test_launcher_variables_that_cannot_make_a_job_are_one_line():
    """RANK and WORLD_SIZE left in a shell (no torchrun, so no MASTER_ADDR) ended in 'lhb: internal
    error: ValueError: Error initializing torch.distributed ...'; RANK=3 WORLD_SIZE=2 waited on a
    rendezvous; WORLD_SIZE=0 ran as one process. Now one line naming the variables."""
    from lighthubert.distributed import World, detect_world
    from lighthubert.errors import LightHubertError

    cases = [({"RANK": "0", "WORLD_SIZE": "2"}, r"^RANK=0 and WORLD_SIZE=2 are set but MASTER_ADDR and MASTER_PORT not: "
                                                  r"start the processes with torchrun"),
             ({"RANK": "3", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
              r"^the launcher's RANK=3 and WORLD_SIZE=2 do not fit"),
             ({"RANK": "0", "WORLD_SIZE": "0"}, r"^the launcher's RANK=0 and WORLD_SIZE=0 do not fit"),
             ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "-1"}, r"^the launcher's SLURM_LOCALID=-1 is negative$")]
    for env, words in cases:
        with pytest.raises(LightHubertError, match=words):
            detect_world(env)
    good = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert detect_world(good) == World(1, 2, 1, "torchrun")
    assert detect_world({"RANK": "0", "WORLD_SIZE": "1"}) == World(0, 1, 0, "torchrun")  # one process: no rendezvous
    assert detect_world({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4"}) == World(1, 4, 0, "slurm")
    assert detect_world({}) == World()
