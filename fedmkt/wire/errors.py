"""The one error type raised when something received over the wire is not acceptable."""

from __future__ import annotations

from typing import Final, Literal

INVALID_ARGUMENT: Final = "INVALID_ARGUMENT"
FAILED_PRECONDITION: Final = "FAILED_PRECONDITION"

ErrorCode = Literal["INVALID_ARGUMENT", "FAILED_PRECONDITION"]

# HTTP status per google.rpc.Code's documented mapping (both are client errors, 400).
_HTTP_STATUS: Final[dict[str, int]] = {INVALID_ARGUMENT: 400, FAILED_PRECONDITION: 400}


class WireError(ValueError):
    """A message that must be rejected, with a reason a person can act on.

    ``code`` says why: ``INVALID_ARGUMENT`` when the message is malformed whatever the receiver's
    state (bad dtype, shape, id out of range, NaN logit), ``FAILED_PRECONDITION`` when it is well
    formed but does not belong here (another run, round, source, tokenizer or top-k).
    Services map it to the gRPC status of the same name (``grpc_code``) or an HTTP 4xx.
    """

    def __init__(self, message: str, code: ErrorCode = INVALID_ARGUMENT) -> None:
        if code not in _HTTP_STATUS:
            raise ValueError(f"unknown WireError code {code!r}")
        super().__init__(message)
        self.code: ErrorCode = code

    @property
    def message(self) -> str:
        """The human-readable reason (the exception's text)."""
        return str(self)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.code]

    @property
    def grpc_code(self):  # -> grpc.StatusCode (imported lazily: grpc is heavy)
        import grpc

        return grpc.StatusCode[self.code]


def precondition(message: str) -> WireError:
    """A ``FAILED_PRECONDITION`` error: well formed, but not what this receiver expects."""
    return WireError(message, FAILED_PRECONDITION)
