"""EncodingModel: shapes, TopyNeck semantics, ablation switches, neck MLP transfer, a tiny fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afo.model import (
    CoordinateFrame,
    CoreOutput,
    EncodingModel,
    SinusoidalPE,
    bilinear_corners,
    fit_rescale,
    reference_readout,
    subject_frame,
)
from afo.model.retina import LayerSelector, RetinaMapper

VIT_LIKE = [(12, 6, 6)] * 3
CNN_LIKE = [(4, 10, 10), (8, 5, 5), (16, 3, 3)]
SMALL = dict(conv_width=8, out_dim=6, n_convs=2, kernel_size=3, pe_frequencies=4, mlp_width=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _coords(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 40, size=(n, 3)).astype(np.float32)


def _model(layer_shapes=VIT_LIKE, subjects=(("s1", 20), ("s2", 13)), seed=0, **kw) -> EncodingModel:
    torch.manual_seed(seed)
    coords = {name: _coords(n, i) for i, (name, n) in enumerate(subjects)}
    return EncodingModel(layer_shapes, coords, **{**SMALL, **kw})


def _features(layer_shapes, B=2, seed=1, dtype=torch.float16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, c, h, w, generator=g).to(dtype) for c, h, w in layer_shapes]


def _spread_retina(model: EncodingModel) -> None:
    """Give every RetinaMapper a non-trivial map (the zero-initialised last layer puts all voxels at 0)."""
    g = torch.Generator().manual_seed(7)
    for neck in model.necks.values():
        if isinstance(neck.retina_mapper, RetinaMapper):
            last = neck.retina_mapper.mlp[-1]
            with torch.no_grad():
                last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 3)


# -- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_shapes", [VIT_LIKE, CNN_LIKE], ids=["vit-like", "cnn-like"])
def test_shapes(layer_shapes):
    model = _model(layer_shapes)
    feats = _features(layer_shapes, B=3)
    core = model.core(feats)
    assert [tuple(c.shape) for c in core] == [(3, 6, h, w) for _, h, w in layer_shapes]
    assert model.subjects == ["s1", "s2"] and model.n_layers == 3 and model.n_voxels("s2") == 13
    out = model(feats, "s1")
    assert out.shape == (3, 20) and out.dtype == torch.float32
    idx = torch.tensor([0, 5, 12])
    assert model.readout(core, "s2", idx).shape == (3, 3)
    assert model.retina("s2", idx).shape == (3, 2)
    assert model.layer_weights("s1").shape == (20, 3)
    assert model.regularizer("s1").shape == ()
    w = model.head_weights("s2")
    assert w.shape == (13, 6) and not w.requires_grad


def test_voxel_index_selects_columns_and_errors():
    model = _model().eval()
    _spread_retina(model)
    feats = _features(VIT_LIKE)
    idx = torch.tensor([3, 0, 19, 3])
    torch.testing.assert_close(model(feats, "s1", idx), model(feats, "s1")[:, idx])
    with pytest.raises(KeyError):
        model(feats, "nobody")
    with pytest.raises(ValueError):
        model(feats[:2], "s1")
    with pytest.raises(ValueError):
        model([f[:, :5] for f in feats], "s1")


def test_awkward_subject_names_survive_state_dict():
    names = (("nsd.subj01", 5), ("a%2Eb", 4), ("a.b", 3), ("train", 2), ("items", 2))
    model = _model(subjects=names)
    assert model.subjects == [name for name, _ in names]
    assert [model.n_voxels(name) for name, _ in names] == [5, 4, 3, 2, 2]
    clone = _model(subjects=names, seed=3)
    clone.load_state_dict(model.state_dict())
    for name, _ in names:
        torch.testing.assert_close(clone.head_weights(name), model.head_weights(name))


def test_core_output_shares_one_pixel_table_across_subjects():
    model = _model(CNN_LIKE).eval()
    _spread_retina(model)
    core = model.core(_features(CNN_LIKE))
    assert isinstance(core, CoreOutput) and isinstance(core, list)
    table = core.pixel_table()
    assert table.shape == (sum(h * w for _, h, w in CNN_LIKE), 2 * 6)
    a, b = model.readout(core, "s1"), model.readout(core, "s2")
    assert core.pixel_table() is table
    torch.testing.assert_close(a, model.readout(list(core), "s1"))  # a plain list works the same
    torch.testing.assert_close(b, model.readout(list(core), "s2"))


def test_positional_encoding():
    coords = torch.tensor([[10.0, 5, 0], [30, 5, 2], [20, 15, 1]])
    offset, scale = fit_rescale(coords, 100.0)
    scaled = (coords - offset) * scale
    assert scaled.min() == 0 and scaled.amax(0).tolist() == [100.0, 50.0, 10.0]  # longest axis -> [0, 100], isotropic
    pe = SinusoidalPE(3, 8, 100.0)
    assert pe(scaled).shape == (3, 48) and pe.out_features == 48
    torch.testing.assert_close(pe.omega[[0, -1]], torch.tensor([1.0, 100.0 ** (-7 / 8)]))
    # One point: nothing to stretch, no division by zero.
    assert fit_rescale(torch.ones(1, 3), 100.0)[1] == 1
    # A voxel's encoding does not depend on which other voxels are asked for with it.
    neck = _model().necks["s1"]
    idx = torch.tensor([4, 2])
    torch.testing.assert_close(neck.encode(idx), neck.encode()[idx])


# -- TopyNeck semantics -------------------------------------------------------------------------------


def test_eta_rows_sum_to_one_and_regularizer():
    model = _model()
    _spread_retina(model)
    for neck in model.necks.values():  # a non-uniform selector too
        with torch.no_grad():
            neck.layer_selector.mlp[-1].weight.normal_(0, 3)
    eta = model.layer_weights("s1")
    torch.testing.assert_close(eta.sum(-1), torch.ones(20))
    assert (eta >= 0).all()
    expected = (eta * eta.log()).sum(-1).mean()
    torch.testing.assert_close(model.regularizer("s1"), expected)
    # At initialisation eta is uniform, the regulariser its minimum -log L.
    fresh = _model()
    torch.testing.assert_close(fresh.regularizer("s2"), -torch.log(torch.tensor(3.0)))


def test_u_within_bounds_even_with_jitter():
    model = _model(sigma=0.5)
    for neck in model.necks.values():  # saturate the map against the border
        with torch.no_grad():
            neck.retina_mapper.mlp[-1].weight.normal_(0, 100)
    u = model.retina("s1")
    assert u.abs().max() <= 1.0 and u.abs().max() > 0.99
    jittered = model.necks["s1"].retina(jitter=True)
    assert jittered.abs().max() <= 1.0
    assert not torch.equal(jittered, u)


def test_jitter_only_in_training():
    model = _model(sigma=0.05)
    _spread_retina(model)
    feats = _features(VIT_LIKE)
    model.eval()
    with torch.no_grad():
        a, b = model(feats, "s1"), model(feats, "s1")
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(feats, "s1"), model(feats, "s1")
    assert not torch.equal(c, d) and not torch.equal(c, a)
    # retina() never jitters, whatever the mode.
    assert torch.equal(model.retina("s1"), model.retina("s1"))
    no_sigma = _model(sigma=0.0).train()
    assert torch.equal(no_sigma(feats, "s2"), no_sigma(feats, "s2"))


def test_model_readout_equals_reference():
    """The model's readout path equals grid_sample on the core output with the model's own u, eta, q, head."""
    model = _model(CNN_LIKE, readout_chunk=4).eval()
    _spread_retina(model)
    feats = _features(CNN_LIKE, dtype=torch.float32)
    core = model.core(feats)
    idx = torch.tensor([1, 7, 2, 11, 12, 0])
    neck, head = model.necks["s2"], model.heads["s2"]
    u, eta, q = model.retina("s2", idx), model.layer_weights("s2", idx), neck.global_features(core)
    ref = reference_readout(core, u, eta, *head.params(idx), global_features=q)
    out = model.readout(core, "s2", idx)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # Chunked (recomputed in backward) and unchunked give the same gradients.
    g1 = torch.autograd.grad(out.sum(), list(model.parameters()), allow_unused=True)
    model.readout_chunk = None
    g2 = torch.autograd.grad(model(feats, "s2", idx).sum(), list(model.parameters()), allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- ablation switches --------------------------------------------------------------------------------


def test_frozen_retina_mapper():
    model = _model(retina_mapper="frozen", sigma=0.1).train()
    assert torch.equal(model.retina("s1"), torch.zeros(20, 2))
    assert sum(p.numel() for n in model.necks.values() for p in n.retina_mapper.parameters()) == 0
    feats = _features(VIT_LIKE)
    assert torch.equal(model(feats, "s1"), model(feats, "s1"))  # no jitter around the fixed centre
    assert "retina_mapper" not in model.neck_mlp_state()["s1"]


def test_uniform_layer_selector():
    model = _model(layer_selector="uniform")
    torch.testing.assert_close(model.layer_weights("s2"), torch.full((13, 3), 1 / 3))
    assert model.regularizer("s2").item() == 0.0
    assert sum(p.numel() for n in model.necks.values() for p in n.layer_selector.parameters()) == 0


def test_hard_layer_selector_is_one_hot_with_straight_through_gradient():
    model = _model(layer_selector="hard")
    for neck in model.necks.values():
        with torch.no_grad():
            neck.layer_selector.mlp[-1].weight.normal_(0, 3)
    eta = model.layer_weights("s1")
    assert set(eta.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(eta.sum(-1), torch.ones(20))
    assert eta.detach().argmax(-1).unique().numel() > 1  # different voxels pick different layers
    assert model.regularizer("s1").item() == 0.0
    model(_features(VIT_LIKE), "s1").square().sum().backward()
    grad = model.necks["s1"].layer_selector.mlp[-1].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_single_is_the_old_name_of_the_hard_selector():
    """Config and model files written before the rename say "single": the same one-hot selector."""
    old, new = _model(layer_selector="single", seed=2), _model(layer_selector="hard", seed=2)
    for name in ("s1", "s2"):
        assert old.necks[name].selector_mode == "hard" and old.necks[name].layer_selector.hard
    new.load_state_dict(old.state_dict())
    torch.testing.assert_close(old.layer_weights("s1"), new.layer_weights("s1"))


def test_global_pool_off_reads_only_the_bilinear_footprint():
    """Without GlobalPool a voxel's output depends on the 4L pixels around u and nothing else; with it,
    a change anywhere in the map reaches every voxel through the avg/max pool."""
    feats = _features(VIT_LIKE, dtype=torch.float32)
    for global_pool in (False, True):
        model = _model(global_pool=global_pool).eval()
        _spread_retina(model)
        core = [c.detach() for c in model.core(feats)]
        _, h, w = VIT_LIKE[0]
        footprint = torch.zeros(h * w, dtype=torch.bool)
        index, weight = bilinear_corners(model.retina("s1").detach(), h, w)
        footprint[index[weight > 0]] = True
        far = int((~footprint).nonzero()[0])  # a pixel no voxel reads
        perturbed = [c.clone() for c in core]
        for c in perturbed:
            c.view(*c.shape[:2], -1)[:, :, far] += 10.0
        with torch.no_grad():
            before, after = model.readout(core, "s1"), model.readout(perturbed, "s1")
        if global_pool:
            assert not torch.allclose(before, after)
        else:
            assert model.necks["s1"].global_mlps is None
            torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_bad_switches_rejected():
    with pytest.raises(ValueError):
        _model(retina_mapper="fixed")
    with pytest.raises(ValueError):
        _model(layer_selector="argmax")
    with pytest.raises(ValueError):
        _model(kernel_size=4)


# -- pre-trained neck MLPs (paper 4.6) ----------------------------------------------------------------


def test_neck_mlps_transfer_per_subject_and_freeze(tmp_path):
    source = _model(seed=0)
    _spread_retina(source)
    path = tmp_path / "neck.pt"
    torch.save(source.neck_mlp_state(), path)
    target = _model(seed=1)
    target.load_neck_mlps(torch.load(path), freeze=True)
    for s in ("s1", "s2"):
        torch.testing.assert_close(target.retina(s), source.retina(s))
        torch.testing.assert_close(target.layer_weights(s), source.layer_weights(s))
        for mlp in target.necks[s].mlps().values():
            assert all(not p.requires_grad for p in mlp.parameters())
    assert all(p.requires_grad for p in target.conv_blocks.parameters())
    assert all(p.requires_grad for p in target.heads.parameters())
    target(_features(VIT_LIKE), "s1").sum().backward()
    assert all(p.grad is None for p in target.necks["s1"].retina_mapper.parameters())
    assert target.heads["s1"].weight.grad is not None


def test_neck_mlps_single_subject_state_applies_to_all_and_mismatch_fails():
    single = _model(subjects=(("solo", 9),), seed=4)
    _spread_retina(single)
    target = _model(seed=5)
    target.load_neck_mlps(single.neck_mlp_state(), freeze=False)
    solo = single.necks["solo"].retina_mapper.mlp.state_dict()
    for s in ("s1", "s2"):
        for k, v in target.necks[s].retina_mapper.mlp.state_dict().items():
            torch.testing.assert_close(v, solo[k])
        assert all(p.requires_grad for p in target.necks[s].parameters())
    with pytest.raises(ValueError):  # a RetinaMapper offered to a FrozenRM model
        _model(retina_mapper="frozen").load_neck_mlps(single.neck_mlp_state())
    with pytest.raises(KeyError):  # two subjects, neither matching
        _model(subjects=(("x", 3), ("y", 3))).load_neck_mlps(target.neck_mlp_state())


# -- coordinate frames (one per subject, whatever subset a model holds) -------------------------------


def _spread_selector(model: EncodingModel) -> None:
    """A non-uniform LayerSelector (the zero-initialised last layer gives every voxel eta = 1/L)."""
    g = torch.Generator().manual_seed(8)
    for neck in model.necks.values():
        if isinstance(neck.layer_selector, LayerSelector):
            last = neck.layer_selector.mlp[-1]
            with torch.no_grad():
                last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 3)


def _compact_subset(coords: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` voxels nearest to the first one: a compact ROI, as a stage-1 model holds."""
    return np.argsort(np.linalg.norm(coords - coords[0], axis=1))[:n]


