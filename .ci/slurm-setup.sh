#!/usr/bin/env bash
# A one-node SLURM for testing the workflow's SLURM profile (tests/test_slurm.py, docs/slurm.md).
#
# Run as root on Debian 12 (or Ubuntu); idempotent: a second run finds everything up and changes nothing.
# Installs Debian's SLURM 22.05 packages, then writes the configs and starts, without systemd:
#   munged                       authentication between the SLURM daemons and commands
#   MariaDB + slurmdbd           job accounting, so that `sacct` (the executor plugin's status check) works
#   slurmctld + slurmd           the controller and this machine as its only node
# The node has fake GPUs: a `gpu` GRES backed by character devices with /dev/null's numbers, so that jobs
# asking for --gpus=1 are schedulable (nothing on it computes; afo runs on the CPU there). Partitions `cpu`
# (default) and `gpu`; `cpu` carries a QOS that refuses GPU requests at submission, as real clusters do. The
# account `afo_ci` is every local user's default account (the case the shipped profile expects: no account
# named in it). MinJobAge=300 (SLURM's default): squeue keeps finished jobs long enough for the
# executor plugin's squeue status check.
#
# Every daemon it starts is recorded (.ci/services.sh: /run/afo-test-services/NAME.pid) and stopped by
# .ci/slurm-stop.sh; a munged that was already running is used and left alone. It refuses (exit status 3, one
# line, nothing changed) to touch a SLURM or MariaDB it did not start: a slurm.conf, gres.conf or slurmdbd.conf
# it did not write, a slurmctld, slurmd, slurmdbd or MariaDB running, or their ports taken.
#
# Environment: AFO_SLURM_NODE_MEM_MB caps the node's memory SLURM schedules (default: what slurmd detects).
# Takes about a minute on a fresh machine (most of it apt), a second when everything is already up.
set -euo pipefail
# shellcheck source=.ci/services.sh
source "$(dirname "$0")/services.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "slurm-setup.sh: must run as root (it installs packages and starts daemons)" >&2
    exit 2
fi

CLUSTER=afo-ci
ACCOUNT=afo_ci
NODE=$(hostname -s)
FAKE_GPUS=2                     # as many as the test node has CPUs: GPU jobs need not queue for one
DB_PASS=afo-ci-slurmdbd         # a local test database reachable only through localhost
LOG=/var/log/slurm

log() { echo "slurm-setup: $*"; }

# ---- someone else's SLURM or MariaDB: refused before anything is installed or written ----------------------
refuse_foreign_config /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/slurm/slurmdbd.conf
refuse_taken slurmctld 6817
refuse_taken slurmd 6818
refuse_taken slurmdbd 6819
refuse_taken mariadbd 3306 mysqld

# ---- packages ---------------------------------------------------------------------------------------------
need=()
for pair in slurmctld:slurmctld slurmd:slurmd slurmdbd:slurmdbd sbatch:slurm-client munged:munge \
            mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${pair%%:*} ]] || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's maintainer scripts start an installed daemon (invoke-rc.d) unless policy-rc.d says no; started
    # there, it would be outside the records and outlive the tests. Docker images ship this file; elsewhere it
    # is ours for the install only.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# Written by .ci/slurm-setup.sh for the length of its apt-get install\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    # No recommends: the daemons need nothing else, and this keeps the install well under a minute.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if [[ $(trap -p EXIT) ]]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi

mkdir -p "$LOG" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /run/slurm /run/munge /run/mysqld /etc/slurm
chown slurm:slurm "$LOG" /var/lib/slurm/slurmctld /run/slurm
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld

