"""File lists and command arguments of workflow/rules/analysis.smk (kept here: Snakemake's linter wants no
functions next to rules, and common.smk belongs to the earlier stages).

:class:`AnalysisPlan` is built once from the validated config and what common.smk knows about the evaluated
models; its methods are the rules' input and params functions (Snakemake passes ``wildcards`` / ``input``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from afo.config import ConfigError

#: Keys of an extractor spec that its source reads (the rest would only make jobs rerun for nothing).
SPEC_KEYS = {
    "timm": ("name", "layers", "resolution", "pretrained", "pretrained_path", "model_kwargs"),
    "backbone": (),
    "model": ("model",),
}
PROBE_SETTINGS = ("n_components", "alphas", "cv", "pool_grid", "backend", "seed")


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True)


class AnalysisPlan:
    """What the analysis rules need to know, checked up front (an unknown model name is a ConfigError).

    Args:
        config: the validated workflow config (defaults filled in).
        evaluated: names of results/encoding/<name> (common.smk ``EVALUATED``).
        single: name -> model file of the single (not assembled) models (common.smk ``SINGLE``).
        evaluation_rois: common.smk's input function giving a model's ROI table.
    """

    def __init__(self, config: Mapping, evaluated: Sequence[str], single: Mapping[str, str], evaluation_rois: Callable):
        self.config = config
        self.datasets = config["datasets"]
        self.evaluated = list(evaluated)
        self.single = dict(single)
        self._evaluation_rois = evaluation_rois
        self.evaluation = config["evaluation"]
        self.decoding = config["decoding"]
        self.probing = config["probing"]
        self.train_datasets = sorted(n for n, d in self.datasets.items() if d["role"] == "train")
        self.all_datasets = sorted(self.datasets)
        self.synthetic = {n: f"resources/synthetic/{d['part']}" for n, d in sorted(self.datasets.items()) if d["format"] == "synthetic"}
        self.extractors = sorted(self.probing["extractors"]) if self.probing["enabled"] else []
        self._check()

    def _check(self) -> None:
        for key, names in (("evaluation.figure_models", self.evaluation["figure_models"]), ("decoding.models", self.decoding["models"])):
            unknown = [n for n in names if n not in self.evaluated]
            if unknown:
                raise ConfigError(f"config key `{key}`: {unknown} not among the evaluated models {self.evaluated}")
        for label, spec in self.probing["extractors"].items():
            if spec["source"] == "timm" and not spec.get("name"):
                raise ConfigError(f"config key `probing.extractors.{label}.name`: source timm needs a timm model name")
            if spec["source"] == "model" and spec.get("model") not in self.single:
                raise ConfigError(
                    f"config key `probing.extractors.{label}.model`: {spec.get('model')!r} is not one of the single models "
                    f"{list(self.single)} (per-ROI models assembled share no core)"
                )

    # -- constraints and arguments -------------------------------------------------------------------

    def extractor_pattern(self) -> str:
        return "|".join(self.extractors) or "^$"

    def voxels_args(self) -> str:
        return " ".join(f"--voxels {n}=results/encoding/{n}/voxels.csv" for n in self.evaluated)

    def voxels_files(self) -> list[str]:
        return [f"results/encoding/{n}/voxels.csv" for n in self.evaluated]

    def train_store_args(self) -> str:
        return " ".join(f"--store {d}=results/prepared/{d}.h5" for d in self.train_datasets)

    def ground_truth_args(self) -> str:
        return " ".join(f"--ground-truth {d}={root}" for d, root in self.synthetic.items())

    def ground_truth_input(self) -> list[str]:
        return ["resources/synthetic"] if self.synthetic else []

    def model_roi_set(self, wildcards) -> str:
        """Name of the model's ROI table (veroi, random, dataset): the roi_set of its per-ROI retrieval rows."""
        return Path(self._evaluation_rois(wildcards)[0]).stem

    # -- linear probing ------------------------------------------------------------------------------

    def probe_spec(self, wildcards) -> str:
        spec = self.probing["extractors"][wildcards.extractor]
        return as_json({"source": spec["source"], **{k: spec.get(k) for k in SPEC_KEYS[spec["source"]]}})

    def probe_settings(self) -> str:
        return as_json({k: self.probing[k] for k in PROBE_SETTINGS})

    def probe_features(self, wildcards) -> list[str]:
        source = self.probing["extractors"][wildcards.extractor]["source"]
        return [f"results/features/{wildcards.dataset}.h5"] if source in ("backbone", "model") else []

    def probe_model(self, wildcards) -> list[str]:
        spec = self.probing["extractors"][wildcards.extractor]
        return [self.single[spec["model"]]] if spec["source"] == "model" else []

    def probe_input_args(self, wildcards, input) -> str:
        return " ".join([f"--features {f}" for f in input.features] + [f"--model {m}" for m in input.model])

    def dataset_role(self, wildcards) -> str:
        return self.datasets[wildcards.dataset]["role"]

    def probe_tables(self) -> list[str]:
        return [f"results/probing/{e}/{d}.csv" for e in self.extractors for d in self.all_datasets]

    # -- what `rule all` asks for --------------------------------------------------------------------

    def targets(self) -> list[str]:
        out = [
            "results/encoding/ablation_table.csv",
            "results/encoding/ablation_table.html",
            "results/encoding/comparison.html",
            "results/figures/veroi_dendrogram.png",
        ]
        out += [f"results/encoding/{n}/summary.html" for n in self.evaluated]
        if self.extractors:
            out += ["results/probing/probe.csv", "results/probing/probe_summary.html", "results/probing/probe_violins.png"]
        for name in self.decoding["models"]:
            out += [f"results/decoding/{name}/retrieval.csv", f"results/decoding/{name}/retrievals", f"results/figures/{name}/roi_scores"]
        for name in self.evaluation["figure_models"]:
            out += [f"results/figures/{name}/{kind}" for kind in ("retinamap", "layerselector", "brainmaps")]
            out.append(f"results/brainmaps/{name}")
        if self.synthetic:
            out += ["results/analysis/synthetic_checks.json", "results/analysis/synthetic_checks.html"]
        return out
