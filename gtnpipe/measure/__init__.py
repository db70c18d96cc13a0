"""Latency-table measurement: on the host (compiles students) and on a device from a kit (torch-free)."""
