"""Ctrl-C during an extraction, for the library and the ``lhb`` command alike (importable without torch):
the first SIGINT asks the job to stop after its current batch, a second stops at once."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator


def in_finaliser(signum: int, frame) -> bool:
    """Whether the signal landed in a finaliser or weakref callback, where an exception raised is only
    printed ("Exception ignored in ...") and the work would go on; if so, the signal is sent again in a
    moment, to land in the job's own code."""
    if frame is not None and (frame.f_code.co_name == "__del__" or frame.f_code.co_filename.endswith("weakref.py")):
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return True
    return False


@contextlib.contextmanager
def interrupt_stops(stop: threading.Event) -> Iterator[list[bool]]:
    """While open, the first SIGINT sets ``stop`` (the list yielded becomes true) and says so on stderr;
    a second raises KeyboardInterrupt. Only in the main thread and where Python's own SIGINT handler
    is in place (a handler of the caller's, or SIGINT ignored, is left alone)."""
    said: list[bool] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield said
        return

    def on_sigint(signum, frame):
        if said:
            if not in_finaliser(signum, frame):
                raise KeyboardInterrupt
            return
        said.append(True)
        stop.set()
        try:
            print("lighthubert: stopping after the current batch (interrupt again to stop at once)", file=sys.stderr,
                  flush=True)
        except (OSError, ValueError):
            pass

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield said
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:  # one installed meanwhile stays
            signal.signal(signal.SIGINT, signal.default_int_handler)
