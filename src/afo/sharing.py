"""Sharing a model: ``afo export`` (a folder a model hub can host, with its card) and model names on a hub.

:func:`export_model` writes ``model.safetensors`` and ``afo_model.json`` (:mod:`afo.training.modelfolder`) and
``README.md`` (:mod:`afo.card`). :func:`resolve_model` turns what :func:`afo.load` is given into a local path:
a model file or folder as it is, ``hf://owner/name[@revision]`` through huggingface_hub, which downloads into its
cache when online and reads that cache offline (``HF_HUB_OFFLINE=1``; ``HF_HUB_CACHE`` says where it is).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from afo.errors import UserError

HUB_PREFIX = "hf://"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
NOT_STATED = "not stated: export with --config so that the card names the dataset's format and its terms"


class HubError(UserError):
    """A hub name that is malformed, or a model that is neither in huggingface_hub's cache nor downloadable."""


def hub_name(text: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) of ``hf://owner/name[@revision]``; None for anything else (a local path)."""
    if not text.startswith(HUB_PREFIX):
        return None
    repo, _, revision = text[len(HUB_PREFIX) :].partition("@")
    if not _REPO.match(repo) or (revision == "" and text.endswith("@")):
        raise HubError(f"{text}: not a hub model name; write hf://owner/name or hf://owner/name@revision")
    return repo, revision or None


