"""timbrelab: a reproducible experiment pipeline for musical timbre transfer."""

__version__ = "0.1.0"
