#!/usr/bin/env bash
# Side by side (issue 5): nginx, HAProxy and vaultgate (`vault:` keys, and
# `file:` keys for the cost of isolation) as TLS terminators in front of
# the same nginx backend, each with one worker, all on the same core.
#
#   benches/compare/run.sh                  # DURATION=10 s per measurement, ~6 min
#   DURATION=2 benches/compare/run.sh       # a quick look
#   SYSTEMS="nginx vg-vault" TESTS="full-ecdsa rss-idle" benches/compare/run.sh
#   PERF=1 benches/compare/run.sh           # + perf profiles of vaultgate (vault:); perturbs its rows
#   PERFSTAT=1 benches/compare/run.sh       # + context switches and syscalls (perf stat), every system
#
# Measures, per terminator: keep-alive 1 KiB requests, 1 MiB downloads,
# new-connection full handshakes (ECDSA P-256 and RSA-2048, the client
# never offers resumption), resumed handshakes, HTTP/2 1 KiB requests and
# RSS with IDLE_CONNS (10,000) idle TLS keep-alive connections. For each:
# rate, p50/p99 latency, errors, and the CPU time per request of the
# terminator's processes (utime+stime from /proc/PID/stat over the window,
# all threads; vaultgate: proxy + vault). On a shared 2-core machine the
# CPU time per request is the figure to trust; the rate is whatever the
# client on the other core could drive.
#
# Layout: terminators (and the vault) pinned to core SERVER_CPU (1); wrk,
# h2load, the idle-connection client and the backend nginx on CLIENT_CPU (0).
#
# Installs nginx, haproxy, wrk, nghttp2-client (h2load), openssl, gcc,
# python3, curl with apt-get if missing; builds target/release/vaultgate if
# missing. Everything runs in a temp dir; every process started is stopped
# on exit or Ctrl-C. Results: a table on stdout and JSON lines in
# $OUT/results.jsonl (default benches/compare/out/, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=benches/compare

DURATION=${DURATION:-10}
CONNS=${CONNS:-32}            # wrk connections (keep-alive and handshakes)
DL_CONNS=${DL_CONNS:-16}      # wrk connections for 1 MiB downloads
H2_CONNS=${H2_CONNS:-4}       # h2load connections ...
H2_STREAMS=${H2_STREAMS:-8}   # ... and streams in flight on each
IDLE_CONNS=${IDLE_CONNS:-10000}
SYSTEMS=${SYSTEMS:-nginx haproxy vg-vault vg-file vg-mtls}
# vg-mtls: the vault: keys of vg-vault reached over mutual TLS on TCP
# instead of the Unix socket (same vault); only the signing tests tell them apart.
MTLS_TESTS=${MTLS_TESTS:-full-ecdsa full-rsa}
TESTS=${TESTS:-rss-idle keepalive-1k download-1m full-ecdsa full-rsa resumed h2-1k}
# vaultgate with file: keys differs from vault: keys only in the signer;
# its RSS with idle connections is the vault: proxy's minus the vault.
RSS_SYSTEMS=${RSS_SYSTEMS:-nginx haproxy vg-vault}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
BIN=${BIN:-target/release/vaultgate}
OUT=${OUT:-$here/out}
PERF=${PERF:-0}
PERFSTAT=${PERFSTAT:-0}
export PATH="$PATH:/usr/sbin:/sbin"

# --- tools -----------------------------------------------------------------
have() { command -v "$1" >/dev/null 2>&1; }
need=()
have nginx || need+=(nginx)
have haproxy || need+=(haproxy)
have wrk || need+=(wrk)
have h2load || need+=(nghttp2-client)
have openssl || need+=(openssl)
have cc || need+=(gcc libc6-dev)
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
have python3 || need+=(python3)
have curl || need+=(curl)
have taskset || need+=(util-linux)
[ "$PERF" != 1 ] && [ "$PERFSTAT" != 1 ] || have perf || need+=(linux-perf)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x "$BIN" ] || cargo build --release --bin vaultgate

# 10,000 idle connections need descriptors in the client and the servers
# (raised as far as allowed), and connection limits above that everywhere.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fdmax=$(ulimit -n)
[ "$fdmax" = unlimited ] && fdmax=65536
if [ "$fdmax" -lt $((IDLE_CONNS + 200)) ]; then
    echo "warning: ulimit -n is $fdmax; the idle-connection test may fail" >&2
