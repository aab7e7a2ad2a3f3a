#!/usr/bin/env bash
# .ci/slurm-start.sh - bring up a real one-node Slurm cluster on localhost, so that
# the workflow can be tested through snakemake-executor-plugin-slurm.
#
# For Debian 12 (Slurm 22.05), as root, no systemd or cgroups needed. Light mode:
# no accounting database, so `sacct` does not work and Snakemake must poll with
# `slurm-status-command: squeue` (see tests/slurm_overlay/config.yaml).
# Idempotent: installs missing packages, writes /etc/slurm/slurm.conf, starts
# munged, slurmctld and slurmd unless already running, waits for an idle node.
# Daemons it starts are recorded in /run/scae-slurm/*.pid; .ci/slurm-stop.sh stops them.
#
# Environment:
#   LOCAL_SLURM_CPUS       node CPUs (default: nproc; more than the machine has is allowed)
#   LOCAL_SLURM_MEM_MB     node RealMemory in MB (default: 85% of MemTotal)
#   LOCAL_SLURM_PARTITION  partition name (default: debug)
#   LOCAL_SLURM_WAIT_S     seconds to wait for the node to become idle (default: 90)
set -euo pipefail

. "$(dirname "$0")/slurm-common.sh"
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root"

SLURM_RUN=/run/slurm
SLURM_LOG=/var/log/slurm
CONF=/etc/slurm/slurm.conf
MARKER="# written by scae .ci/slurm-start.sh"

NODE="$(hostname -s)"
[ -n "$NODE" ] || die "empty hostname"
HW_CPUS=$(nproc)
HW_MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
CPUS="${LOCAL_SLURM_CPUS:-$HW_CPUS}"
MEM_MB="${LOCAL_SLURM_MEM_MB:-$((HW_MEM_MB * 85 / 100))}"
PARTITION="${LOCAL_SLURM_PARTITION:-debug}"
WAIT_S="${LOCAL_SLURM_WAIT_S:-90}"

# mark NAME PIDFILE: wait for the daemon's own pid file, record the PID as ours
mark() {
    local pid="" end=$((SECONDS + 20))
    until pid="$(running_pid "$2" "$1")"; [ -n "$pid" ]; do
        [ "$SECONDS" -lt "$end" ] || die "$1 did not write $2"
        sleep 0.2
    done
    echo "$pid" >"$MARK_DIR/$1.pid"
}
# stop_ours NAME: stop a daemon we recorded (TERM, KILL after 30 s)
stop_ours() {
    local pid
    pid="$(running_pid "$MARK_DIR/$1.pid" "$1")"
    if [ -n "$pid" ]; then
        log "restarting: stopping $1 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 60); do pid_alive "$pid" "$1" || break; sleep 0.5; done
        if pid_alive "$pid" "$1"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$MARK_DIR/$1.pid"
}
# wait_for SECONDS CMD...: retry CMD every 0.5 s until it succeeds
wait_for() {
    local end=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.5
    done
}

