"""The round controller's library: the round plan, its execution against participants and an
aligner (behind small Protocols, so it runs against in-process fakes in tests and gRPC clients
in the controller service), the SQLite run store, run events and the run report."""
