"""A burst of SIGTERMs stops a service cleanly (issue 10).

Before, the services waited with ``signal.signal(SIGTERM, lambda *_: stop.set())``: a second
SIGTERM arriving while the handler held the event's lock ran the handler again inside itself,
which blocked for ever on that lock (or, with a longer burst, died of RecursionError): the main
thread never reached the cleanup and, the gRPC threads still running, the service lived on as an
orphan answering health checks. ``services.signals`` only writes to a self-pipe in the handler.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# a stand-in for a service: non-daemon worker threads that keep the process alive and compete
# for the GIL (like gRPC's: a handler loses the GIL in the middle, and the signals that arrive
# meanwhile run it again nested), the stop wait, a cleanup that takes a while (under continuing
# signals) and stops the workers
_SERVICE = textwrap.dedent("""
    import threading, time
    from services.signals import StopSignal

    done = threading.Event()

    def work():
        while not done.is_set():
            sum(range(100))

    workers = [threading.Thread(target=work) for _ in range(2)]
    for worker in workers:
        worker.start()
    stop = StopSignal()
    print("READY", flush=True)
    stop.wait()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    done.set()
    for worker in workers:
        worker.join()
    print("stopped", flush=True)
""")


# 0, or killed by a SIGTERM of the burst that arrived after the cleanup, while the interpreter
# was shutting down (it restores the default handlers then): the stop itself was clean
_CLEAN = (0, -signal.SIGTERM)


def _burst(pid: int, seconds: float) -> int:
    """Send SIGTERM as fast as possible for ``seconds`` (or until the process is gone)."""
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            break
        sent += 1
    return sent


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.kill()  # the deadlocked orphan this test is about
        proc.communicate()
        return None, ""


# A signal that arrives at every line of the handler, deterministically: a tracer raises SIGTERM
# again on each line the handler runs (up to 20 times), so the handler runs nested inside itself
# exactly where a burst makes it run. The first signal is raised from the untraced module frame.
_NESTED = textwrap.dedent("""
    import signal, sys
    from services.signals import StopSignal

    nested = 0

    def on_line(frame, event, arg):
        global nested
        if event == "line" and nested < 20:
            nested += 1
            signal.raise_signal(signal.SIGTERM)
        return on_line

    stop = StopSignal()
    sys.settrace(lambda frame, event, arg: on_line)
    signal.raise_signal(signal.SIGTERM)
    sys.settrace(None)
    stop.wait()
    print("stopped", nested, flush=True)
""")


def test_a_signal_arriving_inside_the_handler_does_not_deadlock_it() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _NESTED], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    code, out = _wait(proc, 10)
    assert code is not None, "deadlocked in its SIGTERM handler"
    assert code == 0 and out.startswith("stopped"), (code, out)
    assert int(out.split()[1]) >= 1  # the handler did run nested


def test_a_burst_of_sigterms_stops_the_service_cleanly() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SERVICE], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline().strip() == "READY"
    assert _burst(proc.pid, 0.5) > 1
    code, out = _wait(proc, 10)
    assert code is not None, "deadlocked in its SIGTERM handler (still alive after the burst)"
    assert "stopped" in out and code in _CLEAN, (code, out)


def test_a_late_signal_during_shutdown_does_not_kill_the_cleanup() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SERVICE], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline().strip() == "READY"
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.1)  # in the cleanup now
    os.kill(proc.pid, signal.SIGINT)
    code, out = _wait(proc, 10)
    assert code == 0 and "stopped" in out, (code, out)


@pytest.mark.slow
@pytest.mark.parametrize("service", ["controller", "aligner"])
def test_a_service_exits_after_a_burst_of_sigterms(tmp_path: Path, service: str) -> None:
    """The real ``fedmkt serve controller|aligner`` process (its gRPC threads running)."""
    extra = ["--no-resume"] if service == "controller" else ["--http-port", "0"]
    cmd = [sys.executable, "-m", "fedmkt", "serve", service, "--host", "127.0.0.1",
           "--grpc-port", "0", "--state-dir", str(tmp_path), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("READY") or not line:
                break
        assert line.startswith(f"READY {service}"), line
        _burst(proc.pid, 1.0)
        code, _ = _wait(proc, 30)
        assert code in _CLEAN, f"exit status {code} (None: deadlocked, still alive)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
