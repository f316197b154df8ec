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


def main() -> None:
    """``lhb``: install the start-up signal handlers, then import and run the CLI."""
    for s in STOPPED:
        signal.signal(s, _stop_now)
    from .main import run

    status = run()
    for s in STOPPED:  # the work is over: a late signal must not turn its status into 130
        signal.signal(s, signal.SIG_IGN)
    sys.exit(status)


if __name__ == "__main__":
    main()
