"""Errors that carry a status a service can return as is (gRPC code / HTTP status).

The library raises these with a message a person can act on; servicers translate them to
``grpc.StatusCode[code]`` or an HTTP 4xx JSON error without adding logic of their own.
"""

from __future__ import annotations


class FedmktError(Exception):
    code = "INTERNAL"
    http_status = 500


class InvalidArgument(FedmktError, ValueError):
    code = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(FedmktError, LookupError):
    code = "NOT_FOUND"
    http_status = 404


class FailedPrecondition(FedmktError):
    code = "FAILED_PRECONDITION"
    http_status = 409


class ResourceExhausted(FedmktError):
    code = "RESOURCE_EXHAUSTED"
    http_status = 413


class Unavailable(FedmktError):
    """The service cannot answer now (it is shutting down); the caller may call again later."""

    code = "UNAVAILABLE"
    http_status = 503


HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 409,
               "RESOURCE_EXHAUSTED": 413, "OUT_OF_RANGE": 400, "CANCELLED": 499,
               "DEADLINE_EXCEEDED": 504, "INTERNAL": 500, "UNAVAILABLE": 503}


def status_of(exc: BaseException) -> str | None:
    """The status code name an exception carries (ours or the wire codec's), else None."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code in HTTP_STATUS else None
