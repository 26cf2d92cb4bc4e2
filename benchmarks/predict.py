"""The model tool's speed: `Model.predict` against the frozen backbone alone, `afo predict` against `import torch`.

With the demo's final-model shape (config.yaml: the synthetic brain's fMRI and EEG subjects, ResNet-18 at 64 px with
its four stages tapped, the `model` section), in one run:

1. **predict**: ``Model.predict`` of 256 PNGs of 96 px for every subject (decoding, resizing, backbone, conv blocks,
   readout; default batch size and threads), against the frozen backbone's own forward pass
   (``forward_intermediates`` up to its last tapped layer) over the same images, already decoded, resized and
   normalised, in batches of the same size. Target: at most 1.3x.
2. **start-up**: ``afo predict --images`` of a folder of one image (a fresh process: imports, model file, backbone,
   prediction file), against ``python -c "import torch"``. Target: at most 1.5x. Also timed: ``python -c "import
   torch, timm"``, the floor of any tool that builds its backbone with timm (timm imports torchvision's ops at
   import time, and they import ``torch._dynamo``).

Each timing is the median of ``--repeats`` runs, the two sides of a ratio alternating (the machine may be shared).
Without ``--model`` a demo-shaped model is trained first (the demo's simulation, two short epochs: the weights do
not change the timing) under ``--work`` and reused by later runs.

    python benchmarks/predict.py                          # about 5 minutes on 2 cores the first time, 2 after
    python benchmarks/predict.py --model results/models/afo/model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N_IMAGES, IMAGE_PX = 256, 96
PREDICT_TARGET, STARTUP_TARGET = 1.3, 1.5


def demo_model(work: Path) -> Path:
    """A model file of the demo's final-model shape, trained briefly on the demo's synthetic brain (reused)."""
    out = work / "model"
    if (out / "model.pt").exists():
        return out / "model.pt"
    from afo.data.folder import prepare
    from afo.features import BackboneSpec, extract_features
    from afo.simulate import SimulationConfig, simulate
    from afo.training.fit import TrainSpec, fit

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    sim = config["simulate"]
    if not (work / "brain" / "simulation.yaml").exists():
        simulate(work / "brain", SimulationConfig.from_dict({**sim["options"], "seed": sim["seed"]}))
    b = config["backbone"]
    spec = BackboneSpec(b["name"], tuple(b["layers"]), int(b["resolution"]), model_kwargs=b.get("model_kwargs") or {})
    stores, caches = {}, {}
    for name, ds in config["datasets"].items():
        if ds["role"] != "train":
            continue
        stores[name], caches[name] = str(work / f"{name}.h5"), str(work / f"{name}_features.h5")
        if not Path(caches[name]).exists():
            prepare(work / "brain" / ds["part"], stores[name], image_size=int(config["prepare"]["image_size"]))
            extract_features(stores[name], caches[name], spec)
    train = {**config["train"], "max_epochs": 2, "epoch_fraction": 0.05, "top_k": 1}
    fit(TrainSpec(stores=stores, features=caches, model=config["model"], train=train), out)
    return out / "model.pt"


def write_images(folder: Path, source: Path, n: int) -> list[Path]:
    """``n`` PNGs of IMAGE_PX px from the synthetic stimuli (cycled when there are fewer)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    stimuli = sorted(source.glob("*.png"))
    paths = []
    for i in range(n):
        path = folder / f"img_{i:04d}.png"
        if not path.exists():
            with Image.open(stimuli[i % len(stimuli)]) as img:
                img.convert("RGB").resize((IMAGE_PX, IMAGE_PX), Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def median_times(runs: dict, repeats: int) -> dict[str, float]:
    """name -> median wall seconds of ``runs[name]()``, the runs alternating."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def predict_timing(model_path: Path, images: list[Path], repeats: int) -> dict:
    """Model.predict on the images vs the frozen backbone's forward over the same images (see the docstring)."""
    import torch

    import afo
    from afo.data.media import load_image
    from afo.data.store import resize_image
    from afo.features import _normalisation, create_backbone

    model = afo.load(model_path, device="cpu")
    batch = 32  # Model.predict's default batch size
    spec = model._spec
    backbone = create_backbone(spec)
    mean, std = _normalisation(backbone)
    size = model.inputs.preprocessing.image_size
    pixels = np.stack([resize_image(load_image(p), size) for p in images])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    x = torch.nn.functional.interpolate(x, size=(spec.resolution, spec.resolution), mode="bicubic").clamp(0, 1)
    x = ((x - mean) / std).contiguous()

    def forward() -> None:
        with torch.no_grad():
            for start in range(0, len(x), batch):
                backbone.forward_intermediates(
                    x[start : start + batch], indices=list(spec.layers), intermediates_only=True
                )

    model.predict(images[:batch])  # the backbone is built on first use: not part of the timing
    forward()
    seconds = median_times({"backbone": forward, "predict": lambda: model.predict(images)}, repeats)
    return {
        "images": len(images),
        "image_px": IMAGE_PX,
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "subjects": len(model.subjects),
        "voxels": sum(model._model.n_voxels(s) for s in model.subjects),
        "backbone_s": seconds["backbone"],
        "predict_s": seconds["predict"],
        "ratio": seconds["predict"] / seconds["backbone"],
        "target": PREDICT_TARGET,
    }


def startup_timing(model_path: Path, image: Path, work: Path, repeats: int) -> dict:
    """`afo predict` of a folder of one image vs `python -c "import torch"`, each a fresh process."""
    folder = work / "one_image"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / image.name
    if not target.exists():
        target.write_bytes(image.read_bytes())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    afo_bin = Path(sys.executable).parent / "afo"
    cli = [str(afo_bin), "predict", "--model", str(model_path), "--images", str(folder), "--out", str(work / "one.h5")]
    torch_only = [sys.executable, "-c", "import torch"]
    with_timm = [sys.executable, "-c", "import torch, timm"]

    def run(cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    runs = {"import_torch": lambda: run(torch_only), "import_torch_timm": lambda: run(with_timm),
            "afo_predict": lambda: run(cli)}  # fmt: skip
    seconds = median_times(runs, repeats)
    return {
        "command": " ".join(["afo", *cli[1:]]),
        "import_torch_s": seconds["import_torch"],
        "import_torch_timm_s": seconds["import_torch_timm"],
        "afo_predict_s": seconds["afo_predict"],
        "ratio": seconds["afo_predict"] / seconds["import_torch"],
        "timm_floor_ratio": seconds["import_torch_timm"] / seconds["import_torch"],
        "target": STARTUP_TARGET,
    }


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({cpu}), load average {os.getloadavg()[0]:.1f} at the start"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="a model file (default: train a demo-shaped one under --work)")
    p.add_argument("--work", type=Path, default=Path("/tmp/afo-predict-bench"), help="scratch folder (reused)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each timing (the median is reported)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "predict.json", help="raw results (JSON)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    model_path = args.model or demo_model(args.work)
    source = args.work / "brain" / "fmri" / "images"
    if args.model:  # any 96-px pictures will do: the simulator's
        from afo.simulate import SimulationConfig, simulate

        if not source.is_dir():
            simulate(args.work / "brain", SimulationConfig.from_dict({"n_images": 64, "n_test_images": 8}))
    images = write_images(args.work / "images", source, N_IMAGES)
    result = {
        "machine": machine,
        "model": str(model_path),
        "predict": predict_timing(model_path, images, args.repeats),
        "startup": startup_timing(model_path, images[0], args.work, args.repeats),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    pr, st = result["predict"], result["startup"]
    print(
        f"Model.predict, {pr['images']} PNGs of {IMAGE_PX} px, {pr['subjects']} subjects: {pr['predict_s']:.2f} s; "
        f"backbone forward alone {pr['backbone_s']:.2f} s: ratio {pr['ratio']:.2f} (target <= {PREDICT_TARGET})"
    )
    print(
        f"afo predict, one image: {st['afo_predict_s']:.2f} s; python -c 'import torch' {st['import_torch_s']:.2f} s: "
        f"ratio {st['ratio']:.2f} (target <= {STARTUP_TARGET}); python -c 'import torch, timm' "
        f"{st['import_torch_timm_s']:.2f} s: ratio {st['timm_floor_ratio']:.2f}, the floor of a timm backbone"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
