#!/usr/bin/env bash
# nginx with its key in the vault, through libvaultgate_pkcs11.so (libp11's
# engine, and pkcs11-provider's URI file), against the same nginx with the
# key in a file: full TLS handshakes per CPU-second, same run, ECDSA P-256
# and RSA-2048.
#
#   benches/compare/pkcs11.sh               # DURATION=10 s per measurement, ROUNDS=2, ~2 min
#   DURATION=3 ROUNDS=1 benches/compare/pkcs11.sh
#
# Each nginx has one worker, pinned with the vault to core SERVER_CPU (1);
# wrk (new connection per request, resumption never offered: noresume.c)
# on CLIENT_CPU (0). CPU is utime+stime from /proc/PID/stat over the
# window: nginx's master and worker, plus, for the vault key, the vault
# process (it signs, audits and answers on the same core). The figure is
# handshakes / CPU-second; the ratio vault/file is what the issue's goal
# (>= 0.85) is about. Rounds alternate the order so drift hits all. The
# vault rows also split the CPU: nginx's share, the vault's share.
#
# Needs root (nginx's worker runs as www-data, granted in the vault),
# nginx, wrk, libengine-pkcs11-openssl, gcc (pkcs11-provider for the
# provider rows, skipped with a note when missing); builds target/release
# if missing. Everything runs in a temp dir and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=benches/compare
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-16}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
export PATH="$PATH:/usr/sbin:/sbin"

[ "$(id -u)" -eq 0 ] || { echo "run as root (nginx's worker runs as www-data)" >&2; exit 1; }
for t in nginx wrk cc openssl; do
    command -v "$t" >/dev/null || { echo "missing $t: apt-get install nginx wrk gcc openssl" >&2; exit 1; }
done
engine=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
[ -e "$engine" ] || { echo "missing $engine: apt-get install libengine-pkcs11-openssl" >&2; exit 1; }
[ -x target/release/vaultgate ] && [ -e target/release/libvaultgate_pkcs11.so ] || cargo build --release
bin=$PWD/target/release/vaultgate
module=$PWD/target/release/libvaultgate_pkcs11.so

