#!/usr/bin/env bash
# Every run behind benchmarks/RESULTS.md's recipe tables and investigation (issue 11), in priority order: the
# models the issue needs on 3 seeds first, then the other rows, then the investigation's variants. Each line
# resumes what an earlier call finished (Snakemake), so the script can be stopped and started again.
#
#   nice -n 19 benchmarks/recipe_all.sh            # about 95 min on a 2-core machine shared with other work
#   .venv/bin/python benchmarks/recipe.py report   # the tables, from whatever has finished
#   .venv/bin/python benchmarks/recipe.py compare --tags base trainable_neck veroi6 --seeds 0 1
set -euo pipefail
cd "$(dirname "$0")/.."
run() { .venv/bin/python benchmarks/recipe.py run "$@"; }
set -x
run --seeds 0 1 2 --models naivemix stage1 stage2 afo                                        # Table 3 core rows
run --seeds 0 1 2 --models nodk randroi_stage1 randroi_stage2 randroi                        # NoDK, randROI S1-S3
run --seeds 0 1 2 --tag s2plus --s2-plus-one --reuse-from --reuse data stage0 rois stage1 stage2 --models stage2 afo  # S2+1
run --seeds 0 1 2 --models frozenrm frozenls noregls hardls noglobalpool                     # Table 2
# The investigation: chosen on seed 0, reported on seed 1.
run --seeds 0 1 --tag trainable_neck --set afo.pretrained_neck=false --reuse-from --reuse data stage0 rois --models stage1 stage2 afo
run --seeds 0 1 --tag veroi6 --set afo.veroi.n_rois=6 --reuse-from --reuse data stage0 --models stage1 stage2 afo
