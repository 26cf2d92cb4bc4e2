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

    def run(args):
        from afo.features import BackboneSpec, extract_features
        from afo.runtime import resolve_device

        spec = BackboneSpec.from_config(args.backbone)
        return extract_features(args.store, args.out, spec, batch_size=args.batch_size, device=resolve_device(args.device))

    p.set_defaults(func=run)


@command("check-config", "validate a workflow config file against the schema (defaults filled in)")
def _check_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="config YAML")
    p.add_argument("--schema", type=Path, default=None, help="schema file (default: the checkout's workflow/schemas/config.schema.yaml)")

    def run(args):
        from afo.config import load_config

        return load_config(args.config, args.schema)

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
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
