"""The shared training machinery: one loop (devices, DDP, mixed precision, EMA, progress, logs,
checkpoints, resume) that every method plugs into."""
