#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (root), to submit hpe_bench grids to a real slurmctld (docs/cluster.md,
# tests/test_slurm.py). Debian's slurm-wlm (22.05) + munge; every step is idempotent:
#
#   scripts/single_node_slurm.sh install   apt-get install slurm-wlm munge where slurmctld/sbatch/munged are missing
#   scripts/single_node_slurm.sh start     install, then munge key + munged, /etc/slurm/slurm.conf, slurmctld, slurmd;
#                                          waits until `srun -N1 hostname` answers (under a minute)
#   scripts/single_node_slurm.sh status    sinfo + the daemons' answers
#   scripts/single_node_slurm.sh stop      stops the slurmd/slurmctld this script started (by their pid files)
#
# The cluster: one node (this host, its CPUs, 85% of its memory), one default partition `debug`, no accounting
# (sacct has no database: submitit warns that it falls back), proctrack/linuxproc + task/none (no cgroups, so it
# runs in containers too). An /etc/slurm/slurm.conf that this script did not write is never replaced.
# Exit status: 0 running, 2 cannot (not root, no apt-get, ...: the reason on stderr), 1 started but not answering.
set -uo pipefail

MARK="# written by hpe_bench scripts/single_node_slurm.sh"
CONF=/etc/slurm/slurm.conf
PARTITION=${SLURM_PARTITION_NAME:-debug}
LOG=/var/log/slurm

say() { echo "single_node_slurm: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

install() {
    if have slurmctld && have slurmd && have sbatch && have munged; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then say "slurm-wlm/munge are not installed and this is not root"; return 2; fi
    if ! command -v apt-get >/dev/null; then say "slurm-wlm/munge are not installed and there is no apt-get"; return 2; fi
    say "installing slurm-wlm munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q slurm-wlm munge >/tmp/single_node_slurm.apt.log 2>&1; then
        apt-get update -q >>/tmp/single_node_slurm.apt.log 2>&1 \
            && apt-get install -y -q slurm-wlm munge >>/tmp/single_node_slurm.apt.log 2>&1 \
            || { say "apt-get install slurm-wlm munge failed (/tmp/single_node_slurm.apt.log)"; return 2; }
    fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    fi
    if id munge >/dev/null 2>&1; then
        chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
        chmod 0400 /etc/munge/munge.key
        chmod 0755 /run/munge
        runuser -u munge -- /usr/sbin/munged || true
    else
        chmod 0400 /etc/munge/munge.key
        /usr/sbin/munged --force || true
    fi
    for _ in $(seq 20); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    say "munged does not answer (munge -n | unmunge)"; return 1
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        say "$CONF exists and was not written by this script: using it as it is"
        return 0
    fi
    local host node mem
    host=$(hostname -s)
    # this node as slurmd sees it (CPUs, sockets, cores, threads), with 85% of its memory for jobs
    node=$(slurmd -C 2>/dev/null | head -1 | sed -E 's/ RealMemory=[0-9]+//')
    mem=$(slurmd -C 2>/dev/null | head -1 | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p')
    [ -n "$node" ] || node="NodeName=$host CPUs=$(nproc)"
    mem=$(( ${mem:-4000} * 85 / 100 ))
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG"
    cat > "$CONF.tmp" <<EOF
$MARK
ClusterName=hpebench
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
DefMemPerCPU=1000
MinJobAge=300
KillWait=10
$node NodeAddr=127.0.0.1 RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
    chmod 0644 "$CONF"
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    # a cluster that answers already (this script's, or a real one on this machine): nothing to do
    if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q "is UP" \
            && sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'; then
        say "running: $(sinfo -h -o '%P %D %T' 2>/dev/null | head -1)"
        return 0
    fi
    install || return $?
    start_munge || return 1
    write_conf || return 1
    if ! pid_alive /run/slurmctld.pid && ! scontrol ping 2>/dev/null | grep -q "is UP"; then
        /usr/sbin/slurmctld || { say "slurmctld did not start ($LOG/slurmctld.log)"; return 1; }
    fi
    if ! pid_alive /run/slurmd.pid; then
        /usr/sbin/slurmd || { say "slurmd did not start ($LOG/slurmd.log)"; return 1; }
    fi
    local host state
    host=$(hostname -s)
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1)
        case "$state" in
            idle*|mixed*|allocated*|completing*) break ;;
            drain*|down*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 ;;
        esac
        sleep 1
    done
    if timeout 60 srun -N1 -t 1 hostname >/dev/null 2>&1; then
        say "running: partition $PARTITION, node $host ($state)"
        return 0
    fi
    say "slurmctld/slurmd started but srun -N1 hostname does not answer (node state: ${state:-?}; $LOG/)"
    return 1
}

stop() {
    local f
    for f in /run/slurmd.pid /run/slurmctld.pid; do
        pid_alive "$f" && kill "$(cat "$f")"
    done
    return 0
}

status() {
    scontrol ping 2>&1
    sinfo 2>&1
}

case "${1:-start}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|status|stop" >&2; exit 2 ;;
esac
