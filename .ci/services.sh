# The bookkeeping of the daemons that .ci/slurm-setup.sh starts, and its refusals; sourced by it and by
# .ci/slurm-stop.sh (tests/test_ci_services.py tests the functions one by one).
#
# Each daemon the setup starts gets a record $AFO_SERVICES_STATE/NAME.pid: its pid, its start time in clock ticks
# since boot (field 22 of /proc/PID/stat: with the pid it names the process, not a later one that reuses the
# pid) and when it was recorded (nanoseconds since the epoch, what `slurm-stop.sh --since` compares). A daemon is
# ours while its record names a live process, so a second setup run finds its own daemons up and still ours.
# Records live under /run: a reboot, which ends the daemons, clears them.
AFO_SERVICES_STATE=${AFO_SERVICES_STATE:-/run/afo-test-services}

# proc_start PID: the process's start time in clock ticks since boot; fails if it has ended (zombies too: where
# the container's pid 1 reaps nothing, a stopped daemon stays a zombie).
proc_start() {
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # The fields after the command name, which is in parentheses and may contain spaces: state is the first,
    # the start time the 20th.
    read -r -a fields <<<"${stat##*) }"
    [[ ${fields[0]} != Z ]] || return 1
    echo "${fields[19]}"
}

# record NAME PID: the setup started NAME, which is process PID.
record() {
    local ticks
    ticks=$(proc_start "$2") || { echo "${0##*/}: $1 (pid $2) ended right after it started" >&2; return 1; }
    mkdir -p "$AFO_SERVICES_STATE"
    echo "$2 $ticks $(date +%s%N)" >"$AFO_SERVICES_STATE/$1.pid"
}

# ours NAME: NAME's record names a live process.
ours() {
    local file=$AFO_SERVICES_STATE/$1.pid pid ticks ns
    [[ -f $file ]] || return 1
    read -r pid ticks ns <"$file"
    [[ -n $ticks && $(proc_start "$pid") == "$ticks" ]]
}

# stop_recorded NAME [SINCE]: stop NAME if its record names a live process recorded at or after SINCE (ns since
# the epoch; default: whenever), SIGTERM and after 60 s SIGKILL, then forget it. Only the recorded process gets a
# signal: a NAME started by someone else, or a process that reuses the pid, never does.
stop_recorded() {
    local file=$AFO_SERVICES_STATE/$1.pid since=${2:-0} pid ticks ns i
    [[ -f $file ]] || return 0
    read -r pid ticks ns <"$file"
    ((ns >= since)) || return 0 # up before the session that asks: not that session's to stop
    if [[ $(proc_start "$pid") == "$ticks" ]]; then
        echo "${0##*/}: stopping $1 (pid $pid)"
        if ! kill "$pid" 2>/dev/null && [[ $(proc_start "$pid") == "$ticks" ]]; then
            echo "${0##*/}: cannot signal $1 (pid $pid): run this as root" >&2
            return 1
        fi
        for ((i = 0; i < 240; i++)); do
            [[ $(proc_start "$pid") == "$ticks" ]] || break
            sleep 0.25
        done
        if [[ $(proc_start "$pid") == "$ticks" ]]; then
            echo "${0##*/}: $1 (pid $pid) did not stop within 60 s of SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

# pids_named NAME: the pids of the live processes whose command name is NAME (from /proc: procps may be
# missing).
pids_named() {
    local comm name pid
    for comm in /proc/[0-9]*/comm; do
        { read -r name <"$comm"; } 2>/dev/null || continue
        pid=${comm#/proc/}
        pid=${pid%/comm}
        if [[ $name == "$1" ]] && proc_start "$pid" >/dev/null; then
            echo "$pid"
        fi
    done
}

# port_listened PORT: something listens on TCP port PORT here (from /proc/net: ss may be missing).
port_listened() {
    local files=() f
    for f in /proc/net/tcp /proc/net/tcp6; do [[ -r $f ]] && files+=("$f"); done
    # Local address HEXIP:HEXPORT in column 2, state 0A = LISTEN in column 4.
    awk -v port="$(printf '%04X' "$1")" \
        'FNR > 1 && $4 == "0A" && substr($2, length($2) - 3) == port {found = 1} END {exit !found}' "${files[@]}"
}

# refuse LINE: stop before changing anything, saying why in one line (exit status 3: refused, not failed).
refuse() {
    echo "slurm-setup.sh: $*" >&2
    exit 3
}

# refuse_foreign_config FILE...: a FILE that exists must have been written by the setup (its first line says so):
# another cluster's configuration is not written over.
refuse_foreign_config() {
    local file first
    for file; do
        [[ -e $file ]] || continue
        first=$(head -n 1 "$file")
        [[ $first == "# Written by .ci/slurm-setup.sh"* ]] \
            || refuse "$file was not written by this script (another cluster's configuration); not writing over it: run the SLURM tests on a machine without SLURM set up"
    done
}

# refuse_taken NAME PORT [OTHER_NAME...]: unless NAME is ours, a running NAME (or OTHER_NAME, its older command
# name) or a listener on PORT (NAME's) belongs to a setup that ours would collide with (sockets, ports, config).
refuse_taken() {
    local name=$1 port=$2 other pids
    ours "$name" && return 0
    for other in "${@:3}" "$name"; do
        pids=$(pids_named "$other" | paste -sd, -)
        [[ -z $pids ]] \
            || refuse "a $other that this script did not start is running (pid $pids); not reconfiguring it: stop it, or run the SLURM tests on another machine"
    done
    if port_listened "$port"; then
        refuse "port $port ($name's) is in use by a program that this script did not start; not starting $name beside it: stop that program, or run the SLURM tests on another machine"
    fi
}
