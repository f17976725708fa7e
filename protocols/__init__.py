"""Data, not code: this folder ships inside the wheel as ``megabench._specs.protocols`` (see megabench/_specs)."""