fi
maxconn=$((IDLE_CONNS + 1000))

# --- cleanup ---------------------------------------------------------------
work=$(mktemp -d /tmp/vg-compare.XXXXXX)
chmod 755 "$work"   # nginx workers run as nobody: let them read
pids=()
cleanup() {
    trap - EXIT INT TERM
    local p alive
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# Runs "$@" on the client core in the background and waits for it, so a
# signal reaches the trap at once; returns its exit status.
client() {
    taskset -c "$CLIENT_CPU" "$@" &
    local p=$!
    pids+=("$p")
    wait "$p"
}

wait_until() { # SECONDS WHAT COMMAND...: poll every 0.1 s
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "timed out waiting for $what" >&2
    return 1
}

# --- ports, files, certificates --------------------------------------------
read -r p_backend p_nginx p_haproxy p_vgvault p_vgfile m_vgvault m_vgfile p_vgmtls m_vgmtls p_vaulttls < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(10)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
declare -A port=([nginx]=$p_nginx [haproxy]=$p_haproxy [vg-vault]=$p_vgvault [vg-file]=$p_vgfile [vg-mtls]=$p_vgmtls)
declare -A metrics=([vg-vault]=$m_vgvault [vg-file]=$m_vgfile [vg-mtls]=$m_vgmtls)

mkdir -p "$work/www" "$work/certs" "$OUT"
chmod 755 "$work/www"
head -c 1024 /dev/zero | tr '\0' 'x' >"$work/www/1k"
head -c 65536 /dev/zero | tr '\0' 'x' >"$work/www/64k"
head -c 1048576 /dev/zero | tr '\0' 'x' >"$work/www/1m"

# Throwaway self-signed certificates, one per key type, the same files for
# every system (HAProxy wants certificate and key in one file). Each is
# signed by its own key so that a client limited to one key type's
# signature algorithms still accepts the chain.
c=$work/certs
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$c/ecdsa.key" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$c/rsa.key" 2>/dev/null
for k in ecdsa rsa; do
    openssl req -x509 -new -key "$c/$k.key" -sha256 -days 2 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -addext "basicConstraints=critical,CA:FALSE" -addext keyUsage=digitalSignature \
        -addext extendedKeyUsage=serverAuth -out "$c/$k.pem" 2>/dev/null
    cat "$c/$k.pem" "$c/$k.key" >"$c/$k.haproxy.pem"
done

# Mutual TLS between vg-mtls and the vault: a CA, the vault's certificate
# for 127.0.0.1 and the proxy's client identity.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$c/mtls-ca.key" \
    -sha256 -days 2 -subj /CN=bench-ca -addext "basicConstraints=critical,CA:TRUE" \
    -addext keyUsage=keyCertSign -out "$c/mtls-ca.pem" 2>/dev/null
for who in vault edge; do
    case $who in
        vault) ext="subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth" ;;
        edge) ext="subjectAltName=URI:spiffe://bench/proxy/edge
extendedKeyUsage=clientAuth" ;;
    esac
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$c/mtls-$who.key" \
        -subj "/CN=$who" -out "$c/mtls-$who.csr" 2>/dev/null
    openssl x509 -req -in "$c/mtls-$who.csr" -CA "$c/mtls-ca.pem" -CAkey "$c/mtls-ca.key" \
        -CAcreateserial -days 2 -sha256 -extfile <(echo "$ext") -out "$c/mtls-$who.pem" 2>/dev/null
done

# Client-side signature algorithms (OpenSSL config read by wrk): offering
# only ECDSA or only RSA(-PSS) makes every server pick that certificate.
for k in ecdsa rsa; do
    case $k in
        ecdsa) algs=ECDSA+SHA256 ;;
        rsa) algs=rsa_pss_rsae_sha256:RSA+SHA256 ;;
    esac
    cat >"$work/ssl-$k.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
SignatureAlgorithms = $algs
EOF
done

# The wrk shim that stops wrk from resuming (see noresume.c), and the
# client that holds the idle connections (hold.c).
cc -shared -fPIC -O2 -o "$work/noresume.so" "$here/noresume.c" -ldl
cc -O2 -o "$work/hold" "$here/hold.c" -lssl -lcrypto

