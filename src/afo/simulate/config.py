"""What the synthetic experiment looks like: :class:`SimulationConfig` and the cortical areas (:class:`AreaSpec`).

Units used throughout the simulator:

- visual field positions ``u`` are in the grid_sample convention of docs/design.md: -1 is the left/top edge of the
  image, +1 the right/bottom edge, so the image is 2 units wide; RF sizes (Gaussian sigma) are in the same units
  (sigma 0.1 = 5 % of the image width);
- cortical positions are in mm; ``snr`` is the single-trial ratio of signal SD to noise SD (the NSD "ncsnr"),
  which gives a noise ceiling of ``100 * snr**2 / (snr**2 + 1/n)`` percent for the mean of ``n`` repeats.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

#: The 17 posterior channels of THINGS-EEG2 (Gifford et al. 2022), positioned from mne's 10-20 montage.
EEG_CHANNELS: tuple[str, ...] = (
    "Pz", "P3", "P7", "O1", "Oz", "O2", "P4", "P8", "P1", "P5", "PO7", "PO3", "POz", "PO4", "PO8", "P6", "P2",
)  # fmt: skip

LEVEL_NAMES: dict[int, str] = {0: "low", 1: "mid", 2: "high"}


def _check(ok: Any, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class AreaSpec:
    """One visual area: a strip of cortex with its own retinotopic map, RF sizes, features and SNR.

    The areas of a subject are laid side by side in the order given (early to late); each border flips the
    map's orientation across the strip (a field-sign reversal, as between V1, V2 and V3).
    """

    name: str = field(metadata={"help": "area name; becomes the ROI label in rois.csv"})
    level: int = field(metadata={"help": "feature level: 0 low (contrast/orientation), 1 mid (local shape/colour), 2 high (global)"})
    grid: tuple[int, int] = field(metadata={"help": "voxels (across the strip, along the strip) before dropout"})
    field_extent: float = field(metadata={"help": "RF centres span [-field_extent, field_extent] in u, both axes"})
    rf_sigma: tuple[float, float] = field(metadata={"help": "RF Gaussian sigma in u at the fovea and at the field's edge"})
    weights: tuple[float, float, float, float] = field(
        metadata={"help": "share of (contrast energy, orientation energy, local shape/colour, global presence) in the drive"}
    )
    css_exponent: float = field(metadata={"help": "compressive exponent on the RF-summed drive (Kay et al. 2013)"})
    snr: tuple[float, float] = field(metadata={"help": "single-trial signal/noise SD range, drawn log-uniformly per voxel"})

    def __post_init__(self) -> None:
        _check(self.name and isinstance(self.name, str), f"area name must be a non-empty string, got {self.name!r}")
        _check(self.level in LEVEL_NAMES, f"area {self.name}: level must be one of {sorted(LEVEL_NAMES)}, got {self.level}")
        _check(len(self.grid) == 2 and min(self.grid) >= 1, f"area {self.name}: grid must be two positive ints, got {self.grid}")
        _check(0 <= self.field_extent <= 0.95, f"area {self.name}: field_extent must be in [0, 0.95], got {self.field_extent}")
        _check(len(self.rf_sigma) == 2 and min(self.rf_sigma) > 0, f"area {self.name}: rf_sigma must be two positive numbers")
        _check(len(self.weights) == 4 and min(self.weights) >= 0 and sum(self.weights) > 0,
               f"area {self.name}: weights must be four non-negative numbers, not all 0")  # fmt: skip
        _check(self.css_exponent > 0, f"area {self.name}: css_exponent must be > 0")
        _check(len(self.snr) == 2 and 0 < self.snr[0] <= self.snr[1], f"area {self.name}: snr must be (low, high) with 0 < low <= high")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AreaSpec:
        """An area from a plain mapping (e.g. YAML); unknown keys raise a ValueError listing the valid ones."""
        name = d.get("name", "?") if isinstance(d, dict) else "?"
        return _from_dict(cls, d, f"area {name!r}")


# Why these defaults: the encoding model must find early RFs from a coarse (12 x 12 token) backbone map, so early
# RFs are compact (sigma 6-15 % of the image width), driven mostly by local luminance contrast energy (the
# easiest feature to read out) and tile [-0.8, 0.8]^2; RFs grow and selectivity moves to "what" up the hierarchy.
DEFAULT_AREAS: tuple[AreaSpec, ...] = (
    AreaSpec("V1", 0, (8, 12), 0.8, (0.12, 0.18), (0.80, 0.20, 0.00, 0.00), 0.6, (0.5, 2.0)),
    AreaSpec("V2", 0, (8, 12), 0.8, (0.16, 0.24), (0.65, 0.30, 0.05, 0.00), 0.55, (0.45, 1.8)),
    AreaSpec("V3", 0, (8, 12), 0.8, (0.20, 0.30), (0.50, 0.35, 0.15, 0.00), 0.5, (0.4, 1.6)),
    AreaSpec("V4", 1, (6, 12), 0.6, (0.35, 0.50), (0.15, 0.20, 0.50, 0.15), 0.5, (0.3, 1.1)),
    AreaSpec("LO", 2, (6, 12), 0.25, (0.80, 1.20), (0.00, 0.05, 0.25, 0.70), 0.7, (0.25, 0.9)),
)


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a synthetic experiment; the same config and seed give the same files.

    The defaults are the project's demo: 720 images of 96 px, 3 fMRI subjects of ~410 voxels (432 less 5 % dropout) in five areas
    (V1, V2, V3 early; V4 mid; LO high-level), one EEG subject of 17 channels x 16 time points; written in a
    few seconds on one core. Field help texts are in ``dataclasses.fields(SimulationConfig)[i].metadata``.
    """

    seed: int = field(default=0, metadata={"help": "random seed; everything is a deterministic function of it"})
    name: str = field(default="synthetic", metadata={"help": "dataset name prefix: <name>_fmri and <name>_eeg"})
    # Stimuli
    n_images: int = field(default=720, metadata={"help": "number of distinct stimulus images"})
    image_size: int = field(default=96, metadata={"help": "side of the written PNG images (px)"})
    min_objects: int = field(default=1, metadata={"help": "fewest objects per image"})
    max_objects: int = field(default=4, metadata={"help": "most objects per image"})
    feature_grid: int = field(default=32, metadata={"help": "side of the grid on which feature maps are RF-integrated"})
    # Design
    n_test_images: int = field(default=48, metadata={"help": "images shown n_test_repeats times (split: test)"})
    n_test_repeats: int = field(default=3, metadata={"help": "presentations of each test image for fMRI subjects"})
    val_fraction: float = field(default=0.06, metadata={"help": "fraction of all images shown once as validation"})
    # fMRI subjects
    n_fmri_subjects: int = field(default=3, metadata={"help": "number of fMRI-like subjects (0 for none)"})
    areas: tuple[AreaSpec, ...] = field(default=DEFAULT_AREAS, metadata={"help": "visual areas, early to late (list of AreaSpec mappings)"})
    voxel_mm: float = field(default=2.0, metadata={"help": "voxel spacing on the cortical sheet (mm)"})
    voxel_dropout: float = field(default=0.05, metadata={"help": "fraction of each subject's voxels left out, so counts differ"})
    map_rotation_deg: float = field(default=8.0, metadata={"help": "SD of the per-subject rotation of the visual-field map (deg)"})
    map_shift: float = field(default=0.04, metadata={"help": "SD of the per-subject shift of the visual-field map (u)"})
    rf_scatter: float = field(default=0.02, metadata={"help": "SD of per-voxel scatter of RF centres around the smooth map (u)"})
    nan_voxels: int = field(default=0, metadata={"help": "voxels per fMRI subject made NaN on every trial (to test masking)"})
    # EEG subjects
    n_eeg_subjects: int = field(default=1, metadata={"help": "number of EEG-like subjects (0 for none)"})
    eeg_channels: tuple[str, ...] = field(default=EEG_CHANNELS, metadata={"help": "10-20 channel names (mne standard montage)"})
    eeg_n_times: int = field(default=16, metadata={"help": "time points per channel; voxels = channels x time points"})
    eeg_tmax: float = field(default=0.6, metadata={"help": "last time point (s after stimulus onset); the first is 0"})
    eeg_snr: float = field(default=0.6, metadata={"help": "single-trial signal/noise SD of the strongest channel x time point"})
    eeg_test_repeats: int = field(default=4, metadata={"help": "presentations of each test image for EEG subjects"})
    eeg_mm_per_ms: float = field(default=0.2, metadata={"help": "EEG voxel z coordinate = latency (ms) x this (mm)"})

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so the config stays hashable and immutable.
        areas = tuple(a if isinstance(a, AreaSpec) else AreaSpec.from_dict(a) for a in self.areas)
        object.__setattr__(self, "areas", areas)
        object.__setattr__(self, "eeg_channels", tuple(self.eeg_channels))
        for name in ("seed", "n_images", "image_size", "min_objects", "max_objects", "feature_grid", "n_test_images",
                     "n_test_repeats", "n_fmri_subjects", "nan_voxels", "n_eeg_subjects", "eeg_n_times", "eeg_test_repeats"):  # fmt: skip
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool), f"config key `{name}` must be an integer, got {value!r}")
            _check(value >= 0, f"config key `{name}` must be >= 0, got {value}")
        _check(self.image_size >= 16, f"config key `image_size` must be >= 16 px, got {self.image_size}")
        _check(2 <= self.feature_grid <= self.image_size, "config key `feature_grid` must be in [2, image_size]")
        _check(1 <= self.min_objects <= self.max_objects, "config keys `min_objects`/`max_objects`: need 1 <= min <= max")
        _check(self.n_test_repeats >= 2 and self.eeg_test_repeats >= 2, "test images must be shown at least twice (noise ceiling)")
        n_val = round(self.val_fraction * self.n_images)
        _check(0 <= self.val_fraction < 1, f"config key `val_fraction` must be in [0, 1), got {self.val_fraction}")
        _check(1 <= self.n_test_images and self.n_test_images + n_val < self.n_images,
               f"config key `n_test_images` ({self.n_test_images}) plus val images ({n_val}) must leave training images "
               f"out of n_images={self.n_images}")  # fmt: skip
        _check(self.n_fmri_subjects + self.n_eeg_subjects >= 1, "need at least one subject (n_fmri_subjects + n_eeg_subjects)")
        _check(len(self.areas) >= 1 or self.n_fmri_subjects == 0, "config key `areas`: fMRI subjects need at least one area")
        _check(len({a.name for a in self.areas}) == len(self.areas), "config key `areas`: area names must be unique")
        _check(0 <= self.voxel_dropout < 0.9, "config key `voxel_dropout` must be in [0, 0.9)")
        n_voxels = sum(a.grid[0] * a.grid[1] for a in self.areas)
        _check(self.nan_voxels < n_voxels * (1 - self.voxel_dropout) - 1, "config key `nan_voxels` must leave most voxels finite")
        _check(len(self.eeg_channels) >= 1 or self.n_eeg_subjects == 0, "config key `eeg_channels` must not be empty")
        _check(self.eeg_n_times >= 2 or self.n_eeg_subjects == 0, "config key `eeg_n_times` must be >= 2")
        _check(self.eeg_tmax > 0 and self.eeg_snr > 0 and self.voxel_mm > 0, "eeg_tmax, eeg_snr and voxel_mm must be > 0")
        _check(min(self.map_rotation_deg, self.map_shift, self.rf_scatter, self.eeg_mm_per_ms) >= 0,
               "map_rotation_deg, map_shift, rf_scatter and eeg_mm_per_ms must be >= 0")  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SimulationConfig:
        """A config from a plain mapping (the workflow's ``simulate`` options); missing keys take the defaults.

        Raises ValueError naming any unknown key and listing the valid ones; ``areas`` is a list of mappings
        with the fields of :class:`AreaSpec`.
        """
        return _from_dict(cls, dict(d or {}), "simulation config")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), for YAML/JSON."""

        def plain(x: Any) -> Any:
            if isinstance(x, (tuple, list)):
                return [plain(v) for v in x]
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            return x

        return plain(dataclasses.asdict(self))


def _from_dict(cls: type, d: dict[str, Any], what: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a mapping, got {type(d).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        # Lists from YAML become the tuples the dataclass declares (areas are converted in __post_init__).
        if isinstance(value, list) and str(hints[key]).startswith("tuple") and key != "areas":
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # a missing required AreaSpec field
        raise ValueError(f"{what}: {err}; valid keys: {', '.join(valid)}") from err
