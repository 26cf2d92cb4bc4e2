"""The package's layering (docs/design.md): data flows one way, so no module imports a higher layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "afo"

# Low to high; a module may import its own layer and lower ones.
LAYERS = [
    {"errors", "io", "report", "metrics", "config"},
    {"data", "simulate"},
    {"features", "backbone_weights", "runtime", "gpu"},
    {"model"},
    {"training"},
    {"rois"},
    {"evaluation"},
    {"probing", "decoding"},
    {"figures"},
    {"jobs", "cli", "api", "submission", "sharing", "card"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        assert top in RANK, f"{path}: add the new module {top!r} to a layer in this test and docs/design.md"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("afo."):
                other = node.module.split(".")[1]
                if RANK[other] > RANK[top]:
                    upward.append(f"{path.relative_to(PACKAGE)} imports {node.module}")
    assert not upward, upward


def test_import_afo_stays_light():
    """Every Snakemake call imports afo (and afo.jobs, afo.config): no torch at import time."""
    code = "import sys, afo, afo.jobs, afo.config, afo.io.tables; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_jobs_that_only_read_models_start_without_lightning_or_timm():
    """Prediction, dark knowledge, evaluation and probing jobs import neither Lightning nor timm (with torchvision,
    several seconds per job; a workflow runs dozens of such jobs)."""
    code = (
        "import sys, afo.training.predict, afo.evaluation.scores, afo.probing.benchmark, afo.rois.veroi; "
        "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'timm', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_afo_predict_starts_without_lightning_pandas_or_scipy():
    """`afo predict --images` builds only its own arguments and imports only what predicting needs (Lightning,
    pandas and scipy are seconds of a one-image prediction's start-up)."""
    code = (
        "import sys, afo.cli, afo.api, afo.runtime, afo.features, afo.training.modelfile, afo.io.predictions, "
        "afo.figures.brainmaps; afo.cli.build_parser(afo.cli._command_of(['predict', '--images', 'x'])); "
        "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'pandas', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
