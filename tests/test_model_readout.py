"""The efficient readout equals the grid_sample reference (values and gradients) and does not
materialise batch x voxels x layers x D."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from afo.model.readout import bilinear_corners, efficient_readout, reference_readout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


VIT_LIKE = [(6, 6)] * 3  # equal layer sizes
CNN_LIKE = [(9, 7), (5, 4), (2, 3), (1, 1)]  # different sizes, non-square, a 1x1 map


def _problem(sizes, dtype, n=40, B=3, D=5, global_pool=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = len(sizes)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    features = [leaf(B, D, h, w) for h, w in sizes]
    # Positions everywhere, including near and beyond the border (zero padding) and exactly on it.
    u = torch.rand(n, 2, generator=g, dtype=dtype) * 2.8 - 1.4
    u[:4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.999, -0.999], [-1.02, 0.3]], dtype=dtype)
    u.requires_grad_()
    eta = torch.randn(n, L, generator=g, dtype=dtype).softmax(-1).requires_grad_()
    weight, bias = leaf(n, D), leaf(n)
    q = leaf(B, L, D) if global_pool else None
    return features, u, eta, weight, bias, q


def _value_and_grads(fn, features, u, eta, weight, bias, q, **kw):
    out = fn(features, u, eta, weight, bias, global_features=q, **kw)
    # A non-uniform upstream gradient, so every output element's gradient path is exercised.
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    inputs = [*features, u, eta, weight, bias] + ([q] if q is not None else [])
    grads = torch.autograd.grad((out * probe).sum(), inputs)
    return out, grads


@pytest.mark.parametrize("sizes", [VIT_LIKE, CNN_LIKE], ids=["vit-like", "cnn-like"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("chunk", [None, 7], ids=["all", "chunk7"])
@pytest.mark.parametrize("global_pool", [True, False], ids=["gp", "nogp"])
def test_efficient_equals_reference(sizes, dtype, tol, chunk, global_pool):
    problem = _problem(sizes, dtype, global_pool=global_pool)
    ref, ref_grads = _value_and_grads(reference_readout, *problem)
    eff, eff_grads = _value_and_grads(efficient_readout, *problem, chunk=chunk)
    assert eff.shape == ref.shape == (3, 40) and eff.dtype == dtype
    torch.testing.assert_close(eff, ref, rtol=tol, atol=tol)
    names = [f"feature{l}" for l in range(len(sizes))] + ["u", "eta", "weight", "bias", "q"]
    for name, a, b in zip(names, eff_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, name=name: f"grad {name}: {m}")


def test_bilinear_corners_match_grid_sample():
    """Sampling a map of one-hot images recovers exactly the corner weights."""
    h, w, n = 4, 5, 30
    u = torch.rand(n, 2, dtype=torch.float64) * 2.4 - 1.2
    index, weight = bilinear_corners(u, h, w)
    eye = torch.eye(h * w, dtype=torch.float64).view(1, h * w, h, w)  # channel k = pixel k
    sampled = F.grid_sample(eye, u.view(1, 1, n, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
    dense = torch.zeros(n, h * w, dtype=torch.float64).scatter_add_(1, index, weight)
    torch.testing.assert_close(dense, sampled[0, :, 0, :].T)
    assert (index >= 0).all() and (index < h * w).all()


def _saved_numel(fn, *args, **kw) -> int:
    """Elements autograd keeps for backward (a tensor saved by several nodes counted once)."""
    seen: dict[tuple, int] = {}

    def pack(t):
        seen[(t.data_ptr(), t.shape, t.stride())] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kw)
    return sum(seen.values())


def test_efficient_does_not_materialise_b_n_l_d():
    """What autograd keeps for backward, per image of the batch (the part that grows with B; the rest is
    O(n L) per-voxel coefficients): the reference keeps >= n*L*D, the efficient form n*D (the mixed
    feature) plus the pixel table, and chunked only the table."""
    sizes, n, D, chunk = [(4, 4)] * 6, 600, 8, 50
    pixels = sum(h * w for h, w in sizes) + len(sizes)  # table rows: every pixel + one global row per layer

    def per_image(fn, **kw):
        saved = []
        for B in (2, 4):
            features, u, eta, weight, bias, q = _problem(sizes, torch.float32, n=n, B=B, D=D)
            saved.append(_saved_numel(fn, features, u, eta, weight, bias, global_features=q, **kw))
        return (saved[1] - saved[0]) / 2

    assert per_image(reference_readout) >= n * len(sizes) * D
    assert per_image(efficient_readout) <= (n + pixels) * D
    assert per_image(efficient_readout, chunk=chunk) <= pixels * D


def test_empty_voxel_set_and_bad_shapes():
    features, u, eta, weight, bias, q = _problem(VIT_LIKE, torch.float32)
    out = efficient_readout(features, u[:0], eta[:0], weight[:0], bias[:0], global_features=q)
    assert out.shape == (3, 0)
    with pytest.raises(ValueError):
        efficient_readout(features, u, eta[:, :2], weight, bias, global_features=q)
    with pytest.raises(ValueError):
        efficient_readout(features, u, eta, weight, bias, global_features=q, chunk=0)
    with pytest.raises(ValueError):  # a table that is not pixel_table(features)
        efficient_readout(features, u, eta, weight, bias, table=torch.zeros(5, 15))
