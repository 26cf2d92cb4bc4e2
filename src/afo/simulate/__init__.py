"""A synthetic retinotopic brain: procedural stimuli, fMRI-like and EEG-like subjects with known ground truth.

``simulate(out, SimulationConfig(...))`` writes one folder dataset per modality (docs/design.md, "Contract: the
folder dataset") under ``out`` (``out/fmri``, ``out/eeg``) plus a ground-truth file per subject, so that
every later stage can be checked against the truth: RF centres (``u_x``, ``u_y`` in the grid_sample
convention), RF sizes, areas and feature levels. Deterministic given the seed.

Modules: :mod:`.config` (what to simulate), :mod:`.stimuli` (images and feature maps), :mod:`.fmri` and
:mod:`.eeg` (the subjects), :mod:`.core` (writing the files).
"""

from afo.simulate.config import DEFAULT_AREAS, EEG_CHANNELS, AreaSpec, SimulationConfig
from afo.simulate.core import MANIFEST, simulate

__all__ = ["DEFAULT_AREAS", "EEG_CHANNELS", "MANIFEST", "AreaSpec", "SimulationConfig", "simulate"]
