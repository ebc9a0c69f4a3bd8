"""Training loops for the learned models (:mod:`timbrelab.training.ddsp`: the DDSP solo-instrument model)."""
