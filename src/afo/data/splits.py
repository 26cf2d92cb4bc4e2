"""Train/val/test splits by image, never by trial (a repeated image must not leak across splits)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from afo.data.options import AdapterOptionError
from afo.data.store import SPLIT_CODE

DEFAULT_FRACTIONS = (0.90, 0.06, 0.04)


def split_by_image(
    trial_image: np.ndarray,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    repeated_to_test: bool = True,
) -> np.ndarray:
    """Split codes per trial (0 train, 1 val, 2 test), assigned per image.

    Images shown more than once go to test (their repeats give the noise ceiling and a cleaner test
    target). The remaining images are shuffled with ``seed`` and split so that the totals come as close
    to ``fractions`` as the repeated images allow: test is topped up from the single-shown images when the
    repeated ones are too few, and never shrunk when they are many.
    """
    trial_image = np.asarray(trial_image)
    images, counts = np.unique(trial_image, return_counts=True)
    n = images.size
    code = np.full(n, SPLIT_CODE["train"], dtype=np.int8)
    repeated = counts >= 2 if repeated_to_test else np.zeros(n, dtype=bool)
    code[repeated] = SPLIT_CODE["test"]
    rest = np.flatnonzero(~repeated)
    rest = rest[np.random.default_rng(seed).permutation(rest.size)]
    n_val = int(round(fractions[1] * n))
    n_test_extra = max(0, int(round(fractions[2] * n)) - int(repeated.sum()))
    n_val = min(n_val, rest.size)
    code[rest[:n_val]] = SPLIT_CODE["val"]
    code[rest[n_val : n_val + n_test_extra]] = SPLIT_CODE["test"]
    lookup = dict(zip(images.tolist(), code.tolist()))
    return np.array([lookup[i] for i in trial_image.tolist()], dtype=np.int8)


def split_images(
    images: Sequence[Any], test: Iterable[Any], val_fraction: float, seed: int, train_fraction: float | None = None
) -> dict[Any, int]:
    """Split code per image: the dataset's own test images go to test, the rest is shuffled with ``seed``
    and ``val_fraction`` of it goes to val. Deterministic given the image list (order does not matter).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise AdapterOptionError(f"option val_fraction must be in [0, 1), got {val_fraction}")
    test = set(test)
    unique = sorted(set(images), key=str)
    rest = [im for im in unique if im not in test]
    order = np.random.default_rng(seed).permutation(len(rest))
    n_val = int(round(val_fraction * len(rest)))
    code = {im: SPLIT_CODE["test"] for im in unique if im in test}
    for rank, idx in enumerate(order):
        code[rest[idx]] = SPLIT_CODE["val"] if rank < n_val else SPLIT_CODE["train"]
    return code
