"""Training-side machinery: checkpoints, recipes (training loop, extraction and distribution to come)."""
