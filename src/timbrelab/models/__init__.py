"""Learned models: the DDSP solo-instrument decoder and its non-learned baseline (:mod:`timbrelab.models.ddsp`)."""
