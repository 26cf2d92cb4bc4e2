"""Figures: plotting primitives (plots), probing figures of a model (probing), retrieval figures, NIfTI brain maps."""
