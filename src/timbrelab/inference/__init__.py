"""Trained models at work outside the pipeline: loading them (:mod:`.loading`), DDSP timbre transfer
(:mod:`.ddsp_transfer`), live features and streaming export (:mod:`.streaming`). Never imports training code."""
