"""afo: the retinotopy-inspired brain encoding model and the All-for-One training recipe.

``afo.load(path)`` loads a model file for use on images (:mod:`afo.api`); torch loads then, not at import.
"""

__version__ = "0.1.0"


def load(path, **kwargs):
    """A trained model file, ready for images: see :func:`afo.api.load` (``.predict``, ``.features``, ``.subjects``,
    ``.voxels``)."""
    from afo.api import load as _load

    return _load(path, **kwargs)
