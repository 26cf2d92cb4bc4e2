"""The greedy soup (Wortsman et al. 2022) of a job's top-k checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

State = dict[str, torch.Tensor]


def average_states(states: Sequence[State]) -> State:
    """Uniform average of state dicts (in float64, cast back); integer buffers (counters) are taken from the first."""
    out = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def greedy_soup(
    candidates: Sequence[tuple[float, State]], score: Callable[[State], float]
) -> tuple[State, list[int], float]:
    """Sort by validation score, start from the best, add each next checkpoint to the uniform average only if
    the held-out score strictly improves (a single pass).

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
        trial_state = average_states([candidates[j][1] for j in members + [i]])
        trial = score(trial_state)
        if trial > best:
            members.append(i)
            best_state, best = trial_state, trial
    return best_state, members, best


def checkpoint_model_state(path: str | Path, prefix: str = "model.") -> State:
    """The encoding model's weights in a Lightning checkpoint of the task (its ``model.`` entries, prefix removed)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def soup_checkpoints(topk: Mapping[Path, float], score: Callable[[State], float]) -> tuple[State, dict]:
    """Greedy soup of checkpoint files (path -> validation score, in the order they were saved).

    Returns (soup state, summary: val_r of the soup, best single checkpoint's, members, candidates).
    """
    candidates = [(float(s), checkpoint_model_state(p)) for p, s in topk.items()]
    state, members, soup_score = greedy_soup(candidates, score)
    return state, {
        "val_r": soup_score,
        "val_r_best_checkpoint": max(c[0] for c in candidates),
        "soup_members": len(members),
        "candidates": len(candidates),
    }
