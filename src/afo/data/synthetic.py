"""``format: synthetic``: a dataset of the simulated brain, prepared and checked as a folder dataset.

The workflow's ``simulate`` rule (:mod:`afo.simulate`) writes each simulated dataset as a folder dataset
(:mod:`afo.data.folder`) under ``resources/synthetic/<part>``; a config entry names that ``part``, not a
``root``. Everything else is the folder format's, but the visual angle: the simulator knows no degrees
(its stimuli have RF positions in image units only), so none is read from its dataset.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afo.data import folder
from afo.data.adapter import DatasetAdapter

SIMULATED_ROOT = Path("resources/synthetic")  # the simulate rule's output, relative to the workflow folder


def root_of(entry: Mapping[str, Any]) -> Path:
    """The folder the simulator wrote a config entry's ``part`` to."""
    return SIMULATED_ROOT / str(entry["part"])


# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "simulated by afo (afo.simulate): no third-party data, no terms beyond afo's MIT licence"

FORMAT = DatasetAdapter(
    name="synthetic", defaults=folder.DEFAULTS, prepare=folder.prepare, check=folder.check, root_of=root_of, terms=TERMS
)