def resolve_model(path: str | Path) -> Path:
    """A local model file or folder for ``path``; a hub name is fetched (or found in the cache offline)."""
    name = hub_name(str(path))
    if name is None:
        return Path(path)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from afo.training.modelfolder import RECORD, WEIGHTS

    repo, revision = name
    try:
        folder = snapshot_download(repo, revision=revision, allow_patterns=[WEIGHTS, RECORD, "README.md"])
    except LocalEntryNotFoundError as err:
        raise HubError(
            f"{path}: not in huggingface_hub's cache ({constants.HF_HUB_CACHE}) and not downloadable "
            f"({'HF_HUB_OFFLINE is set' if constants.HF_HUB_OFFLINE else 'no connection'}); download it once "
            "online, or set HF_HUB_CACHE to the cache that holds it"
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise HubError(f"{path}: no such model or revision on the hub ({type(err).__name__})") from err
    except HfHubHTTPError as err:
        raise HubError(f"{path}: the hub refused the download ({err}); check the name and your access") from err
    return Path(folder)


def export_model(
    model: str | Path,
    out: str | Path,
    *,
    summary: str | Path | None = None,
    config: str | Path | None = None,
    name: str | None = None,
    backbone_licence: str | None = None,
) -> dict[str, Any]:
    """Write ``out/{model.safetensors, afo_model.json, README.md}`` from a model file (or folder).

    ``summary``: the model's ``results/encoding/<model>/summary.csv`` (its per-subject scores go into the card);
    ``config``: the workflow config it was trained with (datasets' formats, terms and visual angles, the recipe
    section, the config's hash); ``name``: the model's name in the card (default: from its path);
    ``backbone_licence``: the licence of a local backbone weights file (timm's record names it otherwise).
    """
    from afo import __version__
    from afo.api import check_output_folder
    from afo.card import card_fields, render_card
    from afo.config import load_config
    from afo.io import atomic_write_text
    from afo.training.modelfile import read_model_file
    from afo.training.modelfolder import is_model_folder, read_model_folder, subject_space, write_model_folder

    check_output_folder(out, "--out")
    source = resolve_model(model)
    model_file = read_model_folder(source) if is_model_folder(source) else read_model_file(source)
    inputs = model_file.require_inputs(source)
    cfg = load_config(config) if config is not None else None
    scores = _scores(summary, list(inputs.subjects)) if summary is not None else []
    datasets = _datasets(inputs.subjects, cfg)
    written = write_model_folder(model_file, out, {d.name: d.visual_angle_deg for d in datasets})
    spec = json.loads(model_file.info["spec"]) if "spec" in model_file.info else {}
    meta = card_fields(
        model_name=name or _model_name(Path(source)),
        datasets=datasets,
        spaces={k: subject_space(r) for k, r in inputs.subjects.items()},
        backbone=_backbone(inputs.backbone, backbone_licence),
        recipe={
            "model": name or _model_name(Path(source)),
            "train": spec.get("train"),
            "afo": cfg.get("afo") if cfg else None,
            "validation_r": model_file.info.get("val_r"),
        },
        config_sha256=config_hash(cfg) if cfg else None,
        scores=scores,
        afo_version=model_file.afo_version or __version__,
    )
    card = atomic_write_text(Path(out) / "README.md", render_card(meta))
    return {
        "out": str(out),
        "files": [str(written["weights"]), str(written["record"]), str(card)],
        "datasets": [d.name for d in datasets],
        "scores": len(scores),
    }


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a validated config (defaults filled in, keys sorted): the same settings, the same hash, whatever
    the file's comments and key order."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _model_name(path: Path) -> str:
    """``afo/stage3`` for results/models/afo/stage3/model.pt; the file's folder name otherwise."""
    parts = path.resolve().parts
    if "models" in parts:
        below = [p for p in parts[parts.index("models") + 1 :] if p != "model.pt"]
        if below:
            return "/".join(below)
    return path.stem if path.is_file() else path.name


def _datasets(subjects: Mapping[str, Any], config: Mapping[str, Any] | None) -> list:
    """One card entry per training dataset: its format, terms and visual angle from the config's entry (without a
    config: from the format of the same name, if any)."""
    from afo.card import DatasetCard
    from afo.data.registry import FORMATS, get_adapter, visual_angle

    by_dataset: dict[str, list] = {}
    for record in subjects.values():
        by_dataset.setdefault(record.dataset, []).append(record)
    out = []
    for dataset, records in sorted(by_dataset.items()):
        entry = (config or {}).get("datasets", {}).get(dataset)
        fmt = entry["format"] if entry else (dataset if dataset in FORMATS else None)
        terms, angle = NOT_STATED, None
        if fmt is not None:
            adapter = get_adapter(fmt)
            terms = adapter.terms or "not stated by the format's adapter"
            if fmt == "folder" and entry:
                from afo.data.folder import terms_of

                terms = terms_of(entry) or "not stated: the folder's dataset.yaml has no `terms:`"
            angle = visual_angle(entry) if entry else None
        out.append(DatasetCard(dataset, fmt, terms, records[0].modality, sorted(r.subject for r in records), angle))
    return out


def _backbone(record: Any, licence: str | None) -> dict[str, Any]:
    if licence is None:
        if record.weights_file:
            licence = "of the local weights file: not recorded (afo export --backbone-licence)"
        elif record.pretrained:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(record.name)
            licence = getattr(cfg, "license", None) or "not in timm's record"
        else:
            licence = "none: random initialisation (no pretrained weights)"
    return {
        "name": record.name,
        "layers": list(record.layers),
        "resolution": record.resolution,
        "model_kwargs": dict(record.model_kwargs),
        "weights": record.weights_source,
        "weights_sha256": record.weights_sha256,
        "licence": licence,
    }


def _scores(path: str | Path, subjects: list[str]) -> list[dict[str, Any]]:
    """The summary's rows over all ROIs (roi = all) of the model's subjects, the columns the card defines."""
    import pandas as pd

    from afo.card import SCORE_DEFINITIONS

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--summary {path}: no such file; give results/encoding/<model>/summary.csv")
    table = pd.read_csv(path, dtype={"subject": str})
    missing = {"dataset", "subject", "roi", "mean_r_test"} - set(table.columns)
    if missing:
        raise UserError(f"--summary {path}: not an evaluation summary (no {sorted(missing)} columns)")
    rows = table[(table["roi"] == "all") & (table["dataset"] + "/" + table["subject"]).isin(subjects)]
    if rows.empty:
        raise UserError(
            f"--summary {path}: no row (roi all) for any of the model's subjects {subjects}; give this model's summary"
        )
    columns = [c for c in SCORE_DEFINITIONS if c in rows.columns and rows[c].notna().any()]
    out = []
    for row in rows.sort_values(["dataset", "subject"]).itertuples(index=False):
        values = row._asdict()
        item: dict[str, Any] = {"dataset": values["dataset"], "subject": values["subject"]}
        for c in columns:
            v = values[c]
            item[c] = (
                None
                if isinstance(v, float) and math.isnan(v)
                else (round(float(v), 4) if isinstance(v, float) else int(v))
            )
        out.append(item)
    return out
