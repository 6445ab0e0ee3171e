"""fedmkt: federated mutual knowledge transfer between one server LLM and many client SLMs."""

__version__ = "0.1.0"
