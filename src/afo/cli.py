"""The `afo` command line: one subcommand per workflow step, each usable on its own.

Every subcommand prints a short JSON report on stdout when it succeeds; errors in the user's data or config
are printed as one clear message (file, field, fix) with exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help: str):
    """Register ``add_arguments`` for a subcommand; the parser's ``func`` is set by the decorated function."""

    def decorate(add_arguments):
        COMMANDS[name] = (help, add_arguments)
        return add_arguments

    return decorate


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


@command("simulate", "write a synthetic retinotopic brain in the folder-dataset format")
def _simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (fmri/ and eeg/ folder datasets)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data")
    p.add_argument("--options", type=_json_arg, default={}, help="JSON object of SimulationConfig fields (see `afo simulate --list-options`)")
    p.add_argument("--list-options", action="store_true", help="print every SimulationConfig field with its default and exit")

    def run(args):
        from dataclasses import asdict, fields

        from afo.simulate import SimulationConfig, simulate

        if args.list_options:
            defaults = asdict(SimulationConfig())
            return {f.name: defaults[f.name] for f in fields(SimulationConfig)}
        cfg = SimulationConfig.from_dict({**args.options, "seed": args.seed})
        return simulate(args.out, cfg)

    p.set_defaults(func=run)


@command("prepare", "read a dataset as downloaded and write its prepared store (HDF5)")
def _prepare(p: argparse.ArgumentParser) -> None:
    from afo.data.registry import FORMATS

    p.add_argument("format", choices=sorted(FORMATS), help="dataset format (docs/datasets.md)")
    p.add_argument("--root", required=True, type=Path, help="the dataset folder as downloaded")
    p.add_argument("--out", required=True, type=Path, help="prepared store to write (.h5)")
    p.add_argument("--image-size", type=int, default=224, help="side (px) of the stored stimuli")
    p.add_argument("--options", type=_json_arg, default={}, help="JSON object of adapter options (docs/datasets.md)")

    def run(args):
        from afo.data.registry import get_adapter

        return get_adapter(args.format)(args.root, args.out, image_size=args.image_size, options=args.options)

    p.set_defaults(func=run)


@command("features", "cache a frozen timm backbone's intermediate layers for every image of a store")
def _features(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, type=Path, help="prepared store (.h5)")
    p.add_argument("--out", required=True, type=Path, help="feature cache to write (.h5)")
    p.add_argument("--backbone", required=True, type=_json_arg, help="JSON: name, layers, resolution, pretrained, pretrained_path, model_kwargs")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _claim_gpu_argument(p)

    def run(args):
        from afo.features import BackboneSpec, extract_features
        from afo.runtime import resolve_device

        spec = BackboneSpec.from_config(args.backbone)
        return _on_claimed_gpu(
            args, lambda: extract_features(args.store, args.out, spec, batch_size=args.batch_size, device=resolve_device(args.device))
        )

    p.set_defaults(func=run)


def _claim_gpu_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--claim-gpu", action="store_true", help="claim a free GPU with a lock file before CUDA starts (workstation dispatch)")


def _on_claimed_gpu(args: argparse.Namespace, work: Callable[[], dict]) -> dict:
    """Run ``work`` on a GPU claimed for this process when --claim-gpu is given (see afo.gpu)."""
    if not getattr(args, "claim_gpu", False):
        return work()
    from afo.gpu import claim_gpu

    with claim_gpu(job_name=f"afo {args.command}") as gpu:
        print(f"GPU slot: {gpu}", file=sys.stderr)
        return work()


def _named_paths(items: list[str] | None, flag: str) -> dict[str, str]:
    """NAME=PATH pairs -> dict; a clear error for anything else."""
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise argparse.ArgumentTypeError(f"{flag} {item!r}: expected NAME=PATH (dataset name = file)")
        out[name] = path
    return out


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", action="append", required=True, metavar="NAME=PATH", help="prepared store of dataset NAME (repeat per dataset)")
    p.add_argument("--features", action="append", required=True, metavar="NAME=PATH", help="feature cache of dataset NAME (repeat per dataset)")


