#!/usr/bin/env bash
# A throw-away single-node SLURM cluster for tests and CI, without systemd.
#
#   scripts/slurm-cluster.sh start  DIR   write DIR/slurm.conf, start munged, slurmctld and slurmd, wait for the node
#   scripts/slurm-cluster.sh stop   DIR   cancel the cluster's jobs, stop the daemons by their pid files
#   scripts/slurm-cluster.sh status DIR   the daemons' pids and `sinfo` (exit 1 when a daemon is not running)
#
# Needs root and the Debian packages slurm-wlm and munge (`apt-get install -y --no-install-recommends slurm-wlm
# munge`; their services do not start by themselves). Everything lives under DIR: the munge key and socket, the
# slurm.conf, state, spool, pid and log files. DIR and its parents must be world-executable (munged checks the path to
# its socket), so create it with e.g. `mktemp -d /tmp/connectomix-slurm.XXXXXX && chmod 755 DIR`.
#
# One global path is touched: SLURM's client commands only read $SLURM_CONF or /etc/slurm/slurm.conf, and the
# snakemake SLURM plugin runs `srun` inside each job with the SLURM_* variables (SLURM_CONF included) removed. So
# `start` links /etc/slurm/slurm.conf to DIR/slurm.conf when no slurm.conf is there (and refuses to start when a
# different one is), and `stop` removes that link again.
#
# The node gets this machine's CPUs (nproc) and 90% of its memory (free -m). There is no accounting daemon
# (AccountingStorageType=accounting_storage/none), so `sacct` does not work: run snakemake with
# `--slurm-status-command squeue`. MinJobAge=3600 keeps finished jobs visible to squeue for an hour.
#
# After `start`, use the cluster with: export SLURM_CONF=DIR/slurm.conf
# Ports: SLURM_TEST_CTLD_PORT (default 6817) and SLURM_TEST_SLURMD_PORT (default 6818).
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
dir=$(realpath -m "$2")
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"
global_conf=/etc/slurm/slurm.conf

log() { echo "slurm-cluster: $*" >&2; }

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) did not stop on SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
    cat > "$conf" <<EOF
# Written by scripts/slurm-cluster.sh: a single-node test cluster under $dir.
ClusterName=connectomix
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURM_TEST_CTLD_PORT:-6817}
SlurmdPort=${SLURM_TEST_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket.2
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
SlurmctldTimeout=60
SlurmdTimeout=120
InactiveLimit=0
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    log "node $host: $cpus CPUs, $mem MB"
}

wait_for_node() {  # until sinfo reports the node idle (60 s)
    local state=""
    for _ in $(seq 120); do
        state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
        case $state in
            idle|mixed|allocated) log "node is $state"; return 0 ;;
            *drain*|down*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    log "node not ready (state '$state'); logs under $dir/log"
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    return 1
}

start() {
    for cmd in munged mungekey slurmctld slurmd sbatch squeue sinfo scontrol; do
        command -v "$cmd" >/dev/null || { log "$cmd not found (apt-get install slurm-wlm munge)"; exit 1; }
    done
    [[ $(id -u) -eq 0 ]] || { log "must run as root (slurmd starts jobs as their users)"; exit 1; }
    if pid_alive "$dir/run/slurmctld.pid"; then log "already running under $dir"; exit 0; fi
    if [[ -L $global_conf && ! -e $global_conf ]]; then
        log "removing the stale link $global_conf -> $(readlink "$global_conf") (a cluster that was not stopped)"
        rm -f "$global_conf"
    fi
    if [[ -e $global_conf ]] && [[ $(readlink -f "$global_conf") != "$conf" ]]; then
        log "$global_conf exists and is not ours: this machine has a SLURM configuration; not starting"
        exit 1
    fi
    mkdir -p "$dir"/{munge,state,spool,run,log}
    chmod 755 "$dir" "$dir/munge"
    write_conf

    # munge: own key and socket under DIR (munged checks that the path to the socket is world-executable)
    [[ -s $dir/munge/munge.key ]] || mungekey --create --keyfile="$dir/munge/munge.key"
    chmod 600 "$dir/munge/munge.key"
    munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket.2" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
    for _ in $(seq 20); do [[ -S $dir/munge/munge.socket.2 ]] && break; sleep 0.25; done
    pid_alive "$dir/munge/munged.pid" || { log "munged did not start"; cat "$dir/munge/munged.log" >&2; exit 1; }

    mkdir -p "$(dirname "$global_conf")"
    [[ -L $global_conf ]] || ln -s "$conf" "$global_conf"

    # -c: start clean (no state from an earlier run)
    slurmctld -c -f "$conf"
    for _ in $(seq 40); do scontrol ping >/dev/null 2>&1 && break; sleep 0.25; done
    slurmd -f "$conf"
    wait_for_node
    log "started; export SLURM_CONF=$conf"
}

stop() {
    if pid_alive "$dir/run/slurmctld.pid"; then
        # the cluster's jobs first (their steps are not children of slurmd)
        scancel --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 40); do
            [[ -z $(squeue -h -t PENDING,RUNNING,COMPLETING -o %A 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    stop_pidfile slurmd "$dir/run/slurmd.pid"
    stop_pidfile slurmctld "$dir/run/slurmctld.pid"
    stop_pidfile munged "$dir/munge/munged.pid"
    if [[ -L $global_conf && $(readlink "$global_conf") == "$conf" ]]; then
        rm -f "$global_conf"
    fi
}

status() {
    local rc=0
    for d in munged:"$dir/munge/munged.pid" slurmctld:"$dir/run/slurmctld.pid" slurmd:"$dir/run/slurmd.pid"; do
        if pid_alive "${d#*:}"; then echo "${d%%:*}: running ($(cat "${d#*:}"))"; else echo "${d%%:*}: stopped"; rc=1; fi
    done
    [[ $rc -ne 0 ]] || sinfo
    return $rc
}

case $action in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
