"""The `afo` command line, for people: each step of the workflow usable on its own.

The workflow's rules do not go through here: they run workflow/scripts/*.py, which call the same package
functions. Every subcommand prints a short JSON report on stdout when it succeeds; an error in the user's data,
config or arguments (:class:`afo.errors.UserError`) is printed as one clear message with exit status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from afo.errors import UserError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


class CliError(UserError):
    """Command-line arguments that do not fit together; the message names the flags."""


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
    p.add_argument(
        "--options",
        type=_json_arg,
        default={},
        help="JSON object of SimulationConfig fields (see `afo simulate --list-options`)",
    )
    p.add_argument(
        "--list-options", action="store_true", help="print every SimulationConfig field with its default and exit"
    )

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

        return get_adapter(args.format).prepare(args.root, args.out, image_size=args.image_size, options=args.options)

    p.set_defaults(func=run)


@command(
    "overlap", "find images shared between prepared stores (by source name or perceptual hash) and write overlap.csv"
)
def _overlap(p: argparse.ArgumentParser) -> None:
    from afo.data.overlap import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION

    p.add_argument(
        "--store",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="prepared store of dataset NAME (repeat per dataset)",
    )
    p.add_argument("--out", required=True, type=Path, help="overlap table to write (.csv, docs/design.md)")
    p.add_argument(
        "--max-distance", type=int, default=DEFAULT_MAX_DISTANCE, help="most differing hash bits (of 64) of a candidate"
    )
    p.add_argument(
        "--min-correlation", type=float, default=DEFAULT_MIN_CORRELATION, help="least thumbnail r of a pixel match"
    )

    def run(args):
        from afo.data.overlap import find_overlap
        from afo.io.tables import write_csv

        table = find_overlap(_named_paths(args.store, "--store"), args.max_distance, args.min_correlation)
        write_csv(table, args.out)
        return {"pairs": len(table), "by_method": table["method"].value_counts().to_dict()}

    p.set_defaults(func=run)


@command("features", "cache a frozen timm backbone's intermediate layers for every image of a store")
def _features(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, type=Path, help="prepared store (.h5)")
    p.add_argument("--out", required=True, type=Path, help="feature cache to write (.h5)")
    p.add_argument(
        "--backbone",
        required=True,
        type=_json_arg,
        help="JSON: name, layers, resolution, pretrained, pretrained_path, model_kwargs",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _claim_gpu_argument(p)

    def run(args):
        from afo.features import BackboneSpec, extract_features
        from afo.runtime import resolve_device

        spec = BackboneSpec.from_config(args.backbone)
        return _on_claimed_gpu(
            args,
            lambda: extract_features(
                args.store, args.out, spec, batch_size=args.batch_size, device=resolve_device(args.device)
            ),
        )

    p.set_defaults(func=run)


def _claim_gpu_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--claim-gpu",
        action="store_true",
        help="claim a free GPU with a lock file before CUDA starts (workstation dispatch)",
    )


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
    p.add_argument(
        "--store",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="prepared store of dataset NAME (repeat per dataset)",
    )
    p.add_argument(
        "--features", action="append", metavar="NAME=PATH", help="feature cache of dataset NAME (repeat per dataset)"
    )
    p.add_argument(
        "--backbone-config",
        type=_json_arg,
        help='JSON: the config\'s `backbone` section with "cache": "none" '
        "instead of --features: the backbone runs on the stores' images inside each batch",
    )


@command("train", "train one encoding model (Lightning), keep its top-k checkpoints and write their greedy soup")
def _train(p: argparse.ArgumentParser) -> None:
    _data_arguments(p)
    p.add_argument("--model-config", type=_json_arg, required=True, help="JSON: the config's `model` section")
    p.add_argument(
        "--train-config",
        type=_json_arg,
        required=True,
        help="JSON: the config's `train` section (with stage overrides)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder: model.pt, metrics.csv, work/ (resume state)")
    p.add_argument("--rois", type=Path, help="ROI assignment table (dataset, subject, voxel, roi): model its voxels")
    p.add_argument("--roi", help="model only this ROI's voxels (stage 1)")
    p.add_argument("--own-roi", help="ground truth and checkpointing only on this ROI's voxels (stage 2)")
    p.add_argument("--dark-knowledge", nargs="*", default=[], type=Path, help="prediction files used as dark knowledge")
    p.add_argument(
        "--target-mode", choices=["gt", "helpers", "gt+dk"], default="gt", help="gt; helpers = stage 2; gt+dk = stage 3"
    )
    p.add_argument(
        "--neck-init", type=Path, help="model file whose RetinaMapper/LayerSelector MLPs initialise this model"
    )
    p.add_argument(
        "--train-neck", action="store_true", help="keep --neck-init MLPs trainable (default: frozen, paper 4.6)"
    )
    _claim_gpu_argument(p)

    def run(args):
        from afo.training.fit import TrainSpec, fit

        if args.roi and args.own_roi:
            raise CliError("--roi and --own-roi exclude each other")
        if (args.roi or args.own_roi) and not args.rois:
            raise CliError("--roi / --own-roi need --rois")
        if args.target_mode != "gt" and not args.dark_knowledge:
            raise CliError(f"--target-mode {args.target_mode} needs --dark-knowledge files")
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
            backbone=args.backbone_config,
        )
        return _on_claimed_gpu(args, lambda: fit(spec, args.out))

    p.set_defaults(func=run)


@command(
    "predict", "predict responses with a model file: for a folder of your images (--images), or per image of a store"
)
def _predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model file (model.pt)")
    p.add_argument("--out", type=Path, help="prediction file to write (.h5); not with --submission")
    p.add_argument(
        "--submission",
        type=Path,
        help="with --release: write an Algonauts 2023 submission, DIR/subjNN/{lh,rh}_pred_test.npy (docs/datasets.md)",
    )
    p.add_argument("--release", type=Path, help="with --submission: the Algonauts 2023 release folder (subjNN/...)")
    p.add_argument("--dataset", help="with --submission: the model's algonauts2023 dataset, if several have subjNN")
    p.add_argument(
        "--images",
        type=Path,
        help="a folder of your images: every subject's predicted response to each "
        "(the model file alone; no store or feature cache)",
    )
    p.add_argument("--subject", action="append", help="with --images: only this subject (<dataset>/<subject>; repeat)")
    p.add_argument(
        "--maps", type=Path, help="with --images: one NIfTI map per image for volumetric subjects, in this folder"
    )
    p.add_argument("--weights", type=Path, help="with --images: the backbone weights file, if it moved since training")
    p.add_argument("--batch-size", type=int, default=32, help="with --images: images per backbone pass")
    p.add_argument(
        "--store", action="append", metavar="NAME=PATH", help="prepared store of dataset NAME (repeat per dataset)"
    )
    p.add_argument(
        "--features", action="append", metavar="NAME=PATH", help="feature cache of dataset NAME (repeat per dataset)"
    )
    p.add_argument(
        "--backbone-config",
        type=_json_arg,
        help='JSON: the config\'s `backbone` section with "cache": "none" instead of --features: the backbone runs '
        "on the stores' images",
    )
    p.add_argument(
        "--splits", default="train,val", help="comma-separated splits whose images are predicted (train, val, test)"
    )
    p.add_argument("--rois", type=Path, help="ROI assignment table; with --roi, predict only that ROI's voxels")
    p.add_argument("--roi", help="ROI whose voxels are predicted (dark knowledge of a stage-1/2 model)")
    p.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float32",
        help="float32 for evaluation, float16 for dark knowledge",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    _claim_gpu_argument(p)

    def run(args):
        from afo.runtime import resolve_device

        if args.submission is not None:
            if args.release is None or args.out or args.images or args.store or args.features:
                raise CliError(
                    "--submission DIR goes with --release ROOT only (no --out, --images, --store, --features)"
                )
            from afo.submission import write_submission

            return _on_claimed_gpu(
                args,
                lambda: write_submission(
                    args.model, args.release, args.submission, args.dataset, args.batch_size, args.device, args.weights
                ),
            )
        if args.out is None:
            raise CliError("give --out FILE (or --submission DIR with --release ROOT)")
        if args.images is not None:
            if args.store or args.features or args.rois or args.roi:
                raise CliError(
                    "--images predicts a folder from the model file alone: drop --store/--features/--rois/--roi"
                )
            from afo.api import predict_folder

            return _on_claimed_gpu(
                args,
                lambda: predict_folder(
                    args.model,
                    args.images,
                    args.out,
                    subjects=args.subject,
                    maps_dir=args.maps,
                    batch_size=args.batch_size,
                    device=args.device,
                    weights=args.weights,
                    progress=True,
                ),
            )
        if not (args.store and (args.features or args.backbone_config)):
            raise CliError(
                "give --images DIR, or --store and --features (or --backbone-config): the store-based form the "
                "workflow uses"
            )
        if args.subject or args.maps or args.weights:
            raise CliError("--subject, --maps and --weights go with --images")
        from afo.training.predict import predict_file

        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        return _on_claimed_gpu(
            args,
            lambda: predict_file(
                args.model,
                _named_paths(args.store, "--store"),
                _named_paths(args.features, "--features") if args.features else {},
                splits,
                args.out,
                rois=args.rois,
                roi=args.roi,
                dtype=args.dtype,
                device=resolve_device(args.device),
                backbone=args.backbone_config,
            ),
        )

    p.set_defaults(func=run)


def _overlap_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overlap",
        type=Path,
        help="overlap.csv (afo overlap): leave out test images a --trained-on dataset trained on",
    )
    p.add_argument("--trained-on", action="append", metavar="NAME", help="a dataset the model was trained on (repeat)")


@command("finetune", "fit new subjects on a trained model's frozen backbone and conv blocks (a TopyNeck and head each)")
def _finetune(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="the trained model file (model.pt) whose core is kept")
    p.add_argument(
        "--dataset",
        required=True,
        type=Path,
        help="the new data: a folder dataset (docs/folder-dataset.md), a prepared store (.h5), or with --format "
        "a dataset in an adapter's format",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="model file to write (base subjects + the new ones); metrics.csv "
        "and work/ (prepared data, features, resume state) go beside it",
    )
    p.add_argument("--format", default="auto", help="auto (store or folder), or an adapter's format (docs/datasets.md)")
    p.add_argument("--options", type=_json_arg, default={}, help="JSON object of adapter options")
    p.add_argument("--name", help="dataset name in the subject keys (default: the dataset's own name)")
    p.add_argument(
        "--train-config",
        type=_json_arg,
        default={},
        help='JSON: training settings over the base model\'s own (e.g. {"max_epochs": 20, "lr": 0.01})',
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto, cpu or cuda (feature extraction; training uses the GPU when there is one)",
    )
    _claim_gpu_argument(p)

    def run(args):
        from afo.training.finetune import finetune_dataset

        return _on_claimed_gpu(
            args,
            lambda: finetune_dataset(
                args.model,
                args.dataset,
                args.out,
                train=args.train_config,
                fmt=args.format,
                options=args.options,
                name=args.name,
                device=args.device,
            ),
        )

    p.set_defaults(func=run)


@command("evaluate", "score a model's prediction file per voxel: voxels.csv and summary.csv")
def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="prepared store of dataset NAME (repeat per dataset)",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="MODEL=PREDICTIONS",
        help="model file = its prediction file (afo predict --splits val,test); repeat to assemble per-ROI models",
    )
    p.add_argument(
        "--rois", type=Path, help="ROI assignment table for the roi column (default: the dataset's own labels)"
    )
    p.add_argument("--dataset-roi-set", default="roi", help="ROI set of the store reported as dataset_roi")
    p.add_argument("--out-dir", required=True, type=Path, help="folder for voxels.csv and summary.csv")
    _overlap_arguments(p)

    def run(args):
        from afo.data.overlap import left_out_by_dataset
        from afo.evaluation.scores import challenge_labels, left_out_counts, voxel_table, write_tables

        models = list(_named_paths(args.model, "--model").items())
        stores = _named_paths(args.store, "--store")
        leave_out = left_out_by_dataset([args.overlap] if args.overlap else [], stores, args.trained_on or [])
        table = voxel_table(models, stores, rois=args.rois, dataset_roi_set=args.dataset_roi_set, leave_out=leave_out)
        counts = left_out_counts(stores, leave_out)
        voxels, summary = write_tables(table, args.out_dir, counts, challenge_labels(stores))
        return {"voxels": str(voxels), "summary": str(summary), "mean_r_test": float(table["r_test"].mean())}

    p.set_defaults(func=run)


@command(
    "export", "write a model as a folder a model hub can host: model.safetensors, afo_model.json, README.md (card)"
)
def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (model.pt), model folder, or hf://owner/name[@revision]")
    p.add_argument("--out", required=True, type=Path, help="folder to write (created; its three files replaced)")
    p.add_argument(
        "--summary", type=Path, help="the model's evaluation summary (results/encoding/<model>/summary.csv): scores"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="the workflow config the model was trained with: datasets' formats, terms and visual angles, the "
        "recipe (afo section) and the config's hash in the card",
    )
    p.add_argument("--name", help="the model's name in the card (default: from its path, e.g. afo/stage3)")
    p.add_argument(
        "--backbone-licence", help="licence of the backbone's local weights file (timm's record names it otherwise)"
    )

    def run(args):
        from afo.sharing import export_model

        return export_model(
            args.model,
            args.out,
            summary=args.summary,
            config=args.config,
            name=args.name,
            backbone_licence=args.backbone_licence,
        )

    p.set_defaults(func=run)


@command("decode", "rank your own candidate images for your own measured response pattern with a trained model")
def _decode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="model file (e.g. results/models/afo/stage3/model.pt)")
    p.add_argument("--images", required=True, type=Path, help="folder of candidate images (png, jpg, ...)")
    p.add_argument(
        "--response",
        required=True,
        type=Path,
        help="NumPy file [n_voxels] or [n_queries, n_voxels]: one value per modelled voxel or per voxel of the "
        "subject's dataset (responses.npy column order); NaN = missing",
    )
    p.add_argument("--subject", required=True, help="subject key as in the model: <dataset>/<subject>")
    p.add_argument(
        "--config",
        type=Path,
        help="only for version-1 model files (which do not record their backbone): the "
        "workflow config the model was trained with",
    )
    p.add_argument(
        "--backbone", type=_json_arg, help="only for version-1 model files: JSON backbone section instead of --config"
    )
    p.add_argument("--image-size", type=int, help="only for version-1 model files: the config's prepare.image_size")
    p.add_argument("--weights", type=Path, help="the backbone weights file, if it moved since training")
    p.add_argument("--rois", type=Path, help="ROI table; with --roi, match only that ROI's voxels")
    p.add_argument("--roi", help="ROI label to match (needs --rois)")
    p.add_argument("--out", type=Path, help="CSV of the full ranking (query, rank, image, r)")
    p.add_argument("--top", type=int, default=5, help="best images listed in the printed report")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def run(args):
        import numpy as np

        from afo.api import check_output_file, list_images, load
        from afo.decoding.retrieval import DecodeInputError, match_response, rank_user_images, read_response
        from afo.io.tables import write_csv

        if args.out is not None:
            check_output_file(args.out, "--out")
        response = read_response(args.response)  # before the model and the images: a bad file fails at once
        files = list_images(args.images)
        backbone, image_size = args.backbone, args.image_size
        if backbone is None and args.config is not None:  # used only when the model file does not record its own
            from afo.config import load_config

            config = load_config(args.config)
            backbone, image_size = config["backbone"], image_size or config["prepare"]["image_size"]
        model = load(args.model, device=args.device, weights=args.weights, backbone=backbone, image_size=image_size)
        if args.subject not in model.subjects:
            raise DecodeInputError(f"subject {args.subject!r} is not in {args.model}; it has {model.subjects}")
        voxels = model.voxels(args.subject)["voxel"].to_numpy()
        mask = None
        if args.roi is not None or args.rois is not None:
            if not (args.roi is not None and args.rois is not None):
                raise CliError("--roi and --rois go together")
            from afo.io.tables import read_roi_selection

            wanted = read_roi_selection(args.rois, args.roi).get(args.subject, np.empty(0, dtype=np.int64))
            mask = np.isin(voxels, wanted)
            if not mask.any():
                raise CliError(f"--roi {args.roi}: no voxel of {args.subject} in {args.rois}; pick an ROI it has")
        record = model.inputs.subjects.get(args.subject)
        n_dataset_voxels = record.n_voxels if record else None
        measured = match_response(response, voxels, args.subject, mask, n_dataset_voxels)  # before predicting
        predicted = model.predict(files, subject=args.subject)
        ranking = rank_user_images(predicted, [f.name for f in files], measured, voxels, args.subject, voxel_mask=mask)
        if args.out:
            write_csv(ranking, args.out)
        best = ranking[ranking["rank"] < args.top]
        return {
            "candidates": int(ranking["image"].nunique()),
            "queries": int(ranking["query"].nunique()),
            "best": {
                # null, not NaN (which is not JSON), for a candidate whose prediction is constant
                int(q): [
                    {"image": r.image, "r": round(float(r.r), 4) if np.isfinite(r.r) else None} for r in g.itertuples()
                ]
                for q, g in best.groupby("query")
            },
        }

    p.set_defaults(func=run)


@command("probe", "linear probing of one feature extractor on one dataset: per-voxel test r (paper Figure 1)")
def _probe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extractor", required=True, help="extractor name (the label in the table)")
    p.add_argument(
        "--spec",
        type=_json_arg,
        required=True,
        help="JSON: source (timm | backbone | model) and its keys (afo.probing.benchmark)",
    )
    p.add_argument("--dataset", required=True, help="dataset name")
    p.add_argument("--role", default="train", help="the dataset's role (train | holdout), copied to the table")
    p.add_argument("--store", required=True, type=Path, help="prepared store of the dataset")
    p.add_argument("--features", type=Path, help="feature cache of the dataset (sources backbone and model)")
    p.add_argument("--model", type=Path, help="model file (source model)")
    p.add_argument(
        "--settings", type=_json_arg, default={}, help="JSON: n_components, alphas, cv, pool_grid, backend, seed"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass when extracting features")
    p.add_argument("--roi-set", default="roi", help="ROI set of the store copied to the dataset_roi column")
    p.add_argument("--out", required=True, type=Path, help="CSV to write")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (feature extraction)")
    _overlap_arguments(p)
    _claim_gpu_argument(p)

    def run(args):
        from afo.data.overlap import left_out_by_dataset
        from afo.io.tables import write_csv
        from afo.probing.benchmark import ExtractorSpec, ProbeSettings, probe_dataset
        from afo.runtime import resolve_device

        spec = ExtractorSpec.from_config(args.extractor, args.spec)
        leave_out = left_out_by_dataset([args.overlap] if args.overlap else [], [args.dataset], args.trained_on or [])
        table = _on_claimed_gpu(
            args,
            lambda: probe_dataset(
                spec,
                args.dataset,
                args.store,
                ProbeSettings.from_config({**args.settings, "batch_size": args.batch_size}),
                role=args.role,
                features_path=args.features,
                model_path=args.model,
                roi_set=args.roi_set,
                device=resolve_device(args.device),
                leave_out=leave_out.get(args.dataset),
            ),
        )
        write_csv(table, args.out)
        return {"voxels": len(table), "median_r_test": float(table["r_test"].median())}

    p.set_defaults(func=run)


@command("check-config", "validate a workflow config file against the schema (defaults filled in)")
def _check_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="config YAML")
    p.add_argument(
        "--schema",
        type=Path,
        default=None,
        help="schema file (default: the checkout's workflow/schemas/config.schema.yaml)",
    )

    def run(args):
        from afo.config import load_config

        return load_config(args.config, args.schema)

    p.set_defaults(func=run)


@command("check-data", "open every dataset of a config as the adapters will, write nothing, report what was found")
def _check_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="workflow config YAML (its datasets section)")
    p.add_argument(
        "--no-data", action="store_true", help="check layouts and tables only, do not stream the responses (faster)"
    )

    def run(args):
        from afo.config import load_config
        from afo.data.check import check_dataset

        config = load_config(args.config)
        report, failed = {}, []
        for name, ds in sorted(config["datasets"].items()):  # every dataset, whatever failed before it
            try:
                rows = check_dataset(ds["format"], _check_root(ds), ds["options"], read_data=not args.no_data)
            except UserError as err:
                report[name] = f"error: {err}"
                failed.append(name)
                print(f"{name}: error: {err}", file=sys.stderr)
                continue
            for row in rows:
                print(
                    f"{name}/{row['subject']}: "
                    + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("dataset", "subject")),
                    file=sys.stderr,
                )
            report[name] = rows
        if failed:
            print(json.dumps(report, indent=2, default=str))
            raise CliError(
                f"{len(failed)} of {len(report)} dataset(s) failed the check: {failed}; see each error above"
            )
        return report

    p.set_defaults(func=run)


def _check_root(ds: dict) -> Path:
    """The folder check-data opens for a config's dataset entry; a synthetic one must be simulated first."""
    from afo.data.files import DatasetFileNotFoundError
    from afo.data.registry import dataset_root

    root = dataset_root(ds)
    if ds["format"] == "synthetic" and not root.is_dir():
        raise DatasetFileNotFoundError(
            f"{root}: the synthetic dataset is not simulated yet (it has no root to set); run "
            "`snakemake resources/synthetic` in the workflow folder first"
        )
    return root


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or with ``command`` only that one's arguments (the others are listed by name:
    some read their defaults from modules that import pandas or scipy, seconds that `afo predict` should not wait)."""
    parser = argparse.ArgumentParser(
        prog="afo",
        description="Retinotopy-inspired brain encoding model and the All-for-One training recipe.",
    )
    parser.add_argument("--version", action="version", version=f"afo {__import__('afo').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments) in COMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            add_arguments(subparser)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word when that is one), else None."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_of(argv)).parse_args(argv)
    try:
        result = args.func(args)
    except UserError as err:
        print(f"afo {args.command}: error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
