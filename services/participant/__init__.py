"""The participant service: one gRPC ParticipantService for the server LLM and the clients."""
