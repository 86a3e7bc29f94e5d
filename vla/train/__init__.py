"""Training: the loop (single process or many through accelerate), EMA, checkpoints."""