work=$(mktemp -d /tmp/vg-p11-bench-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$work"/*/nginx.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

wait_until() { # SECONDS WHAT CMD...
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 20; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "timed out waiting for $what" >&2
    exit 1
}
cpu_ticks() { # PIDS...
    local t=0 p f
    for p in "$@"; do
        read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat")
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cc -shared -fPIC -O2 -o "$work/noresume.so" "$here/noresume.c" -ldl
www_gid=$(id -g www-data)

# --- the vault: keys web (P-256) and rsa (RSA-2048), certificates bound ----
cat >"$work/vault.toml" <<EOF
[vault]
socket_group = "$www_gid"
[[vault.grant]]
principal = "uid:0"
keys = ["*"]
ops = ["all"]
[[vault.grant]]
principal = "user:www-data"
keys = ["*"]
ops = ["use"]
EOF
export VAULTGATE_SOCKET=$work/vault.sock
RUST_LOG=warn taskset -c "$SERVER_CPU" "$bin" vault --socket "$VAULTGATE_SOCKET" \
    --state-dir "$work/state" --config "$work/vault.toml" >"$work/vault.log" 2>&1 &
vault_pid=$!
pids+=($vault_pid)
wait_until 30 "the vault" "$bin" key list
for k in "web ecdsa-p256" "rsa rsa-2048"; do
    set -- $k
    "$bin" key create "$1" --type "$2" >/dev/null
    "$bin" cert issue "$1" --name localhost >/dev/null
    "$bin" cert show "$1" >"$work/$1-vault.crt"
done
# The same key types in files, for the baseline.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$work/web-file.key" -out "$work/web-file.crt" -days 2 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost \
    -keyout "$work/rsa-file.key" -out "$work/rsa-file.crt" -days 2 2>/dev/null
chmod 644 "$work"/*.key

cat >"$work/engine.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $engine
MODULE_PATH = $module
PIN = any
EOF
provider=/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so
routes="file vault"
if [ -e "$provider" ]; then
    routes="file vault provider"
    cat >"$work/provider.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = $provider
pkcs11-module-path = $module
pkcs11-module-token-pin = any
activate = 1
EOF
    for k in web rsa; do
        python3 - "$work/$k.uri.pem" "pkcs11:token=vaultgate;object=$k;type=private" <<'PY'
import base64, sys
def tlv(t, b):
    n = len(b)
    return bytes([t]) + (bytes([n]) if n < 128 else bytes([0x82, n >> 8, n & 255])) + b
der = tlv(0x30, tlv(0x1a, b"PKCS#11 Provider URI v1.0") + tlv(0x0c, sys.argv[2].encode()))
open(sys.argv[1], "w").write("-----BEGIN PKCS#11 PROVIDER URI-----\n"
    + base64.b64encode(der).decode() + "\n-----END PKCS#11 PROVIDER URI-----\n")
PY
    done
else
    echo "(no pkcs11-provider: apt-get install -t bookworm-backports pkcs11-provider for the provider rows)"
fi

# --- one nginx per (key, storage), one worker each --------------------------
declare -A port
start_nginx() { # NAME CERT KEY [OPENSSL_CONF]
    local name=$1 dir=$work/$1
    mkdir -p "$dir/logs"
    port[$name]=$(free_port)
    cat >"$dir/nginx.conf" <<EOF
user www-data;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
env OPENSSL_CONF;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    server {
        listen 127.0.0.1:${port[$name]} ssl backlog=4096;
        ssl_certificate $2;
        ssl_certificate_key $3;
        location / { return 200 "ok\n"; }
    }
}
EOF
    OPENSSL_CONF=${4:-$work/engine.cnf} taskset -c "$SERVER_CPU" nginx -c "$dir/nginx.conf"
    wait_until 10 "nginx $name" curl -sfk -o /dev/null "https://127.0.0.1:${port[$name]}/"
}
for k in web rsa; do
    start_nginx "$k-file" "$work/$k-file.crt" "$work/$k-file.key"
    start_nginx "$k-vault" "$work/$k-vault.crt" "\"engine:pkcs11:pkcs11:token=vaultgate;object=$k;type=private\""
    [[ $routes != *provider* ]] || start_nginx "$k-provider" "$work/$k-vault.crt" "$work/$k.uri.pem" "$work/provider.cnf"
done

nginx_pids() { # NAME: master and worker
    local m
    m=$(cat "$work/$1/nginx.pid")
    echo "$m" $(pgrep -P "$m")
}

declare -A total_hs total_ticks
measure() { # NAME
    local name=$1 ps hs c0 c1 v0 v1 split=""
    read -r -a ps <<<"$(nginx_pids "$name")"
    v0=$(cpu_ticks "$vault_pid")
    c0=$(cpu_ticks "${ps[@]}")
    LD_PRELOAD=$work/noresume.so NORESUME=1 HANDSHAKE_COUNT=$work/$name.hs \
        taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Connection: close" \
        "https://localhost:${port[$name]}/" >"$work/$name.wrk" 2>&1
    c1=$(cpu_ticks "${ps[@]}")
    v1=$(cpu_ticks "$vault_pid")
    hs=$(awk '/^full/ {print $2}' "$work/$name.hs")
    if [[ $name != *-file ]]; then
        split=$(printf '(nginx %.0f + vault %.0f us a handshake)' \
            "$(echo "($c1 - $c0) * 1000000 / $(getconf CLK_TCK) / $hs" | bc -l)" \
            "$(echo "($v1 - $v0) * 1000000 / $(getconf CLK_TCK) / $hs" | bc -l)")
        c1=$((c1 + v1 - v0))
    fi
    if awk '/^resumed/ {exit !($2 > 0)}' "$work/$name.hs"; then
        echo "$name: the client resumed sessions; the figure would not be full handshakes" >&2
        exit 1
    fi
    total_hs[$name]=$((${total_hs[$name]:-0} + hs))
    total_ticks[$name]=$((${total_ticks[$name]:-0} + c1 - c0))
    printf '  %-12s %7d handshakes  %5.2f CPU-s  %7.0f /CPU-s  %s\n' "$name" "$hs" \
        "$(echo "($c1 - $c0) / $(getconf CLK_TCK)" | bc -l)" \
        "$(echo "$hs * $(getconf CLK_TCK) / ($c1 - $c0)" | bc -l)" "$split"
}

echo "== $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== DURATION=${DURATION}s ROUNDS=$ROUNDS CONNS=$CONNS, TLS 1.3 full handshakes, nginx $(nginx -v 2>&1 | cut -d/ -f2)"
for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r"
    for k in web rsa; do
        order=""
        for route in $routes; do order="$order $k-$route"; done
        ((r % 2)) || order=$(echo $order | tr ' ' '\n' | tac | tr '\n' ' ')
        for name in $order; do measure "$name"; done
    done
done
echo "== handshakes per CPU-second (nginx; + the vault for vault keys)"
for k in web rsa; do
    f=$(echo "${total_hs[$k-file]} / ${total_ticks[$k-file]}" | bc -l)
    label=$([ "$k" = web ] && echo "ECDSA P-256" || echo "RSA-2048")
    for route in $routes; do
        [ "$route" != file ] || continue
        v=$(echo "${total_hs[$k-$route]} / ${total_ticks[$k-$route]}" | bc -l)
        ratio=$(echo "$v / $f" | bc -l)
        verdict=$(echo "$ratio >= 0.85" | bc -l)
        printf '%-12s %-8s file %7.0f  vault key %7.0f  ratio %.2f  %s\n' "$label" "$route" \
            "$(echo "$f * $(getconf CLK_TCK)" | bc -l)" "$(echo "$v * $(getconf CLK_TCK)" | bc -l)" \
            "$ratio" "$([ "$verdict" = 1 ] && echo PASS || echo "MISS (goal 0.85)")"
    done
done
