#!/usr/bin/env bash
# Installs and starts a real single-node SLURM cluster on this machine, so that `sbatch train.sbatch` and the
# SLURM tests can run locally: Debian's slurm-wlm (slurmctld + slurmd + client commands) and munge, a munge key,
# /etc/slurm/slurm.conf for this host (one node = this machine, one partition `debug`), and the three daemons,
# started directly (no systemd needed, works in containers without cgroups).
#
#   sudo bash scripts/slurm_local.sh        (or as root)
#
# For a single test machine only, not a production cluster: the daemons run as root on 127.0.0.1, no accounting
# (no sacct: read a finished job with `scontrol show job ID`, kept 600 s), no cgroups, and a requeued job may start
# again ~6 s after it ended (Slurm's default: 121 s). Idempotent: when the daemons run, the node is up and the
# config is current it does nothing; a changed config (e.g. a newer version of this script) restarts the daemons
# (running jobs survive). Logs: /var/log/slurm/{slurmctld,slurmd,install}.log. Ends with `SLURM ready: ...`.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

[[ $(id -u) -eq 0 ]] || die "must run as root (sudo bash $0)"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script needs Debian or Ubuntu"

export PATH=$PATH:/usr/sbin:/sbin
LOGDIR=/var/log/slurm
CONF=/etc/slurm/slurm.conf
SPOOL=/var/spool/slurm
RUNDIR=/run/slurm
NODE=$(hostname -s)
PARTITION=debug
READY_RE='^(idle|mixed|allocated|completing)$'
mkdir -p "$LOGDIR"
INSTALL_LOG=$LOGDIR/install.log

# is a live (not zombie) process with this exact name running?
running() {
  local p st
  for p in $(pgrep -x "$1"); do
    st=$(ps -o stat= -p "$p" 2>/dev/null) || continue
    [[ -n ${st// /} && $st != *Z* ]] && return 0
  done
  return 1
}
node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }   # idle* = not responding
ready_line() {
  local cpus
  cpus=$(sinfo -h -n "$NODE" -o %c 2>/dev/null | head -n1)
  echo "SLURM ready: node $NODE, ${cpus:-?} CPUs, partition $PARTITION"
}

# the slurm.conf for this machine on stdout
make_conf() {
  # this machine's hardware as slurmd sees it, e.g. "CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105 "
  local hw
  hw=$(slurmd -C 2>>"$INSTALL_LOG" | head -n1 | tr ' ' '\n' \
       | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' ') || true
  [[ $hw == *CPUs=* ]] || die "slurmd -C did not report the node's hardware"
  cat <<EOF
# Written by scripts/slurm_local.sh: a single-node test cluster on $NODE (not for production).
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again cred_expire+1 s after its old run ended (default 121 s; 5 is the minimum)
AuthInfo=cred_expire=5
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
# no cgroups in containers: track processes through /proc, no task binding, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# look at pending jobs every 2 s (default 60 s main loop, 30 s backfill): requeued jobs restart promptly
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=600
# SIGTERM -> SIGKILL grace period for cancelled/requeued/timed-out tasks (Slurm's default)
KillWait=30
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$RUNDIR/slurmctld.pid
SlurmdPidFile=$RUNDIR/slurmd.pid
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 ${hw}State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# is $CONF current: written by this script with today's content, or somebody else's (then leave it alone)?
conf_current() {
  [[ -f $CONF ]] || return 1
  head -n1 "$CONF" | grep -q 'scripts/slurm_local.sh' || return 0
  [[ $(cat "$CONF") == "$(make_conf)" ]]
}

# --- fast path: everything already up -------------------------------------------------------------------------
if running slurmctld && running slurmd && running munged \
   && command -v sinfo >/dev/null && [[ $(node_state) =~ $READY_RE ]] && conf_current; then
  ready_line
  exit 0
fi

# --- 1. packages ------------------------------------------------------------------------------------------------
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  # slurm-wlm is the metapackage for slurmctld + slurmd + slurm-client
  echo "installing slurm-wlm munge (log: $INSTALL_LOG) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >>"$INSTALL_LOG" 2>&1 || die "apt-get update failed (see $INSTALL_LOG)"
  apt-get install -y --no-install-recommends slurm-wlm munge >>"$INSTALL_LOG" 2>&1 \
    || die "apt-get install slurm-wlm munge failed (see $INSTALL_LOG)"
fi

# --- 2. munge ---------------------------------------------------------------------------------------------------
KEY=/etc/munge/munge.key
if [[ ! -s $KEY ]]; then
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$KEY" >>"$INSTALL_LOG" 2>&1 || die "mungekey --create failed"
  else
    dd if=/dev/urandom of="$KEY" bs=1 count=1024 status=none || die "creating $KEY failed"
  fi
fi
chown munge:munge "$KEY" && chmod 400 "$KEY"
if ! running munged; then
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  runuser -u munge -- /usr/sbin/munged --force >>"$INSTALL_LOG" 2>&1 || die "starting munged failed (see /var/log/munge/munged.log)"
fi
for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
munge -n | unmunge >/dev/null 2>&1 || die "munge -n | unmunge failed: munged does not work (see /var/log/munge/munged.log)"

# --- 3. slurm.conf ----------------------------------------------------------------------------------------------
mkdir -p /etc/slurm "$SPOOL/slurmd" "$SPOOL/slurmctld" "$RUNDIR"
NEWCONF=$(make_conf)
if [[ -f $CONF ]] && ! head -n1 "$CONF" | grep -q 'scripts/slurm_local.sh'; then
  cp -p "$CONF" "$CONF.bak.$(date +%s)"   # somebody else's config: keep a copy
fi
CONF_CHANGED=0
if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$NEWCONF" ]]; then
  printf '%s\n' "$NEWCONF" >"$CONF"
  CONF_CHANGED=1
fi

# --- 4. daemons -------------------------------------------------------------------------------------------------
if ((CONF_CHANGED)); then   # running daemons with another config: restart them
  for d in slurmd slurmctld; do
    if pid=$(pgrep -x "$d"); then kill $pid; fi
  done
  for _ in $(seq 40); do running slurmd || running slurmctld || break; sleep 0.25; done
fi
running slurmctld || slurmctld >>"$INSTALL_LOG" 2>&1 || die "starting slurmctld failed (see $LOGDIR/slurmctld.log)"
for _ in $(seq 40); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.25; done
running slurmd || slurmd >>"$INSTALL_LOG" 2>&1 || die "starting slurmd failed (see $LOGDIR/slurmd.log)"

state=""
for i in $(seq 60); do
  state=$(node_state)
  [[ $state =~ $READY_RE ]] && break
  if [[ $state =~ down|drain|fail ]] && ((i % 4 == 0)); then
    scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
  fi
  sleep 0.5
done
if ! [[ $state =~ $READY_RE ]]; then
  {
    echo "error: node $NODE is '${state:-unknown}', not idle after 30 s; last log lines:"
    for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log"; do echo "== $f"; tail -n 15 "$f" 2>/dev/null; done
  } >&2
  exit 2
fi
ready_line
