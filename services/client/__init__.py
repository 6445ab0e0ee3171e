"""A client SLM participant: the shared participant service in the ``client`` role.

Run it with ``fedmkt serve client --config FILE`` (see ``services.participant``)."""

from services.participant.main import ParticipantProcess, load_participant, serve

ROLE = "client"

__all__ = ["ROLE", "ParticipantProcess", "load_participant", "serve"]
