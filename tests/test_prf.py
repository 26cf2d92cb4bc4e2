"""The RetinaMap against measured pRF maps: NSD's pRF files on a store's voxels, the per-ROI statistics, and the
whole path on a simulated brain written as NSD (betas + pRF maps from the true RFs), trained briefly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from afo.evaluation.prf import angle_difference, circular_r, comparison_table, roi_summary

ROOT = Path(__file__).resolve().parents[1]


def test_circular_r_sees_mirrored_angles():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 360, 200)
    b = (a + rng.normal(0, 10, 200)) % 360
    assert circular_r(a, b) > 0.9
    assert circular_r(a, (360 - b) % 360) < -0.5  # up/down swap: angle -> -angle
    assert circular_r(a, (180 - b) % 360) < -0.5  # left/right swap: angle -> 180 - angle
    np.testing.assert_allclose(angle_difference([350, 10, 90], [10, 350, 270]), [20, 20, 180])


@pytest.fixture(scope="module")
def simulated_nsd(tmp_path_factory):
    from fixtures.nsd_prf import write_simulated_nsd

    from afo.data import nsd
    from afo.simulate import SimulationConfig, simulate

    tmp = tmp_path_factory.mktemp("prf")
    # 686 images + 32 test images x 2 more repeats = 750 trials: one NSD session
    config = {"seed": 1, "n_images": 686, "n_test_images": 32, "n_fmri_subjects": 1, "n_eeg_subjects": 0}
    simulate(tmp / "sim", SimulationConfig.from_dict(config))
    truth = write_simulated_nsd(tmp / "sim" / "fmri", tmp / "nsd")
    nsd.prepare(
        tmp / "nsd",
        tmp / "store.h5",
        image_size=96,
        options={"subjects": [1], "noise_ceiling": "repeats", "roi_sets": ["prf-visualrois"]},
    )
    return tmp, truth


def test_prf_maps_land_on_the_store_voxels(simulated_nsd):
    from afo.data.nsd_prf import prf_table
    from afo.data.store import PreparedStore

    tmp, truth = simulated_nsd
    table = prf_table(tmp / "nsd", tmp / "store.h5").set_index("voxel")
    expected = truth.set_index("store_voxel").sort_index()
    assert len(table) == len(expected)
    np.testing.assert_allclose(table["prf_ecc_deg"], expected["prf_ecc_deg"], rtol=1e-5)
    np.testing.assert_allclose(table["prf_angle_deg"], expected["prf_angle_deg"], rtol=1e-5, atol=1e-3)
    v1 = expected["area"] == "V1"
    assert set(table["visual_roi"][v1.to_numpy()]) == {"V1v", "V1d"}
    with PreparedStore(tmp / "store.h5") as store:
        assert store.info("subj01").n_voxels == len(expected)


@pytest.mark.slow  # trains a model: about a minute on 2 cores
def test_trained_retinamap_recovers_measured_retinotopy(simulated_nsd):
    import torch

    from afo.config import load_config
    from afo.data.nsd_prf import prf_table
    from afo.data.registry import visual_angle
    from afo.evaluation.scores import voxel_table
    from afo.features import BackboneSpec, extract_features
    from afo.training.fit import TrainSpec, fit
    from afo.training.predict import predict_file

    tmp, _ = simulated_nsd
    cfg = load_config(ROOT / "config.yaml")
    stores, caches = {"nsd": tmp / "store.h5"}, {"nsd": tmp / "features.h5"}
    torch.manual_seed(0)
    extract_features(stores["nsd"], caches["nsd"], BackboneSpec.from_config(cfg["backbone"]))
    spec = TrainSpec(
        stores={k: str(v) for k, v in stores.items()},
        features={k: str(v) for k, v in caches.items()},
        model=cfg["model"],
        train={**cfg["train"], "max_epochs": 20, "epoch_fraction": 0.5},
    )
    fit(spec, tmp / "m")
    predict_file(tmp / "m" / "model.pt", stores, caches, ["val", "test"], tmp / "pred.h5", dtype="float32")
    angle = visual_angle({"format": "nsd", "root": str(tmp / "nsd")})
    voxels = voxel_table([(tmp / "m" / "model.pt", tmp / "pred.h5")], stores, visual_angles={"nsd": angle})
    table = comparison_table(voxels, prf_table(tmp / "nsd", stores["nsd"]), "nsd")
    summary = roi_summary(table, min_r2=10).set_index("roi")
    early = summary.loc["all"]
    quadrants = ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d"]
    assert early["n_voxels"] == (table["prf_r2"] >= 10).sum() > 100, summary
    assert early["r_ecc"] >= 0.9, summary
    assert early["median_abs_angle_diff"] < 30, summary
    # per ROI (a quarter field each: ventral = upper, dorsal = lower), where the circular mean is well defined
    assert (summary.loc[quadrants, "circ_r_angle"] >= 0.8).all(), summary
    # the same model against a map swapped up/down or left/right: the orientation checks fail
    for swapped in ((360 - table["prf_angle_deg"]) % 360, (180 - table["prf_angle_deg"]) % 360):
        flipped = roi_summary(table.assign(prf_angle_deg=swapped), min_r2=10).set_index("roi")
        assert flipped.loc["all", "median_abs_angle_diff"] > 45, flipped
        assert (flipped.loc[quadrants, "circ_r_angle"] < 0).all(), flipped


@pytest.mark.slow  # the workflow on the simulated NSD download up to naivemix's pRF comparison: about 2 minutes
def test_workflow_writes_the_prf_comparison(simulated_nsd):
    import json

    import pandas as pd
    import yaml
    from test_analysis_workflow import SMALL, snakemake

    from afo.data.nsd_prf import prf_table

    tmp, truth = simulated_nsd
    work = tmp / "workflow"
    work.mkdir()
    config = json.loads(json.dumps(SMALL))
    options = {"subjects": [1], "noise_ceiling": "repeats", "roi_sets": ["prf-visualrois"]}
    config["datasets"] = {"nsd": {"format": "nsd", "root": str(tmp / "nsd"), "role": "train", "options": options}}
    config["afo"]["stage0_seeds"] = 1
    config["evaluation"]["prf_min_r2"] = 10
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # the default targets hold the comparison of every figure model, because the NSD download has pRF maps
    planned = snakemake(work, "-n")
    assert "results/analysis/prf/afo.csv" in planned.stdout
    snakemake(work, "results/analysis/prf/naivemix.csv", "results/figures/naivemix/prf")

    table = pd.read_csv(work / "results/analysis/prf/naivemix.csv", dtype={"subject": str})
    measured = prf_table(tmp / "nsd", work / "results/prepared/nsd.h5").set_index("voxel")
    assert set(table["dataset"]) == {"nsd"} and set(table["subject"]) == {"subj01"}
    assert len(table) == len(truth)
    by_voxel = table.set_index("voxel").sort_index()
    np.testing.assert_allclose(by_voxel["prf_ecc_deg"], measured.loc[by_voxel.index, "prf_ecc_deg"], rtol=1e-5)
    # the model's side is the model's own voxels.csv in degrees (NSD's 8.4 degree default)
    voxels = pd.read_csv(work / "results/encoding/naivemix/voxels.csv", dtype={"subject": str})
    model = voxels[voxels["dataset"] == "nsd"].set_index("voxel").sort_index()
    np.testing.assert_allclose(by_voxel["ecc_deg"], model.loc[by_voxel.index, "ecc_deg"], rtol=1e-5)
    assert (by_voxel["ecc_deg"] <= 8.4 / 2 * np.sqrt(2) + 1e-6).all()

    rois = pd.read_csv(work / "results/analysis/prf/naivemix_rois.csv").set_index("roi")
    early = table["prf_r2"] >= 10
    assert rois.loc["all", "n_voxels"] == early.sum() > 100
    assert {"V1v", "V1d", "V2v", "V2d"} <= set(rois.index)
    # a stage-0 model of the workflow at 32 px recovers the measured retinotopy (0.91 / 7 degrees when written)
    assert rois.loc["all", "r_ecc"] >= 0.8, rois
    assert rois.loc["all", "median_abs_angle_diff"] < 30, rois
    assert (rois.loc[["V1v", "V1d", "V2v", "V2d", "V3v", "V3d"], "circ_r_angle"] >= 0.8).all(), rois
    figures = {p.name for p in (work / "results/figures/naivemix/prf").glob("*.png")}
    assert {f"nsd__{roi}.png" for roi in ("V1v", "V1d", "V2v", "V2d")} <= figures, figures
    log = (work / "logs/evaluate/prf_naivemix.log").read_text()
    assert "Traceback" not in log
