"""Several processes (torchrun, or srun under SLURM) extracting one corpus into one features file.

Every rank reads its rank and world size from the launcher's environment, takes a disjoint share of
the inputs balanced by audio duration (rank 0 plans, the others receive the plan), runs on its own GPU
(``LOCAL_RANK``) or the CPU, and writes its own part, ``OUTPUT.parts/part-RANK.h5``. When every rank
has finished, rank 0 merges OUTPUT (when resuming) and the parts into a new file that atomically
replaces OUTPUT, then removes the parts; with ``keep_parts`` the parts stay and ``lhb merge`` joins
them later (:mod:`lighthubert.job` runs all this; parts and merging are in :mod:`lighthubert.storage`).
Coordination uses a torch.distributed gloo group: torchrun's rendezvous, or under srun a
FileStore in the parts folder (a filesystem shared by the nodes is assumed, as for OUTPUT itself).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterable

from .storage import OutputError, parts_dir


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


def wait_for(group: Group, key: str, count: int, on_tick=None, poll: float = 0.5, stop=None) -> None:
    """Block until the store counter ``key`` reaches ``count`` (or ``stop`` is set), calling
    ``on_tick`` meanwhile."""
    while group.add(key, 0) < count and not (stop is not None and stop.is_set()):
        if on_tick:
            on_tick()
        time.sleep(poll)
