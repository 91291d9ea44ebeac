#!/usr/bin/env bash
# Instructions (user space) and heap blocks the proxy spends per keep-alive
# request, counted with valgrind: repeatable on a busy machine, where CPU
# time per request is not, so one change can be judged against another.
#
#   benches/compare/instructions.sh                       # keep-alive 1 KiB, HTTP/1.1
#   BIN_A=old/vaultgate BIN=target/release/vaultgate benches/compare/instructions.sh   # A/B
#   MODE=h2 benches/compare/instructions.sh               # HTTP/2 (h2load), 1 KiB
#
# The proxy (a `file:` key: the vault is not on the keep-alive path) runs
# under `valgrind --tool=callgrind --instr-atstart=no` in front of one
# nginx serving 1 KiB; wrk (or h2load) warms the connections, then
# instrumentation is switched on for WINDOW seconds and off, and the
# instructions counted are divided by the requests the proxy served in
# that window (its own counter). Prints `Ir/request` per binary.
set -euo pipefail
cd "$(dirname "$0")/../.."

WINDOW=${WINDOW:-8}
CONNS=${CONNS:-8}
MODE=${MODE:-h1}
BIN=${BIN:-target/release/vaultgate}
BIN_A=${BIN_A:-}
export PATH="$PATH:/usr/sbin:/sbin"
for t in valgrind callgrind_control nginx wrk openssl python3 curl; do
    command -v "$t" >/dev/null || { echo "needs $t (apt-get install valgrind nginx wrk openssl python3 curl)" >&2; exit 1; }
done
[ "$MODE" = h2 ] && { command -v h2load >/dev/null || { echo "needs h2load (apt-get install nghttp2-client)" >&2; exit 1; }; }

work=$(mktemp -d /tmp/vg-instr-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT INT TERM

free_ports() { python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])' "$1"; }
read -r p_backend p_proxy p_metrics < <(free_ports 3)

mkdir -p "$work/www" "$work/logs"
head -c 1024 /dev/zero | tr '\0' 'x' >"$work/www/1k"
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $work/logs/error.log warn;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$p_backend; root $work/www; }
}
EOF
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat >"$work/proxy.toml" <<EOF
[proxy]
listen = "127.0.0.1:$p_proxy"
metrics_listen = "127.0.0.1:$p_metrics"
workers = 1
access_log = false
forwarded_headers = ["x-forwarded-for", "x-forwarded-proto"]
[[proxy.cert]]
names = ["localhost"]
cert = "$work/cert.pem"
key = "file:$work/key.pem"
[[proxy.route]]
upstream = "b"
[proxy.upstream.b]
backends = ["127.0.0.1:$p_backend"]
EOF

requests() {
    curl -s "http://127.0.0.1:$p_metrics/metrics" |
        awk '/^vaultgate_proxy_requests_total/ { n += $NF } END { printf "%d\n", n }'
}

load() { # SECONDS
    if [ "$MODE" = h2 ]; then
        h2load -c "$CONNS" -m 10 -D "$1" "https://localhost:$p_proxy/1k" >/dev/null 2>&1 || true
    else
        wrk -t1 -c"$CONNS" -d"${1}s" "https://localhost:$p_proxy/1k" >/dev/null 2>&1 || true
    fi
}

measure() { # BINARY
    local bin=$1 out=$work/callgrind.out
    rm -f "$out".*
    RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.%p" \
        "$bin" proxy --config "$work/proxy.toml" >"$work/proxy.out" 2>"$work/proxy.err" &
    local vpid=$!
    for _ in $(seq 300); do
        grep -q '^listen ' "$work/proxy.out" 2>/dev/null && break
        sleep 0.2
    done
    grep -q '^listen ' "$work/proxy.out" || { cat "$work/proxy.err" >&2; exit 1; }
    load 2 # warm: connections, pools, caches
    load "$WINDOW" &
    local lpid=$!
    sleep 1
    local before; before=$(requests)
    callgrind_control -z "$vpid" >/dev/null
    callgrind_control -i on "$vpid" >/dev/null
    sleep "$WINDOW"
    # Dumped while on: the dump holds this window's counts alone.
    callgrind_control -d "$vpid" >/dev/null
    callgrind_control -i off "$vpid" >/dev/null
    local after; after=$(requests)
    wait "$lpid" || true
    kill "$vpid" 2>/dev/null || true
    wait "$vpid" 2>/dev/null || true
    local ir
    ir=$(awk '/^summary:|^totals:/ { print $2; exit }' "$out".*.1)
    local n=$((after - before))
    python3 -c "import sys; ir, n = int(sys.argv[1]), int(sys.argv[2]); print(f'{sys.argv[3]}: {ir/n:,.0f} Ir/request ({n} requests)')" \
        "$ir" "$n" "$bin"
}

[ -n "$BIN_A" ] && measure "$BIN_A"
measure "$BIN"