# --- backend: one nginx serving 1k, 64k and 1m, on the client core --------
mkdir -p "$work/backend"
cat >"$work/backend/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $fdmax;
error_log $work/backend/error.log warn;
pid $work/backend/nginx.pid;
events { worker_connections 16384; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server { listen 127.0.0.1:$p_backend backlog=4096; root $work/www; }
}
EOF
taskset -c "$CLIENT_CPU" nginx -p "$work/backend" -c "$work/backend/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_until 10 "backend nginx" curl -sf -o /dev/null "http://127.0.0.1:$p_backend/1k"

# --- terminator: nginx -------------------------------------------------------
declare -A main_pid
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $fdmax;
error_log $work/nginx/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections $maxconn; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    # Resumption check without an access log: a line only when a request's
    # handshake is not the kind the client announced (X-Bench-Expect).
    map "\$http_x_bench_expect:\$ssl_session_reused" \$vg_unexpected {
        "full:r" 1;
        "resumed:." 1;
        default 0;
    }
    log_format handshake "\$http_x_bench_expect \$ssl_session_reused";
    upstream backend { server 127.0.0.1:$p_backend; keepalive 64; }
    server {
        listen 127.0.0.1:$p_nginx ssl http2 backlog=4096;
        access_log $work/nginx/unexpected.log handshake if=\$vg_unexpected;
        ssl_certificate $c/ecdsa.pem;
        ssl_certificate_key $c/ecdsa.key;
        ssl_certificate $c/rsa.pem;
        ssl_certificate_key $c/rsa.key;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_max_temp_file_size 0;
        }
    }
}
EOF
touch "$work/nginx/unexpected.log"
if [[ " $SYSTEMS " == *" nginx "* ]]; then
    taskset -c "$SERVER_CPU" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
    main_pid[nginx]=$!
    pids+=($!)
fi

# --- terminator: HAProxy -----------------------------------------------------
mkdir -p "$work/haproxy"
cat >"$work/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $maxconn
    # HAProxy wants 2 descriptors per connection up front; where the hard
    # limit is lower (20,000 in some sandboxes) run with what there is.
    no strict-limits
    stats socket $work/haproxy/stats.sock mode 600 level admin
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode http
    maxconn $maxconn
    option http-keep-alive
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    timeout http-request 30s
    timeout http-keep-alive 75s
frontend fe
    bind 127.0.0.1:$p_haproxy ssl crt $c/ecdsa.haproxy.pem crt $c/rsa.haproxy.pem alpn h2,http/1.1 curves X25519
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    default_backend be
backend be
    http-reuse always
    server b1 127.0.0.1:$p_backend
EOF
if [[ " $SYSTEMS " == *" haproxy "* ]]; then
    taskset -c "$SERVER_CPU" haproxy -db -f "$work/haproxy/haproxy.cfg" >"$work/haproxy/out" 2>&1 &
    main_pid[haproxy]=$!
    pids+=($!)
fi

# --- terminator: vaultgate, vault: and file: keys ---------------------------
vault_pid=
if [[ " $SYSTEMS " == *" vg-vault "* || " $SYSTEMS " == *" vg-mtls "* ]]; then
    mkdir -p "$work/vault"
    cat >"$work/vault.toml" <<EOF
[vault]
tls_listen = "127.0.0.1:$p_vaulttls"
tls_cert = "$c/mtls-vault.pem"
tls_key = "$c/mtls-vault.key"
client_ca = "$c/mtls-ca.pem"

[[vault.grant]]
principal = "uid:$(id -u)"
keys = ["*"]
ops = ["all"]

[[vault.grant]]
principal = "cert:spiffe://bench/proxy/edge"
keys = ["*"]
ops = ["use"]
EOF
    taskset -c "$SERVER_CPU" env RUST_LOG=warn "$BIN" vault --socket "$work/vault.sock" \
        --config "$work/vault.toml" \
        --state-dir "$work/vault" --ready-line >"$work/vault.out" 2>"$work/vault.err" &
    vault_pid=$!
    pids+=($!)
    wait_until 30 "the vault" grep -q '^ready' "$work/vault.out" || { cat "$work/vault.err"; exit 1; }
    "$BIN" key import tls-ecdsa --pem "$c/ecdsa.key" --socket "$work/vault.sock" >/dev/null
    "$BIN" key import tls-rsa --pem "$c/rsa.key" --socket "$work/vault.sock" >/dev/null
