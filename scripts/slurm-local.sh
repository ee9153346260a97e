#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the slow cluster tests and for trying hydra/launcher=slurm:
#   scripts/slurm-local.sh start    # install slurm-wlm + munge if missing (apt), write slurm.conf, start daemons
#   scripts/slurm-local.sh status   # sinfo
#   scripts/slurm-local.sh stop     # stop the daemons this script started
# Needs root (apt, /etc/slurm) and no systemd: munged, slurmctld and slurmd run as plain daemons. No cgroups:
# processes are tracked by parent pid (proctrack/linuxproc), tasks are not pinned (task/none).
set -euo pipefail

STATE=${LMLAB_SLURM_STATE:-/var/lib/lmlab-slurm}
CONF=/etc/slurm/slurm.conf
PARTITION=${LMLAB_SLURM_PARTITION:-debug}

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  fi
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  # Leave 1 GiB to the OS; slurmd refuses to register a node claiming more memory than it has.
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  mkdir -p "$STATE"/{ctld,d,log} /etc/slurm
  cat >"$CONF" <<CONF
# Written by scripts/slurm-local.sh: a single-node test cluster.
ClusterName=lmlab-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MpiDefault=none
# Fast turnaround for tests: requeued jobs may start again at once, killed steps get 10 s to clean up.
KillWait=10
MinJobAge=600
SlurmdTimeout=60
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

start_munge() {
  if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; }
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- munged
  fi
}

start() {
  install
  write_conf
  start_munge
  pgrep -x slurmctld >/dev/null || slurmctld -f "$CONF"
  pgrep -x slurmd >/dev/null || slurmd -f "$CONF"
  for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
      sinfo
      return 0
    fi
    sleep 1
  done
  echo "slurm-local: the node did not become idle in 60 s; logs in $STATE/log" >&2
  sinfo >&2 || true
  tail -20 "$STATE"/log/*.log >&2 || true
  return 1
}

stop() {
  for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
    [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
