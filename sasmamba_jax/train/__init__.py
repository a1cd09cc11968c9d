"""Training: the state and step, the loop, checkpoints, memory choice, losses, metrics."""
