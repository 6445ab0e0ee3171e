"""Prometheus metrics of the controller, fed from the run events (an ``EventHub`` listener)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from fedmkt.federation import events as ev
from fedmkt.federation.events import Event

STEPS = Counter("fedmkt_controller_steps_total", "Completed steps", ["step"])
STEP_SECONDS = Histogram("fedmkt_controller_step_seconds", "Wall seconds per completed step",
                         ["step"], buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600))
DROPS = Counter("fedmkt_controller_dropped_total", "Clients left out of a round")
RUNS_FINISHED = Counter("fedmkt_controller_runs_finished_total", "Runs that ended", ["state"])
ROUND_OVERHEAD = Histogram("fedmkt_controller_round_overhead_share",
                           "Share of a round's wall time outside model compute",
                           buckets=(0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0))


def record(event: Event) -> None:
    if event.kind == ev.STEP_FINISHED:
        STEPS.labels(event.step).inc()
        STEP_SECONDS.labels(event.step).observe(event.metrics.get("wall_seconds", 0.0))
    elif event.kind == ev.PARTICIPANT_DROPPED:
        DROPS.inc()
    elif event.kind == ev.RUN_FINISHED:
        RUNS_FINISHED.labels(event.message or "unknown").inc()
    elif event.kind == ev.METRICS and event.step == "round_done":
        share = event.metrics.get("overhead_share")
        if share is not None:
            ROUND_OVERHEAD.observe(share)
