"""afo: the retinotopy-inspired brain encoding model and the All-for-One training recipe."""

__version__ = "0.1.0"
