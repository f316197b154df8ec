"""The ``lhb`` console entry point: signals are handled before anything heavy is imported.

Importing the CLI (Typer, Rich, torch) takes a second or more. Ctrl-C or SIGTERM in that time ends
the process with one line and exit 130 / 143 (nothing has been written yet); :func:`main.run`
then takes over the signals for the rest of the process.
"""

from __future__ import annotations

import os
import signal
import sys

STOPPED = {signal.SIGINT: (130, b"lhb: interrupted\n"), signal.SIGTERM: (143, b"lhb: terminated\n")}


def _stop_now(signum: int, frame: object) -> None:
    code, line = STOPPED[signum]
    os.write(2, line)
    os._exit(code)


def _reopen_closed_std_streams() -> None:
    """Open /dev/null on a standard stream the caller closed (``lhb ... >&-``, ``2>&-``). Else the next
    file opened takes its number and what is meant for the stream goes into that file: ``lhb units
    apply f.h5 km.pt - >&-`` wrote the units over f.h5 itself, and a closed stderr was an internal error."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself, as 0..fd-1 are open now
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, mode, closefd=False))


def _end(status: int, at_once: bool = False) -> None:
    """Exit with ``status``. Python's own exit then tears down every module, which takes about 0.45 s
    once torch is loaded (a fifth of ``lhb info``). When the work has left nothing that needs it
    (no thread but daemon ones, no HDF5 file open), lhb runs the atexit functions, flushes its streams and ends
    at once; otherwise, or when a flush fails, it leaves the ending to Python as usual.

    ``at_once``: a signal stopped the command (its line is said). If threads still run (a stop at once
    leaves them: the writer, the decoders), flush the streams and end now. Python's exit would tear
    modules down under them: with the writer thread inside h5py (holding h5py's lock), a second Ctrl-C
    hung lhb for good (about one run in eight) or crashed it (SIGSEGV). Ending now is what SIGKILL
    does, which OUTPUT and its committed work survive by design; the uncommitted segment is dropped
    by the next run."""
    import threading

    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    if at_once and others:
        _restore_terminal()
        _flush()
        os._exit(status)
    h5py = sys.modules.get("h5py")
    h5_open = 0 if h5py is None else h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)
    # daemon threads: Python's exit would not wait for them either, only tear modules down under them
    # (one still waiting inside torch for ranks that never came, after a stop there)
    if all(t.daemon for t in others) and h5_open == 0:
        import atexit

        atexit._run_exitfuncs()
        if _flush():
            os._exit(status)
    sys.exit(status)


def _restore_terminal() -> None:
    """Show the cursor a live progress display hid, and end the bar's line: ending at once skips Rich's
    own clean-up (a second Ctrl-C left the terminal without a cursor, the prompt on the bar)."""
    try:
        if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
            sys.stderr.write("\x1b[?25h\n")
    except (OSError, ValueError):
        pass


def _flush() -> bool:
    """Flush stdout and stderr; False when one cannot be (a closed pipe), which Python's exit reports."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return False
    return True


def _let_threads_sleep() -> None:
    """torch's OpenMP threads (libgomp) spin on the CPU while they wait for work, by default; on a
    machine whose cores are shared (other jobs, lhb's own decoding threads) that spinning takes the
    cores the work needs. ``OMP_WAIT_POLICY=PASSIVE`` lets them sleep (BENCHMARKS.md, "Threads that
    wait"). It must be set before torch is imported; a value the user set stays."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    """``lhb``: install the start-up signal handlers, then import and run the CLI."""
    _reopen_closed_std_streams()
    for s in STOPPED:
        if signal.getsignal(s) is not signal.SIG_IGN:  # ignored by whoever started lhb (`lhb ... &` in a script): kept
            signal.signal(s, _stop_now)
    _let_threads_sleep()
    from .main import run, stopped_by_signal

    status = run()
    for s in STOPPED:  # the work is over: a late signal must not turn its status into 130
        signal.signal(s, signal.SIG_IGN)
    _end(status, at_once=stopped_by_signal())


if __name__ == "__main__":
    main()
