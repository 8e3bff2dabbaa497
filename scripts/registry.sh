#!/usr/bin/env bash
# Starts, stops and reports on the local OCI registry that the tests push to and pull from.
# Uses Debian's `docker-registry` (distribution v2) with filesystem storage in a fresh temporary
# directory, listening only on loopback. It never touches a registry it did not start.
#
#   bash scripts/registry.sh start    # refuses if one is already running from this pid file
#   bash scripts/registry.sh stop     # stops it and deletes its storage
#   bash scripts/registry.sh status   # exit 0 when running and answering GET /v2/
#
# Environment: KILN_REGISTRY_ADDR (default 127.0.0.1:5000), KILN_RUN_DIR (default /var/cache/kiln/run).
set -euo pipefail

ADDR="${KILN_REGISTRY_ADDR:-127.0.0.1:5000}"
RUN_DIR="${KILN_RUN_DIR:-/var/cache/kiln/run}"
PORT="${ADDR##*:}"
PID_FILE="$RUN_DIR/registry-$PORT.pid"
STATE_FILE="$RUN_DIR/registry-$PORT.storage"
LOG_FILE="$RUN_DIR/registry-$PORT.log"

die() { echo "registry.sh: $*" >&2; exit 1; }

running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

answers() {
    curl -fsS -o /dev/null --max-time 2 "http://$ADDR/v2/" 2>/dev/null
}

start() {
    command -v docker-registry >/dev/null || die "docker-registry not installed: run 'apt-get install -y docker-registry' (scripts/test.sh does it)"
    if pid="$(running_pid)"; then
        die "already running (pid $pid, $PID_FILE); run 'bash scripts/registry.sh stop' first"
    fi
    if answers; then
        die "something else already answers on http://$ADDR/v2/; stop it or set KILN_REGISTRY_ADDR"
    fi
    mkdir -p "$RUN_DIR"
    local storage config
    storage="$(mktemp -d /tmp/kiln-registry.XXXXXX)"
    config="$storage/config.yml"
    mkdir -p "$storage/data"
    cat >"$config" <<CONF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $storage/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $ADDR
CONF
    echo "$storage" >"$STATE_FILE"
    # setsid: the registry must not die with the shell that started it, nor take its signals.
    setsid docker-registry serve "$config" >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 100); do
        if answers; then
            echo "registry running on http://$ADDR (pid $(cat "$PID_FILE"), storage $storage)"
            return 0
        fi
        if ! running_pid >/dev/null; then
            cat "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            die "docker-registry exited at start; its log is above"
        fi
        sleep 0.1
    done
    stop || true
    die "docker-registry did not answer GET http://$ADDR/v2/ within 10 s (log: $LOG_FILE)"
}

stop() {
    local pid
    if pid="$(running_pid)"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        echo "registry stopped (pid $pid)"
    else
        echo "registry not running"
    fi
    rm -f "$PID_FILE"
    if [[ -f "$STATE_FILE" ]]; then
        local storage
        storage="$(cat "$STATE_FILE")"
        # Only ever delete a directory this script created.
        [[ "$storage" == /tmp/kiln-registry.* ]] && rm -rf "$storage"
        rm -f "$STATE_FILE"
    fi
}

status() {
    local pid
    if pid="$(running_pid)" && answers; then
        echo "registry running on http://$ADDR (pid $pid)"
    else
        echo "registry not running on $ADDR"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
