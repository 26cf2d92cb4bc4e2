"""How a voxel is read out: bilinear sample of every layer at ``u``, global feature added, layers
mixed by ``eta``, then the voxel's own linear head.

For a batch ``b`` and voxel ``n`` (``F_l`` the layer-``l`` map ``[B, D, h_l, w_l]``, ``q_l`` its global
feature ``[B, D]``, ``w_n, b_n`` the voxel's head)::

    m[b, n]   = sum_l eta[n, l] * (bilinear(F_l[b], u_n) + q_l[b])          # [D]
    out[b, n] = mean_d(m[b, n] * w_n) + b_n                                  # the authors' "mean is critical"

Two implementations, numerically equal (see ``tests/test_model_readout.py``):

* :func:`reference_readout` is the straightforward form: ``F.grid_sample`` per layer, which
  materialises (and keeps for backward) ``B x n x L x D`` values, as in the authors' code.
* :func:`efficient_readout` never builds ``B x n x L x D``. Bilinear sampling with zero padding is a
  weighted sum of (at most) 4 pixels, so the eta-mixed feature is a sparse weighted sum over the
  ``4 L`` neighbour pixels of the voxel plus a small dense term::

      m[b, n] = sum_{l, c} (eta[n, l] * a[n, l, c]) * F_l[b, :, p[n, l, c]] + sum_l eta[n, l] * q_l[b]

  where ``p[n, l, c]`` and ``a[n, l, c]`` are the four corner pixels of ``u_n`` on layer ``l``'s grid and
  their bilinear weights (zero for a corner outside the map: ``padding_mode='zeros'``). The weights use
  grid_sample's own unnormalisation (``align_corners=False``: ``ix = ((x + 1) W - 1) / 2``), so the two
  forms agree up to float summation order.

  With every layer flattened into one table whose rows are pixels (:func:`pixel_table`,
  ``[sum_l h_l w_l, B * D]``; subject-free, so built once per batch) the first sum is a single
  ``F.embedding_bag(mode='sum', per_sample_weights=eta * a)``: a fused gather-and-weighted-sum whose
  output is just ``m`` (``n x B x D``, L times smaller than the reference) and whose backward gives the
  gradients of the features and of ``eta * a`` (hence of ``u`` and ``eta``) exactly. The global term is
  the matmul ``eta @ q`` added in place.

  With ``chunk`` set, voxels go in chunks and each chunk is recomputed in backward (activation
  checkpointing), so at most ``chunk x B x D`` values live at once besides the table; without gradients
  chunking bounds inference memory the same way. ``embedding_bag``'s backward in sum mode is
  deterministic on CUDA, unlike ``grid_sample``'s: a bonus for reproducible training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _check(
    features: Sequence[Tensor], u: Tensor, eta: Tensor, weight: Tensor, bias: Tensor, global_features: Tensor | None
) -> None:
    if len(features) == 0:
        raise ValueError("at least one feature layer is needed")
    B, D = features[0].shape[:2]
    L, n = len(features), u.shape[0]
    for f in features:
        if f.ndim != 4 or f.shape[:2] != (B, D):
            raise ValueError(f"every layer must be [B={B}, D={D}, h, w], got {tuple(f.shape)}")
    if u.shape != (n, 2) or eta.shape != (n, L) or weight.shape != (n, D) or bias.shape != (n,):
        raise ValueError(
            f"shape mismatch: u {tuple(u.shape)} (want [{n}, 2]), eta {tuple(eta.shape)} (want [{n}, {L}]), "
            f"weight {tuple(weight.shape)} (want [{n}, {D}]), bias {tuple(bias.shape)} (want [{n}])"
        )
    if global_features is not None and global_features.shape != (B, L, D):
        raise ValueError(f"global_features must be [B={B}, L={L}, D={D}], got {tuple(global_features.shape)}")


def reference_readout(
    features: Sequence[Tensor],
    u: Tensor,
    eta: Tensor,
    weight: Tensor,
    bias: Tensor,
    global_features: Tensor | None = None,
) -> Tensor:
    """Straightforward readout with ``F.grid_sample`` (materialises ``B x n x L x D``).

    Args:
        features: list over layers of ``[B, D, h_l, w_l]``.
        u: ``[n, 2]`` positions, grid_sample convention (x, y in [-1, 1]; outside reads zeros).
        eta: ``[n, L]`` layer weights.
        weight: ``[n, D]`` and bias ``[n]``: each voxel's linear head.
        global_features: ``[B, L, D]`` global feature ``q_l`` of each layer, or None (w/o GlobalPool).

    Returns:
        ``[B, n]`` predictions.
    """
    _check(features, u, eta, weight, bias, global_features)
    B, n = features[0].shape[0], u.shape[0]
    samples = []
    for f in features:
        grid = u.to(f.dtype).view(1, 1, n, 2).expand(B, 1, n, 2)
        s = F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B, D, 1, n]
        samples.append(s[:, :, 0, :].transpose(1, 2))  # [B, n, D]
    stacked = torch.stack(samples, dim=2)  # [B, n, L, D]
    if global_features is not None:
        stacked = stacked + global_features[:, None]
    m = (eta[None, :, :, None].to(stacked.dtype) * stacked).sum(dim=2)  # [B, n, D]
    return (m * weight).mean(dim=-1) + bias


def bilinear_corners(u: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The 4 pixels bilinear sampling at ``u`` reads on an ``height x width`` map, and their weights.

    Same arithmetic as ``F.grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)``.

    Args:
        u: ``[n, 2]`` positions (x, y), grid_sample convention.

    Returns:
        ``index [n, 4]`` (long, flat ``y * width + x``, clamped into the map) and ``weight [n, 4]``
        (differentiable in ``u``; 0 for a corner outside the map, so its clamped index is never read).
    """
    ix = ((u[:, 0] + 1) * width - 1) / 2
    iy = ((u[:, 1] + 1) * height - 1) / 2
    x0, y0 = ix.detach().floor(), iy.detach().floor()
    tx, ty = ix - x0, iy - y0
    xs = torch.stack((x0, x0 + 1, x0, x0 + 1), dim=1)
    ys = torch.stack((y0, y0, y0 + 1, y0 + 1), dim=1)
    weight = torch.stack(((1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty), dim=1)
    inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    weight = weight * inside.to(weight.dtype)
    index = ys.clamp(0, height - 1).long() * width + xs.clamp(0, width - 1).long()
    return index, weight


def pixel_table(features: Sequence[Tensor]) -> Tensor:
    """Every layer's pixels as rows: ``[sum_l h_l w_l, B * D]`` (row ``offset_l + y * w_l + x`` holds that
    pixel's ``D`` channels for every image of the batch). Subject-free: build once per batch and pass it to
    :func:`efficient_readout` for every subject."""
    B, D = features[0].shape[:2]
    return torch.cat([f.flatten(2).permute(2, 0, 1).reshape(-1, B * D) for f in features], dim=0)


def _mix_and_head(
    index: Tensor, table: Tensor, coef: Tensor, eta: Tensor, global_rows: Tensor | None, weight: Tensor, bias: Tensor
) -> Tensor:
    """One chunk of voxels: the eta-mixed feature ``m [nc, B*D]``, then the per-voxel head -> ``[B, nc]``."""
    nc, D = weight.shape
    m = F.embedding_bag(index, table, per_sample_weights=coef, mode="sum")  # sum_{l,c} eta*a * pixel rows
    if global_rows is not None:
        # + sum_l eta[n, l] q_l: a small matmul; in place is safe, embedding_bag's backward does not need m.
        m = m.addmm_(eta.to(m.dtype), global_rows.to(m.dtype))
    m = m.view(nc, -1, D)  # [nc, B, D]
    return torch.einsum("nbd,nd->bn", m, weight.to(m.dtype)) / D + bias.to(m.dtype)


def efficient_readout(
    features: Sequence[Tensor],
    u: Tensor,
    eta: Tensor,
    weight: Tensor,
    bias: Tensor,
    global_features: Tensor | None = None,
    chunk: int | None = None,
    table: Tensor | None = None,
) -> Tensor:
    """Same result as :func:`reference_readout` without materialising ``B x n x L x D`` (see module doc).

    Args:
        features, u, eta, weight, bias, global_features: as in :func:`reference_readout`.
        chunk: voxels per chunk; with gradients on, each chunk is recomputed in backward (activation
            checkpointing). None = all voxels at once: fastest, keeps ``n x B x D`` for backward.
        table: ``pixel_table(features)`` if already built (several subjects read the same batch);
            None = build it here.

    Returns:
        ``[B, n]`` predictions, in the features' dtype.
    """
    _check(features, u, eta, weight, bias, global_features)
    B, D = features[0].shape[:2]
    n = u.shape[0]
    dtype = features[0].dtype
    if n == 0:
        return features[0].new_zeros(B, 0)
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
    if table is None:
        table = pixel_table(features)
    global_rows = None if global_features is None else global_features.transpose(0, 1).reshape(-1, B * D)  # [L, B*D]

    indices, coefs, offset = [], [], 0
    for l, f in enumerate(features):
        h, w = f.shape[-2:]
        idx, a = bilinear_corners(u, h, w)
        indices.append(idx + offset)
        coefs.append(eta[:, l : l + 1] * a)
        offset += h * w
    if table.shape != (offset, B * D):
        raise ValueError(f"table must be [{offset}, {B * D}] (pixel_table of these features), got {tuple(table.shape)}")
    index = torch.cat(indices, dim=1)  # [n, 4L]
    coef = torch.cat(coefs, dim=1).to(dtype)  # [n, 4L]

    if chunk is None or chunk >= n:
        return _mix_and_head(index, table, coef, eta, global_rows, weight, bias)
    outs = []
    recompute = torch.is_grad_enabled()
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        args = (index[sl], table, coef[sl], eta[sl], global_rows, weight[sl], bias[sl])
        if recompute:
            outs.append(checkpoint(_mix_and_head, *args, use_reentrant=False))
        else:
            outs.append(_mix_and_head(*args))
    return torch.cat(outs, dim=1)
