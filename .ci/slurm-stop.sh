#!/usr/bin/env bash
# Stops the daemons that .ci/slurm-setup.sh started, by the pids it recorded (.ci/services.sh); a daemon it did
# not start (one that was running before it, or someone else's) is left alone.
#
#   .ci/slurm-stop.sh               every daemon the setup started
#   .ci/slurm-stop.sh --since NS    only those it started at or after NS (ns since the epoch, `date +%s%N`): what
#                                   one session (.ci/run, a pytest run) started, not a test cluster up before it
set -euo pipefail
# shellcheck source=.ci/services.sh
source "$(dirname "$0")/services.sh"

since=0
if (($#)); then
    if [[ $# -ne 2 || $1 != --since || ! $2 =~ ^[0-9]+$ ]]; then
        echo "usage: ${0##*/} [--since NANOSECONDS_SINCE_EPOCH]" >&2
        exit 2
    fi
    since=$2
fi
# Dependents first: the node, the controller, the accounting daemon, its database, then munge, which all use.
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    stop_recorded "$name" "$since"
done
