"""The cached stages of the flow. Each stage takes the `Workspace` (data, cache, progress: what it runs with) and
one frozen dataclass (what it computes from): that dataclass is the whole cache key (`stage_key`), so a value
the stage uses cannot be missing from its key."""
