"""Several processes (torchrun, or srun under SLURM) extracting one corpus into one features file.

Every rank reads its rank and world size from the launcher's environment, takes a disjoint share of
the inputs balanced by audio duration (rank 0 plans, the others receive the plan), runs on its own GPU
(``LOCAL_RANK``) or the CPU, and commits its work as segments, ``OUTPUT.parts/seg-RANK-INDEX.h5``. When
every rank has finished, rank 0 joins OUTPUT (when resuming) and the segments into a new file that
atomically replaces OUTPUT, then removes them; with ``keep_parts`` each rank's segments become its
part, ``OUTPUT.parts/part-RANK.h5``, and ``lhb merge`` joins the parts later (:mod:`lighthubert.job`
runs all this; segments, parts and merging are in :mod:`lighthubert.storage`).
Coordination uses a torch.distributed gloo group: torchrun's rendezvous, or under srun a
FileStore in the parts folder (a filesystem shared by the nodes is assumed, as for OUTPUT itself).

A rank that dies (killed, out of memory) must not leave the others waiting for it: torchrun tears the
job down, but srun lets the other tasks run on. So every rank bumps a heartbeat counter in the store
from a thread, and a rank waiting for the others gives up when one that has not finished falls silent
for ``LIGHTHUBERT_RANK_TIMEOUT`` seconds (default 120): it fails with the parts kept for ``--resume``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable

from .storage import OutputError, parts_dir

TIMEOUT_ENV = "LIGHTHUBERT_RANK_TIMEOUT"
RANK_TIMEOUT = 120.0
"""Seconds without a heartbeat after which a rank that has not finished counts as gone."""
BEAT_SECONDS = 2.0


def rank_timeout() -> float:
    return float(os.environ.get(TIMEOUT_ENV) or RANK_TIMEOUT)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = ""

    @property
    def distributed(self) -> bool:
        return self.size > 1


def store_name(env: dict | None = None) -> str:
    """The srun ranks' store file in OUTPUT.parts: ``JOB.STEP``, and ``.rN`` for the N-th restart of a
    requeued job. A requeued job keeps its job id and starts again at step 0; the store its stopped run
    left (it stays beside the segments for --resume) held the old ranks' addresses, so the new ranks
    hung or failed to connect."""
    e = os.environ if env is None else env
    name = f"{e.get('SLURM_JOB_ID', 'job')}.{e.get('SLURM_STEP_ID', '0')}"
    restart = e.get("SLURM_RESTART_COUNT", "0")
    return name if restart in ("", "0") else f"{name}.r{restart}"


def process_device(device: Any, world: World, cuda_devices: int) -> Any:
    """The device of this process, of ``cuda_devices`` it sees. With several processes, ``auto`` and
    a plain ``cuda`` are GPU ``local_rank`` modulo the count: GPU k for rank k on a node that shows
    every process all its GPUs (torchrun, ``srun --gres=gpu:8``), GPU 0 for each when the launcher
    shows every task only its own (``srun --gpus-per-task=1``: each rank would otherwise ask for a GPU
    it cannot see, or all use GPU 0). ``cuda:N`` is kept as given."""
    if world.distributed and cuda_devices and (device is None or str(device) in ("auto", "cuda")):
        return f"cuda:{world.local_rank % cuda_devices}"
    return device


def detect_world(env: dict | None = None) -> World:
    """torchrun (RANK, WORLD_SIZE, LOCAL_RANK) first, then srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS,
    SLURM_LOCALID); otherwise one process."""
    e = os.environ if env is None else env
    try:
        if "RANK" in e and "WORLD_SIZE" in e:
            return check_world(World(int(e["RANK"]), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)), "torchrun"), e)
        if "SLURM_PROCID" in e and "SLURM_STEP_NUM_TASKS" in e:
            return check_world(World(int(e["SLURM_PROCID"]), int(e["SLURM_STEP_NUM_TASKS"]), int(e.get("SLURM_LOCALID", 0)),
                                     "slurm"), e)
    except ValueError as err:
        raise OutputError(f"cannot read the launcher's rank variables: {err}") from None
    return World()


def check_world(world: World, env: dict | None = None) -> World:
    """``world`` if it can be joined, else :class:`OutputError` in one line: a rank outside 0..size-1,
    or torchrun's variables without the MASTER_ADDR / MASTER_PORT torchrun sets (RANK and WORLD_SIZE
    left in a shell), which torch reports as an error of its own deep in the rendezvous."""
    e = os.environ if env is None else env
    rank, size, local = (("RANK", "WORLD_SIZE", "LOCAL_RANK") if world.launcher == "torchrun"
                         else ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"))
    if world.launcher and (world.size < 1 or not 0 <= world.rank < world.size):
        raise OutputError(f"the launcher's {rank}={world.rank} and {size}={world.size} do not fit: {size} must be at "
                          f"least 1 and {rank} from 0 to {size}-1")
    if world.launcher and world.local_rank < 0:
        raise OutputError(f"the launcher's {local}={world.local_rank} is negative")
    if world.launcher == "torchrun" and world.distributed:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not e.get(k)]
        if missing:
            raise OutputError(f"RANK={world.rank} and WORLD_SIZE={world.size} are set but {' and '.join(missing)} "
                              "not: start the processes with torchrun, or unset RANK and WORLD_SIZE for one process")
    return world


class StoppedWaiting(Exception):
    """A stop (signal) came while this rank waited for the others to join: nothing was done."""


class Group:
    """The gloo process group and its key-value store, for planning, progress and the final verdict."""

    def __init__(self, world: World, output: Path, timeout_minutes: float = 60.0, stop: threading.Event | None = None):
        """Join the other ranks. ``stop`` set while waiting for them (a signal): :class:`StoppedWaiting`."""
        import torch.distributed as dist

        self.dist, self.world = dist, world
        timeout = timedelta(minutes=timeout_minutes)
        # torch waits for the others inside C++, where Python's signal handlers never run (Ctrl-C and
        # SIGTERM did nothing for up to the hour of the timeout): it waits in a thread, this one here
        joined, failed = threading.Event(), []

        def join() -> None:
            try:
                self._join(world, output, timeout)
            except BaseException as err:  # noqa: BLE001 - raised below, in the caller's thread
                failed.append(err)
            finally:
                joined.set()

        threading.Thread(target=join, name="lhb-rendezvous", daemon=True).start()
        while not joined.wait(0.2):
            if stop is not None and stop.is_set():
                raise StoppedWaiting
        if failed:
            raise failed[0]
        self.store = dist.distributed_c10d._get_default_store()
        self._stop_beating = threading.Event()
        self._seen: dict[int, tuple[int, float]] = {}  # rank -> (last heartbeat count, when it changed)
        self._beater = threading.Thread(target=self._beat, name="lhb-heartbeat", daemon=True)
        self._beater.start()

    def _join(self, world: World, output: Path, timeout: timedelta) -> None:
        dist = self.dist
        try:
            if world.launcher == "torchrun":
                where = f"torchrun's rendezvous ({os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')})"
                dist.init_process_group("gloo", timeout=timeout)
            else:
                store_path = parts_dir(output) / f".store-{store_name()}"
                where = f"the file {store_path} (on a filesystem all nodes share, that takes file locks)"
                store_path.parent.mkdir(parents=True, exist_ok=True)
                store = dist.FileStore(str(store_path), world.size)
                dist.init_process_group("gloo", store=store, rank=world.rank, world_size=world.size, timeout=timeout)
        except RuntimeError as err:  # torch's DistStoreError, DistNetworkError, a timeout
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OutputError(f"rank {world.rank} of {world.size} could not join the others through {where}: "
                              f"{reason}") from None

    def _beat(self) -> None:
        while True:
            try:
                self.add(f"beat/{self.world.rank}", 1)
            except Exception:  # noqa: BLE001 - the store is gone: the job is ending
                return
            if self._stop_beating.wait(BEAT_SECONDS):
                return

    def gone(self, ranks: Iterable[int], timeout: float) -> list[int]:
        """Those of ``ranks`` whose heartbeat has not moved for ``timeout`` seconds of this process's
        clock (counters, not timestamps: the nodes' clocks need not agree)."""
        now, silent = time.monotonic(), []
        for r in ranks:
            count = self.add(f"beat/{r}", 0)
            last, since = self._seen.get(r, (-1, now))
            if count != last:
                self._seen[r] = (count, now)
            elif now - since > timeout:
                silent.append(r)
        return silent

    def broadcast(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def add(self, key: str, amount: int) -> int:
        return int(self.store.add(f"lhb/{key}", int(amount)))

    def fail(self, reason: str) -> None:
        """Say that this rank failed (the others stop after their current batch) and why."""
        self.store.set("lhb/error", reason)
        self.add("failed", 1)

    def failure(self) -> str:
        """Why a rank failed, or "" when none has."""
        return self.store.get("lhb/error").decode() if self.store.check(["lhb/error"]) else ""

    def ending(self) -> bool:
        """Whether another rank failed or left: this one should stop after its current batch."""
        return bool(self.add("failed", 0)) or self.store.check(["lhb/verdict"])

    def gather(self, obj) -> list:
        out = [None] * self.world.size
        self.dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Stop the heartbeat, then leave the group. The heartbeat's last write must be whole before the
        process may end: torch's FileStore (srun) reads a record cut short by a process's end (its key
        without its value) by looping on the end of the file for good, in every other rank and in this
        one's own store destructor (seen: a rank that printed its error and never exited)."""
        self._stop_beating.set()
        self._beater.join(timeout=10)  # bounded: with a TCPStore whose host is gone an add may wait
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


def finished(group: Group) -> None:
    """This rank has finished its share (successfully or not)."""
    group.add(f"done/{group.world.rank}", 1)
    group.add("finished", 1)


def decide(group: Group, verdict: str) -> str:
    """Propose how the job ends, ``"gather"`` (every rank takes part in the final exchange) or
    ``"abandon"`` (some rank cannot); the first proposal wins and is returned, so no rank waits in
    the exchange for one that left. A rank that will not take part proposes ``"abandon"`` *before*
    :func:`finished`, which is what ``"gather"`` waits for, so its proposal always wins."""
    return group.store.compare_set("lhb/verdict", "", verdict).decode()


def wait_for_ranks(group: Group, on_tick=None, poll: float = 0.5, stop=None) -> str:
    """After :func:`finished`: block until every rank has finished its share. Returns ``"gather"``
    (all have; take part in the final exchange), ``"abandon"`` (another rank left), ``"stopped"``
    (``stop`` was set and this rank leaves), or ``"gone R"`` (rank R fell silent before finishing;
    rank 0 watches every rank, the others watch rank 0, which merges). Calls ``on_tick`` meanwhile."""
    timeout = rank_timeout()
    watched = range(group.world.size) if group.world.rank == 0 else [0]
    checked = time.monotonic()
    while True:
        if group.store.check(["lhb/verdict"]):
            return decide(group, "")
        if group.add("finished", 0) >= group.world.size:
            return decide(group, "gather")
        if stop is not None and stop.is_set():
            return "stopped" if decide(group, "abandon") == "abandon" else "gather"
        if on_tick:
            on_tick()
        if time.monotonic() - checked >= min(5.0, timeout / 4):
            checked = time.monotonic()
            unfinished = [r for r in watched if r != group.world.rank and not group.add(f"done/{r}", 0)]
            if (gone := group.gone(unfinished, timeout)) and decide(group, "abandon") == "abandon":
                return f"gone {gone[0]}"
        time.sleep(poll)
