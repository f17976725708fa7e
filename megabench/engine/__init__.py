"""Model-side machinery: checkpoints, recipes, feature extraction, the torch.distributed helper."""