# write_if_changed FILE MODE OWNER: stdin -> FILE; exit status 0 if the content changed.
write_if_changed() {
    local file=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$tmp" "$file"
    rm -f "$tmp"
    return 0
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for ((i = 0; i < limit * 4; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    echo "slurm-setup.sh: $what did not come up within ${limit}s; see $LOG" >&2
    return 1
}

# start_recorded NAME PIDFILE COMMAND...: start the daemon NAME, which writes PIDFILE, and record it as ours.
start_recorded() {
    local name=$1 pidfile=$2
    shift 2
    log "starting $name"
    rm -f "$pidfile" # a stale one would name an ended (or another) process
    "$@"
    wait_for 30 "$name's pid file $pidfile" sh -c "kill -0 \"\$(cat '$pidfile')\""
    record "$name" "$(cat "$pidfile")"
}

# ---- munge ------------------------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    start_recorded munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    wait_for 10 munged sh -c 'munge -n | unmunge'
fi

# ---- MariaDB and slurmdbd ----------------------------------------------------------------------------------
if ! ours mariadbd; then
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
    # mariadbd itself, not mysqld_safe: that watchdog would restart it when slurm-stop.sh stops it.
    start_recorded mariadbd /run/mysqld/mysqld.pid \
        sh -c "setsid mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid >>$LOG/mariadb.log 2>&1 </dev/null &"
    wait_for 60 MariaDB mariadb-admin ping
fi
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

dbd_changed=0
write_if_changed /etc/slurm/slurmdbd.conf 600 slurm:slurm <<EOF && dbd_changed=1
# Written by .ci/slurm-setup.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
if ours slurmdbd && ((dbd_changed)); then
    stop_recorded slurmdbd
fi
ours slurmdbd || start_recorded slurmdbd /run/slurm/slurmdbd.pid slurmdbd

# ---- slurm.conf -------------------------------------------------------------------------------------------
# The node line as slurmd sees the hardware (CPUs, sockets, memory), plus the fake GPU.
hw=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //')
if [[ -n ${AFO_SLURM_NODE_MEM_MB:-} ]]; then
    hw=$(sed -E "s/RealMemory=[0-9]+/RealMemory=${AFO_SLURM_NODE_MEM_MB}/" <<<"$hw")
fi
# /dev/null's major/minor: opening one is harmless, and SLURM sees real character devices.
gpu_files=/dev/afo-fake-gpu[0-$((FAKE_GPUS - 1))]
for ((i = 0; i < FAKE_GPUS; i++)); do
    [[ -c /dev/afo-fake-gpu$i ]] || mknod -m 666 "/dev/afo-fake-gpu$i" c 1 3
done

conf_changed=0
write_if_changed /etc/slurm/slurm.conf 644 root:root <<EOF && conf_changed=1
# Written by .ci/slurm-setup.sh: a one-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups in a container: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations,limits,qos
JobCompType=jobcomp/none
# sacct shows the comment the executor plugin gives each job (rule_<name>_wildcards_...).
AccountingStoreFlags=job_comment
NodeName=$NODE NodeAddr=127.0.0.1 $hw Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP QOS=cpu_no_gpu
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
write_if_changed /etc/slurm/gres.conf 644 root:root <<EOF && conf_changed=1
# Written by .ci/slurm-setup.sh: fake GPUs (character devices with /dev/null's numbers).
NodeName=$NODE Name=gpu File=$gpu_files
EOF

# ---- accounting: cluster, account, users, QOS (before slurmctld reads the partition QOS) --------------------
wait_for 30 slurmdbd sacctmgr -n list cluster
sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
if ! sacctmgr -n -P list qos cpu_no_gpu format=name | grep -qx cpu_no_gpu; then
    # DenyOnLimit: a GPU job sent to `cpu` is refused by sbatch instead of pending forever. The GPU limit
    # itself is set below, once slurmctld has registered the gres/gpu TRES with the database.
    sacctmgr -i -Q add qos cpu_no_gpu Flags=DenyOnLimit >/dev/null
fi
if ! sacctmgr -n -P list account "$ACCOUNT" format=account | grep -qx "$ACCOUNT"; then
    sacctmgr -i -Q add account "$ACCOUNT" Cluster="$CLUSTER" Description="afo CI" Organization=afo >/dev/null
fi
# Every local user gets the account as default (root runs the test; ordinary users may try it by hand).
for user in root $(getent passwd | awk -F: '$3 >= 1000 && $3 < 60000 {print $1}'); do
    if ! sacctmgr -n -P list assoc user="$user" account="$ACCOUNT" format=user | grep -qx "$user"; then
        sacctmgr -i -Q add user "$user" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" \
            Cluster="$CLUSTER" QOS=normal,cpu_no_gpu >/dev/null
    fi
done

# ---- slurmctld and slurmd --------------------------------------------------------------------------------
if ((conf_changed)) && { ours slurmctld || ours slurmd; }; then
    log "configuration changed: restarting slurmctld and slurmd"
    stop_recorded slurmd
    stop_recorded slurmctld
fi
ours slurmctld || start_recorded slurmctld /run/slurm/slurmctld.pid slurmctld
wait_for 30 slurmctld scontrol ping
ours slurmd || start_recorded slurmd /run/slurm/slurmd.pid slurmd
node_idle() { sinfo -h -n "$NODE" -o %t | grep -Eq '^(idle|mix|alloc)'; }
if ! wait_for 30 "node $NODE" node_idle; then
    scontrol update NodeName="$NODE" State=RESUME || true
    wait_for 15 "node $NODE" node_idle
fi
if ! sacctmgr -n -P list qos cpu_no_gpu format=maxtres | grep -q 'gres/gpu=0'; then
    wait_for 30 "the gres/gpu TRES" sh -c 'sacctmgr -n -P list tres | grep -q "^gres|gpu|"'
    sacctmgr -i -Q modify qos cpu_no_gpu set MaxTRESPerJob=gres/gpu=0 >/dev/null
fi
log "up: $(sinfo -h -o '%P %t %c CPUs %m MB %G' | tr '\n' ';')"
