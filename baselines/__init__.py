"""Data, not code: this folder ships inside the wheel as ``megabench._specs.baselines`` (see megabench/_specs)."""
