"""Several processes (torchrun, or srun under SLURM) extracting one corpus into one features file.

Every rank reads its rank and world size from the launcher's environment, takes a disjoint share of
the inputs balanced by audio duration (rank 0 plans, the others receive the plan), runs on its own GPU
(``LOCAL_RANK``) or the CPU, and writes its own part, ``OUTPUT.parts/part-RANK.h5``. When every rank
has finished, rank 0 merges OUTPUT (when resuming) and the parts into a new file that atomically
replaces OUTPUT, then removes the parts; with ``keep_parts`` the parts stay and ``lhb merge`` joins
them later. Coordination uses a torch.distributed gloo group: torchrun's rendezvous, or under srun a
FileStore in the parts folder (a filesystem shared by the nodes is assumed, as for OUTPUT itself).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterable

import h5py

from .features import GROUP, RUN_IDENTITY, OutputError, _norm, keys


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = ""

    @property
    def distributed(self) -> bool:
        return self.size > 1


def detect_world(env: dict | None = None) -> World:
    """torchrun (RANK, WORLD_SIZE, LOCAL_RANK) first, then srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
    SLURM_LOCALID); otherwise one process."""
    e = os.environ if env is None else env
    try:
        if "RANK" in e and "WORLD_SIZE" in e:
            return World(int(e["RANK"]), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)), "torchrun")
        if "SLURM_PROCID" in e and "SLURM_STEP_NUM_TASKS" in e:
            return World(int(e["SLURM_PROCID"]), int(e["SLURM_STEP_NUM_TASKS"]), int(e.get("SLURM_LOCALID", 0)), "slurm")
    except ValueError as err:
        raise OutputError(f"cannot read the launcher's rank variables: {err}") from None
    return World()


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def part_path(output: Path, rank: int) -> Path:
    return parts_dir(output) / f"part-{rank:05d}.h5"


class Group:
    """The gloo process group and its key-value store, for planning, progress and the final verdict."""

    def __init__(self, world: World, output: Path, timeout_minutes: float = 60.0):
        import torch.distributed as dist

        self.dist, self.world = dist, world
        timeout = timedelta(minutes=timeout_minutes)
        if world.launcher == "torchrun":
            dist.init_process_group("gloo", timeout=timeout)
        else:
            job = f"{os.environ.get('SLURM_JOB_ID', 'job')}.{os.environ.get('SLURM_STEP_ID', '0')}"
            store_path = parts_dir(output) / f".store-{job}"
            store_path.parent.mkdir(parents=True, exist_ok=True)
            store = dist.FileStore(str(store_path), world.size)
            dist.init_process_group("gloo", store=store, rank=world.rank, world_size=world.size, timeout=timeout)
        self.store = dist.distributed_c10d._get_default_store()

    def broadcast(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def add(self, key: str, amount: int) -> int:
        return int(self.store.add(f"lhb/{key}", int(amount)))

    def gather(self, obj) -> list:
        out = [None] * self.world.size
        self.dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        try:
            self.dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def balance(sizes: Iterable[tuple[object, int]], ranks: int) -> list[list[object]]:
    """Longest first onto the least loaded rank: shares of nearly equal audio duration."""
    shares: list[list[object]] = [[] for _ in range(ranks)]
    load = [0] * ranks
    for item, n in sorted(sizes, key=lambda s: -s[1]):
        r = min(range(ranks), key=lambda i: (load[i], i))
        shares[r].append(item)
        load[r] += max(n, 1)
    return shares


def done_keys(output: Path, resume: bool) -> set[str]:
    """Keys already extracted: in OUTPUT (when resuming) and in any part left by an earlier run."""
    found: set[str] = set()
    files = ([output] if resume and output.exists() else []) + sorted(parts_dir(output).glob("part-*.h5"))
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                found.update(keys(f))
        except OSError as err:
            raise OutputError(f"{path}: cannot be read to resume ({err}); remove it or use --overwrite") from None
    return found


def merge(output: Path, parts: list[Path], *, include_output: bool, complete: bool | None = None) -> int:
    """Join ``parts`` (and OUTPUT itself when ``include_output``) into a new file that replaces
    OUTPUT atomically. All must come from the same run settings; a key in two files is an error
    unless the datasets are equal. ``complete`` (default: every source says so) is recorded.
    Returns the number of utterances."""
    sources = ([output] if include_output and output.exists() else []) + list(parts)
    if not sources:
        raise OutputError(f"{output}: nothing to merge")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".merging", dir=output.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        skipped: dict[str, dict] = {}
        identity = None
        with h5py.File(tmp, "w", libver=("v108", "latest")) as dst:
            group = dst.create_group(GROUP)
            for path in sources:
                try:
                    src = h5py.File(path, "r")
                except OSError as err:
                    raise OutputError(f"{path}: cannot be opened ({err})") from None
                with src:
                    ident = {k: _norm(src.attrs.get(k)) for k in RUN_IDENTITY}
                    if identity is None:
                        identity = ident
                        for k, v in src.attrs.items():
                            dst.attrs[k] = v
                    elif ident != identity:
                        diff = [k for k in RUN_IDENTITY if ident[k] != identity[k]]
                        raise OutputError(f"{path}: made with different settings ({', '.join(diff)}) than {sources[0]}")
                    for entry in json.loads(_norm(src.attrs.get("skipped", "[]")) or "[]"):
                        skipped[entry["key"]] = entry
                    for key in keys(src):
                        if key in group:
                            if (group[key][()] != src[GROUP][key][()]).any():
                                raise OutputError(f"{path}: key {key!r} is also in another part, with other values")
                            continue
                        parent = key.rsplit("/", 1)[0] if "/" in key else ""
                        dest_group = group.require_group(parent) if parent else group
                        src.copy(src[GROUP][key], dest_group, name=key.rsplit("/", 1)[-1])
            done = set(keys(dst))
            dst.attrs["skipped"] = json.dumps([v for k, v in skipped.items() if k not in done])
            dst.attrs["complete"] = all(_complete(p) for p in sources) if complete is None else complete
            dst.attrs["merged_from"] = len(sources)
        os.replace(tmp, output)
        return len(done)
    finally:
        if tmp.exists():
            tmp.unlink()


def _complete(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return bool(f.attrs.get("complete", False))


def remove_parts(output: Path) -> None:
    shutil.rmtree(parts_dir(output), ignore_errors=True)


def wait_for(group: Group, key: str, count: int, on_tick=None, poll: float = 0.5, stop=None) -> None:
    """Block until the store counter ``key`` reaches ``count`` (or ``stop`` is set), calling
    ``on_tick`` meanwhile."""
    while group.add(key, 0) < count and not (stop is not None and stop.is_set()):
        if on_tick:
            on_tick()
        time.sleep(poll)
