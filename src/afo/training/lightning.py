"""Lightning, as whichever distribution is installed: ``pytorch-lightning`` (what ``pip install afo`` brings) or
the unified ``lightning`` package (``lightning.pytorch``, the same code under another name; what a bare CUDA
machine often has, see benchmarks/gpu.sh). Every training module imports ``pl`` from here."""

from __future__ import annotations

import importlib
import importlib.util

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - exercised by tests/test_gpu_bench.py in a subprocess
    import lightning.pytorch as pl  # type: ignore[no-redef]

# Submodules that `import pytorch_lightning` does not bind as attributes.
LightningEnvironment = importlib.import_module(f"{pl.__name__}.plugins.environments").LightningEnvironment
DDPStrategy = importlib.import_module(f"{pl.__name__}.strategies").DDPStrategy


def tensorboard_installed() -> bool:
    """Whether Lightning's TensorBoard logger can write events (tensorboard or tensorboardX is installed)."""
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


__all__ = ["DDPStrategy", "LightningEnvironment", "pl", "tensorboard_installed"]
