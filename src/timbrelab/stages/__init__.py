"""Thin DVC entry points: load and validate the stage's section of params.yaml, call the library,
write the outputs atomically, log one MLflow run. Run as ``python -m timbrelab.stages.<name>``."""
