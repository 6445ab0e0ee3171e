"""A participant stopped in the middle of a call (a container restart: SIGTERM) answers the call
with UNAVAILABLE, which the controller treats as "unreachable": a client is left out of that
round while the quorum holds and rejoins in the next one (DESIGN §10). Before, the participant
answered CANCELLED ("cancelled by the caller"), which the controller took for a fatal error and
the whole run failed.

The docker compose CI stage (scripts/compose-ci.sh) checks the same thing with a real container
restart in a real federation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedmkt.federation.errors import DROPPABLE, Unreachable
from fedmkt.federation.interfaces import CallOptions, CancelScope

ROOT = Path(__file__).resolve().parent.parent
FEDERATION = ROOT / "deploy" / "compose" / "ci-federation.yaml"


class _Context:
    """The bits of ``grpc.ServicerContext`` that ``ParticipantServicer._stream`` uses."""

    def add_callback(self, fn) -> bool:
        return True

    def is_active(self) -> bool:
        return True  # the caller (the controller) is still there


def test_a_shutdown_is_reported_as_unavailable_not_cancelled() -> None:
    import grpc

    from fedmkt.errors import status_of
    from fedmkt.participant.training import Cancelled
    from services.participant.grpc_service import ParticipantServicer

    servicer = ParticipantServicer(SimpleNamespace(config=SimpleNamespace(name="c1")))

    def work(progress, cancel):  # a long core call that honours its cancel event
        while not cancel.wait(0.01):
            pass
        raise Cancelled("cancelled by the caller")

    stream = servicer._stream(_Context(), "train_local", 1, work)
    threading.Timer(0.2, servicer.cancel_all).start()  # what stop() does on SIGTERM
    with pytest.raises(Exception) as caught:
        list(stream)
    assert status_of(caught.value) == "UNAVAILABLE", caught.value
    assert "c1 is shutting down" in str(caught.value)
    assert grpc.StatusCode[status_of(caught.value)] is grpc.StatusCode.UNAVAILABLE


def _start(state: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "fedmkt", "serve", "client", "--federation", str(FEDERATION),
           "--name", "client-mistral", "--host", "127.0.0.1", "--grpc-port", "0",
           "--state-dir", str(state)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, env=env)
    deadline = time.monotonic() + 300
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY") or not line:
            break
    assert line.startswith("READY client-mistral"), line
    return proc, "127.0.0.1:" + line.split("grpc=")[1].split()[0]


def _stop(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=60)


@pytest.mark.slow
def test_sigterm_mid_call_is_droppable_and_the_client_serves_again(tmp_path: Path) -> None:
    """A real client process: SIGTERM during TrainLocal → the controller's client sees
    ``Unreachable`` (droppable); restarted on the same state folder it answers the next round."""
    import grpc

    from services.controller.clients import GrpcParticipant, open_channel

    proc, endpoint = _start(tmp_path)
    try:
        with open_channel(endpoint, None) as channel:
            client = GrpcParticipant("client-mistral", channel)
            opts = CallOptions.within("client-mistral", 300, CancelScope())
            updates = client.train_local("restart-test", 1, 1000, opts)  # long on purpose
            first = next(updates)  # the call is running on the participant
            assert not first.done
            os.killpg(proc.pid, signal.SIGTERM)
            with pytest.raises(Unreachable) as caught:
                for _ in updates:
                    pass
        assert isinstance(caught.value, DROPPABLE)
        assert caught.value.who == "client-mistral"
        assert proc.wait(timeout=60) == 0  # and it stopped cleanly, within seconds
    finally:
        if proc.poll() is None:
            _stop(proc)

    proc, endpoint = _start(tmp_path)  # the container comes back on the same volume
    try:
        with open_channel(endpoint, None) as channel:
            client = GrpcParticipant("client-mistral", channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            opts = CallOptions.within("client-mistral", 300, CancelScope())
            final = [u for u in client.train_local("restart-test", 2, 1, opts) if u.done]
            assert len(final) == 1 and final[0].metrics["compute_seconds"] > 0
    finally:
        _stop(proc)
