#!/usr/bin/env bash
# `npm run up`: on a fresh machine, install what is missing, then run the control plane and one
# local worker in the foreground. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

export HYPERPLANE_DATA_DIR="${HYPERPLANE_DATA_DIR:-.hyperplane}"
mkdir -p "$HYPERPLANE_DATA_DIR"
DATA_DIR=$(cd "$HYPERPLANE_DATA_DIR" && pwd)

hp_ensure_node_modules
hp_ensure_postgres
hp_ensure_redis
hp_ensure_qemu
if [ ! -f "$DATA_DIR/guest/sample.qcow2" ]; then
  hp_log "building the sample guest"
  HYPERPLANE_DATA_DIR="$DATA_DIR" bash scripts/guest-build.sh
fi
hp_log "building"
npm run --silent build

pids=()
stopping=
cleanup() {
  trap - INT TERM EXIT
  stopping=1
  hp_log "stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # Guests outlive their worker by design; `up` started them, so `up` stops them.
  for f in "$DATA_DIR"/nodes/*/partitions/*/qemu.pid; do
    [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
  done
}
trap cleanup INT TERM EXIT

HTTP_PORT="${HYPERPLANE_HTTP_PORT:-8080}"
GRPC_PORT="${HYPERPLANE_GRPC_PORT:-9090}"
LOGS="$DATA_DIR/logs"
mkdir -p "$LOGS"
hp_log "starting the control plane (logs: $LOGS/control-plane.log)"
node apps/control-plane/dist/main.js >>"$LOGS/control-plane.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { tail -20 "$LOGS/control-plane.log"; echo "the control plane did not start" >&2; exit 1; }
  sleep 0.5
done
# Tokens are stored hashed: if the token file is missing or stale (a reset database), mint a new one.
if ! curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$DATA_DIR/admin-token" 2>/dev/null)" "http://127.0.0.1:$HTTP_PORT/v1/projects"; then
  hp_log "the admin token in $DATA_DIR/admin-token does not work here; creating a new one"
  node apps/control-plane/dist/admin-token.js >/dev/null
fi
hp_log "starting a local worker (logs: $LOGS/worker-local.log)"
node apps/worker/dist/main.js --node local --address 127.0.0.1 >>"$LOGS/worker-local.log" 2>&1 &
pids+=($!)

cat <<MSG

  Hyperplane is running.
    REST     http://127.0.0.1:$HTTP_PORT   (docs: http://127.0.0.1:$HTTP_PORT/docs, OpenAPI: /openapi.json)
    gRPC     127.0.0.1:$GRPC_PORT
    token    $(cat "$DATA_DIR/admin-token" 2>/dev/null || echo "(see $DATA_DIR/admin-token)")
             (cluster admin; also in $DATA_DIR/admin-token)
  Press Ctrl-C to stop.

MSG
wait -n "${pids[@]}" || true
[ -n "$stopping" ] || echo "a component exited; see $LOGS" >&2
