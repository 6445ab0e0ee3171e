"""Errors of a federation run and of the calls it makes to other services.

A call to a participant or the aligner fails with a ``CallFailed`` that names who failed and the
status code. ``DeadlineMissed`` and ``Unreachable`` are the failures a client may be dropped for
(left out of the round while the quorum holds); any other failure ends the run.
"""

from __future__ import annotations


class CallFailed(Exception):
    """A call to another service failed. ``who``: participant name or ``"aligner"``."""

    def __init__(self, who: str, code: str, message: str) -> None:
        super().__init__(f"{who}: {code}: {message}")
        self.who = who
        self.code = code
        self.detail = message


class DeadlineMissed(CallFailed):
    def __init__(self, who: str, message: str = "deadline exceeded") -> None:
        super().__init__(who, "DEADLINE_EXCEEDED", message)


class Unreachable(CallFailed):
    def __init__(self, who: str, message: str = "service unavailable") -> None:
        super().__init__(who, "UNAVAILABLE", message)


class CallCancelled(CallFailed):
    def __init__(self, who: str, message: str = "cancelled") -> None:
        super().__init__(who, "CANCELLED", message)


DROPPABLE = (DeadlineMissed, Unreachable)


class RunCancelled(Exception):
    """The run was cancelled (CancelRun, or the controller is shutting down)."""


class RunFailed(Exception):
    """The run cannot go on: the server failed, the quorum is lost, a participant misbehaved."""


class QuorumLost(RunFailed):
    pass
