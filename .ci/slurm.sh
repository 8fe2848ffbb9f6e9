# Source me (bash, as root): a one-node SLURM (slurmctld + slurmd + munge) on 127.0.0.1 for the SLURM tests.
# Idempotent: quick when it already answers. Installs Debian's slurm-wlm when missing (needs root and apt).
# Without root, or if it does not come up, it only warns: the SLURM tests then skip with the reason.

_acon_slurm_conf() {
    local host=$1 cpus=$2 memory=$3
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    chown slurm:slurm /var/spool/slurmctld /var/log/slurm
    cat > /etc/slurm/slurm.conf <<CONF
# written by .ci/slurm.sh: one node, no accounting, no cgroups (containers have none to give)
ClusterName=acon
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
KillWait=10
MinJobAge=60
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

_acon_slurm() {
    if [ "$(id -u)" != "0" ]; then
        echo "services: not root, SLURM not managed; the SLURM tests will skip unless sinfo answers" >&2
        return 0
    fi
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        echo "services: installing slurm-wlm (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null 2>&1 \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null; } \
            || { echo "services: slurm-wlm did not install; the SLURM tests will skip" >&2; return 0; }
    fi
    if timeout 5 sinfo -h >/dev/null 2>&1; then
        echo "services: SLURM already answers" >&2
        return 0
    fi
    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))  # MB: half, the node's share for jobs
    _acon_slurm_conf "$host" "$cpus" "$memory"
    [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    pgrep -x munged >/dev/null || runuser -u munge -- munged
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 1 40); do
        if [ "$(sinfo -h -o %t 2>/dev/null)" = "idle" ]; then
            echo "services: SLURM ready (one node $host, $cpus CPUs)" >&2
            return 0
        fi
        scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
        sleep 0.5
    done
    echo "services: SLURM did not come up (see /var/log/slurm/); the SLURM tests will skip" >&2
    return 0
}

_acon_slurm
