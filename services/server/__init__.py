"""The server LLM participant: the shared participant service in the ``server`` role.

Run it with ``fedmkt serve server --config FILE`` (see ``services.participant``)."""

from services.participant.main import ParticipantProcess, load_participant, serve

ROLE = "server"

__all__ = ["ROLE", "ParticipantProcess", "load_participant", "serve"]