fi
vg_config() { # SYSTEM KEYREF-ECDSA KEYREF-RSA
    local vaults="vault_sockets = [\"$work/vault.sock\"]"
    if [ "$1" = vg-mtls ]; then
        vaults="vaults = [\"tls://127.0.0.1:$p_vaulttls\"]"
    fi
    cat <<EOF
[proxy]
listen = "127.0.0.1:${port[$1]}"
metrics_listen = "127.0.0.1:${metrics[$1]}"
$vaults
workers = 1
min_tls_version = "1.3"
default_server_name = "localhost"
max_connections = $maxconn
idle_timeout = "75s"
access_log = false
forwarded_headers = ["x-forwarded-for", "x-forwarded-proto"]

[[proxy.cert]]
names = ["localhost", "127.0.0.1"]
cert = "$c/ecdsa.pem"
key = "$2"

[[proxy.cert]]
names = ["localhost", "127.0.0.1"]
cert = "$c/rsa.pem"
key = "$3"

[[proxy.route]]
host = "*"
upstream = "backend"

[proxy.upstream.backend]
backends = ["127.0.0.1:$p_backend"]
EOF
    if [ "$1" = vg-mtls ]; then
        printf '\n[proxy.vault_tls]\nca = "%s"\ncert = "%s"\nkey = "%s"\n' \
            "$c/mtls-ca.pem" "$c/mtls-edge.pem" "$c/mtls-edge.key"
    fi
}
for sys in vg-vault vg-file vg-mtls; do
    [[ " $SYSTEMS " == *" $sys "* ]] || continue
    cfg=$work/$sys.toml
    if [ $sys != vg-file ]; then
        vg_config $sys vault:tls-ecdsa vault:tls-rsa >"$cfg"
    else
        vg_config $sys "file:$c/ecdsa.key" "file:$c/rsa.key" >"$cfg"
    fi
    # `[proxy] workers` (tokio worker threads) is newer than this script;
    # without it the affinity mask alone gives tokio one worker.
    if ! "$BIN" check --config "$cfg" >"$work/check.out" 2>&1; then
        if grep -q workers "$work/check.out"; then
            sed -i '/^workers = 1$/d' "$cfg"
            "$BIN" check --config "$cfg" >/dev/null || { cat "$work/check.out"; exit 1; }
        else
            cat "$work/check.out"
            exit 1
        fi
    fi
    taskset -c "$SERVER_CPU" env RUST_LOG=warn "$BIN" proxy --config "$cfg" \
        >"$work/$sys.out" 2>"$work/$sys.err" &
    main_pid[$sys]=$!
    pids+=($!)
done

# --- ready? TLS parameters the same everywhere? -----------------------------
handshake_info() { # PORT SIGALGS: "TLSv1.3 TLS_AES_256_GCM_SHA384 X25519 ECDSA"
    openssl s_client -brief -connect "127.0.0.1:$1" -servername localhost -sigalgs "$2" \
        </dev/null 2>&1 | awk -F': ' '
        /^Protocol version/ {v=$2} /^Ciphersuite/ {c=$2} /^Peer Temp Key/ {split($2,k,","); t=k[1]}
        /^Signature type/ {s=$2} END {print v, c, t, s}'
}
machine="$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "== machine: $machine, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | head -1 | awk '{print $3}'), $("$BIN" --version), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), h2load $(h2load --version | awk '{print $2}')"
echo "== DURATION=${DURATION}s per measurement; terminators on core $SERVER_CPU, clients and backend on core $CLIENT_CPU"
for sys in $SYSTEMS; do
    wait_until 30 "$sys" curl -skf -o /dev/null "https://localhost:${port[$sys]}/1k" \
        || { tail -5 "$work/$sys.err" "$work/$sys/out" 2>/dev/null; exit 1; }
    printf '   %-9s ECDSA: %-45s RSA: %s\n' "$sys" "$(handshake_info "${port[$sys]}" ECDSA+SHA256)" \
        "$(handshake_info "${port[$sys]}" rsa_pss_rsae_sha256:RSA+SHA256)"
done

