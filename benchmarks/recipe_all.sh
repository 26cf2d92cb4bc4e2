#!/usr/bin/env bash
# Every unit (variant x seed) behind benchmarks/RESULTS.md's recipe tables on converged models, in priority order.
# A unit whose raw output is already under benchmarks/results/recipe/<variant>/seed<N>/ is skipped, so the script
# can be stopped and started again over several working days; a unit stopped half-way resumes what Snakemake had
# finished. Report seeds are 3-7 (seeds 0-2 chose settings: recipe.py's CHOOSE_SEEDS).
#
#   nice -n 19 benchmarks/recipe_all.sh                     # COMMIT=1: commit each unit's raw output when it is done
#   .venv/bin/python benchmarks/recipe.py run --variants base baselines s2plus table2 width96 width192 width24 \
#       --seeds 3 4 5 6 7 --dry-run                         # which units are done, and the estimates
#   .venv/bin/python benchmarks/recipe.py report --csv benchmarks/results/recipe/report   # tables from raw outputs
#
# Minutes per unit are estimates for the shared 2-core machine, not measurements: ~6 min of data per seed, then
# ~3 min per training job trained to patience (the 10-epoch jobs took ~40 s on free cores), times a guessed cost
# factor for the wider conv blocks. Replace them with the units' wall_seconds (unit.json) once a few have run.
#
# variant    models                                   jobs  ~min/unit  seeds        ~min
# base       naivemix, S1, S2, afo (S3)                  8         30  3-7 (5)       150
# baselines  NoDK, randROI S1/S2/S3                     10         31  3-7 (5)       155
# s2plus     S2+1, S3 after S2+1 (reuses base 0-2)       4         13  3-5 (3)        39
# table2     FrozenRM, FrozenLS, NoRegLS x2, w/o GP      5         16  3-5 (3)        48
# width96    naivemix, S1, S2, afo at conv width 96      8         39  3-5 (3)       117
# width192   the same at conv width 192                  8         85  3-5 (3)       255
# width24    the same at conv width 24                   8         20  3-5 (3)        60
# (the sweep's width 48 is the base unit)                                    total ~824 min, ~13.7 h
# Past the ~12 CPU-hours planned: width24 runs last and is the first to cut (48, 96, 192 are three sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
unit() {  # unit VARIANT SEED
    .venv/bin/python benchmarks/recipe.py run --variants "$1" --seeds "$2"
    if [[ "${COMMIT:-0}" == 1 && -d "benchmarks/results/recipe/$1/seed$2" ]]; then
        git add "benchmarks/results/recipe/$1/seed$2"
        git commit -m "Recipe unit $1 seed $2: raw output" -- "benchmarks/results/recipe/$1/seed$2"
    fi
}
set -x
for seed in 3 4 5 6 7; do unit base "$seed"; done      # Table 3 core rows; every other unit of a seed stands on it
for seed in 3 4 5 6 7; do unit baselines "$seed"; done # NoDK, randROI S1-S3
for seed in 3 4 5; do unit s2plus "$seed"; done        # S2+1 and the S3 after it
for seed in 3 4 5; do unit table2 "$seed"; done        # Table 2 ablations (FullTopyNeck = naivemix of base)
for width in 96 192 24; do                             # the capacity sweep
    for seed in 3 4 5; do unit "width$width" "$seed"; done
done
