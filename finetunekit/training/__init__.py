"""The engine: one fit's loop, its compute path, its resumable state and the feature cache."""
