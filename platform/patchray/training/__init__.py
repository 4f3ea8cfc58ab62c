"""Data-parallel training with Ray Train and TensorFlow (imported lazily, in workers)."""
