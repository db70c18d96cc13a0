"""Torch models: the weight-sharing supernet, static students, teachers."""
