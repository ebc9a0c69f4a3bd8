"""Data acquisition and preparation: network sources, offline renders, local folders, prepare."""