# --- measuring ---------------------------------------------------------------
procs() { # SYSTEM: the terminator's pids (nginx: master + workers; vg-vault: proxy + vault)
    local p=${main_pid[$1]}
    echo "$p"
    case $1 in
        nginx) pgrep -P "$p" || true ;;
        vg-vault | vg-mtls) echo "$vault_pid" ;;
    esac
}
cpu_ticks() { # PIDS...: utime + stime of every thread of each, in clock ticks
    local t=0 p f
    for p in "$@"; do
        read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat")
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}
rss_kib() { # PIDS...: sum of VmRSS
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done
    echo "$t"
}
# Handshakes the server saw, as "full resumed" (vaultgate: its metrics;
# HAProxy: its frontend counters ssl_sess and ssl_reused_sess) or, for
# nginx, "N -1": the lines of its unexpected-kind log.
server_handshakes() {
    case $1 in
        vg-*) curl -s "http://127.0.0.1:${metrics[$1]}/metrics" | awk '
                /^vaultgate_proxy_handshakes_total\{kind="full"\}/ {f=$2}
                /^vaultgate_proxy_handshakes_total\{kind="resumed"\}/ {r=$2}
                END {printf "%d %d\n", f, r}' ;;
        haproxy) python3 - "$work/haproxy/stats.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show stat typed\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
n = {}
for line in data.decode().splitlines():
    if line.startswith("F.") and (".ssl_sess." in line or ".ssl_reused_sess." in line):
        name = line.split(".")[4]
        n[name] = n.get(name, 0) + int(line.rsplit(":", 1)[1])
print(n.get("ssl_sess", 0), n.get("ssl_reused_sess", 0))
PY
            ;;
        nginx) echo "$(wc -l <"$work/nginx/unexpected.log") -1" ;;
    esac
}

results=$OUT/results.jsonl
: >"$results"
perf_pid=
measure() { # SYSTEM TEST
    local sys=$1 test=$2 url="https://localhost:${port[$1]}" out=$work/$1-$2
    local -a ps env=() cmd
    mapfile -t ps < <(procs "$sys")
    case $test in
        keepalive-1k) cmd=(wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$here/wrk.lua" "$url/1k") ;;
        download-1m) cmd=(wrk -t1 -c"$DL_CONNS" -d"${DURATION}s" -s "$here/wrk.lua" "$url/1m") ;;
        full-ecdsa | full-rsa)
            env=(LD_PRELOAD="$work/noresume.so" NORESUME=1 HANDSHAKE_COUNT="$out.hs"
                OPENSSL_CONF="$work/ssl-${test#full-}.cnf")
            cmd=(wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$here/wrk.lua" -H "Connection: close"
                -H "X-Bench-Expect: full" "$url/1k") ;;
        resumed)
            env=(LD_PRELOAD="$work/noresume.so" NORESUME=0 HANDSHAKE_COUNT="$out.hs"
                OPENSSL_CONF="$work/ssl-ecdsa.cnf")
            cmd=(wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$here/wrk.lua" -H "Connection: close"
                -H "X-Bench-Expect: resumed" "$url/1k") ;;
        h2-1k) cmd=(h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DURATION" --log-file="$out.log" "$url/1k") ;;
    esac
    local hs0 hs1 c0 c1 t0 t1
    hs0=$(server_handshakes "$sys")
    if [ "$PERF" = 1 ] && [ "$sys" = vg-vault ] && [[ $test == keepalive-1k || $test == full-ecdsa ]]; then
        perf record -q -e cpu-clock -g -o "$OUT/perf-$test-proxy.data" -p "${main_pid[vg-vault]}" \
            >/dev/null 2>&1 &
        perf_pid=$!
        pids+=($!)
        perf record -q -e cpu-clock -g -o "$OUT/perf-$test-vault.data" -p "$vault_pid" >/dev/null 2>&1 &
        perf_pid="$perf_pid $!"
        pids+=($!)
        sleep 0.5
    fi
    local stat_pid=
    if [ "$PERFSTAT" = 1 ]; then
        # Context switches of the terminator's threads (and the vault's),
        # threads started during the window included.
        perf stat -x, -e context-switches,task-clock,raw_syscalls:sys_enter -o "$out.perfstat" \
            -p "$(procs "$sys" | paste -sd,)" >/dev/null 2>&1 &
        stat_pid=$!
        pids+=($!)
        sleep 0.3
    fi
    local v0=0 v1=0
    [ "$sys" != vg-vault ] || v0=$(cpu_ticks "$vault_pid")
    c0=$(cpu_ticks "${ps[@]}")
    t0=$(date +%s%N)
    # LD_PRELOAD only on the client itself (timeout would write the counts too).
    client timeout $((DURATION + 60)) env WRK_JSON="$out.json" "${env[@]}" "${cmd[@]}" >"$out.txt" 2>&1 \
        || echo "   ($sys $test: client exited with status $?; see below)" >&2
    c1=$(cpu_ticks "${ps[@]}")
    t1=$(date +%s%N)
    [ "$sys" != vg-vault ] || v1=$(cpu_ticks "$vault_pid")
    if [ -n "$perf_pid" ]; then
        # shellcheck disable=SC2086
        kill -INT $perf_pid 2>/dev/null || true
        # shellcheck disable=SC2086
        wait $perf_pid 2>/dev/null || true
        perf_pid=
    fi
    if [ -n "$stat_pid" ]; then
        kill -INT "$stat_pid" 2>/dev/null || true
        wait "$stat_pid" 2>/dev/null || true
        echo "   $sys $test: $(awk -F, '/context-switches/ {print $1}' "$out.perfstat") context switches," \
            "$(awk -F, '/sys_enter/ {print $1}' "$out.perfstat") syscalls" \
            "in $(grep -o '"requests":[0-9]*' "$out.json" 2>/dev/null | grep -o '[0-9]*$' || echo '?') requests" >&2
    fi
    hs1=$(server_handshakes "$sys")
    python3 "$here/report.py" record --system "$sys" --test "$test" --out "$out" \
        --cpu-ticks $((c1 - c0)) --vault-ticks $((v1 - v0)) --hz "$(getconf CLK_TCK)" --wall-ns $((t1 - t0)) \
        --server-before "$hs0" --server-after "$hs1" >>"$results" \
        || { echo "   ($sys $test: no result)" >&2; tail -5 "$out.txt" >&2; }
    tail -1 "$results" | cut -c1-160
}

