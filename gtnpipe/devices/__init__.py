"""Cost models (MACs, memory, size, latency) and per-device latency tables. Pure Python: no torch."""
