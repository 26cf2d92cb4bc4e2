"""Model files and the greedy soup.

A model file (``model.pt``) holds everything needed to rebuild and use a trained model, in types that
``torch.load(..., weights_only=True)`` accepts: constructor arguments, per-subject coordinates and voxel
indices, the state dict, and how it was made (validation score, soup members).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from afo.model import EncodingModel

MODEL_FORMAT = "afo-encoding-model"
MODEL_VERSION = 1


def save_model(path: str | Path, model: EncodingModel, model_args: dict, voxels: dict[str, torch.Tensor], info: dict) -> None:
    """Write a model file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "layer_shapes": [list(s) for s in model.layer_shapes],
        "model_args": dict(model_args),
        "subject_coords": {k: model._neck(k).coords.detach().cpu() for k in model.subjects},
        "voxels": {k: torch.as_tensor(v, dtype=torch.long) for k, v in voxels.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "info": info,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[EncodingModel, dict]:
    """Rebuild a model from a model file; returns (model in eval mode, the file's payload without weights)."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not an afo model file (format {payload.get('format')!r})")
    model = EncodingModel([tuple(s) for s in payload["layer_shapes"]], payload["subject_coords"], **payload["model_args"])
    model.load_state_dict(payload.pop("state_dict"))
    model.eval()
    return model, payload


def _average(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(first.dtype)
        else:  # integer buffers (counters) are not averaged
            out[key] = first.clone()
    return out


def greedy_soup(
    candidates: Sequence[tuple[float, dict[str, torch.Tensor]]], score: Callable[[dict[str, torch.Tensor]], float]
) -> tuple[dict[str, torch.Tensor], list[int], float]:
    """Greedy soup (Wortsman et al. 2022): sort by validation score, start from the best, add each next
    checkpoint to the uniform average only if the held-out score strictly improves (a single pass).

    candidates: (validation score, state dict) pairs. ``score(state) -> float`` evaluates a state on the
    held-out set (higher is better). Returns (soup state, indices of the members in ``candidates``, soup score).
    """
    if not candidates:
        raise ValueError("greedy soup needs at least one checkpoint")
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i][0])
    members = [order[0]]
    best_state = candidates[order[0]][1]
    best = score(best_state)
    for i in order[1:]:
        trial_state = _average([candidates[j][1] for j in members + [i]])
        trial = score(trial_state)
        if trial > best:
            members.append(i)
            best_state, best = trial_state, trial
    return best_state, members, best
