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
# Minutes per unit: the base unit of seed 3 took 401 s (6.7 min: ~1.5 min of data, 8 jobs trained to patience,
# ~0.65 min each) with one other job beside it; the others are scaled from it by their job count and a guessed cost
# factor for the wider conv blocks (`recipe.py run --dry-run` prints them). Replace them with the units'
# wall_seconds (unit.json) as they run.
#
# variant    models                                   jobs  ~min/unit  seeds        ~min
# base       naivemix, S1, S2, afo (S3)                  8          7  3-7 (5)        33
# baselines  NoDK, randROI S1/S2/S3                     10          7  3-7 (5)        35
# s2plus     S2+1, S3 after S2+1 (reuses base 0-2)       4          4  3-5 (3)        11
# table2     FrozenRM, FrozenLS, NoRegLS x2, w/o GP      5          4  3-5 (3)        13
# base2x     the base models, 2x epochs and patience     8         10  3 (1)          10
# width96    naivemix, S1, S2, afo at conv width 96      8         10  3-5 (3)        30
# width192   the same at conv width 192                  8         20  3-5 (3)        60
# width24    the same at conv width 24                   8          5  3-5 (3)        15
# (the sweep's width 48 is the base unit)                                    total ~207 min, ~3.5 h
set -euo pipefail
cd "$(dirname "$0")/.."
unit() {  # unit VARIANT SEED
    .venv/bin/python benchmarks/recipe.py run --variants "$1" --seeds "$2"
    if [[ "${COMMIT:-0}" == 1 && -d "benchmarks/results/recipe/$1/seed$2" ]]; then
        git add "benchmarks/results/recipe/$1/seed$2"
        # A unit that was already committed (skipped) has nothing new: commit only what changed.
        git diff --cached --quiet -- "benchmarks/results/recipe/$1/seed$2" ||
            git commit -m "Recipe unit $1 seed $2: raw output" -- "benchmarks/results/recipe/$1/seed$2"
    fi
}
set -x
for seed in 3 4 5 6 7; do unit base "$seed"; done      # Table 3 core rows; every other unit of a seed stands on it
for seed in 3 4 5 6 7; do unit baselines "$seed"; done # NoDK, randROI S1-S3
for seed in 3 4 5; do unit s2plus "$seed"; done        # S2+1 and the S3 after it
for seed in 3 4 5; do unit table2 "$seed"; done        # Table 2 ablations (FullTopyNeck = naivemix of base)
unit base2x 3                                          # the config's convergence check (recipe.py report prints it)
for width in 96 192 24; do                             # the capacity sweep
    for seed in 3 4 5; do unit "width$width" "$seed"; done
done