measure_rss() { # SYSTEM
    local sys=$1 out=$work/$1-rss-idle base rss held
    local -a ps
    mapfile -t ps < <(procs "$sys")
    base=$(rss_kib "${ps[@]}")
    taskset -c "$CLIENT_CPU" "$work/hold" 127.0.0.1 "${port[$sys]}" "$IDLE_CONNS" 64 120 300 \
        >"$out.txt" 2>"$out.err" </dev/null &
    local hp=$!
    pids+=("$hp")
    wait_until 130 "$sys: $IDLE_CONNS connections" grep -q '^held' "$out.txt" || true
    sleep 1
    rss=$(rss_kib "${ps[@]}")
    local detail=""
    for p in "${ps[@]}"; do detail+="$(cat "/proc/$p/comm"):$(awk '/^VmRSS/ {print $2}' "/proc/$p/status") "; done
    kill "$hp" 2>/dev/null || true
    wait "$hp" 2>/dev/null || true
    held=$(awk '/^held/ {print $2, $4, $6, $8}' "$out.txt")
    python3 "$here/report.py" record-rss --system "$sys" --rss-kib "$rss" --base-kib "$base" \
        --held "${held:-0 0 0 0}" --conns "$IDLE_CONNS" --detail "$detail" >>"$results"
    tail -1 "$results" | cut -c1-160
    sleep 1   # let the server close them
}

# A short warm-up of every system (caches, pools, the signer's connections).
for sys in $SYSTEMS; do
    client wrk -t1 -c8 -d1s "https://localhost:${port[$sys]}/1k" >/dev/null 2>&1 || true
done
# Test by test, each system in turn: drift on the shared machine then
# touches every system of a test alike.
for test in $TESTS; do
    echo "== $test"
    for sys in $SYSTEMS; do
        if [ "$test" = rss-idle ]; then
            [[ " $RSS_SYSTEMS " == *" $sys "* ]] && measure_rss "$sys"
        elif [ "$sys" = vg-mtls ] && [[ " $MTLS_TESTS " != *" $test "* ]]; then
            continue
        else
            measure "$sys" "$test"
        fi
    done
done

echo
{
    echo "machine: $machine; DURATION=${DURATION}s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    python3 "$here/report.py" table "$results"
} | tee "$OUT/table.txt"
echo "results: $results, $OUT/table.txt"
if [ "$PERF" = 1 ]; then
    for f in "$OUT"/perf-*.data; do
        echo "== $f: CPU by thread, then top symbols (self)"
        # (head closes the pipe early: not a failure)
        perf report -i "$f" --no-children --sort comm -g none --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -6 || true
        perf report -i "$f" --no-children --sort sym -g none --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -15 || true
    done
fi
