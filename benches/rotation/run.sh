#!/usr/bin/env bash
# Rotation under wrk, as a user would see it: `vaultgate run` in front of
# nginx, wrk driving traffic (keep-alive and new connection per request),
# while the TLS key rotates every ROTATE_EVERY seconds. Prints wrk's
# error counts and each rotation's delay until a new connection sees the
# new certificate.
#
#   benches/rotation/run.sh                 # DURATION=20 ROTATIONS=20
#   DURATION=30 ROTATIONS=40 benches/rotation/run.sh
#
# Needs nginx, wrk, curl and openssl (apt-get install nginx wrk curl openssl)
# and a release build (cargo build --release). Cleans up on exit or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-20}
ROTATIONS=${ROTATIONS:-20}
BIN=${BIN:-target/release/vaultgate}
for t in nginx wrk curl openssl; do
    command -v "$t" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$t" >/dev/null \
        || { echo "missing $t: apt-get install $t" >&2; exit 1; }
done
export PATH="$PATH:/usr/sbin"
[ -x "$BIN" ] || cargo build --release

work=$(mktemp -d /tmp/vg-rotation.XXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# nginx backend on a free port, serving 1 KiB.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend=$(port); front=$(port)
mkdir -p "$work/nginx/logs" "$work/www"
# nginx workers run as nobody when started as root: let them read.
chmod 755 "$work" "$work/www"
head -c 1024 /dev/zero | tr '\0' 'x' > "$work/www/1k"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
error_log $work/nginx/logs/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen 127.0.0.1:$backend; root $work/www; }
}
NGINX
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)

# The embedded default, moved to the temp dir, on free ports.
mkdir -p "$work/config"
sed -e "s/127.0.0.1:8443/127.0.0.1:$front/" -e "s/127.0.0.1:8080/127.0.0.1:$backend/" \
    -e 's/^access_log = true/access_log = false/' \
    config/vaultgate.toml > "$work/config/vaultgate.toml"
cfg="$work/config/vaultgate.toml"
RUST_LOG=warn "$BIN" run --config "$cfg" > "$work/run.out" 2> "$work/run.err" &
pids+=($!)
for _ in $(seq 300); do grep -q '^try:' "$work/run.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^try:' "$work/run.out" || { cat "$work/run.err"; echo "vaultgate run did not start" >&2; exit 1; }
ca="$work/certs/dev-ca.pem"
url="https://localhost:$front/1k"

fingerprint() {
    openssl s_client -connect "127.0.0.1:$front" -servername localhost -CAfile "$ca" </dev/null 2>/dev/null \
        | openssl x509 -noout -fingerprint -sha256 2>/dev/null
}

# wrk does not trust our CA but still measures; errors count failed requests.
wrk -t1 -c16 -d"${DURATION}s" --latency "$url" > "$work/wrk-keepalive.txt" &
wk=$!; pids+=($wk)
wrk -t1 -c16 -d"${DURATION}s" -H 'Connection: close' "$url" > "$work/wrk-close.txt" &
wc=$!; pids+=($wc)

interval=$(python3 -c "print(max(0.2, ($DURATION - 2) / $ROTATIONS))")
delays=()
for i in $(seq "$ROTATIONS"); do
    before=$(fingerprint)
    "$BIN" key rotate default --config "$cfg" >/dev/null
    t0=$(date +%s%N)
    while [ "$(fingerprint)" = "$before" ]; do :; done
    delays+=($(( ($(date +%s%N) - t0) / 1000000 )))
    sleep "$interval"
done
wait "$wk" "$wc" || true

report() {
    echo "== wrk, $1 (16 connections, ${DURATION}s)"
    grep -E 'Requests/sec|requests in' "$2"
    grep -E 'Socket errors|Non-2xx' "$2" || echo "  errors: none (no socket errors, no non-2xx responses)"
}
report "keep-alive" "$work/wrk-keepalive.txt"
report "new connection per request" "$work/wrk-close.txt"
echo "== $ROTATIONS rotations: ms until a new connection saw the new certificate"
sorted=$(printf '%s\n' "${delays[@]}" | sort -n)
n=$(echo "$sorted" | wc -l)
echo "  min $(echo "$sorted" | head -1)  median $(echo "$sorted" | sed -n "$(( (n + 1) / 2 ))p")  max $(echo "$sorted" | tail -1)"
echo "  all: ${delays[*]}"
