"""The analysis stage end to end: a tiny synthetic brain (plus a holdout folder dataset) through the whole
workflow, then the HTML report; the synthetic-brain checks at small size; `afo decode` on a user's images."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_folder_dataset

from afo.decoding.retrieval import _match_response
from afo.figures.retrieval import example_queries
from afo.probing.benchmark import pool_maps

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PNG = b"\x89PNG\r\n\x1a\n"

SMALL = yaml.safe_load((ROOT / ".test/small.yaml").read_text())


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["AFO_GPU_CLAIM"] = "never"
    return env


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The workflow and its report on SMALL, with a holdout folder dataset, run once for the tests below."""
    workdir = tmp_path_factory.mktemp("analysis")
    holdout = write_folder_dataset(
        workdir / "holdout", n_images=40, n_voxels=12, subjects=("subjA",), n_repeated=6, n_val=3
    )
    config = json.loads(json.dumps(SMALL))
    config["datasets"]["extra"] = {"format": "folder", "root": str(holdout), "role": "holdout"}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # key order = group order
    snakemake(workdir)
    snakemake(workdir, "--report", "results/report.html")
    return workdir


@pytest.mark.slow
def test_ablation_table(run):
    table = pd.read_csv(run / "results/encoding/ablation_table.csv", dtype={"roi": str, "subject": str})
    assert {"afo", "naivemix", "stage1", "stage2"} <= set(table.columns)
    fmri = table[(table["dataset"] == "synth_fmri") & (table["subject"] == "all") & (table["metric"] == "mean_r")]
    assert list(fmri[fmri["roi_set"] == "group"]["roi"]) == ["early", "mid", "late"]
    assert {"V1", "V2", "V3", "V4", "LO"} <= set(fmri[fmri["roi_set"] == "area"]["roi"])
    assert set(fmri[fmri["roi_set"] == "veroi"]["roi"]) == {"0", "1"}
    assert fmri[["afo", "naivemix"]].notna().all().all()