@command("train", "train one encoding model (Lightning), keep its top-k checkpoints and write their greedy soup")
def _train(p: argparse.ArgumentParser) -> None:
    _data_arguments(p)
    p.add_argument("--model-config", type=_json_arg, required=True, help="JSON: the config's `model` section")
    p.add_argument("--train-config", type=_json_arg, required=True, help="JSON: the config's `train` section (with stage overrides)")
    p.add_argument("--out", required=True, type=Path, help="output folder: model.pt, metrics.csv, work/ (resume state)")
    p.add_argument("--rois", type=Path, help="ROI assignment table (dataset, subject, voxel, roi): model its voxels")
    p.add_argument("--roi", help="model only this ROI's voxels (stage 1)")
    p.add_argument("--own-roi", help="ground truth and checkpointing only on this ROI's voxels (stage 2)")
    p.add_argument("--dark-knowledge", nargs="*", default=[], type=Path, help="prediction files used as dark knowledge")
    p.add_argument("--target-mode", choices=["gt", "helpers", "gt+dk"], default="gt", help="gt; helpers = stage 2; gt+dk = stage 3")
    p.add_argument("--neck-init", type=Path, help="model file whose RetinaMapper/LayerSelector MLPs initialise this model")
    p.add_argument("--train-neck", action="store_true", help="keep --neck-init MLPs trainable (default: frozen, paper 4.6)")
    _claim_gpu_argument(p)

    def run(args):
        from afo.training.fit import TrainSpec, fit

        if args.roi and args.own_roi:
            raise ValueError("--roi and --own-roi exclude each other")
        if (args.roi or args.own_roi) and not args.rois:
            raise ValueError("--roi / --own-roi need --rois")
        if args.target_mode != "gt" and not args.dark_knowledge:
            raise ValueError(f"--target-mode {args.target_mode} needs --dark-knowledge files")
        spec = TrainSpec(
            stores=_named_paths(args.store, "--store"),
            features=_named_paths(args.features, "--features"),
            model=args.model_config,
            train=args.train_config,
            rois=str(args.rois) if args.rois else None,
            roi=args.roi,
            own_roi=args.own_roi,
            dark_knowledge=[str(p) for p in args.dark_knowledge],
            target_mode=args.target_mode,
            neck_init=str(args.neck_init) if args.neck_init else None,
            freeze_neck=not args.train_neck,
        )
        return _on_claimed_gpu(args, lambda: fit(spec, args.out))

    p.set_defaults(func=run)


