"""RF positions in degrees of visual angle: the u -> (eccentricity, polar angle) convention, each dataset's visual
angle (format defaults, config, dataset.yaml) and the degrees in voxels.csv and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from afo.config import ConfigError, load_config
from afo.data.folder import FolderDatasetError, read_dataset_yaml
from afo.data.registry import visual_angle
from afo.evaluation.retinotopy import add_degrees, degrees_to_u, u_to_degrees

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "u, angle",
    [((1, 0), 0.0), ((0, -1), 90.0), ((-1, 0), 180.0), ((0, 1), 270.0), ((0.5, -0.5), 45.0), ((-0.5, 0.5), 225.0)],
    ids=["right", "up (image top, u_y = -1)", "left", "down", "upper right", "lower left"],
)
def test_polar_angle_follows_nsd_with_image_top_up(u, angle):
    ecc, got = u_to_degrees(np.array([u[0]]), np.array([u[1]]), 8.4)
    assert got[0] == pytest.approx(angle)
    assert ecc[0] == pytest.approx(4.2 * np.hypot(*u))


def test_degrees_round_trip_and_unknown_angle_is_empty():
    rng = np.random.default_rng(0)
    ux, uy = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50)
    back = degrees_to_u(*u_to_degrees(ux, uy, 10.0), 10.0)
    np.testing.assert_allclose(back, (ux, uy), atol=1e-12)
    assert np.isnan(u_to_degrees(ux, uy, None)).all()


def test_add_degrees_per_dataset():
    table = pd.DataFrame({"dataset": ["nsd", "nsd", "synth"], "u_x": [1.0, 0.0, 1.0], "u_y": [0.0, 1.0, 0.0]})
    out = add_degrees(table, {"nsd": 8.4, "synth": None})
    np.testing.assert_allclose(out["ecc_deg"][:2], [4.2, 4.2])
    np.testing.assert_allclose(out["angle_deg"][:2], [0.0, 270.0])
    assert out[["ecc_deg", "angle_deg"]].iloc[2].isna().all()


def test_visual_angle_defaults_config_and_dataset_yaml(tmp_path):
    assert visual_angle({"format": "nsd", "root": "x"}) == 8.4
    assert visual_angle({"format": "things_fmri", "root": "x"}) == 10.0
    for fmt in ("bold5000", "hcp_movie", "things_meg", "things_eeg2", "algonauts2021"):
        assert visual_angle({"format": fmt, "root": "x"}) is None, fmt
    assert visual_angle({"format": "synthetic", "part": "fmri"}) is None
    assert visual_angle({"format": "nsd", "root": "x", "visual_angle": 8}) == 8.0  # the entry wins
    assert visual_angle({"format": "nsd", "root": "x", "visual_angle": None}) is None  # null = image units
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"name": "lab", "modality": "fmri", "visual_angle": 12}))
    assert visual_angle({"format": "folder", "root": str(tmp_path)}) == 12.0
    assert visual_angle({"format": "folder", "root": str(tmp_path), "visual_angle": 6}) == 6.0
    assert visual_angle({"format": "folder", "root": str(tmp_path / "not_there")}) is None
    with pytest.raises(ConfigError, match="positive number"):
        visual_angle({"format": "nsd", "root": "x", "visual_angle": -1})


def test_dataset_yaml_visual_angle_must_be_positive(tmp_path):
    (tmp_path / "dataset.yaml").write_text("name: lab\nmodality: fmri\nvisual_angle: wide\n")
    with pytest.raises(FolderDatasetError, match="visual_angle"):
        read_dataset_yaml(tmp_path)


def test_config_schema_takes_visual_angle(tmp_path):
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["datasets"]["synth_fmri"]["visual_angle"] = 8.4
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert load_config(tmp_path / "c.yaml")["datasets"]["synth_fmri"]["visual_angle"] == 8.4
    cfg["datasets"]["synth_fmri"]["visual_angle"] = 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="visual_angle"):
        load_config(tmp_path / "c.yaml")


def test_retina_map_and_brain_maps_in_degrees(tmp_path):
    from afo.figures.probing import brain_maps, retina_maps

    rng = np.random.default_rng(0)
    n = 30
    u = rng.uniform(-1, 1, (n, 2))
    table = pd.DataFrame(
        {
            "dataset": "nsd",
            "subject": "subj01",
            "voxel": np.arange(n),
            "roi": "V1",
            "x": rng.normal(size=n),
            "y": rng.normal(size=n),
            "z": rng.normal(size=n),
            "u_x": u[:, 0],
            "u_y": u[:, 1],
            "layer": rng.integers(0, 2, n),
            "eta_0": 0.5,
            "eta_1": 0.5,
            "r_test": rng.uniform(0, 1, n),
            "r_test_norm": np.nan,
            "dataset_roi": "V1",
        }
    )
    add_degrees(table, {"nsd": 8.4}).to_csv(tmp_path / "voxels.csv", index=False)
    assert [p.name for p in retina_maps(tmp_path / "voxels.csv", tmp_path / "rm", "afo", None, {"nsd": 8.4})] == [
        "nsd__subj01.png"
    ]
    brain_maps(tmp_path / "voxels.csv", {}, tmp_path / "bm", tmp_path / "nifti", "afo")
    assert {"nsd__subj01.ecc_deg.png", "nsd__subj01.angle_deg.png"} <= {p.name for p in (tmp_path / "bm").iterdir()}
