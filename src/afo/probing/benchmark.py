"""The linear-probing benchmark (paper Figure 1): frozen feature extractors scored by per-voxel ridge regression.

Extractors (``probing.extractors`` in the config, name -> spec):

- ``{source: timm, name: <timm model>, layers: [-1], resolution: null, pretrained: false, pretrained_path: null,
  model_kwargs: {}}``: any timm model by name (random-initialised unless ``pretrained`` or a local weights file
  ``pretrained_path`` is given, as for the workflow's ``backbone``), run on the prepared store's images; the
  blocks ``layers`` (forward_intermediates indices, negative from the end) are tapped; ``resolution`` null = the
  store's image size;
- ``{source: backbone}``: the workflow's frozen backbone, read from its feature cache (all cached layers), or run
  on the store's images when the workflow caches nothing (``backbone.cache: none``);
- ``{source: model, model: afo}``: our trained backbone + conv blocks: the cached backbone layers of the dataset
  go through the trained model's ``core`` (the conv blocks shared by all subjects; subject-free, so holdout
  datasets work too), giving one ``[D, h, w]`` map per layer.

Every tapped map ``[C, h, w]`` is average-pooled to a ``pool_grid x pool_grid`` grid and flattened
(``pool_grid`` 1 = global average pooling; 2-4 keep a coarse layout, which retinotopic voxels need), and the
layers are concatenated. Then, per subject, :func:`afo.probing.ridge.linear_probe`: standardise and PCA to
``n_components`` on the subject's training images, per-voxel ridge with per-voxel alpha by ``cv``-fold
cross-validation (himalaya ``RidgeCV``), Pearson r on the test images. Targets are responses averaged over each
image's repeats (train and test); train = the store's train split, test = its test split.

Holdout datasets (``role: holdout``) are probed exactly like training datasets; the model extractor never saw them.
Test images that a training dataset trained on (``results/data/overlap.csv``, config ``overlap.exclude``) are
left out of the test split (``leave_out``; their number is the column ``n_test_left_out``), so a holdout score
never rests on an image the model was trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from afo.data.store import PreparedStore
from afo.training.subjects import load_subjects

SOURCES = ("timm", "backbone", "model")


@dataclass(frozen=True)
class ProbeSettings:
    """The probing protocol (``probing`` section of the config)."""

    n_components: int = 100
    alphas: tuple[float, ...] = tuple(np.logspace(-2, 6, 17).tolist())
    cv: int = 5
    pool_grid: int = 2
    backend: str = "numpy"
    seed: int = 0
    batch_size: int = 64

    @classmethod
    def from_config(cls, cfg: Mapping) -> ProbeSettings:
        keys = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in cfg.items() if k in keys}
        if "alphas" in values:
            values["alphas"] = tuple(float(a) for a in values["alphas"])
        return cls(**values)


@dataclass(frozen=True)
class ExtractorSpec:
    """One feature extractor of the benchmark (see the module docstring)."""

    label: str
    source: str
    name: str | None = None
    layers: tuple[int, ...] = (-1,)
    resolution: int | None = None
    pretrained: bool = False
    pretrained_path: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    model: str | None = None

    @classmethod
    def from_config(cls, label: str, cfg: Mapping) -> ExtractorSpec:
        source = cfg.get("source")
        if source not in SOURCES:
            raise ValueError(f"probing.extractors.{label}.source: {source!r} is not one of {SOURCES}")
        if source == "timm" and not cfg.get("name"):
            raise ValueError(f"probing.extractors.{label}: source timm needs `name` (a timm model name)")
        return cls(
            label=label,
            source=source,
            name=cfg.get("name"),
            layers=tuple(int(i) for i in (cfg.get("layers") or [-1])),
            resolution=cfg.get("resolution"),
            pretrained=bool(cfg.get("pretrained", False)),
            pretrained_path=cfg.get("pretrained_path") or None,
            model_kwargs=dict(cfg.get("model_kwargs") or {}),
            model=cfg.get("model"),
        )


def pool_maps(maps: list[torch.Tensor], grid: int) -> torch.Tensor:
    """Layers ``[B, C_l, h_l, w_l]`` -> ``[B, sum_l C_l * g_l * g_l]``: adaptive average pooling to
    ``g_l = min(grid, h_l, w_l)`` per side, flattened, layers concatenated (float32)."""
    if grid < 1:
        raise ValueError(f"pool_grid must be >= 1, got {grid}")
    out = []
    for m in maps:
        g = (min(grid, m.shape[-2]), min(grid, m.shape[-1]))
        out.append(F.adaptive_avg_pool2d(m.float(), g).flatten(1))
    return torch.cat(out, dim=1)


def extract(
    spec: ExtractorSpec,
    store_path: str | Path,
    image_rows: np.ndarray,
    settings: ProbeSettings,
    features_path: str | Path | None = None,
    model_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    backbone: Mapping | None = None,
) -> np.ndarray:
    """Pooled features ``[len(image_rows), F]`` (float32) of the store's images ``image_rows`` (sorted, unique).

    Sources backbone and model read ``features_path`` (the cache), or, with ``backbone`` (the workflow's section,
    ``cache: none``), run that backbone on the store's images.
    """
    device = torch.device(device)
    image_rows = np.asarray(image_rows, dtype=np.int64)
    bs = settings.batch_size
    chunks = []
    if spec.source == "timm":
        from afo.features import BackboneSpec, backbone_features, create_backbone

        with PreparedStore(store_path) as store:
            bspec = BackboneSpec(
                name=spec.name,
                layers=spec.layers,
                resolution=int(spec.resolution or store.image_size),
                pretrained=spec.pretrained,
                pretrained_path=spec.pretrained_path,
                model_kwargs=spec.model_kwargs,
            )
            net = create_backbone(bspec).to(device)
            for start in range(0, image_rows.size, bs):
                maps = backbone_features(net, store.images(image_rows[start : start + bs]), bspec, device)
                chunks.append(pool_maps(maps, settings.pool_grid).cpu())
    else:
        from afo.features import feature_source

        if features_path is None and not backbone:
            raise ValueError(
                f"extractor {spec.label}: source {spec.source} needs the dataset's feature cache or backbone.cache: none"
            )
        bank = feature_source({"probe": store_path}, {"probe": features_path} if features_path else {}, backbone)
        core = None
        if spec.source == "model":
            if model_path is None:
                raise ValueError(f"extractor {spec.label}: source model needs a model file")
            from afo.training.modelfile import load_model

            core, _ = load_model(model_path)
            core.to(device)
        try:
            for start in range(0, image_rows.size, bs):
                with torch.no_grad():
                    maps = bank.features([m.to(device) for m in bank.get("probe", image_rows[start : start + bs])])
                    if core is not None:
                        maps = core.core(maps)
                    chunks.append(pool_maps(list(maps), settings.pool_grid).cpu())
        finally:
            bank.close()
    if not chunks:
        raise ValueError(f"extractor {spec.label}: no image to extract")
    return torch.cat(chunks).numpy()


def probe_dataset(
    spec: ExtractorSpec,
    dataset: str,
    store_path: str | Path,
    settings: ProbeSettings,
    role: str = "train",
    features_path: str | Path | None = None,
    model_path: str | Path | None = None,
    roi_set: str = "roi",
    device: torch.device | str = "cpu",
    leave_out: np.ndarray | None = None,
    backbone: Mapping | None = None,
) -> pd.DataFrame:
    """Per-voxel test r of one extractor on every subject of one dataset.

    Columns: extractor, dataset, role, subject, voxel, dataset_roi, r_test, best_alpha, cv_r2 (cross-validated
    R^2 at that alpha), alpha_at_edge, n_components, n_train, n_test, n_test_left_out (test images in
    ``leave_out``, store rows shared with a training dataset, not scored). Bad voxels (all-NaN, constant) are not
    probed and have no row.
    """
    from afo.probing.ridge import linear_probe

    subjects = load_subjects({dataset: store_path})
    needed = np.unique(
        np.concatenate([np.concatenate([s.split_images["train"], s.split_images["test"]]) for s in subjects])
    )
    feats = extract(spec, store_path, needed, settings, features_path, model_path, device, backbone)
    with PreparedStore(store_path) as store:
        own = {
            name: (store.rois(name, roi_set) if roi_set in store.info(name).roi_sets else None)
            for name in store.subjects
        }
    tables = []
    for s in subjects:
        train, test = s.split_images["train"], s.split_images["test"]
        test_means = s.split_means("test")
        kept = ~np.isin(test, leave_out) if leave_out is not None else np.ones(test.size, dtype=bool)
        test, test_means = test[kept], test_means[kept]
        name = s.key.split("/", 1)[1]
        if train.size < max(settings.cv, 3) or test.size < 3:
            shared = f" ({int((~kept).sum())} shared test images left out: overlap.exclude)" if (~kept).any() else ""
            raise ValueError(
                f"{dataset}/{name}: {train.size} train and {test.size} test images{shared}; linear "
                f"probing needs at least {max(settings.cv, 3)} and 3"
            )
        result = linear_probe(
            feats[np.searchsorted(needed, train)],
            s.split_means("train"),
            feats[np.searchsorted(needed, test)],
            test_means,
            n_components=min(settings.n_components, train.size, feats.shape[1]),
            alphas=np.asarray(settings.alphas),
            cv=settings.cv,
            backend=settings.backend,
            seed=settings.seed,
        )
        labels = own[name][s.voxels] if own[name] is not None else np.full(s.voxels.size, "")
        tables.append(
            pd.DataFrame(
                {
                    "extractor": spec.label,
                    "dataset": dataset,
                    "role": role,
                    "subject": name,
                    "voxel": s.voxels,
                    "dataset_roi": labels,
                    "r_test": result.r_test,
                    "best_alpha": result.best_alpha,
                    "cv_r2": result.cv_score,
                    "alpha_at_edge": result.alpha_at_edge,
                    "n_components": result.n_components,
                    "n_train": train.size,
                    "n_test": test.size,
                    "n_test_left_out": int((~kept).sum()),
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


#: Share of positively scored voxels whose alpha sits at an edge of the grid above which the report warns.
EDGE_WARNING_SHARE = 0.05


def probe_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Median and mean test r per extractor, dataset (with role) and subject ('all' = pooled).

    ``edge_share``: among the voxels with a positive cross-validated R^2 (the ones the probe predicts at all),
    the share whose chosen alpha is the smallest or largest of the grid — where the grid, not the data, chose.
    """
    pooled = table.assign(subject="all")
    both = pd.concat([table, pooled], ignore_index=True)
    both["positive_at_edge"] = np.where(both["cv_r2"] > 0, both["alpha_at_edge"].astype(float), np.nan)
    if "n_test_left_out" not in both:  # tables written before overlap exclusion
        both["n_test_left_out"] = 0
    out = (
        both.groupby(["dataset", "role", "subject", "extractor"], sort=False)
        .agg(
            n_voxels=("r_test", "size"),
            median_r=("r_test", "median"),
            mean_r=("r_test", "mean"),
            edge_share=("positive_at_edge", "mean"),
            n_test_left_out=("n_test_left_out", "max"),
        )
        .reset_index()
    )
    return out


