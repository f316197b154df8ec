"""Progress and messages on stderr: a Rich display on a terminal, plain lines otherwise, nothing
but errors with --quiet."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from lighthubert.inputs import Item, display_path


def err(message: str) -> None:
    """One plain line on stderr (never wrapped)."""
    print(message, file=sys.stderr, flush=True)


def hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class _Audio(ProgressColumn):
    def render(self, task: Task) -> Text:
        done = task.fields.get("seconds", 0.0)
        total = task.fields.get("total_seconds", 0.0)
        return Text(f"{hms(done)}/{hms(total)} audio", style="cyan")


class _Speed(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rt = task.fields.get("seconds", 0.0) / elapsed if elapsed > 0 else 0.0
        return Text(f"{rt:,.0f}x real time", style="green")


class Reporter:
    """Receives the pipeline's events and shows them."""

    def __init__(self, quiet: bool = False, plain: bool | None = None, every: float = 10.0):
        self.quiet = quiet
        self.plain = (not sys.stderr.isatty()) if plain is None else plain
        self.every = every
        self.console = Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.files = self.total = 0
        self.seconds = self.total_seconds = 0.0
        self.t0 = self.last = time.monotonic()

    def start(self, files: int, seconds: float, done_before: int) -> None:
        self.total, self.total_seconds = files, seconds
        self.t0 = self.last = time.monotonic()
        if self.quiet:
            return
        if done_before:
            err(f"resuming: {done_before} utterances already in the file, {files} to do")
        if self.plain:
            err(f"extracting {files} files, {hms(seconds)} of audio")
            return
        self.progress = Progress(
            TextColumn("[bold]extract"), BarColumn(), TextColumn("{task.completed}/{task.total} files"),
            _Audio(), _Speed(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("extract", total=files, seconds=0.0, total_seconds=seconds)

    def advance(self, files: int, seconds: float) -> None:
        self.files += files
        self.seconds += seconds
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.update(self.task, advance=files, seconds=self.seconds)
            return
        now = time.monotonic()
        if now - self.last >= self.every or self.files == self.total:
            self.last = now
            elapsed = now - self.t0
            rt = self.seconds / elapsed if elapsed else 0.0
            left = (self.total_seconds - self.seconds) / rt if rt else 0.0
            err(f"{self.files}/{self.total} files, {hms(self.seconds)}/{hms(self.total_seconds)} audio, "
                f"{rt:,.0f}x real time, ETA {hms(max(left, 0.0))}")

    def skipped(self, item: Item, reason: str) -> None:
        message = f"skipped {display_path(item.path)}: {reason}"
        if self.progress is not None:
            self.progress.console.print(Text(message, style="yellow"), soft_wrap=True)
        else:
            err(message)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
