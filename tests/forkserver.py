"""A fork server for the ``lhb`` commands the tests run. Each of the suite's some 300 ``lhb`` processes
spent about 2 s starting Python and importing torch; started through this server instead, the suite
took 8 min 46 s instead of 12 min 42 s on 2 cores.

The server is a Python process that imports what every ``lhb`` command imports (torch, numpy, h5py,
soundfile, Typer, Rich, the library and the CLI), then forks one child per command. The child is a
real process running ``lighthubert_cli.entry.main`` on the caller's argv, environment, working folder,
umask and standard streams (the file descriptors themselves are passed over a Unix socket), and ends
as lhb ends itself. The command the tests start is this file run as a small client
(``python -I -S tests/forkserver.py SOCKET ARGS...``, about 20 ms): it hands its streams to the server,
forwards SIGINT, SIGTERM, SIGHUP, SIGUSR1/2 and SIGQUIT to the child, and exits with the child's status
(killed by a signal: by the same signal), so ``subprocess.run``/``Popen`` see what they would see from
``lhb`` itself.

What it does not reproduce, so the tests about them start the installed ``lhb``: anything that happens
while Python starts or imports (signals during start-up, a missing or broken torchaudio, the import
environment: OMP_NUM_THREADS is read when torch loads, and the server is started with the tests' usual
environment), SIGKILL/SIGSTOP and the pid (they reach the client, not the child), resource limits
and pre-exec hooks, memory measurements and terminals. Optional modules (torchaudio, onnx,
huggingface_hub, scikit-learn) are not imported by the server, so commands load them as ``lhb`` does.

``LIGHTHUBERT_TESTS_FRESH=1`` makes every test start the installed ``lhb`` instead (see
``cli_helpers.lhb_prefix``).
"""

from __future__ import annotations

import os
import signal
import socket
import sys

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)
PRELOAD = ("torch", "numpy", "h5py", "soundfile", "lighthubert_cli.main", "lighthubert_cli.use",
           "lighthubert.job", "lighthubert.pipeline", "lighthubert.checkpoint", "lighthubert.model",
           "lighthubert.extractor", "lighthubert.space", "lighthubert.reader", "lighthubert.storage",
           "lighthubert.units", "lighthubert.convert", "lighthubert.distributed", "lighthubert.inputs")
NOT_PRELOADED = ("torchaudio", "onnx", "onnxruntime", "huggingface_hub", "sklearn")


# ----------------------------------------------------------------------------- the client (lhb)


def _recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            os.write(2, b"lhb (test fork server): the server went away\n")
            os._exit(255)
        data += chunk
    return data


def client(path: str, args: list[str]) -> None:
    import marshal

    child, pending = 0, []

    def forward(signum, frame):
        if not child:  # not started yet: forwarded once it is
            pending.append(signum)
            return
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for s in FORWARDED:
        signal.signal(s, forward)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    umask = os.umask(0)
    os.umask(umask)
    try:
        cwd = os.getcwdb()
    except OSError:
        cwd = b""
    request = marshal.dumps(([os.fsencode(a) for a in args], dict(os.environb), cwd, umask))
    socket.send_fds(sock, [len(request).to_bytes(8, "little") + request], [0, 1, 2])
    child = int(_recv_line(sock))
    for signum in pending:
        forward(signum, None)
    code = int(_recv_line(sock))
    if code < 0:  # killed by a signal: end the same way
        for s in FORWARDED:
            signal.signal(s, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


# ----------------------------------------------------------------------------- the server


def _child(conn: socket.socket) -> None:
    """In the forked child: take the caller's streams and settings, then run lhb as its process."""
    import marshal

    head, fds, _, _ = socket.recv_fds(conn, 8 + 2**20, 3)
    size = int.from_bytes(head[:8], "little")
    data = head[8:]
    while len(data) < size:
        data += conn.recv(size - len(data))
    conn.close()
    argv, env, cwd, umask = marshal.loads(data)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    for key, value in env.items():
        os.environb[key] = value
    if cwd:
        os.chdir(cwd)
    os.umask(umask)
    for s in FORWARDED:
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sys.argv = [sys.argv[0]] + [os.fsdecode(a) for a in argv]
    from lighthubert_cli.entry import main

    main()  # ends the process as lhb ends itself (entry._end), or with SystemExit: Python's own exit


def serve(path: str) -> None:
    import selectors

    from lighthubert_cli.entry import _let_threads_sleep

    _let_threads_sleep()  # before torch is imported, as the installed command does it
    for name in PRELOAD:
        __import__(name)
    preloaded = [m for m in NOT_PRELOADED if m in sys.modules]
    assert not preloaded, f"the fork server must not import {preloaded}: lhb loads them only when needed"
    sys.argv = [os.path.join(os.path.dirname(sys.executable), "lhb")]  # as the console script sees it
    sys.path[0] = os.path.dirname(sys.argv[0])  # not tests/: the script's folder comes first for lhb
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C ends the tests; the server ends with its stdin
    children: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    sel.register(0, selectors.EVENT_READ)  # the tests' end of the pipe: closed when they end
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in sel.select():
            if key.fileobj == 0:
                if not os.read(0, 4096):
                    for pid in children:
                        os.kill(pid, signal.SIGKILL)
                    return
            elif key.fileobj == wake_r:
                os.read(wake_r, 4096)
            else:
                conn, _ = listener.accept()
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:  # the child: nothing of the server's stays open in lhb
                    signal.set_wakeup_fd(-1)
                    sel.close()
                    listener.close()
                    for c in children.values():
                        c.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(conn)  # ends the process
                children[pid] = conn
                conn.sendall(b"%d\n" % pid)
        while children:  # reap every child that ended, and tell its client
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
                except OSError:
                    pass
                conn.close()


# ----------------------------------------------------------------------------- for the tests

_server: tuple | None = None


def command(env: dict[str, str]) -> list[str]:
    """The argv prefix that runs ``lhb`` through the fork server, which is started on first use with
    ``env`` (the environment the tests give lhb) and stopped when the tests end."""
    global _server
    if _server is None:
        import atexit
        import shutil
        import subprocess
        import tempfile

        folder = tempfile.mkdtemp(prefix="lhb-fork-")
        if len(folder) > 90:  # a Unix socket's path holds at most 107 bytes
            shutil.rmtree(folder)
            folder = tempfile.mkdtemp(prefix="lhb-fork-", dir="/tmp")
        path = os.path.join(folder, "s")
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", path], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
        line = proc.stdout.readline()
        assert line == b"ready\n", f"the lhb fork server did not start ({line!r}; exit {proc.poll()})"

        def stop() -> None:
            proc.stdin.close()
            proc.stdout.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            shutil.rmtree(folder, ignore_errors=True)

        atexit.register(stop)
        _server = (proc, [sys.executable, "-I", "-S", os.path.abspath(__file__), path])
    return list(_server[1])


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        client(sys.argv[1], sys.argv[2:])