def edge_warning(summary: pd.DataFrame) -> str:
    """A warning naming every extractor and dataset whose edge share (pooled subjects) exceeds 5%, or ""."""
    pooled = summary[(summary["subject"] == "all") & (summary["edge_share"] > EDGE_WARNING_SHARE)]
    if pooled.empty:
        return ""
    cases = ", ".join(f"{r.extractor} on {r.dataset} ({r.edge_share:.0%})" for r in pooled.itertuples())
    return (
        f"Warning: for {cases}, more than {EDGE_WARNING_SHARE:.0%} of the positively scored voxels chose an alpha at "
        "an edge of probing.alphas: their scores are limited by the grid; widen it."
    )


def violin_table(table: pd.DataFrame) -> pd.DataFrame:
    """Long table for :func:`afo.figures.plots.plot_violins`: model = extractor, dataset = "<dataset> (<role>)"."""
    return pd.DataFrame(
        {
            "model": table["extractor"].astype(str),
            "dataset": table["dataset"].astype(str) + " (" + table["role"].astype(str) + ")",
            "r": table["r_test"],
        }
    )


def write_probe_report(tables: Sequence[str | Path], out: str | Path, summary: str | Path) -> pd.DataFrame:
    """probe.csv (every extractor and dataset) and its HTML summary (with the alpha-grid warning); returns the table."""
    from afo.io.tables import read_table, write_csv
    from afo.report import write_html_table

    table = pd.concat([read_table(t) for t in tables], ignore_index=True)
    write_csv(table, out)
    counts = probe_summary(table)
    note = (
        "Median and mean test Pearson r over voxels per feature extractor (PCA + per-voxel ridge); subject all = "
        "voxels pooled; edge_share = share of the voxels with a positive cross-validated R^2 whose alpha is at an "
        "edge of the grid; n_test_left_out = test images left out because a training dataset trained on them "
        "(results/data/overlap.csv; most of any subject for 'all'). "
    )
    warning = edge_warning(counts)
    if warning:
        logging.getLogger(__name__).warning(warning)
    write_html_table(counts, summary, "Linear probing: test r per voxel", note + warning)
    return table
