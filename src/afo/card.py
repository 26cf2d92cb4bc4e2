"""The model card of an exported model: ``README.md`` with YAML front matter (docs/sharing.md).

The front matter follows Hugging Face's model-card metadata (``license``, ``library_name``, ``tags``; the hub
shows them) and carries the fields a brain-encoding model zoo lists for each model (as BERG's cards do): the
training datasets with the terms of use each carries, subjects, their spaces, the backbone and its licence, the
recipe and the config hash, scores with their definitions, afo's version, the intended use. The body says the
same for people. Everything comes from :func:`card_fields`, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

# The columns of results/encoding/<model>/summary.csv a card reports, with their definitions (docs/design.md).
SCORE_DEFINITIONS = {
    "n_voxels": "voxels scored (the subject's modelled voxels with a finite response)",
    "mean_r_test": "mean over voxels of Pearson's r between prediction and the repeat-averaged response, test images",
    "median_r_test_norm": "median over voxels of r_test*|r_test| / (noise ceiling / 100): the signed fraction of "
    "explainable variance explained (empty where the noise ceiling is unknown)",
    "challenge_score_median": "the Algonauts 2023 challenge score (median over voxels; fsaverage datasets with a "
    "noise ceiling only)",
    "n_test_images": "test images scored",
    "n_test_left_out": "test images left out because a training dataset trained on them",
}
INTENDED_USE = (
    "Research on the visual system: predicting the brain responses of the listed subjects to images, probing the "
    "model's features, its receptive-field (RetinaMap) and layer (LayerSelector) maps. Not for clinical or "
    "diagnostic use, nor for decisions about people; the predictions are of the training subjects' brains only. "
    "Use is bound by the terms of every training dataset below."
)


@dataclass
class DatasetCard:
    """One training dataset as the card lists it."""

    name: str  # the config's dataset name (the model's subject keys start with it)
    format: str | None  # the adapter's format; None: not known (exported without --config)
    terms: str  # the terms of use its data carry, or a line saying they are not stated
    modality: str
    subjects: list[str] = field(default_factory=list)
    visual_angle_deg: float | None = None


def card_fields(
    *,
    model_name: str,
    datasets: Sequence[DatasetCard],
    spaces: Mapping[str, str],
    backbone: Mapping[str, Any],
    recipe: Mapping[str, Any],
    config_sha256: str | None,
    scores: list[dict[str, Any]],
    afo_version: str,
) -> dict[str, Any]:
    """The front matter of a card (a plain dict YAML writes)."""
    modalities = sorted({d.modality for d in datasets})
    return {
        "license": "other",  # the weights carry the training data's terms, listed under training_datasets
        "license_name": "training-data-terms",
        "license_link": "README.md#terms-of-the-training-data",
        "library_name": "afo",
        "tags": ["afo", "brain-encoding", "neuroscience", "visual-cortex", *modalities],
        "model_name": model_name,
        "training_datasets": [
            {
                "name": d.name,
                "format": d.format,
                "modality": d.modality,
                "subjects": d.subjects,
                "visual_angle_deg": d.visual_angle_deg,
                "terms": d.terms,
            }
            for d in datasets
        ],
        "subjects": sorted(spaces),
        "spaces": dict(sorted(spaces.items())),
        "backbone": dict(backbone),
        "recipe": dict(recipe),
        "config_sha256": config_sha256,
        "scores": scores,
        "score_definitions": {k: v for k, v in SCORE_DEFINITIONS.items() if any(k in row for row in scores)},
        "afo_version": afo_version,
        "intended_use": INTENDED_USE,
    }


def render_card(meta: Mapping[str, Any]) -> str:
    """README.md: the YAML front matter, then the same facts as text."""
    front = yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True, width=1000)
    backbone = meta["backbone"]
    lines = [
        f"---\n{front}---",
        f"# {meta['model_name']}: an afo brain encoding model",
        "",
        "A retinotopy-inspired encoding model trained with afo (the All-for-One recipe): images in, predicted "
        'brain responses of the subjects below out. Load it with `afo.load("hf://OWNER/NAME")` or '
        '`afo.load("<this folder>")` (afo\'s docs/sharing.md).',
        "",
        "## Intended use",
        "",
        str(meta["intended_use"]),
        "",
        "## Terms of the training data",
        "",
        "The model was fit to these datasets' responses; whoever uses it is bound by their terms:",
        "",
    ]
    lines += [
        f"- **{d['name']}** ({d['format'] or 'format not recorded'}): {d['terms']}" for d in meta["training_datasets"]
    ]
    lines += ["", "## Subjects and spaces", "", "| subject | space |", "|---|---|"]
    lines += [f"| {s} | {space} |" for s, space in meta["spaces"].items()]
    lines += [
        "",
        "## Backbone",
        "",
        f"`{backbone['name']}` (timm), layers {backbone['layers']} at {backbone['resolution']} px, weights: "
        f"{backbone['weights']} (SHA-256 {backbone['weights_sha256'] or 'none'}); licence: {backbone['licence']}.",
        "The backbone's weights are not in this folder: afo builds it from timm (or the named weights file).",
        "",
        "## Recipe",
        "",
        f"Model `{meta['recipe'].get('model')}`; config SHA-256 {meta['config_sha256'] or 'not recorded'}. "
        "The training settings are in the front matter (`recipe`) and in afo_model.json (`info.spec`).",
        "",
        "## Scores",
        "",
    ]
    scores = meta["scores"]
    if scores:
        columns = list(scores[0])
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in scores]
        lines += [""] + [f"- `{k}`: {v}" for k, v in meta["score_definitions"].items()]
    else:
        lines.append("No evaluation summary was given at export (`afo export --summary`).")
    lines += ["", f"Written by afo {meta['afo_version']}.", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
