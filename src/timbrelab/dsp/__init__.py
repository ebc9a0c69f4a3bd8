"""Signal processing on numpy arrays: framing, CQT, loudness, pitch. Small pure functions; shapes in docstrings."""
