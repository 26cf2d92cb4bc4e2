"""How well the overlap step's pixel comparison separates shipped copies from distinct but similar images.

For procedural natural-like scenes (1/f colour noise with blurred objects) and for the synthetic brain's stimuli,
prints the Hamming distance of the pHash (afo.data.overlap) and the thumbnail correlation of:

- copies as datasets ship them: resized, cropped 2-5 % per side, re-encoded as JPEG (quality 70-90), combined;
- distinct but similar images: the same scene shifted by 10-25 % of its width, other crops of one texture,
  different synthetic stimuli (random pairs and each image's nearest neighbour by hash).

Then the share of each kind the default thresholds (max_distance, min_correlation) would call shared.

    PYTHONPATH=src python benchmarks/overlap_hash.py [--n 200] [--size 96]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures.images import crop, jpeg, natural_scene  # noqa: E402  (the tests' natural-like scenes)

from afo.data.overlap import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION, aligned_correlation, fingerprints, hamming


def store_size(image: np.ndarray, size: int) -> np.ndarray:
    """As a prepared store keeps it: squashed to size x size (bicubic, like afo.data.media.resize_image)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def shipped_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from fixtures.images import shipped_copy as ship

    cut = tuple(rng.uniform(0.02, 0.05, 4))
    return np.asarray(ship(image, rng.uniform(0.5, 1.5), cut, int(rng.integers(70, 91))).convert("RGB"))


def jpeg_array(image: np.ndarray, quality: int) -> np.ndarray:
    return np.asarray(jpeg(image, quality).convert("RGB"))


def compare(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    ha, ga, _ = fingerprints(a)
    hb, gb, _ = fingerprints(b)
    return hamming(ha, hb).diagonal().astype(int), aligned_correlation(ga, gb)


def report(label: str, dist: np.ndarray, corr: np.ndarray, max_distance: int, min_corr: float) -> None:
    hit = (dist <= max_distance) & (corr >= min_corr)
    print(
        f"{label:42s} distance median {np.median(dist):5.1f} [{dist.min():2d}, {dist.max():2d}]  "
        f"r median {np.median(corr):.3f} [{corr.min():.3f}, {corr.max():.3f}]  "
        f"hash-only hit {np.mean(dist <= max_distance):5.1%}  called shared {hit.mean():5.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=96, help="prepare.image_size of the stores")
    parser.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE)
    parser.add_argument("--min-correlation", type=float, default=DEFAULT_MIN_CORRELATION)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    s, n = args.size, args.n
    big = [natural_scene(rng, 300, 400) for _ in range(n)]
    originals = [store_size(x[:, 50:350], s) for x in big]
    kinds = {
        "copy: resized": [store_size(np.asarray(Image.fromarray(x[:, 50:350]).resize((150, 150))), s) for x in big],
        "copy: JPEG q70": [store_size(jpeg_array(x[:, 50:350], 70), s) for x in big],
        "copy: crop 5% per side": [store_size(crop(x[:, 50:350], 0.05, 0.05, 0.05, 0.05), s) for x in big],
        "copy: resize + crop 2-5% + JPEG": [store_size(shipped_copy(x[:, 50:350], rng), s) for x in big],
        "distinct: same scene shifted 10%": [store_size(x[:, 80:380], s) for x in big],
        "distinct: same scene shifted 17%": [store_size(x[:, 100:400], s) for x in big],
        "distinct: other crop of the texture": [store_size(x[:, 100:400][::-1], s) for x in big],
        "distinct: another scene": [originals[(i + 1) % n] for i in range(n)],
    }
    for label, images in kinds.items():
        report(label, *compare(originals, images), args.max_distance, args.min_correlation)

    from afo.simulate.stimuli import make_stimuli

    stim = make_stimuli(n, s, 8, np.random.default_rng(1)).images
    stim = [np.asarray(x) for x in stim]
    hs, gs, flat = fingerprints(stim)
    d = hamming(hs, hs).astype(int)
    np.fill_diagonal(d, 99)
    nearest = d.argmin(1)
    corr = aligned_correlation(gs, gs[nearest])
    report(
        "distinct: synthetic stimulus vs nearest hash",
        d[np.arange(n), nearest],
        corr,
        args.max_distance,
        args.min_correlation,
    )
    copies = [store_size(shipped_copy(np.asarray(Image.fromarray(x).resize((200, 200))), rng), s) for x in stim]
    report("copy: synthetic stimulus shipped", *compare(stim, copies), args.max_distance, args.min_correlation)
    print(f"flat synthetic stimuli (never matched by pixels): {int(flat.sum())} of {n}")

    # Speed, to size the overlap job on the real datasets (NSD up to 73k images, THINGS-EEG2 16.7k, ...).
    import time

    images = [store_size(x, 224) for x in big]
    t0 = time.perf_counter()
    fingerprints(images)
    per_image = (time.perf_counter() - t0) / len(images)
    many = np.random.default_rng(3).integers(0, 2**63, size=20000, dtype=np.uint64)
    t0 = time.perf_counter()
    for start in range(0, many.size, 512):
        hamming(many[start : start + 512], many)
    per_pair = (time.perf_counter() - t0) / many.size**2
    print(
        f"speed: {per_image * 1e3:.2f} ms per 224-px image fingerprinted, {per_pair * 1e9:.2f} ns per hash pair; "
        f"NSD (73k) x THINGS-EEG2 (16.7k): {73000 * per_image + 16740 * per_image:.0f} s + "
        f"{73000 * 16740 * per_pair:.0f} s"
    )


if __name__ == "__main__":
    main()
