#!/usr/bin/env bash
# The GPU benchmark in one command, for a CUDA machine without network where only torch, timm, torchvision,
# lightning (or pytorch-lightning), h5py, numpy, pandas, scipy, scikit-learn and pyyaml are installed (issue 10):
#   1. the readout benchmark (benchmarks/readout.py) at the realistic size (8 subjects x 8000 voxels, batch 128);
#   2. benchmarks/gpu_bench.py: timed training steps of one paper-size model in bf16 and fp16, with the backbone
#      features from a file (cache: disk) and with a DINOv2-ViT-B/14-shaped backbone in the step (cache: none);
#      images/s, peak GPU memory, GPU utilisation, and the projected GPU-hours of config/paper.yaml's recipe from
#      the committed job list benchmarks/results/jobs_paper.json.
# Sized to stay under 5 minutes on one modern GPU (25 steps per configuration; not yet run on a GPU). Nothing is downloaded or installed: afo is
# used from src/, AdaBelief from the pure-Python wheels in benchmarks/wheels/ when it is not installed.
#
#   benchmarks/gpu.sh                 # results in benchmarks/out/gpu/ (readout.txt, gpu_bench.txt, gpu_bench.json)
#   OUT_DIR=/somewhere benchmarks/gpu.sh
#   benchmarks/gpu.sh --tiny          # toy sizes on any machine, CPU included (tests/test_gpu_bench.py)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
tiny=()
if [[ "${1:-}" == "--tiny" ]]; then tiny=(--tiny); fi
out="${OUT_DIR:-$here/out/gpu}"
mkdir -p "$out"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"

if [[ ${#tiny[@]} -gt 0 ]]; then
    readout=(--batch 2 --subjects 2 --voxels 50 --layers 2 --dim 4 --size 4 --repeats 1)
else
    readout=(--batch 128 --subjects 8 --voxels 8000 --layers 12 --dim 256 --size 16 --repeats 5)
fi
echo "== readout benchmark ($(date -u +%FT%TZ))"
"$python" "$here/readout.py" "${readout[@]}" | tee "$out/readout.txt"
echo "== training steps and projection ($(date -u +%FT%TZ))"
"$python" "$here/gpu_bench.py" "${tiny[@]}" --out "$out/gpu_bench.json" | tee "$out/gpu_bench.txt"
echo "== done ($(date -u +%FT%TZ)): $out"
