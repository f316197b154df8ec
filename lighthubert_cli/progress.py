"""Progress and messages on stderr: a Rich display on a terminal, plain lines otherwise, nothing
but errors with --quiet."""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from lighthubert.inputs import Item, display_path, escape_name


STDOUT = "standard output"
"""How stdout is named in an error (it has no file name of its own)."""


def out_line(text: str) -> None:
    """Data on stdout, with its new line, in one write: a reader that takes the first line and leaves
    (``| head -1``) then finds it all there, also when Python is unbuffered (``PYTHONUNBUFFERED=1``,
    where ``print`` writes the text and the new line apart, and lhb could end with 141). Written to
    the descriptor until all of it is taken: Python's buffered stdout drops the rest of a large
    write that the pipe took only part of before its reader left (``lhb subnet --sample 10000 |
    head -c 100`` ended 0, not 141)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    # a stdout that is not UTF-8 (PYTHONIOENCODING=ascii) gets \xe9 for what it cannot hold, not an internal error
    data = memoryview((text + "\n").encode(sys.stdout.encoding or "utf-8", "backslashreplace"))
    try:
        sys.stdout.flush()
        while data:
            data = data[os.write(fd, data):]
    except BrokenPipeError:
        raise  # the reader left: lhb ends quietly (141)
    except OSError as e:  # a full disk, /dev/full: named, as a file lhb writes would be
        raise OSError(e.errno, e.strerror, STDOUT) from None


def err(message: str) -> None:
    """One plain line on stderr (never wrapped); a path's undecodable bytes written ``%XX``, as in
    the features file (not Python's ``\\udcff``). When stderr's reader has gone (``2>&1 | head``, a
    ``tee`` that died) the work goes on without messages: only stdout's reader ends a command."""
    body = message.lstrip("\n")  # a leading new line (after a terminal's ^C) is kept; any other is written \n
    message = message[: len(message) - len(body)] + body.replace("\n", "\\n").replace("\r", "\\r")
    try:
        print(escape_name(message), file=sys.stderr, flush=True)
    except BrokenPipeError:
        try:  # later lines (Rich's, C libraries') go nowhere, and Python's flush at exit succeeds
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        except (OSError, ValueError):
            pass


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


def count(n: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def eta(done: float, total: float, elapsed: float) -> str:
    """Time left at the speed so far (audio seconds per wall second), ``-:--`` before any audio is
    done. The one ETA format of both displays."""
    if done <= 0 or elapsed <= 0:
        return "-:--"
    return hms(max(total - done, 0.0) * elapsed / done)


def progress_line(r: "Reporter") -> str:
    """``4/108 files, 1:23/12:34 audio, 35x real time, ETA 1:20`` (files as text; the ETA follows
    the audio seconds, since the longest files run first)."""
    elapsed = time.monotonic() - r.t0
    rt = r.seconds / elapsed if elapsed > 0 else 0.0
    end = r.files >= r.total  # skipped files' audio never comes: at the end, the total is what was done
    total = r.seconds if end else r.total_seconds
    if end and r.seconds == 0:  # only bad files (a resume that tries them again): no rate to speak of
        return f"{r.files:,}/{count(r.total, 'file')}, no audio extracted"
    return (f"{r.files:,}/{count(r.total, 'file')}, {hms(r.seconds)}/{hms(total)} audio, "
            f"{rt:,.0f}x real time, ETA {'0:00' if end else eta(r.seconds, total, elapsed)}")


class _Line(ProgressColumn):
    """The same text as the plain lines, after the bar."""

    def __init__(self, reporter: "Reporter"):
        super().__init__()
        self.reporter = reporter

    def render(self, task: Task) -> Text:
        return Text(progress_line(self.reporter))


class Reporter:
    """Receives the pipeline's events and shows them: on a terminal a bar that follows the seconds
    of audio done, elsewhere a plain line every ``every`` seconds."""

    def __init__(self, quiet: bool = False, plain: bool | None = None, every: float = 10.0, strict: bool = False):
        self.quiet = quiet
        self.strict = strict
        """With --strict a bad input stops the run and the error says which: no "skipped" line."""
        self.console = Console(stderr=True)
        # a dumb terminal (TERM=dumb: Emacs shells, CI runners with a pty) gets no live display from Rich,
        # so it gets the plain lines, as a log does (it showed nothing until the end)
        self.plain = (not sys.stderr.isatty() or self.console.is_dumb_terminal) if plain is None else plain
        self.every = every
        self.progress: Progress | None = None
        self.task = None
        self.files = self.total = 0
        self.seconds = self.total_seconds = 0.0
        self.t0 = self.last = time.monotonic()
        self.said: tuple[int, float] | None = None  # the counts of the last plain line printed

    def start(self, files: int, seconds: float, done_before: int) -> None:
        self.total, self.total_seconds = files, seconds
        self.t0 = self.last = time.monotonic()
        if self.quiet:
            return
        if done_before:
            err(f"resuming: {count(done_before, 'utterance')} already done, {files:,} to do")
        if not files:  # nothing to extract: no bar, no "extracting 0 files"
            return
        if self.plain:
            err(f"extracting {count(files, 'file')}, {hms(seconds)} of audio")
            return
        bar = max(10, min(40, self.console.width - 70))  # the line fits 80 columns
        self.progress = Progress(TextColumn("[bold]extract"), BarColumn(bar_width=bar), _Line(self), console=self.console)
        self.progress.start()
        self.task = self.progress.add_task("extract", total=max(seconds, 1e-9))

    def advance(self, files: int, seconds: float) -> None:
        """``files`` finished (skipped ones included) and ``seconds`` of audio done; a long file's
        chunks may advance the seconds with ``files`` 0."""
        self.files += files
        self.seconds += seconds
        if self.quiet:
            return
        finished = self.total > 0 and self.files >= self.total
        if self.progress is not None:
            self.progress.update(self.task, completed=self.total_seconds if finished else min(self.seconds, self.total_seconds))
            return
        now = time.monotonic()
        final = finished and self.said != (self.files, self.seconds)  # the last line once (ranks tick after it)
        if now - self.last >= self.every or final:
            self.last, self.said = now, (self.files, self.seconds)
            err(progress_line(self))

    def skipped(self, item: Item, reason: str) -> None:
        if self.strict:
            return
        message = f"skipped {display_path(item.path)}: {reason}"
        if self.progress is not None:
            self.progress.console.print(Text(message, style="yellow"), soft_wrap=True)
        else:
            err(message)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
