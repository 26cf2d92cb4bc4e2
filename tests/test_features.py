import h5py
import numpy as np
import pytest
import timm
import torch

from afo.data.folder import prepare
from afo.errors import UserError
from afo.features import BackboneSpec, FeatureCache, create_backbone, extract_features

SPEC = BackboneSpec("vit_tiny_patch16_224", layers=(0, 2), resolution=32, model_kwargs={"patch_size": 8, "depth": 3})


@pytest.fixture
def store(folder_dataset, tmp_path):
    prepare(folder_dataset, tmp_path / "s.h5", image_size=24)
    return tmp_path / "s.h5"


def test_cache_shapes_dtype_and_rows(store, tmp_path):
    report = extract_features(store, tmp_path / "f.h5", SPEC, batch_size=5)
    assert report["layer_shapes"] == [(192, 4, 4), (192, 4, 4)]
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["layer_0"].dtype == np.float16 and f["layer_1"].shape == (24, 192, 4, 4)
        assert f.attrs["backbone"] == SPEC.name and f.attrs["pretrained_source"] == "random-init"
    cache = FeatureCache(tmp_path / "f.h5")
    assert cache.layer_shapes == [(192, 4, 4), (192, 4, 4)] and cache.n_images == 24
    full = cache.load()
    rows = np.array([7, 3, 3, 20])  # unsorted with a repeat: returned in the asked order
    part = cache.load(rows)
    for a, b in zip(full, part):
        torch.testing.assert_close(a[rows], b)
    assert not list(tmp_path.glob(".f.h5.*"))  # the temporary was renamed


def test_backbone_is_frozen_and_deterministic(store, tmp_path):
    torch.manual_seed(1)
    extract_features(store, tmp_path / "a.h5", SPEC)
    # Random-init weights come from a fixed seed, whatever the caller's random state.
    torch.manual_seed(2)
    extract_features(store, tmp_path / "b.h5", SPEC)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        np.testing.assert_array_equal(a["layer_1"][:], b["layer_1"][:])
    model = create_backbone(SPEC)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_local_weights_file_is_loaded(tmp_path):
    source = timm.create_model("resnet18", pretrained=False, num_classes=0)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_backbone(
        BackboneSpec("resnet18", layers=(1, 2), resolution=32, pretrained_path=str(tmp_path / "w.pth"))
    )
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    # A classifier the backbone is built without (num_classes=0) is dropped, not an error.
    with_head = timm.create_model("resnet18", pretrained=False)
    torch.save(with_head.state_dict(), tmp_path / "head.pth")
    model = create_backbone(
        BackboneSpec("resnet18", layers=(1, 2), resolution=32, pretrained_path=str(tmp_path / "head.pth"))
    )
    torch.testing.assert_close(model.layer4[1].conv2.weight, with_head.layer4[1].conv2.weight)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="backbone.pretrained_path: .*nope.pth does not exist"):
        create_backbone(
            BackboneSpec("resnet18", layers=(1,), resolution=32, pretrained_path=str(tmp_path / "nope.pth"))
        )


def test_cnn_layers_of_different_sizes(store, tmp_path):
    report = extract_features(store, tmp_path / "f.h5", BackboneSpec("resnet18", layers=(1, 3), resolution=32))
    assert report["layer_shapes"] == [(64, 8, 8), (256, 2, 2)]