@command("predict", "predict responses per image with a model file (float16 HDF5)")
def _predict(p: argparse.ArgumentParser) -> None:
    _data_arguments(p)
    p.add_argument("--model", required=True, type=Path, help="model file (model.pt)")
    p.add_argument("--splits", default="train,val", help="comma-separated splits whose images are predicted (train, val, test)")
    p.add_argument("--rois", type=Path, help="ROI assignment table; with --roi, predict only that ROI's voxels")
    p.add_argument("--roi", help="ROI whose voxels are predicted (dark knowledge of a stage-1/2 model)")
    p.add_argument("--out", required=True, type=Path, help="prediction file to write (.h5)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _claim_gpu_argument(p)

    def run(args):
        from afo.runtime import resolve_device
        from afo.training.predict import predict_file

        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        return _on_claimed_gpu(args, lambda: predict_file(
            args.model, _named_paths(args.store, "--store"), _named_paths(args.features, "--features"), splits, args.out,
            rois=args.rois, roi=args.roi, device=resolve_device(args.device),
        ))

    p.set_defaults(func=run)


@command("evaluate", "score a model (or per-ROI models assembled) per voxel: voxels.csv and summary.csv")
def _evaluate(p: argparse.ArgumentParser) -> None:
    _data_arguments(p)
    p.add_argument("--model", action="append", required=True, metavar="[ROI=]PATH", help="model file; ROI=PATH assembles per-ROI models (needs --rois)")
    p.add_argument("--rois", type=Path, help="ROI assignment table (dataset, subject, voxel, roi)")
    p.add_argument("--dataset-roi-set", default="roi", help="ROI set of the store reported as dataset_roi")
    p.add_argument("--out-dir", required=True, type=Path, help="folder for voxels.csv and summary.csv")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def run(args):
        from afo.evaluate import voxel_table, write_tables
        from afo.runtime import resolve_device

        models = []
        for item in args.model:
            roi, sep, path = item.rpartition("=")
            models.append((roi if sep else None, path))
        if any(r is not None for r, _ in models) and not args.rois:
            raise ValueError("--model ROI=PATH needs --rois")
        table = voxel_table(models, _named_paths(args.store, "--store"), _named_paths(args.features, "--features"),
                            rois=args.rois, dataset_roi_set=args.dataset_roi_set, device=resolve_device(args.device))
        voxels, summary = write_tables(table, args.out_dir)
        return {"voxels": str(voxels), "summary": str(summary), "mean_r_test": float(table["r_test"].mean())}

    p.set_defaults(func=run)


@command("rois", "write an ROI table: veROIs from stage-0 models, a dataset's own labels, or randROI")
def _rois(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", choices=["veroi", "dataset", "random"], help="where the ROIs come from")
    p.add_argument("--model", nargs="+", type=Path, help="veroi: stage-0 model files (head weights averaged)")
    p.add_argument("--options", type=_json_arg, default={}, help="veroi: JSON with n_kmeans, n_rois, threshold")
    p.add_argument("--clustering", type=Path, help="veroi: also write the clustering (linkage, cut, k-means) as .npz")
    p.add_argument("--store", action="append", metavar="NAME=PATH", help="dataset: prepared stores")
    p.add_argument("--roi-set", default="roi", help="dataset: ROI set of the stores")
    p.add_argument("--like", type=Path, help="random: ROI table whose sizes are copied (per subject)")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means / of the random assignment")
    p.add_argument("--out", required=True, type=Path, help="ROI table to write (.csv)")

    def run(args):
        import numpy as np
        import pandas as pd

        from afo import rois

        if args.source == "veroi":
            if not args.model:
                raise ValueError("rois veroi needs --model")
            o = {"n_kmeans": 1000, "n_rois": None, "threshold": None, **args.options}
            table, result = rois.veroi_table(args.model, o["n_kmeans"], o["n_rois"], o["threshold"], args.seed)
            if args.clustering:
                args.clustering.parent.mkdir(parents=True, exist_ok=True)
                np.savez(args.clustering, linkage=result.linkage, cut_height=result.cut_height, labels=result.labels,
                         kmeans_labels=result.kmeans_labels, centroid_rois=result.centroid_rois)
        elif args.source == "dataset":
            if not args.store:
                raise ValueError("rois dataset needs --store")
            table = rois.dataset_roi_table(_named_paths(args.store, "--store"), args.roi_set)
        else:
            if not args.like:
                raise ValueError("rois random needs --like")
            table = rois.random_roi_table(pd.read_csv(args.like, dtype={"roi": str}), args.seed)
        rois.write_table(table, args.out)
        return {"voxels": len(table), "rois": table["roi"].value_counts().sort_index().to_dict()}

    p.set_defaults(func=run)


@command("compare", "mean test r per model, dataset and area from several voxels.csv (the recipe comparison)")
def _compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", nargs="+", required=True, help="model names, in the order of --voxels")
    p.add_argument("--voxels", nargs="+", required=True, type=Path, help="voxels.csv of each model")
    p.add_argument("--out", required=True, type=Path, help="comparison table to write (.csv)")

    def run(args):
        from afo.compare import comparison_table

        if len(args.names) != len(args.voxels):
            raise ValueError("give one --names entry per --voxels file")
        table = comparison_table(dict(zip(args.names, args.voxels)))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False, float_format="%.4f")
        return {"rows": len(table)}

    p.set_defaults(func=run)


@command("check-config", "validate a workflow config file against the schema (defaults filled in)")
def _check_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="config YAML")
    p.add_argument("--schema", type=Path, default=None, help="schema file (default: the checkout's workflow/schemas/config.schema.yaml)")

    def run(args):
        from afo.config import load_config

        return load_config(args.config, args.schema)

    p.set_defaults(func=run)


def _register_extra_commands() -> None:
    """Subcommands defined in other modules register themselves with @command on import."""
    import afo.cli_analysis  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    _register_extra_commands()
    parser = argparse.ArgumentParser(
        prog="afo",
        description="Retinotopy-inspired brain encoding model and the All-for-One training recipe.",
    )
    parser.add_argument("--version", action="version", version=f"afo {__import__('afo').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from afo.errors import USER_ERRORS

    try:
        result = args.func(args)
    except USER_ERRORS as err:
        print(f"afo {args.command}: error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