@pytest.mark.slow
def test_probing_covers_holdout(run):
    probe = pd.read_csv(run / "results/probing/probe.csv")
    assert set(probe["extractor"]) == {"backbone", "afo", "vit_random"}
    assert set(probe["dataset"]) == {"synth_fmri", "extra"}
    assert set(probe.loc[probe["dataset"] == "extra", "role"]) == {"holdout"}
    assert probe["r_test"].notna().mean() > 0.95 and (probe["n_components"] <= 8).all()
    # The holdout voxels read image brightness: every extractor predicts them (r well above 0).
    assert probe[probe["dataset"] == "extra"].groupby("extractor")["r_test"].median().min() > 0.3
    assert (run / "results/probing/probe_violins.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_retrieval_tables_and_figures(run):
    for name in ("afo", "stage1"):
        table = pd.read_csv(run / f"results/decoding/{name}/retrieval.csv", dtype={"roi": str, "subject": str})
        assert list(table.columns[:9]) == [
            "dataset",
            "subject",
            "roi_set",
            "roi",
            "n_voxels",
            "n_candidates",
            "n_queries",
            "top1",
            "top5",
        ]
        assert set(table["roi_set"]) == {"all", "veroi", "area"}
        everything = table[table["roi_set"] == "all"]
        assert len(everything) == 2 and (everything["n_candidates"] == 24).all()
        figures = sorted(p.name for p in (run / f"results/decoding/{name}/retrievals").glob("*.png"))
        assert figures == ["synth_fmri__subj01.png", "synth_fmri__subj02.png"]
    for kind in ("retinamap", "layerselector", "roi_scores"):
        assert len(list((run / f"results/figures/afo/{kind}").glob("*.png"))) == 2
    assert len(list((run / "results/figures/afo/brainmaps").glob("*.png"))) == 4
    assert "no volume grid or surface layout" in (run / "results/brainmaps/afo/README.txt").read_text()
    pages = sorted(p.name for p in (run / "results/viewer/afo").glob("*.html"))
    assert pages == ["synth_fmri__subj01.html", "synth_fmri__subj02.html"]


@pytest.mark.slow
def test_synthetic_checks_at_small_size(run):
    checks = json.loads((run / "results/analysis/synthetic_checks.json").read_text())
    fmri = checks["datasets"]["synth_fmri"]
    areas = fmri["veroi_vs_areas"]["areas"]
    # veROIs recover the simulated areas better than chance (within-subject permutation null).
    assert areas["ari"] > areas["null_q95"] and areas["p"] < 0.05
    # All-voxel decoding: top-1 far above chance (1 / 24).
    assert fmri["decoding"]["top1_over_chance"] > 4
    # RetinaMap: early voxels' learned u follows their true RF centres.
    assert fmri["retinotopy"]["mean_r_x"] > 0.5 and fmri["retinotopy"]["mean_r_y"] > 0.5


@pytest.mark.slow
def test_report_embeds_every_figure(run):
    text = (run / "results/report.html").read_text()
    pngs = sorted(p.name for p in (run / "results").rglob("*.png"))
    assert len(pngs) >= 15
    # Self-contained: every figure is embedded once as data (not linked), every table as an HTML page.
    embedded = re.findall(r"data:image/png;charset=utf8;filename=([^;]+);base64,", text)
    assert sorted(embedded) == pngs
    pages = set(re.findall(r"data:text/html;charset=utf8;filename=([^;]+);base64,", text))
    assert {
        "ablation_table.html",
        "comparison.html",
        "summary.html",
        "probe_summary.html",
        "synthetic_checks.html",
        "headline.html",
    } <= pages
    for caption in (
        "Ablation table in the form",
        "Linear probing benchmark",
        "Top retrieved images",
        "RetinaMap (paper Figure 4)",
        "veROI dendrogram",
        "Per-ROI scores",
        "LayerSelector (paper Figure 5)",
        "Checks against the synthetic",
    ):
        assert caption in text, caption


@pytest.mark.slow
def test_afo_decode_ranks_users_images(run, tmp_path, capsys):
    """The user's own images and response: the small store's test images and measured test patterns."""
    from PIL import Image

    from afo.cli import main
    from afo.data.repeats import average_repeats
    from afo.data.store import PreparedStore

    with PreparedStore(run / "results/prepared/synth_fmri.h5") as store:
        split, trial_image = store.trial_split("subj01"), store.trial_image("subj01")
        test = split == 2
        images, measured = average_repeats(store.responses("subj01")[test], trial_image[test])
        pixels = store.images(images)
    folder = tmp_path / "candidates"
    folder.mkdir()
    for i, p in zip(images, pixels):
        Image.fromarray(p).save(folder / f"img{i:04d}.png")
    np.save(tmp_path / "response.npy", measured[:4])  # 4 queries, one value per voxel of the dataset
    out = tmp_path / "ranking.csv"
    args = [
        "decode",
        "--model",
        str(run / "results/models/afo/stage3/model.pt"),
        "--images",
        str(folder),
        "--response",
        str(tmp_path / "response.npy"),
        "--config",
        str(run / "config.yaml"),
        "--out",
        str(out),
        "--top",
        "3",
    ]
    capsys.readouterr()
    assert main([*args, "--subject", "synth_fmri/subj01"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["candidates"] == images.size and report["queries"] == 4 and len(report["best"]["0"]) == 3
    ranking = pd.read_csv(out)
    assert len(ranking) == 4 * images.size and set(ranking["rank"]) == set(range(images.size))
    # The model recognises the images the responses were measured for (chance: mean rank (n - 1) / 2).
    true_rank = [
        int(ranking[(ranking["query"] == q) & (ranking["image"] == f"img{images[q]:04d}.png")]["rank"].iloc[0])
        for q in range(4)
    ]
    assert np.mean(true_rank) < images.size / 4
    assert main([*args, "--subject", "nobody/x"]) == 2
    assert "nobody/x" in capsys.readouterr().err


def test_pool_maps_and_helpers():
    import torch

    maps = [torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4), torch.ones(2, 5, 1, 1)]
    pooled = pool_maps(maps, 2)
    assert pooled.shape == (2, 3 * 4 + 5)  # a 1 x 1 map stays 1 x 1
    assert pooled[0, 0] == maps[0][0, 0, :2, :2].mean()
    assert pool_maps(maps, 1).shape == (2, 8)
    np.testing.assert_array_equal(example_queries(10, 3), [0, 4, 9])
    assert example_queries(2, 5).tolist() == [0, 1]
    voxels = np.array([0, 2, 5])
    assert _match_response(np.arange(3.0), voxels, "s").shape == (1, 3)
    np.testing.assert_array_equal(_match_response(np.arange(8.0), voxels, "s"), [[0, 2, 5]])
    with pytest.raises(ValueError, match="modelled voxels"):
        _match_response(np.arange(4.0), voxels, "s")


@pytest.mark.slow  # a multi-process or workflow run: make test, not make test-fast
def test_analysis_targets_follow_the_config(tmp_path):
    """Switching analysis sections off removes their jobs from the plan; a model name that is not evaluated fails."""

    def plan(**sections) -> str:
        config = {**json.loads(json.dumps(SMALL)), **sections}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [
            str(BIN / "snakemake"),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "-n",
            "--quiet",
            "rules",
        ]
        return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)

    full = plan().stdout
    assert re.search(r"^probe_report\s+1$", full, re.M) and re.search(r"^decode\s+2$", full, re.M)
    assert re.search(r"^synthetic_checks\s+1$", full, re.M)
    quiet = plan(probing={"enabled": False}, decoding={"models": []}, evaluation={"figure_models": []}).stdout
    assert not re.search(r"^(probe|probe_report|model_figures|viewer|roi_scores)\s", quiet, re.M)
    assert re.search(r"^decode\s+1$", quiet, re.M)  # afo's retrieval.csv still feeds the synthetic-brain checks
    bad = plan(probing={"extractors": {"x": {"source": "model", "model": "stage1"}}})
    assert bad.returncode != 0 and "single models" in bad.stdout + bad.stderr
    bad = plan(probing={"extractors": {"x": {"source": "timm"}}})
    assert bad.returncode != 0 and "timm model name" in bad.stdout + bad.stderr
