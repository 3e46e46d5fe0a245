#!/usr/bin/env bash
# The README demo, end to end on this machine: builds replhub, starts the
# demo stack (local Redis 127.0.0.1:16379, central Redis 127.0.0.1:16380,
# Webdis 127.0.0.1:17379, nginx with mutual TLS on https://localhost:18443/;
# Debian packages are installed first if missing, as root), runs
# `replhub run -c examples/demo.yaml`, writes keys on each side and shows
# them arriving on the other. replhub then keeps replicating until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

# git does not keep file modes beyond the executable bit: the test-only keys
# come out of a clone readable by all, which replhub rightly warns about.
chmod 600 examples/certs/*.key
cargo build --locked --quiet --bin replhub --example stack
STACK_LOG=$(mktemp -t replhub-demo-stack.XXXXXX)
HUB_LOG=$(mktemp -t replhub-demo-hub.XXXXXX)
stack_pid="" hub_pid=""
cleanup() {
    [ -n "$hub_pid" ] && kill -TERM "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null
    [ -n "$stack_pid" ] && kill -TERM "$stack_pid" 2>/dev/null && wait "$stack_pid" 2>/dev/null
    true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

target/debug/examples/stack up --demo >"$STACK_LOG" 2>&1 &
stack_pid=$!
for _ in $(seq 1 300); do
    grep -q "test stack is up" "$STACK_LOG" && break
    kill -0 "$stack_pid" 2>/dev/null || { cat "$STACK_LOG"; exit 1; }
    sleep 0.1
done
echo "== the demo stack =="
cat "$STACK_LOG"

echo "== replhub check -c examples/demo.yaml --connect =="
target/debug/replhub check -c examples/demo.yaml --connect

echo "== replhub run -c examples/demo.yaml (log: $HUB_LOG) =="
target/debug/replhub run -c examples/demo.yaml >"$HUB_LOG" 2>&1 &
hub_pid=$!
for _ in $(seq 1 300); do
    curl -sf http://127.0.0.1:19750/readyz >/dev/null && break
    kill -0 "$hub_pid" 2>/dev/null || { cat "$HUB_LOG"; exit 1; }
    sleep 0.1
done
curl -s http://127.0.0.1:19750/readyz

LOCAL="redis-cli -p 16379"
CENTRAL="redis-cli -p 16380"
show() { printf '   %-44s -> %s\n' "$1" "$(eval "$2" | tr '\n' ' ')"; }
wait_for() { for _ in $(seq 1 100); do [ -n "$(eval "$1")" ] && return 0; sleep 0.05; done; return 1; }

echo "== push: a local write appears centrally =="
$LOCAL hset sensors:room-1 temperature 21.5 humidity 40 >/dev/null
$LOCAL set sensors:door open EX 600 >/dev/null
wait_for "$CENTRAL get site-a:sensors:door"
show "central HGETALL site-a:sensors:room-1" "$CENTRAL hgetall site-a:sensors:room-1"
show "central GET site-a:sensors:door" "$CENTRAL get site-a:sensors:door"
show "central TTL site-a:sensors:door" "$CENTRAL ttl site-a:sensors:door"

echo "== pull: a central write appears locally =="
$CENTRAL set global:motd "maintenance on Sunday" >/dev/null
wait_for "$LOCAL get global:motd"
show "local GET global:motd" "$LOCAL get global:motd"

echo "== both: either side's write appears on the other, once =="
$LOCAL rpush chat:room "hello from site-a" >/dev/null
$CENTRAL rpush site-a:chat:room2 "hello from central" >/dev/null
wait_for "$CENTRAL lrange site-a:chat:room 0 -1"
wait_for "$LOCAL lrange chat:room2 0 -1"
show "central LRANGE site-a:chat:room" "$CENTRAL lrange site-a:chat:room 0 -1"
show "local LRANGE chat:room2" "$LOCAL lrange chat:room2 0 -1"

echo "== a delete is replicated too =="
$LOCAL del sensors:door >/dev/null
for _ in $(seq 1 100); do [ "$($CENTRAL exists site-a:sensors:door)" = 0 ] && break; sleep 0.05; done
show "central EXISTS site-a:sensors:door" "$CENTRAL exists site-a:sensors:door"

echo "== metrics (http://127.0.0.1:19750/metrics) =="
curl -s http://127.0.0.1:19750/metrics | grep -E '^replhub_(keys_replicated_total|link_up|echoes_suppressed_total)'

cat <<'MSG'

replhub keeps replicating. Try, in another terminal:
   redis-cli -p 16379 set sensors:x 1        then   redis-cli -p 16380 get site-a:sensors:x
   redis-cli -p 16380 set global:y 2         then   redis-cli -p 16379 get global:y
   curl -s http://127.0.0.1:19750/status
Ctrl-C stops replhub and the demo stack.
MSG
wait "$hub_pid"
