"""Tools around a fit: LR range test, backbone ranking, WiSE-FT, learning curves, summaries and plots;
interpretation, calibration, export and Hugging Face Hub folders.

Nothing is imported here: each tool is its own module (they import the tuner lazily)."""
