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
    level: int = field(
        metadata={"help": "feature level: 0 low (contrast/orientation), 1 mid (local shape/colour), 2 high (global)"}
    )
    grid: tuple[int, int] = field(metadata={"help": "voxels (across the strip, along the strip) before dropout"})
    field_extent: float = field(metadata={"help": "RF centres span [-field_extent, field_extent] in u, both axes"})
    rf_sigma: tuple[float, float] = field(
        metadata={"help": "RF Gaussian sigma in u at the fovea and at the field's edge"}
    )
    weights: tuple[float, float, float, float] = field(
        metadata={
            "help": "share of (contrast energy, orientation energy, local shape/colour, global presence) in the drive"
        }
    )
    css_exponent: float = field(metadata={"help": "compressive exponent on the RF-summed drive (Kay et al. 2013)"})
    snr: tuple[float, float] = field(
        metadata={"help": "single-trial signal/noise SD range, drawn log-uniformly per voxel"}
    )

    def __post_init__(self) -> None:
        _check(self.name and isinstance(self.name, str), f"area name must be a non-empty string, got {self.name!r}")
        _check(
            self.level in LEVEL_NAMES, f"area {self.name}: level must be one of {sorted(LEVEL_NAMES)}, got {self.level}"
        )
        _check(
            len(self.grid) == 2 and min(self.grid) >= 1,
            f"area {self.name}: grid must be two positive ints, got {self.grid}",
        )
        _check(
            0 <= self.field_extent <= 0.95,
            f"area {self.name}: field_extent must be in [0, 0.95], got {self.field_extent}",
        )
        _check(
            len(self.rf_sigma) == 2 and min(self.rf_sigma) > 0,
            f"area {self.name}: rf_sigma must be two positive numbers",
        )
        _check(len(self.weights) == 4 and min(self.weights) >= 0 and sum(self.weights) > 0,
               f"area {self.name}: weights must be four non-negative numbers, not all 0")  # fmt: skip
        _check(self.css_exponent > 0, f"area {self.name}: css_exponent must be > 0")
        _check(
            len(self.snr) == 2 and 0 < self.snr[0] <= self.snr[1],
            f"area {self.name}: snr must be (low, high) with 0 < low <= high",
        )

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


IMAGE_FORMATS: tuple[str, ...] = ("png", "jpeg")
DATASET_MODALITIES: tuple[str, ...] = ("fmri", "eeg", "meg")
#: SimulationConfig fields a dataset may override for its own subjects (cortical layout, map variability, sensors).
DATASET_OVERRIDES: tuple[str, ...] = (
    "areas", "voxel_mm", "voxel_dropout", "map_rotation_deg", "map_shift", "rf_scatter", "nan_voxels",
    "eeg_channels", "eeg_n_times", "eeg_tmax", "eeg_snr", "eeg_mm_per_ms", "eeg_topo_sigma_mm",
)  # fmt: skip