def test_subject_frame():
    coords = np.array([[10.0, 5, 0], [30, 5, 2], [20, 15, 1]], dtype=np.float32)
    frame = subject_frame(coords)
    assert isinstance(frame, CoordinateFrame)
    assert frame.lo.tolist() == [10, 5, 0] and frame.hi.tolist() == [30, 15, 2]
    offset, scale = frame.rescale(100.0)
    assert offset.tolist() == [10, 5, 0] and scale.item() == 5.0
    # A subset's frame is the frame of the subset only (why the training code must use all voxels).
    assert subject_frame(coords[:2]).hi.tolist() == [30, 5, 2]
    with pytest.raises(ValueError):
        subject_frame(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        subject_frame(np.array([[0.0, np.nan, 0]]))


def test_stage1_subset_reads_the_frozen_neck_of_the_all_voxel_model_unchanged():
    """Paper 4.6 / the recipe's stage 1: a model of one compact ROI loads the RetinaMapper/LayerSelector of
    the all-voxel model; with both built in the subject's frame, u and eta of those voxels are unchanged."""
    full = {"s1": _coords(40, 0), "s2": _coords(30, 1)}
    frames = {name: subject_frame(c) for name, c in full.items()}
    torch.manual_seed(0)
    source = EncodingModel(VIT_LIKE, full, **SMALL, frames=frames)
    _spread_retina(source)
    _spread_selector(source)
    roi = {name: _compact_subset(c, 6) for name, c in full.items()}
    torch.manual_seed(1)
    target = EncodingModel(VIT_LIKE, {n: full[n][roi[n]] for n in full}, **SMALL, frames=frames)
    target.load_neck_mlps(source.neck_mlp_state(), freeze=True)
    for name in full:
        idx = torch.as_tensor(roi[name])
        torch.testing.assert_close(target.retina(name), source.retina(name, idx))
        torch.testing.assert_close(target.layer_weights(name), source.layer_weights(name, idx))
    u_source = source.retina("s1", torch.as_tensor(roi["s1"]))
    assert u_source.std(0).min() > 0  # a spread map, so equality says something

    # Without the subject's frame the subset is stretched over [0, max_period]: loading is refused ...
    unframed = EncodingModel(VIT_LIKE, {n: full[n][roi[n]] for n in full}, **SMALL)
    with pytest.raises(ValueError, match="coordinate frame"):
        unframed.load_neck_mlps(source.neck_mlp_state())
    # ... because the map it would read is scrambled (a state without frames, as before this check).
    legacy = {s: {k: v for k, v in e.items() if k != "frame"} for s, e in source.neck_mlp_state().items()}
    unframed.load_neck_mlps(legacy)
    assert (unframed.retina("s1") - u_source).abs().max() > 0.1


def test_shared_neck_mlps_are_read_in_each_subjects_own_frame():
    """One subject's MLPs copied into all (paper 4.6): each target subject keeps its own frame."""
    single = _model(subjects=(("solo", 9),), seed=4)
    _spread_retina(single)
    full = {"s1": _coords(20, 5), "s2": _coords(15, 6) * 2 + 50}
    frames = {name: subject_frame(c) for name, c in full.items()}
    target = EncodingModel(VIT_LIKE, {n: c[:7] for n, c in full.items()}, **SMALL, frames=frames)
    before = {n: target.necks[n].frame_rescale() for n in full}
    target.load_neck_mlps(single.neck_mlp_state())
    for name in full:
        neck = target.necks[name]
        torch.testing.assert_close(neck.frame_rescale(), before[name])
        torch.testing.assert_close(neck.frame_rescale()["offset"], frames[name].lo)
        torch.testing.assert_close(target.retina(name), single.necks["solo"].retina_mapper(neck.encode()))


def test_frame_travels_in_the_state_dict(tmp_path):
    """A model file rebuilt from its coordinates alone (afo.training.modelfile.load_model) gets its frame back."""
    full = _coords(30, 2)
    subset = full[_compact_subset(full, 5)]
    model = EncodingModel(VIT_LIKE, {"s": subset}, **SMALL, frames={"s": subject_frame(full)})
    _spread_retina(model)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    rebuilt = EncodingModel(VIT_LIKE, {"s": subset}, **SMALL)  # frame of the subset, until loaded
    assert not torch.allclose(rebuilt.necks["s"].encode(), model.necks["s"].encode())
    rebuilt.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    torch.testing.assert_close(rebuilt.necks["s"].encode(), model.necks["s"].encode())
    torch.testing.assert_close(rebuilt.retina("s"), model.retina("s"))


def test_bad_frames_rejected():
    a, b = _coords(10, 0), _coords(10, 1) + 100
    with pytest.raises(ValueError, match="subject 's1'.*outside the subject's frame"):  # another subject's frame
        EncodingModel(VIT_LIKE, {"s1": a}, **SMALL, frames={"s1": subject_frame(b)})
    with pytest.raises(ValueError, match="without subjects"):
        EncodingModel(VIT_LIKE, {"s1": a, "s2": b}, **SMALL, frames={"s1": subject_frame(a)})
    with pytest.raises(ValueError, match="3 axes"):
        EncodingModel(VIT_LIKE, {"s1": a}, **SMALL, frames={"s1": (np.zeros(2), np.ones(2))})
    # A (lo, hi) pair of arrays is a frame too.
    pair = EncodingModel(VIT_LIKE, {"s1": a}, **SMALL, frames={"s1": (a.min(0), a.max(0))})
    torch.testing.assert_close(
        pair.necks["s1"].encode(), EncodingModel(VIT_LIKE, {"s1": a}, **SMALL).necks["s1"].encode()
    )


# -- learning -----------------------------------------------------------------------------------------


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = torch.arange(-4, 5, dtype=x.dtype)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k2 = (k[:, None] * k[None, :]) / k.sum() ** 2
    return F.conv2d(x, k2.expand(x.shape[1], 1, 9, 9), padding=4, groups=x.shape[1])


def test_fits_voxels_that_read_known_places():
    """Each voxel's response is one channel of layer 1 at a known pixel. The inputs are blurred noise, so
    the loss is smooth in u, and the model is made identifiable (1x1 convs, no global pool: a voxel sees
    only its bilinear footprint). Training must drive the loss down, move every voxel onto its pixel and
    select layer 1. The problem is non-convex (about 1 seed in 7 ends in a local minimum), hence the fixed seed."""
    torch.manual_seed(0)
    shapes, B = [(3, 8, 8), (3, 8, 8)], 64
    feats = [_blur(torch.randn(B, c, h, w), 2.0) for c, h, w in shapes]
    feats = [f / f.std() for f in feats]
    targets = [(1, 6, 6), (0, 1, 2), (2, 5, 1)]  # (channel, row, col) of layer 1
    y = torch.stack([feats[1][:, c, r, col] for c, r, col in targets], dim=1)  # [B, 3]
    coords = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0]], dtype=np.float32)
    model = EncodingModel(
        shapes,
        {"s": coords},
        conv_width=8,
        out_dim=8,
        n_convs=1,
        kernel_size=1,
        pe_frequencies=4,
        mlp_width=16,
        sigma=0.0,
        global_pool=False,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        loss = F.mse_loss(model(feats, "s"), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.05 * np.mean(losses[:5])
    u = model.retina("s").detach()
    target_u = torch.tensor([[(2 * col + 1) / 8 - 1, (2 * row + 1) / 8 - 1] for _, row, col in targets])
    assert (u - target_u).abs().max() * 8 / 2 < 0.5  # within half a pixel
    assert model.layer_weights("s").argmax(-1).tolist() == [1, 1, 1]


def test_model_defaults_live_in_the_constructor_and_model_config_reads_them():
    from dataclasses import fields

    from afo.model import model_defaults
    from afo.training.modelfile import ModelConfig

    defaults = model_defaults()
    assert defaults["conv_width"] == 768 and defaults["layer_selector"] == "learned"  # the paper's model
    # Every setting of the model is a ModelConfig field with the constructor's default, and nothing else is.
    assert {f.name: f.default for f in fields(ModelConfig)} == defaults