# ---------------------------------------------------------------- packages
MISSING=()
for p in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING+=("$p")
done
if [ "${#MISSING[@]}" -gt 0 ]; then
    log "installing: ${MISSING[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # keep package scripts from starting services (only if no policy exists)
    TMP_POLICY=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        TMP_POLICY=1
    fi
    rc=0
    apt-get update -qq </dev/null || rc=$?
    if [ "$rc" = 0 ]; then
        apt-get install -y -qq --no-install-recommends "${MISSING[@]}" </dev/null >/dev/null || rc=$?
    fi
    if [ "$TMP_POLICY" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$rc" = 0 ] || die "apt-get failed (exit $rc)"
fi
mkdir -p "$MARK_DIR" "$SLURM_RUN" "$SLURM_LOG" /var/spool/slurmctld /var/spool/slurmd

# ---------------------------------------------------------------- slurm.conf
OVERRIDE=""
if [ "$CPUS" -gt "$HW_CPUS" ] || [ "$MEM_MB" -gt "$HW_MEM_MB" ]; then
    # trust the configured (larger) node size instead of draining the node
    OVERRIDE="SlurmdParameters=config_overrides"
fi
CONF_TEXT="$MARKER - one-node test cluster, no cgroups, no accounting
ClusterName=scaeci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$SLURM_RUN/slurmctld.pid
SlurmdPidFile=$SLURM_RUN/slurmd.pid
SlurmctldLogFile=$SLURM_LOG/slurmctld.log
SlurmdLogFile=$SLURM_LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
# kill timed-out jobs 5 s after SIGTERM (default 30 s)
KillWait=5
# keep finished jobs visible to squeue for 10 min (the executor polls squeue)
MinJobAge=600
$OVERRIDE
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP"

CONF_CHANGED=0
if ! { [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$CONF_TEXT" ]; }; then
    if [ -s "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARKER"; then
        cp -p "$CONF" "$CONF.bak.$(date +%Y%m%d%H%M%S)"
        log "existing $CONF saved as $CONF.bak.*"
    fi
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$CONF_TEXT" >"$CONF.tmp.$$"
    chmod 644 "$CONF.tmp.$$"
    mv -f "$CONF.tmp.$$" "$CONF"
    CONF_CHANGED=1
    log "wrote $CONF"
    # a changed config needs a restart of the daemons we run
    stop_ours slurmd
    stop_ours slurmctld
fi

# ---------------------------------------------------------------- munge
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
if munge_ok; then
    log "munged already running"
else
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force </dev/null
    wait_for 15 munge_ok || die "munged did not come up (see /var/log/munge/munged.log)"
    mark munged /run/munge/munged.pid
fi

# ---------------------------------------------------------------- slurmctld, slurmd
ctld_ok() { scontrol ping | grep -q 'is UP'; }
if [ -n "$(running_pid "$SLURM_RUN/slurmctld.pid" slurmctld)" ]; then
    log "slurmctld already running"
    if [ "$CONF_CHANGED" = 1 ]; then scontrol reconfigure || true; fi
else
    CTLD_ARGS=()
    # a changed node definition invalidates the saved state
    if [ "$CONF_CHANGED" = 1 ]; then CTLD_ARGS+=(-c); fi
    log "starting slurmctld ${CTLD_ARGS[*]}"
    /usr/sbin/slurmctld "${CTLD_ARGS[@]}" </dev/null
    wait_for 60 ctld_ok || die "slurmctld did not come up (see $SLURM_LOG/slurmctld.log)"
    mark slurmctld "$SLURM_RUN/slurmctld.pid"
fi
if [ -n "$(running_pid "$SLURM_RUN/slurmd.pid" slurmd)" ]; then
    log "slurmd already running"
else
    log "starting slurmd"
    /usr/sbin/slurmd </dev/null
    mark slurmd "$SLURM_RUN/slurmd.pid"
fi

# ---------------------------------------------------------------- wait for the node
end=$((SECONDS + WAIT_S))
resumed=0
while :; do
    st="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true)"
    case "$st" in
        idle | mixed | allocated | completing) break ;;
        *drain* | down*)
            # resume once, after slurmd had 10 s to register
            if [ "$resumed" = 0 ] && [ "$SECONDS" -gt $((end - WAIT_S + 10)) ]; then
                log "node state '$st', resuming it"
                scontrol update NodeName="$NODE" State=RESUME || true
                resumed=1
            fi
            ;;
    esac
    if [ "$SECONDS" -ge "$end" ]; then
        sinfo -N -l >&2 || true
        tail -n 20 "$SLURM_LOG/slurmd.log" "$SLURM_LOG/slurmctld.log" >&2 || true
        die "node $NODE not ready after ${WAIT_S}s (state '$st')"
    fi
    sleep 0.5
done
log "cluster ready: node $NODE, $CPUS CPUs, $MEM_MB MB, partition $PARTITION"
sinfo
