# .ci/slurm-common.sh - helpers shared by slurm-start.sh and slurm-stop.sh (sourced).

MARK_DIR=/run/scae-slurm
log() { echo "[scae-slurm] $*" >&2; }

# pid_alive PID COMM: PID runs (not a zombie) and its command name is COMM
pid_alive() {
    local pid="$1" comm="$2" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)"
    [ -n "$state" ] && [ "$state" != Z ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}
# running_pid PIDFILE COMM: print the PID in PIDFILE if that daemon is alive
running_pid() {
    local pid
    pid="$(cat "$1" 2>/dev/null || true)"
    pid="${pid//[^0-9]/}"
    if pid_alive "$pid" "$2"; then echo "$pid"; fi
}
