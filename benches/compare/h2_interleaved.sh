#!/usr/bin/env bash
# h2-1k A/B on a noisy machine: HAProxy and several vaultgate binaries
# (`vault:` key, one shared vault), each with one worker, all pinned to core
# 1 and started once, in front of one nginx on core 0; then ROUNDS rounds
# of WIN-second h2load windows (4 connections x 8 streams, as run.sh's
# h2-1k), system after system, so that drift touches every system alike.
# Prints CPU microseconds per request (utime+stime; vaultgate: proxy +
# vault) per round, the median per-round ratio to HAProxy, and totals.
#
#   ROUNDS=10 WIN=4 benches/compare/h2_interleaved.sh /tmp/vg-before target/release/vaultgate
#
# A binary's label is its file name (give distinct names). NOHAP=1 leaves
# HAProxy out (for a profile: perf record -p the proxy's pid meanwhile).
# Needs what run.sh installs (nginx, haproxy, h2load, openssl, curl).
set -u
ROUNDS=${ROUNDS:-4}; WIN=${WIN:-5}
W=$(mktemp -d /tmp/h2b.XXXX); chmod 755 $W
pids=()
cleanup() { for p in "${pids[@]}"; do kill $p 2>/dev/null; done; sleep 0.5; for p in "${pids[@]}"; do kill -9 $p 2>/dev/null; done; wait 2>/dev/null; rm -rf $W; }
trap cleanup EXIT
mkdir -p $W/www $W/c $W/be $W/hap
head -c 1024 /dev/zero | tr '\0' x > $W/www/1k
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $W/c/k.key 2>/dev/null
openssl req -x509 -new -key $W/c/k.key -sha256 -days 2 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -out $W/c/k.pem 2>/dev/null
cat $W/c/k.pem $W/c/k.key > $W/c/hap.pem
ports=($(python3 -c '
import socket
ss=[socket.socket() for _ in range(12)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(*[s.getsockname()[1] for s in ss])'))
BE=${ports[0]}; HAP=${ports[1]}
cat > $W/be/nginx.conf <<E2
worker_processes 1; error_log $W/be/err.log warn; pid $W/be/pid; events { worker_connections 4096; }
http { access_log off; sendfile on; keepalive_requests 10000000; keepalive_timeout 300s;
server { listen 127.0.0.1:$BE backlog=4096; root $W/www; } }
E2
taskset -c 0 nginx -p $W/be -c $W/be/nginx.conf -g 'daemon off;' & pids+=($!)
cat > $W/hap/h.cfg <<E2
global
    nbthread 1
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 75s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$HAP ssl crt $W/c/hap.pem alpn h2,http/1.1 curves X25519
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    default_backend be
backend be
    http-reuse always
    server b1 127.0.0.1:$BE
E2
taskset -c 1 haproxy -db -f $W/hap/h.cfg > $W/hap/out 2>&1 & pids+=($!)
declare -A PID PORT
PID[haproxy]=$!; PORT[haproxy]=$HAP
B0=$1
mkdir -p $W/vault
taskset -c 1 env RUST_LOG=warn $B0 vault --socket $W/vault.sock --state-dir $W/vault --ready-line > $W/vault.out 2> $W/vault.err & VPID=$!; pids+=($!)
for i in $(seq 100); do grep -q ^ready $W/vault.out && break; sleep 0.1; done
$B0 key import tls --pem $W/c/k.key --socket $W/vault.sock >/dev/null
i=2
declare -A BINOF
names=()
for b in "$@"; do n=$(basename "$b"); BINOF[$n]=$b; names+=("$n"); done
for n in "${names[@]}"; do
  PORT[$n]=${ports[$i]}; i=$((i+1))
  cat > $W/$n.toml <<E2
[proxy]
listen = "127.0.0.1:${PORT[$n]}"
vault_sockets = ["$W/vault.sock"]
workers = 1
min_tls_version = "1.3"
default_server_name = "localhost"
idle_timeout = "75s"
access_log = false
forwarded_headers = ["x-forwarded-for", "x-forwarded-proto"]
[[proxy.cert]]
names = ["localhost", "127.0.0.1"]
cert = "$W/c/k.pem"
key = "vault:tls"
[[proxy.route]]
host = "*"
upstream = "backend"
[proxy.upstream.backend]
backends = ["127.0.0.1:$BE"]
E2
  taskset -c 1 env RUST_LOG=warn "${BINOF[$n]}" proxy --config $W/$n.toml > $W/$n.out 2> $W/$n.err & PID[$n]=$!; pids+=($!)
done
SYS="haproxy ${names[*]}"; [ "${NOHAP:-0}" = 1 ] && SYS="${names[*]}"
for s in $SYS; do for i in $(seq 100); do curl -skf -o /dev/null https://localhost:${PORT[$s]}/1k && break; sleep 0.1; done; done
ticks() { local t=0; for p in "$@"; do read -r -a f < <(sed 's/^.*) //' /proc/$p/stat); t=$((t+f[11]+f[12])); done; echo $t; }
for s in $SYS; do taskset -c 0 h2load -t1 -c4 -m8 -D 2 https://localhost:${PORT[$s]}/1k >/dev/null 2>&1; done
declare -A SUMT SUMR
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq $ROUNDS); do
  line="round $r:"
  for s in $SYS; do
    ps=(${PID[$s]}); [ $s != haproxy ] && ps+=($VPID)
    c0=$(ticks "${ps[@]}")
    out=$(taskset -c 0 h2load -t1 -c4 -m8 -D $WIN https://localhost:${PORT[$s]}/1k 2>&1)
    c1=$(ticks "${ps[@]}")
    n=$(echo "$out" | awk '/^requests:/ {print $8}')
    us=$(python3 -c "print(round(($c1-$c0)*10000/max($n,1),1))")
    SUMT[$s]=$(( ${SUMT[$s]:-0} + c1 - c0 )); SUMR[$s]=$(( ${SUMR[$s]:-0} + n ))
    line+=" $s $us"
  done
  echo "$line" | tee -a $W/rounds
done
python3 - $W/rounds <<'PY'
import sys,statistics
rows=[l.split(':',1)[1].split() for l in open(sys.argv[1])]
names=rows[0][0::2]
for n in names[1:]:
    rs=[float(r[r.index(n)+1])/float(r[r.index(names[0])+1]) for r in rows]
    print('%-10s per-round ratio to %s: median %.2f  (min %.2f max %.2f)' % (n, names[0], statistics.median(rs), min(rs), max(rs)))
PY
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
for s in $SYS; do python3 -c "
t,n,ht,hn=${SUMT[$s]},${SUMR[$s]},${SUMT[haproxy]:-1},${SUMR[haproxy]:-1}
print('%-10s %8d req %6.1f µs/req  x haproxy %.2f' % ('$s', n, t*10000/n, (t/n)/(ht/hn)))"; done
