#!/usr/bin/env bash
# .ci/slurm-stop.sh - stop the Slurm daemons that .ci/slurm-start.sh started.
#
# Only PIDs recorded in /run/scae-slurm/<daemon>.pid are signalled, and only if
# that PID is alive and still runs that daemon (SIGTERM, SIGKILL after 30 s).
# Daemons that were running before slurm-start.sh are left alone. Jobs still on
# the cluster are cancelled first, if our slurmctld is the one running.
# Safe to run repeatedly.
set -euo pipefail

. "$(dirname "$0")/slurm-common.sh"
[ "$(id -u)" -eq 0 ] || { log "ERROR: must run as root"; exit 1; }

# recorded NAME: the recorded PID of daemon NAME, if it still runs that daemon
recorded() { running_pid "$MARK_DIR/$1.pid" "$1"; }
stop_one() {
    local name="$1" pid
    pid="$(recorded "$name")"
    if [ -n "$pid" ]; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 60); do pid_alive "$pid" "$name" || break; sleep 0.5; done
        if pid_alive "$pid" "$name"; then
            log "$name (pid $pid) still running after 30 s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$MARK_DIR/$name.pid"
}

# cancel leftover jobs while our controller and node daemon are still up
if [ -n "$(recorded slurmctld)" ] && command -v squeue >/dev/null; then
    jobs="$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null | tr '\n' ' ' || true)"
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 30); do
            [ -z "$(squeue -h -t PD,R,CG,S -o %i 2>/dev/null || true)" ] && break
            sleep 0.5
        done
    fi
fi
for d in slurmd slurmctld munged; do stop_one "$d"; done
log "stopped"
