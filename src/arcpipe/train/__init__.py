"""Training: backbones, losses, the training loop, checkpoints and export."""
