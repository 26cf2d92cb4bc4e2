"""`afo` subcommands of the analysis stage (workflow/rules/analysis.smk): thin wrappers around afo.analysis.

Registered on import by :func:`afo.cli.build_parser`; same manners as afo.cli: a JSON report on stdout, user
errors (afo.errors.USER_ERRORS) as one message with exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from afo.cli import _claim_gpu_argument, _data_arguments, _json_arg, _named_paths, _on_claimed_gpu, command


def _models(items: list[str]) -> list[tuple[str | None, str]]:
    """--model [ROI=]PATH items -> [(roi or None, path)]."""
    out = []
    for item in items:
        roi, sep, path = item.rpartition("=")
        out.append((roi if sep else None, path))
    return out


def _json_list(text: str) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("expected a JSON list")
    return value


@command("ablation-table", "the ablation table (paper Tables 2-3): mean r per dataset, subject, ROI and model")
def _ablation_table(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voxels", action="append", required=True, metavar="MODEL=PATH", help="voxels.csv of each model, in column order (repeat)")
    p.add_argument("--veroi", type=Path, help="veROI table (results/rois/veroi.csv): adds per-veROI rows")
    p.add_argument("--area-groups", type=_json_arg, default={}, help='JSON: dataset ROI label -> group, e.g. {"V1": "early"}')
    p.add_argument("--out", required=True, type=Path, help="CSV to write")
    p.add_argument("--html", type=Path, help="also write an HTML rendering (for the report)")

    def run(args):
        from afo.analysis.ablation import NOTE, ablation_table
        from afo.analysis.tables import write_csv, write_html_table

        files = _named_paths(args.voxels, "--voxels")
        table = ablation_table(files, args.veroi, args.area_groups)
        write_csv(table, args.out)
        if args.html:
            write_html_table(table, args.html, "Ablation table (paper Tables 2 and 3)", NOTE, best_of=list(files))
        return {"rows": len(table), "models": list(files)}

    p.set_defaults(func=run)


@command("probe", "linear probing of one feature extractor on one dataset: per-voxel test r (paper Figure 1)")
def _probe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extractor", required=True, help="extractor name (the label in the table)")
    p.add_argument("--spec", type=_json_arg, required=True, help="JSON: source (timm | backbone | model) and its keys (afo.analysis.probing)")
    p.add_argument("--dataset", required=True, help="dataset name")
    p.add_argument("--role", default="train", help="the dataset's role (train | holdout), copied to the table")
    p.add_argument("--store", required=True, type=Path, help="prepared store of the dataset")
    p.add_argument("--features", type=Path, help="feature cache of the dataset (sources backbone and model)")
    p.add_argument("--model", type=Path, help="model file (source model)")
    p.add_argument("--settings", type=_json_arg, default={}, help="JSON: n_components, alphas, cv, pool_grid, backend, seed")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass when extracting features")
    p.add_argument("--roi-set", default="roi", help="ROI set of the store copied to the dataset_roi column")
    p.add_argument("--out", required=True, type=Path, help="CSV to write")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (feature extraction)")
    _claim_gpu_argument(p)

    def run(args):
        from afo.analysis.probing import ExtractorSpec, ProbeSettings, probe_dataset
        from afo.analysis.tables import write_csv
        from afo.runtime import resolve_device

        spec = ExtractorSpec.from_config(args.extractor, args.spec)
        table = _on_claimed_gpu(args, lambda: probe_dataset(
            spec, args.dataset, args.store, ProbeSettings.from_config({**args.settings, "batch_size": args.batch_size}), role=args.role,
            features_path=args.features, model_path=args.model, roi_set=args.roi_set, device=resolve_device(args.device)))
        write_csv(table, args.out)
        return {"voxels": len(table), "median_r_test": float(table["r_test"].median())}

    p.set_defaults(func=run)


@command("probe-report", "gather linear-probing tables: probe.csv, a summary and the violin figure")
def _probe_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tables", nargs="+", required=True, type=Path, help="per-extractor, per-dataset CSVs of `afo probe`")
    p.add_argument("--out", required=True, type=Path, help="probe.csv to write")
    p.add_argument("--summary", type=Path, help="HTML summary (median and mean r per extractor, dataset, subject)")
    p.add_argument("--figure", type=Path, help="violin figure (PNG)")

    def run(args):
        import pandas as pd

        from afo.analysis.probing import probe_summary, violin_table
        from afo.analysis.tables import write_csv, write_html_table

        table = pd.concat([pd.read_csv(t, dtype={"subject": str, "dataset_roi": str}) for t in args.tables], ignore_index=True)
        write_csv(table, args.out)
        summary = probe_summary(table)
        if args.summary:
            write_html_table(summary, args.summary, "Linear probing: test r per voxel",
                             "Median and mean test Pearson r over voxels per feature extractor (PCA + per-voxel ridge); "
                             "subject all = voxels pooled; alpha_at_edge = fraction of voxels whose alpha hit the grid's edge.")
        if args.figure:
            from afo.plots import plot_violins

            plot_violins(violin_table(table), args.figure, "Linear probing: test r per voxel (PCA + per-voxel ridge)")
        return {"rows": len(table), "extractors": sorted(table["extractor"].unique())}

    p.set_defaults(func=run)


@command("retrieval", "brain decoding: retrieval accuracy of test images per subject and ROI, and retrieval figures")
def _retrieval(p: argparse.ArgumentParser) -> None:
    _data_arguments(p)
    p.add_argument("--model", action="append", required=True, metavar="[ROI=]PATH", help="model file; ROI=PATH assembles per-ROI models (needs --rois)")
    p.add_argument("--rois", type=Path, help="the model's ROI table: retrieval per ROI (and assembly of per-ROI models)")
    p.add_argument("--dataset-roi-set", default="roi", help="ROI set of the stores scored as roi_set 'area' ('' = none)")
    p.add_argument("--out", required=True, type=Path, help="retrieval.csv to write")
    p.add_argument("--figures", type=Path, help="folder for one retrieval figure per subject")
    p.add_argument("--examples", type=int, default=3, help="test images per figure (matched on all voxels)")
    p.add_argument("--top-k", type=int, default=5, help="retrieved images shown per figure row")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _claim_gpu_argument(p)

    def run(args):
        from afo.analysis import decoding
        from afo.analysis.figures import file_stem
        from afo.analysis.tables import write_csv
        from afo.runtime import resolve_device

        stores = _named_paths(args.store, "--store")
        preds = _on_claimed_gpu(args, lambda: decoding.split_predictions(
            _models(args.model), stores, _named_paths(args.features, "--features"), rois=args.rois,
            device=resolve_device(args.device)))
        roi_sets = {}
        if args.rois:
            roi_sets[args.rois.stem] = decoding.roi_labels_from_table(args.rois)
        if args.dataset_roi_set:
            roi_sets["area"] = decoding.roi_labels_from_stores(stores, args.dataset_roi_set)
        table = decoding.retrieval_table(preds, roi_sets)
        write_csv(table, args.out)
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            for pred in preds:
                labels = decoding.subject_roi_labels(roi_sets[args.rois.stem], pred) if args.rois else None
                decoding.retrieval_figure(pred, stores[pred.dataset], args.figures / f"{file_stem(pred.dataset, pred.subject)}.png",
                                          labels, args.rois.stem if args.rois else "roi", args.examples, args.top_k)
        overall = table[table["roi_set"] == "all"]
        return {"subjects": len(preds), "mean_top1_all_voxels": float(overall["top1"].mean()),
                "mean_chance_top1": float(overall["chance_top1"].mean())}

    p.set_defaults(func=run)


@command("decode", "rank your own candidate images for your own measured response pattern with a trained model")
def _decode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model file (e.g. results/models/afo/stage3/model.pt)")
    p.add_argument("--images", required=True, type=Path, help="folder of candidate images (png, jpg, ...)")
    p.add_argument("--response", required=True, type=Path,
                   help="NumPy file [n_voxels] or [n_queries, n_voxels]: one value per modelled voxel or per voxel of the "
                        "subject's dataset (responses.npy column order); NaN = missing")
    p.add_argument("--subject", required=True, help="subject key as in the model: <dataset>/<subject>")
    p.add_argument("--config", type=Path, help="the workflow config the model was trained with (its backbone and prepare "
                                               "sections; default: ./config.yaml)")
    p.add_argument("--backbone", type=_json_arg, help="JSON backbone section instead of --config")
    p.add_argument("--image-size", type=int, help="resize stimuli to this size first (default: the config's prepare.image_size)")
    p.add_argument("--rois", type=Path, help="ROI table; with --roi, match only that ROI's voxels")
    p.add_argument("--roi", help="ROI label to match (needs --rois)")
    p.add_argument("--out", type=Path, help="CSV of the full ranking (query, rank, image, r)")
    p.add_argument("--top", type=int, default=5, help="best images listed in the printed report")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def run(args):
        import numpy as np

        from afo.analysis.decoding import rank_user_images
        from afo.analysis.tables import write_csv
        from afo.runtime import resolve_device
        from afo.training.checkpoint import load_model

        image_size = args.image_size
        if args.backbone is not None:
            backbone = args.backbone
        else:
            from afo.config import load_config

            config_path = args.config or Path("config.yaml")
            if not config_path.is_file():
                raise FileNotFoundError(f"{config_path}: give the workflow config the model was trained with (--config) or --backbone JSON")
            config = load_config(config_path)
            backbone = config["backbone"]
            image_size = image_size or config["prepare"]["image_size"]
        mask = None
        if args.roi is not None or args.rois is not None:
            if not (args.roi is not None and args.rois is not None):
                raise ValueError("--roi and --rois go together")
            from afo.io.tables import read_roi_selection

            _, payload = load_model(args.model)
            if args.subject not in payload["voxels"]:
                raise KeyError(f"subject {args.subject!r} is not in {args.model}; it has {sorted(payload['voxels'])}")
            wanted = read_roi_selection(args.rois, args.roi).get(args.subject, np.empty(0, dtype=np.int64))
            mask = np.isin(payload["voxels"][args.subject].numpy(), wanted)
        ranking = rank_user_images(args.model, args.subject, args.images, np.load(args.response), backbone, image_size,
                                   voxel_mask=mask, device=resolve_device(args.device))
        if args.out:
            write_csv(ranking, args.out)
        best = ranking[ranking["rank"] < args.top]
        return {
            "candidates": int(ranking["image"].nunique()), "queries": int(ranking["query"].nunique()),
            "best": {int(q): [{"image": r.image, "r": round(float(r.r), 4)} for r in g.itertuples()] for q, g in best.groupby("query")},
        }

    p.set_defaults(func=run)


@command("figures", "probing figures of a model from its voxels.csv: RetinaMap, LayerSelector, brain maps (PNG, NIfTI)")
def _figures(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voxels", required=True, type=Path, help="the model's voxels.csv")
    p.add_argument("--name", required=True, help="model name (figure titles)")
    p.add_argument("--ground-truth", action="append", default=[], metavar="DATASET=DIR", help="simulator folder with <subject>/ground_truth.csv (repeat)")
    p.add_argument("--store", action="append", default=[], metavar="NAME=PATH", help="prepared stores (volume affines for NIfTI maps)")
    p.add_argument("--retina-map", type=Path, help="folder for the RetinaMap PNGs")
    p.add_argument("--layer-selector", type=Path, help="folder for the LayerSelector PNGs")
    p.add_argument("--brain-maps", type=Path, help="folder for the brain-map PNGs")
    p.add_argument("--nifti", type=Path, help="folder for the NIfTI maps of volumetric subjects (with --brain-maps)")

    def run(args):
        from afo.analysis import figures

        report = {}
        truth = _named_paths(args.ground_truth, "--ground-truth")
        if args.retina_map:
            args.retina_map.mkdir(parents=True, exist_ok=True)
            report["retina_map"] = len(figures.retina_maps(args.voxels, args.retina_map, args.name, truth))
        if args.layer_selector:
            args.layer_selector.mkdir(parents=True, exist_ok=True)
            report["layer_selector"] = len(figures.layer_selector_maps(args.voxels, args.layer_selector, args.name))
        if args.brain_maps:
            if not args.nifti:
                raise ValueError("--brain-maps needs --nifti (the folder for volumetric subjects' NIfTI maps)")
            args.brain_maps.mkdir(parents=True, exist_ok=True)
            report["brain_maps"] = figures.brain_maps(args.voxels, _named_paths(args.store, "--store"), args.brain_maps, args.nifti, args.name)
        return report

    p.set_defaults(func=run)


@command("dendrogram", "the veROI dendrogram with its cut (paper Figure 6)")
def _dendrogram(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clustering", required=True, type=Path, help="clustering file of `afo rois veroi --clustering` (.npz)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")

    def run(args):
        from afo.analysis.figures import dendrogram

        return {"figure": str(dendrogram(args.clustering, args.out))}

    p.set_defaults(func=run)


@command("roi-scores", "per-ROI encoding and retrieval scores per subject (paper Figure 8)")
def _roi_scores(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voxels", required=True, type=Path, help="the model's voxels.csv (its roi column)")
    p.add_argument("--retrieval", required=True, type=Path, help="the model's retrieval.csv")
    p.add_argument("--roi-set", required=True, help="roi_set of retrieval.csv that matches the roi column (veroi, random, dataset)")
    p.add_argument("--name", required=True, help="model name (figure titles)")
    p.add_argument("--out-dir", required=True, type=Path, help="folder for one PNG per subject")

    def run(args):
        from afo.analysis.figures import roi_score_figures

        args.out_dir.mkdir(parents=True, exist_ok=True)
        return {"figures": len(roi_score_figures(args.voxels, args.retrieval, args.roi_set, args.out_dir, args.name))}

    p.set_defaults(func=run)


@command("synthetic-checks", "on the synthetic brain: veROI vs simulated areas, decoding vs chance, RetinaMap vs true RF centres")
def _synthetic_checks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ground-truth", action="append", required=True, metavar="DATASET=DIR", help="simulator folder of a synthetic dataset (repeat)")
    p.add_argument("--veroi", required=True, type=Path, help="veROI table")
    p.add_argument("--voxels", required=True, type=Path, help="voxels.csv of the model")
    p.add_argument("--retrieval", required=True, type=Path, help="retrieval.csv of the model")
    p.add_argument("--name", default="afo", help="model name (recorded in the JSON)")
    p.add_argument("--permutations", type=int, default=1000, help="permutations of the ARI chance level")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    p.add_argument("--out", required=True, type=Path, help="JSON to write")
    p.add_argument("--html", type=Path, help="also write the headline numbers as an HTML table")

    def run(args):
        from afo.analysis.synthetic_checks import summary_rows, synthetic_checks
        from afo.analysis.tables import atomic_write_text, write_html_table

        if args.permutations < 1:
            raise ValueError("--permutations must be >= 1")
        checks = synthetic_checks(_named_paths(args.ground_truth, "--ground-truth"), args.veroi, args.voxels, args.retrieval,
                                  args.name, args.permutations, args.seed)
        atomic_write_text(args.out, json.dumps(checks, indent=2) + "\n")
        summary = summary_rows(checks)
        if args.html:
            write_html_table(summary, args.html, f"Synthetic-brain checks ({args.name})",
                             "Ground truth from the simulator: veROIs against the simulated areas (adjusted Rand index against a "
                             "within-subject permutation null), all-voxel decoding against chance, learned RetinaMap against the "
                             "true receptive-field centres of the early (V1-V3) voxels.")
        return summary.to_dict(orient="records")

    p.set_defaults(func=run)


@command("table-html", "render a CSV table as a self-contained HTML page (report items)")
def _table_html(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", required=True, type=Path, help="CSV table")
    p.add_argument("--out", required=True, type=Path, help="HTML to write")
    p.add_argument("--title", default="", help="heading (default: the file name)")
    p.add_argument("--note", default="", help="a paragraph under the heading")
    p.add_argument("--best-of", type=_json_list, default=[], help="JSON list of numeric columns whose row maximum is shown in bold")

    def run(args):
        import pandas as pd

        from afo.analysis.tables import write_html_table

        labels = {c: str for c in ("dataset", "subject", "roi", "area", "roi_set", "dataset_roi")}
        table = pd.read_csv(args.csv, dtype=labels)
        write_html_table(table, args.out, args.title or args.csv.name, args.note, best_of=[c for c in args.best_of if c in table])
        return {"rows": len(table)}

    p.set_defaults(func=run)
