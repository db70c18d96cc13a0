"""Search spaces, arch ids, layer schedules and exact MACs counting. Pure Python: no torch."""
