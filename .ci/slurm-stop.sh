#!/usr/bin/env bash
# .ci/slurm-stop.sh - stop the Slurm daemons that .ci/slurm-start.sh started.
#
# Only PIDs recorded in /run/scae-slurm/<daemon>.pid are signalled, and only if
# that PID is alive and still runs that daemon (SIGTERM, SIGKILL after 30 s).
# Daemons that were running before slurm-start.sh are left alone. Jobs still on
# the cluster are cancelled first, if our slurmctld is the one running.
# Safe to run repeatedly.
set -euo pipefail

MARK_DIR=/run/scae-slurm
log() { echo "[scae-slurm] $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "ERROR: must run as root"; exit 1; }

pid_alive() {
    local pid="$1" comm="$2" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)"
    [ -n "$state" ] && [ "$state" != Z ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}
# recorded NAME: the recorded PID of daemon NAME, if it still runs that daemon
recorded() {
    local pid
    pid="$(cat "$MARK_DIR/$1.pid" 2>/dev/null || true)"
    pid="${pid//[^0-9]/}"
    if pid_alive "$pid" "$1"; then echo "$pid"; fi
}
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
