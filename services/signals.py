"""Waiting for SIGTERM/SIGINT in a service's main thread, safely under a burst of signals.

A Python signal handler runs in the main thread between two bytecodes, and a second signal can
run the handler again *inside* the first run. A handler that takes a lock (``threading.Event.set``
takes the event's condition lock) then blocks for ever on the lock its own outer run holds: the
service deadlocks in its own SIGTERM handler and, its gRPC threads still running, lives on as an
orphan that answers health checks (issue 10: a burst of SIGTERMs, as when a multi-threaded parent
dies, reproduced it).

So the handler here only writes one byte to a non-blocking self-pipe: a system call, no lock, no
Python state that a nested run could find half-updated. The main thread blocks in ``os.read`` on
the other end (interrupted reads are retried, PEP 475). Further signals, during shutdown too, only
write more bytes (or find the pipe full, which is fine: one byte is enough).
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal:
    """Install once (main thread), before the service says READY; then ``wait()``."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        write = self._write

        def handler(signum: int, frame) -> None:  # noqa: ARG001 - the signal module's signature
            try:
                os.write(write, bytes((signum & 0xFF,)))
            except OSError:  # the pipe is full: a stop is already pending
                pass

        # the pipe stays open for the life of the process: the handler stays installed (a late
        # SIGTERM during shutdown must not kill the cleanup), and a closed descriptor's number
        # could be reused by another file that the handler would then write into
        for sig in signals:
            signal.signal(sig, handler)

    def wait(self) -> int:
        """Block until a stop signal arrives; return its number."""
        return os.read(self._read, 1)[0]


def wait_for_signal() -> int:
    """Block the main thread until SIGINT or SIGTERM; return the signal's number."""
    return StopSignal().wait()