@dataclass(frozen=True)
class ImageSetSpec:
    """One stimulus set of a heterogeneous experiment (as NSD's COCO images, THINGS' object images).

    Every dataset that names the set saw its images with the same train/val/test split. ``reuse_from`` takes
    ``n_reused`` images of another (earlier) set into this one, under this set's own file names and written in
    this set's ``file_format`` / ``file_size``: the overlap between public datasets (BOLD5000 shows COCO images
    that NSD also shows), which an overlap detector has to find from the pixels.
    """

    name: str = field(metadata={"help": "set name; file names are <name>_<index>.<ext>"})
    n_images: int = field(metadata={"help": "distinct images in the set (reused ones included)"})
    n_test_images: int = field(metadata={"help": "images shown repeatedly (split: test)"})
    val_fraction: float = field(default=0.06, metadata={"help": "fraction of the set shown once as validation"})
    file_format: str = field(default="png", metadata={"help": "how the images are shipped: png | jpeg (quality 90)"})
    file_size: int | None = field(default=None, metadata={"help": "side (px) of the shipped files; null = image_size"})
    reuse_from: str | None = field(
        default=None, metadata={"help": "an earlier set whose images this set partly reuses"}
    )
    n_reused: int = field(default=0, metadata={"help": "images taken from reuse_from (0 = none)"})

    def __post_init__(self) -> None:
        _check(self.name and isinstance(self.name, str) and self.name.isidentifier(),
               f"image set name must be letters, digits and _, got {self.name!r}")  # fmt: skip
        _check(self.file_format in IMAGE_FORMATS, f"image set {self.name}: file_format must be one of {IMAGE_FORMATS}")
        _check(
            self.file_size is None or self.file_size >= 16, f"image set {self.name}: file_size must be >= 16 px or null"
        )
        n_val = round(self.val_fraction * self.n_images)
        _check(0 <= self.val_fraction < 1 and 1 <= self.n_test_images and self.n_test_images + n_val < self.n_images,
               f"image set {self.name}: n_test_images ({self.n_test_images}) plus val images ({n_val}) must leave "
               f"training images out of n_images={self.n_images}")  # fmt: skip
        _check((self.reuse_from is None) == (self.n_reused == 0),
               f"image set {self.name}: give reuse_from and n_reused > 0 together, or neither")  # fmt: skip
        _check(0 <= self.n_reused < self.n_images, f"image set {self.name}: n_reused must be in [0, n_images)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSetSpec:
        """An image set from a plain mapping; unknown keys raise a ValueError listing the valid ones."""
        return _from_dict(cls, d, f"image set {d.get('name', '?') if isinstance(d, dict) else '?'!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a heterogeneous experiment: a modality, an image set, subjects and their SNR.

    ``snr_scale`` multiplies the single-trial SNR of every voxel (fMRI: the areas' ranges; EEG/MEG: ``eeg_snr``);
    ``n_average`` > 1 makes each subject a group average of that many simulated individuals on one common voxel
    grid (HCP's group-average data): each individual has its own retinotopic map, RFs and preferences, so the
    average blurs them, and the trial noise of the average shrinks by sqrt(n_average). ``overrides`` holds
    SimulationConfig fields that differ for this dataset (see :data:`DATASET_OVERRIDES`), e.g. its own areas.
    """

    name: str = field(metadata={"help": "folder name of the dataset (the workflow's `part`)"})
    modality: str = field(metadata={"help": "fmri | eeg | meg (eeg and meg use the sensor simulator)"})
    image_set: str = field(metadata={"help": "name of the image set its subjects saw"})
    n_subjects: int = field(default=1, metadata={"help": "subjects (each a group average when n_average > 1)"})
    test_repeats: int = field(default=3, metadata={"help": "presentations of each test image"})
    snr_scale: float = field(default=1.0, metadata={"help": "factor on every voxel's single-trial SNR"})
    n_average: int = field(default=1, metadata={"help": "individuals averaged into each subject (fMRI only)"})
    overrides: dict = field(
        default_factory=dict, metadata={"help": "SimulationConfig fields that differ for this dataset"}
    )

    def __post_init__(self) -> None:
        _check(self.name and isinstance(self.name, str) and self.name.isidentifier(),
               f"dataset name must be letters, digits and _, got {self.name!r}")  # fmt: skip
        _check(
            self.modality in DATASET_MODALITIES, f"dataset {self.name}: modality must be one of {DATASET_MODALITIES}"
        )
        _check(
            isinstance(self.n_subjects, int) and self.n_subjects >= 1, f"dataset {self.name}: n_subjects must be >= 1"
        )
        _check(
            isinstance(self.test_repeats, int) and self.test_repeats >= 2,
            f"dataset {self.name}: test_repeats must be >= 2",
        )
        _check(self.snr_scale > 0, f"dataset {self.name}: snr_scale must be > 0")
        _check(isinstance(self.n_average, int) and self.n_average >= 1, f"dataset {self.name}: n_average must be >= 1")
        _check(self.n_average == 1 or self.modality == "fmri", f"dataset {self.name}: n_average applies to fMRI only")
        _check(isinstance(self.overrides, dict), f"dataset {self.name}: overrides must be a mapping")
        object.__setattr__(self, "overrides", _plain(self.overrides))  # YAML-like: equal after a round trip
        unknown = sorted(set(self.overrides) - set(DATASET_OVERRIDES))
        _check(
            not unknown, f"dataset {self.name}: overrides {unknown} not allowed; valid: {', '.join(DATASET_OVERRIDES)}"
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSpec:
        """A dataset from a plain mapping; unknown keys raise a ValueError listing the valid ones."""
        return _from_dict(cls, d, f"dataset {d.get('name', '?') if isinstance(d, dict) else '?'!r}")


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
    areas: tuple[AreaSpec, ...] = field(
        default=DEFAULT_AREAS, metadata={"help": "visual areas, early to late (list of AreaSpec mappings)"}
    )
    voxel_mm: float = field(default=2.0, metadata={"help": "voxel spacing on the cortical sheet (mm)"})
    voxel_dropout: float = field(
        default=0.05, metadata={"help": "fraction of each subject's voxels left out, so counts differ"}
    )
    map_rotation_deg: float = field(
        default=8.0, metadata={"help": "SD of the per-subject rotation of the visual-field map (deg)"}
    )
    map_shift: float = field(default=0.04, metadata={"help": "SD of the per-subject shift of the visual-field map (u)"})
    rf_scatter: float = field(
        default=0.02, metadata={"help": "SD of per-voxel scatter of RF centres around the smooth map (u)"}
    )
    nan_voxels: int = field(
        default=0, metadata={"help": "voxels per fMRI subject made NaN on every trial (to test masking)"}
    )
    # EEG subjects
    n_eeg_subjects: int = field(default=1, metadata={"help": "number of EEG-like subjects (0 for none)"})
    eeg_channels: tuple[str, ...] = field(
        default=EEG_CHANNELS, metadata={"help": "10-20 channel names (mne standard montage)"}
    )
    eeg_n_times: int = field(default=16, metadata={"help": "time points per channel; voxels = channels x time points"})
    eeg_tmax: float = field(default=0.6, metadata={"help": "last time point (s after stimulus onset); the first is 0"})
    eeg_snr: float = field(
        default=0.6, metadata={"help": "single-trial signal/noise SD of the strongest channel x time point"}
    )
    eeg_test_repeats: int = field(default=4, metadata={"help": "presentations of each test image for EEG subjects"})
    eeg_mm_per_ms: float = field(default=0.2, metadata={"help": "EEG voxel z coordinate = latency (ms) x this (mm)"})
    eeg_topo_sigma_mm: float = field(
        default=50.0, metadata={"help": "spread of a source over the sensors (mm); MEG smears less"}
    )
    # Heterogeneous experiments: several image sets and datasets (empty = the two parts `fmri` and `eeg` above)
    image_sets: tuple[ImageSetSpec, ...] = field(
        default=(), metadata={"help": "stimulus sets (list of ImageSetSpec mappings)"}
    )
    datasets: tuple[DatasetSpec, ...] = field(
        default=(), metadata={"help": "datasets (list of DatasetSpec mappings); needs image_sets"}
    )

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so the config stays hashable and immutable.
        areas = tuple(a if isinstance(a, AreaSpec) else AreaSpec.from_dict(a) for a in self.areas)
        object.__setattr__(self, "areas", areas)
        object.__setattr__(self, "eeg_channels", tuple(self.eeg_channels))
        sets = tuple(x if isinstance(x, ImageSetSpec) else ImageSetSpec.from_dict(x) for x in self.image_sets)
        object.__setattr__(self, "image_sets", sets)
        object.__setattr__(
            self,
            "datasets",
            tuple(x if isinstance(x, DatasetSpec) else DatasetSpec.from_dict(x) for x in self.datasets),
        )
        self._check_datasets()
        for name in ("seed", "n_images", "image_size", "min_objects", "max_objects", "feature_grid", "n_test_images",
                     "n_test_repeats", "n_fmri_subjects", "nan_voxels", "n_eeg_subjects", "eeg_n_times", "eeg_test_repeats"):  # fmt: skip
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool),
                f"config key `{name}` must be an integer, got {value!r}",
            )
            _check(value >= 0, f"config key `{name}` must be >= 0, got {value}")
        _check(self.image_size >= 16, f"config key `image_size` must be >= 16 px, got {self.image_size}")
        _check(2 <= self.feature_grid <= self.image_size, "config key `feature_grid` must be in [2, image_size]")
        _check(
            1 <= self.min_objects <= self.max_objects, "config keys `min_objects`/`max_objects`: need 1 <= min <= max"
        )
        _check(
            self.n_test_repeats >= 2 and self.eeg_test_repeats >= 2,
            "test images must be shown at least twice (noise ceiling)",
        )
        n_val = round(self.val_fraction * self.n_images)
        _check(0 <= self.val_fraction < 1, f"config key `val_fraction` must be in [0, 1), got {self.val_fraction}")
        _check(1 <= self.n_test_images and self.n_test_images + n_val < self.n_images,
               f"config key `n_test_images` ({self.n_test_images}) plus val images ({n_val}) must leave training images "
               f"out of n_images={self.n_images}")  # fmt: skip
        _check(
            self.n_fmri_subjects + self.n_eeg_subjects >= 1,
            "need at least one subject (n_fmri_subjects + n_eeg_subjects)",
        )
        _check(
            len(self.areas) >= 1 or self.n_fmri_subjects == 0,
            "config key `areas`: fMRI subjects need at least one area",
        )
        _check(len({a.name for a in self.areas}) == len(self.areas), "config key `areas`: area names must be unique")
        _check(0 <= self.voxel_dropout < 0.9, "config key `voxel_dropout` must be in [0, 0.9)")
        n_voxels = sum(a.grid[0] * a.grid[1] for a in self.areas)
        _check(
            self.nan_voxels < n_voxels * (1 - self.voxel_dropout) - 1,
            "config key `nan_voxels` must leave most voxels finite",
        )
        _check(len(self.eeg_channels) >= 1 or self.n_eeg_subjects == 0, "config key `eeg_channels` must not be empty")
        _check(self.eeg_n_times >= 2 or self.n_eeg_subjects == 0, "config key `eeg_n_times` must be >= 2")
        _check(min(self.eeg_tmax, self.eeg_snr, self.voxel_mm, self.eeg_topo_sigma_mm) > 0,
               "eeg_tmax, eeg_snr, eeg_topo_sigma_mm and voxel_mm must be > 0")  # fmt: skip
        _check(min(self.map_rotation_deg, self.map_shift, self.rf_scatter, self.eeg_mm_per_ms) >= 0,
               "map_rotation_deg, map_shift, rf_scatter and eeg_mm_per_ms must be >= 0")  # fmt: skip

    def _check_datasets(self) -> None:
        names = [x.name for x in self.image_sets]
        _check(len(set(names)) == len(names), "config key `image_sets`: names must be unique")
        _check(not self.image_sets or self.datasets, "config key `image_sets` needs `datasets` that use them")
        for k, x in enumerate(self.image_sets):
            _check(x.reuse_from is None or x.reuse_from in names[:k],
                   f"image set {x.name}: reuse_from {x.reuse_from!r} must name an earlier image set of {names[:k]}")  # fmt: skip
            if x.reuse_from is not None:
                source = self.image_sets[names.index(x.reuse_from)]
                _check(x.n_reused <= source.n_images, f"image set {x.name}: n_reused exceeds {source.name}'s n_images")
        ds_names = [d.name for d in self.datasets]
        _check(len(set(ds_names)) == len(ds_names), "config key `datasets`: names must be unique")
        for d in self.datasets:
            _check(
                d.image_set in names,
                f"dataset {d.name}: image_set {d.image_set!r} is not one of the image_sets {names}",
            )
            self.for_dataset(d)  # validates the dataset's overrides in context

    def image_set(self, name: str) -> ImageSetSpec:
        """The image set called ``name``."""
        return next(x for x in self.image_sets if x.name == name)

    def for_dataset(self, d: DatasetSpec) -> SimulationConfig:
        """The flat config that simulates dataset ``d``'s subjects: its image set's size and split, its test
        repeats, its overrides and its SNR scale folded into the single-dataset fields (no datasets of its own)."""
        images = self.image_set(d.image_set)
        fields = dict(d.overrides)
        areas = tuple(a if isinstance(a, AreaSpec) else AreaSpec.from_dict(a) for a in fields.pop("areas", self.areas))
        if d.snr_scale != 1.0:
            areas = tuple(dataclasses.replace(a, snr=(a.snr[0] * d.snr_scale, a.snr[1] * d.snr_scale)) for a in areas)
        sensors = d.modality in ("eeg", "meg")
        if "eeg_channels" in fields:
            fields["eeg_channels"] = tuple(fields["eeg_channels"])
        return dataclasses.replace(
            self, image_sets=(), datasets=(), areas=areas, n_images=images.n_images, n_test_images=images.n_test_images,
            val_fraction=images.val_fraction, n_fmri_subjects=0 if sensors else d.n_subjects,
            n_eeg_subjects=d.n_subjects if sensors else 0,
            n_test_repeats=self.n_test_repeats if sensors else d.test_repeats,
            eeg_test_repeats=d.test_repeats if sensors else self.eeg_test_repeats,
            eeg_snr=fields.pop("eeg_snr", self.eeg_snr) * (d.snr_scale if sensors else 1.0), **fields,
        )  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SimulationConfig:
        """A config from a plain mapping (the workflow's ``simulate`` options); missing keys take the defaults.

        Raises ValueError naming any unknown key and listing the valid ones; ``areas`` is a list of mappings
        with the fields of :class:`AreaSpec`.
        """
        return _from_dict(cls, dict(d or {}), "simulation config")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), for YAML/JSON."""
        return _plain(dataclasses.asdict(self))


def _plain(x: Any) -> Any:
    """Lists, dicts and scalars only (tuples become lists, dataclasses dicts), as YAML gives them."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _plain(dataclasses.asdict(x))
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


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
        if (
            isinstance(value, list)
            and str(hints[key]).startswith("tuple")
            and key not in ("areas", "image_sets", "datasets")
        ):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # a missing required AreaSpec field
        raise ValueError(f"{what}: {err}; valid keys: {', '.join(valid)}") from err
