"""Everything that crosses a process boundary: generated stubs, tensor codec, chunked streams."""
