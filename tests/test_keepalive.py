"""A stream that sends nothing for minutes (an evaluation of a real model) survives the caller's
keepalive pings: the servers accept pings at the interval callers send them.

Seen in the first real-model demo: every evaluation of round 0 failed UNAVAILABLE "Too many
pings" after 120 s, because gRPC servers accept by default one ping without data every 5
minutes and answer the fourth ping of a caller that pings every 30 s with GOAWAY. Shorter
intervals do not reproduce it (gRPC throttles fast client pings), hence the real interval and
a slow test.
"""

from __future__ import annotations

import time

import grpc
import pytest

from services.common import KEEPALIVE_TIME_MS, build_server
from services.controller.clients import CHANNEL_OPTIONS


@pytest.mark.slow
def test_a_quiet_long_stream_is_not_ended_by_keepalive_pings() -> None:
    quiet = 4.2 * KEEPALIVE_TIME_MS / 1000  # past the fourth ping

    def slow(request: bytes, context):
        yield b"started"
        time.sleep(quiet)
        yield b"done"

    server = build_server(max_workers=2)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Slow", {"Call": grpc.unary_stream_rpc_method_handler(slow)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            call = channel.unary_stream("/test.Slow/Call")
            assert list(call(b"", timeout=quiet + 60)) == [b"started", b"done"]
    finally:
        server.stop(0)
