"""Readout benchmark: step time (forward + backward) and peak memory, reference vs efficient.

The realistic size is 8 subjects x 8000 sampled voxels, 12 layers of 16 x 16, D = 256,
batch 128; that is the default on a GPU. On a CPU the default is scaled down (batch 8, 2 subjects,
4000 voxels) so that both readouts finish in about two minutes on 2 cores; the output says so.

Only the readout is timed (ConvBlocks and necks are the same for both): the features ``[B, D, h, w]``
of every layer, and per subject ``u``, ``eta``, head weight and bias and the global features, are
leaves that require grad, and one step is the readout of every subject, ``sum_s mean(out_s ** 2)``
and its backward.

Memory, two numbers: "peak", on CUDA ``torch.cuda.max_memory_allocated`` above what the inputs take,
on a CPU the peak resident set size (``ru_maxrss``, each variant in a fresh process) above the
resident size once the inputs exist (``tracemalloc`` does not see torch's allocations; RSS is coarse,
allocator caching included); and "kept for backward", the exact bytes autograd saves between forward
and backward (counted with ``saved_tensors_hooks``), which is what grows with batch x voxels. Step time
is the median (and min) over ``--repeats`` steps after one warm-up; on a shared CPU the min is the
less disturbed figure, and the load average is printed.

    python benchmarks/readout.py                  # CPU: scaled down; GPU: realistic size
    python benchmarks/readout.py --batch 128 --subjects 8 --voxels 8000   # any size
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time

import torch

from afo.model.readout import efficient_readout, pixel_table, reference_readout


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


Features = list[torch.Tensor]  # per layer [B, D, h, w]
Subjects = list[tuple[torch.Tensor, ...]]  # per subject (u, eta, weight, bias, global_features)


def _inputs(cfg: dict, device: torch.device) -> tuple[Features, Subjects]:
    g = torch.Generator(device="cpu").manual_seed(0)
    B, D, L, S, n, h = cfg["batch"], cfg["dim"], cfg["layers"], cfg["subjects"], cfg["voxels"], cfg["size"]

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device).requires_grad_()

    features = [leaf(B, D, h, h) for _ in range(L)]
    subjects = []
    for _ in range(S):
        u = (torch.rand(n, 2, generator=g) * 2 - 1).to(device).requires_grad_()
        eta = torch.randn(n, L, generator=g).softmax(-1).to(device).requires_grad_()
        subjects.append((u, eta, leaf(n, D), leaf(n), leaf(B, L, D)))
    return features, subjects


def _loss(variant: str, chunk: int | None, features: Features, subjects: Subjects) -> torch.Tensor:
    loss = features[0].new_zeros(())
    # As EncodingModel does: the subject-free pixel table is built once per batch, shared by all subjects.
    table = pixel_table(features) if variant == "efficient" else None
    for u, eta, w, b, q in subjects:
        if variant == "reference":
            out = reference_readout(features, u, eta, w, b, global_features=q)
        else:
            out = efficient_readout(features, u, eta, w, b, global_features=q, chunk=chunk, table=table)
        loss = loss + out.pow(2).mean()
    return loss


def _step(variant: str, chunk: int | None, features: Features, subjects: Subjects) -> None:
    _loss(variant, chunk, features, subjects).backward()
    for t in features + [t for s in subjects for t in s]:
        t.grad = None


def _saved_bytes(variant: str, chunk: int | None, features: Features, subjects: Subjects) -> int:
    """Bytes autograd keeps from forward to backward beyond the inputs themselves (exact; a tensor saved
    by several nodes counted once)."""
    inputs = {t.data_ptr() for t in features + [t for s in subjects for t in s]}
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in inputs:
            seen[(t.data_ptr(), tuple(t.shape), t.stride())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(variant, chunk, features, subjects)
    del loss
    return sum(seen.values())


def measure(variant: str, chunk: int | None, cfg: dict, device_name: str) -> dict:
    """Time ``cfg['repeats']`` steps after one warm-up; peak memory of the whole run above the inputs."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    features, subjects = _inputs(cfg, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    try:
        for i in range(cfg["repeats"] + 1):
            sync()
            t0 = time.perf_counter()
            _step(variant, chunk, features, subjects)
            sync()
            if i > 0:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return {"variant": variant, "chunk": chunk, "error": "out of memory"}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    saved = _saved_bytes(variant, chunk, features, subjects)
    return {
        "variant": variant,
        "chunk": chunk,
        "step_s": statistics.median(times),
        "step_min_s": min(times),
        "peak_mib": peak / 2**20,
        "saved_mib": saved / 2**20,
    }


def _child(args: tuple) -> dict:
    torch.set_num_threads(args[-1])
    return measure(*args[:-1])


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--batch", type=int, default=128 if cuda else 8)
    p.add_argument("--subjects", type=int, default=8 if cuda else 2)
    p.add_argument("--voxels", type=int, default=8000 if cuda else 4000)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--size", type=int, default=16, help="h = w of every layer")
    p.add_argument("--chunk", type=int, default=1000, help="voxels per chunk for the chunked efficient readout")
    p.add_argument("--repeats", type=int, default=3 if not cuda else 10)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--skip-reference", action="store_true")
    a = p.parse_args(argv)
    cfg = {k: getattr(a, k) for k in ("batch", "subjects", "voxels", "layers", "dim", "size", "repeats")}
    realistic = dict(batch=128, subjects=8, voxels=8000, layers=12, dim=256, size=16)
    scaled = any(cfg[k] != v for k, v in realistic.items())

    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    if a.device.startswith("cuda"):
        machine = torch.cuda.get_device_name(0)
    else:
        machine = f"CPU {_cpu_name()} ({os.cpu_count()} cores), {threads} torch threads"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {machine}; torch {torch.__version__}; python {platform.python_version()}; load average {load}")
    size = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "repeats")
    if scaled:
        size += " (SCALED DOWN from the realistic 8 subjects x 8000 voxels, 12 layers, D=256, batch 128)"
    print(f"size: {size}")
    materialised = cfg["batch"] * cfg["voxels"] * cfg["layers"] * cfg["dim"] * 4 / 2**20
    print(f"one subject's B x n x L x D float32 tensor: {materialised:.0f} MiB")

    variants = [("efficient", None), ("efficient", a.chunk)]
    if not a.skip_reference:
        variants.insert(0, ("reference", None))
    results = []
    ctx = mp.get_context("spawn")
    for variant, chunk in variants:
        if a.device == "cpu":  # fresh process: ru_maxrss is a high-water mark that cannot be reset
            with ctx.Pool(1) as pool:
                r = pool.apply(_child, ((variant, chunk, cfg, a.device, threads),))
        else:
            torch.cuda.empty_cache()
            r = measure(variant, chunk, cfg, a.device)
        results.append(r)
        label = variant + ("" if chunk is None else f" (chunk={chunk})")
        if "error" in r:
            print(f"{label:24s} {r['error']}")
        else:
            print(
                f"{label:24s} step median {r['step_s'] * 1000:8.1f} ms (min {r['step_min_s'] * 1000:8.1f})"
                f"   peak {r['peak_mib']:8.1f} MiB   kept for backward {r['saved_mib']:8.1f} MiB"
            )
        sys.stdout.flush()
    print(json.dumps({"machine": machine, "config": cfg, "scaled": scaled, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
