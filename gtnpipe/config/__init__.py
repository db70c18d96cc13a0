"""The files users write: strict TOML loading, recipes, device profiles (pure Python, no torch)."""
