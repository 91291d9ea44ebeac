#!/usr/bin/env python3
"""Results of benches/compare/run.sh: one JSON line per measurement, and the table.

    report.py record --system S --test T --out PREFIX --cpu-ticks N --hz 100 --wall-ns N \
        --server-before "A B" --server-after "A B"      # a wrk or h2load run -> JSON line
    report.py record-rss --system S --rss-kib N --base-kib N --held "HELD ERRORS SECONDS RESUMED" --conns N
    report.py table results.jsonl                      # the table with ratios and targets
"""
import argparse
import json
import re
import sys

# (test, what, reference system, limit): vaultgate with vault: keys against
# the reference, from issue 5. "cpu" is CPU time per request, "p99" the
# 99th percentile latency, "rss" the memory with idle connections.
TARGETS = [
    ("keepalive-1k", "cpu", "nginx", 0.8),
    ("keepalive-1k", "p99", "nginx", 1.0),
    ("download-1m", "cpu", "nginx", 1.0),
    ("full-ecdsa", "cpu", "nginx", 0.6),
    ("full-rsa", "cpu", "nginx", 1.0),
    ("resumed", "cpu", "nginx", 0.6),
    ("h2-1k", "cpu", "haproxy", 1.0),
    ("full-ecdsa", "cpu", "vg-file", 1.10),  # the cost of isolation
    ("rss-idle", "rss", "nginx", 1.0),
]
UNDER_TEST = "vg-vault"
TEST_ORDER = ["keepalive-1k", "download-1m", "full-ecdsa", "full-rsa", "resumed", "h2-1k", "rss-idle"]
SYSTEM_ORDER = ["nginx", "haproxy", "vg-vault", "vg-file", "vg-mtls"]
# The price of reaching the vault over TCP + mutual TLS instead of its Unix
# socket: vg-mtls against vg-vault, CPU per handshake of proxy + vault.
MTLS_TARGETS = [("full-ecdsa", 1.15), ("full-rsa", 1.15)]


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def two_ints(s):
    parts = (s or "").split()
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 else None


def record(a):
    r = {"system": a.system, "test": a.test}
    duration = None
    if a.test == "h2-1k":
        text = read(a.out + ".txt") or ""
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
        f = re.search(r"finished in ([\d.]+)s", text)
        if not m or not f:
            sys.exit(f"no h2load summary in {a.out}.txt")
        done, ok, failed, timeout = int(m[3]), int(m[4]), int(m[5]), int(m[7])
        duration = float(f[1])
        proto = re.search(r"Application protocol: (\S+)", text)
        r["alpn"] = proto[1] if proto else None
        lat = sorted(int(l.split("\t")[2]) for l in (read(a.out + ".log") or "").splitlines()
                     if l.count("\t") == 2)
        requests, errors = done, failed + timeout
        r.update(requests=requests, errors=errors)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        r["p50_ms"] = round(p50 / 1000, 3) if p50 is not None else None
        r["p99_ms"] = round(p99 / 1000, 3) if p99 is not None else None
    else:
        text = read(a.out + ".json")
        if not text:
            sys.exit(f"no wrk summary in {a.out}.json")
        w = json.loads(text)
        duration = w["duration_us"] / 1e6
        requests = w["requests"]
        r.update(requests=requests, errors=w["errors"],
                 p50_ms=round(w["p50_us"] / 1000, 3), p99_ms=round(w["p99_us"] / 1000, 3),
                 error_kinds={k[4:]: w[k] for k in w if k.startswith("err_") and w[k]})
        if a.test == "download-1m":
            r["mb_per_s"] = round(w["bytes"] / duration / 1e6, 1)
    r["duration_s"] = round(duration, 3)
    r["req_per_s"] = round(requests / duration, 1) if duration else None
    if a.test == "download-1m":
        r["rate"], r["rate_unit"] = r["mb_per_s"], "MB/s"
    else:
        r["rate"], r["rate_unit"] = r["req_per_s"], "req/s"
    cpu_s = a.cpu_ticks / a.hz
    wall_s = a.wall_ns / 1e9
    r["cpu_s"] = round(cpu_s, 2)
    r["cpu_util"] = round(cpu_s / wall_s, 3) if wall_s else None
    r["cpu_us_per_req"] = round(cpu_s * 1e6 / requests, 1) if requests else None
    if a.vault_ticks:
        # vaultgate with vault: keys: the vault's part of cpu_us_per_req.
        r["vault_cpu_us_per_req"] = (
            round(a.vault_ticks / a.hz * 1e6 / requests, 1) if requests else None)
    # Handshakes: the client's count (wrk through noresume.c) ...
    hs = read(a.out + ".hs")
    if hs:
        counts = dict(l.split() for l in hs.splitlines() if l.strip())
        full, resumed = int(counts["full"]), int(counts["resumed"])
        r.update(client_full=full, client_resumed=resumed,
                 resumed_pct=round(100 * resumed / (full + resumed), 2) if full + resumed else None)
    # ... and the server's: vaultgate's metrics and HAProxy's frontend
    # counters (full, resumed); nginx's log of requests whose handshake was
    # not the kind the client announced (count, -1).
    before, after = two_ints(a.server_before), two_ints(a.server_after)
    if before and after:
        d0, d1 = after[0] - before[0], after[1] - before[1]
        if a.system == "nginx":
            r["server_unexpected_kind"] = d0
        else:
            r.update(server_full=d0, server_resumed=d1)
    print(json.dumps(r))


def record_rss(a):
    held, errors, seconds, resumed = (a.held.split() + ["0", "0", "0", "0"])[:4]
    r = {"system": a.system, "test": "rss-idle", "conns": a.conns, "held": int(held),
         "errors": int(errors), "open_seconds": float(seconds), "resumed": int(resumed),
         "rss_kib": a.rss_kib, "rss_base_kib": a.base_kib,
         "rss_mib": round(a.rss_kib / 1024, 1),
         "bytes_per_conn": round((a.rss_kib - a.base_kib) * 1024 / int(held)) if int(held) else None,
         "rss_detail_kib": a.detail.strip(),
         "rate": None, "cpu_us_per_req": None, "p50_ms": None, "p99_ms": None}
    print(json.dumps(r))


def ratio(x, y):
    return x / y if x is not None and y else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(a):
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    by = {(r["system"], r["test"]): r for r in rows}
    tests = [t for t in TEST_ORDER if any(r["test"] == t for r in rows)]
    systems = [s for s in SYSTEM_ORDER if any(r["system"] == s for r in rows)]

    def value(sys_, test, what):
        r = by.get((sys_, test))
        if not r:
            return None
        return {"cpu": r.get("cpu_us_per_req"), "p99": r.get("p99_ms"), "rss": r.get("rss_kib")}[what]

    verdicts = {}
    for test, what, ref, limit in TARGETS:
        rt = ratio(value(UNDER_TEST, test, what), value(ref, test, what))
        verdicts[(test, what, ref)] = (rt, limit, None if rt is None else rt <= limit)

    head = (f"{'test':<13} {'system':<9} {'rate':>14} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
            f"{'resumed':>7} {'CPU µs/req':>10} {'CPU ×ref':>8} {'p99 ×ref':>8} {'busy':>5}  target → result")
    print(head)
    print("-" * len(head))
    for test in tests:
        ref = "haproxy" if test == "h2-1k" else "nginx"
        for s in systems:
            r = by.get((s, test))
            if not r:
                continue
            if test == "rss-idle":
                rt = ratio(r["rss_kib"], value(ref, test, "rss"))
                line = (f"{test:<13} {s:<9} {str(r['held']) + ' conns':>14} {'':>7} {'':>7} "
                        f"{r['errors']:>6} {'':>7} {fmt(r['rss_mib'], '.1f') + ' MiB':>10} "
                        f"{fmt(rt, '.2f'):>8} {'':>8} {'':>5}")
                if s == UNDER_TEST:
                    rt_, lim, ok = verdicts[(test, "rss", ref)]
                    line += f"  RSS ≤ {lim:.2f}×{ref} → {verdict(ok)}"
                print(line)
                continue
            rate = f"{r['rate']:,.0f} {r['rate_unit']}" if r.get("rate") is not None else "-"
            res = fmt(r.get("resumed_pct"), ".1f") + "%" if r.get("resumed_pct") is not None else ""
            cpu_rt = ratio(r.get("cpu_us_per_req"), value(ref, test, "cpu"))
            p99_rt = ratio(r.get("p99_ms"), value(ref, test, "p99"))
            line = (f"{test:<13} {s:<9} {rate:>14} {fmt(r.get('p50_ms'), '.2f'):>7} "
                    f"{fmt(r.get('p99_ms'), '.2f'):>7} {r['errors']:>6} {res:>7} "
                    f"{fmt(r.get('cpu_us_per_req'), '.1f'):>10} {fmt(cpu_rt, '.2f'):>8} "
                    f"{fmt(p99_rt, '.2f'):>8} {fmt(100 * r['cpu_util'] if r.get('cpu_util') else None, '.0f') + '%':>5}")
            if s == UNDER_TEST:
                parts = []
                for (t, what, rref), (rt, lim, ok) in verdicts.items():
                    if t == test and rref == ref:
                        parts.append(f"{'CPU' if what == 'cpu' else what} ≤ {lim:.2f}×{rref} → {verdict(ok)}")
                line += "  " + "; ".join(parts)
            print(line)
        for t, lim in MTLS_TARGETS:
            rt = ratio(value("vg-mtls", test, "cpu"), value(UNDER_TEST, test, "cpu"))
            if t == test and rt is not None:
                print(f"{test:<13} {'mtls÷unix':<9} {'':>14} {'':>7} {'':>7} {'':>6} {'':>7} {'':>10} "
                      f"{fmt(rt, '.2f'):>8} {'':>8} {'':>5}  vault over mTLS ≤ {lim:.2f} → {verdict(rt <= lim)}")
        if test == "full-ecdsa" and (test, "cpu", "vg-file") in verdicts:
            rt, lim, ok = verdicts[(test, "cpu", "vg-file")]
            print(f"{test:<13} {'vault÷file':<9} {'':>14} {'':>7} {'':>7} {'':>6} {'':>7} {'':>10} "
                  f"{fmt(rt, '.2f'):>8} {'':>8} {'':>5}  isolation ≤ {lim:.2f} → {verdict(ok)}")
    print()
    print("CPU µs/req: the terminator's user+system CPU time per request (nginx: master+worker;")
    print("vg-vault: proxy+vault). ×ref: against nginx (h2-1k: against HAProxy). resumed: share of")
    print("the client's handshakes that were resumed. busy: the terminator's CPU time over the wall time")
    print("(100% = its core saturated). rss-idle: RSS sum with the idle connections held.")
    missing = [(t, w) for (t, w, _), (rt, _, _) in verdicts.items() if rt is None]
    passed = sum(1 for v in verdicts.values() if v[2])
    print(f"targets: {passed} of {len(verdicts)} pass"
          + (f" ({len(missing)} not measured)" if missing else ""))


def verdict(ok):
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--system", required=True)
    r.add_argument("--test", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--cpu-ticks", type=int, required=True)
    r.add_argument("--vault-ticks", type=int, default=0)
    r.add_argument("--hz", type=int, default=100)
    r.add_argument("--wall-ns", type=int, required=True)
    r.add_argument("--server-before", default="")
    r.add_argument("--server-after", default="")
    m = sub.add_parser("record-rss")
    m.add_argument("--system", required=True)
    m.add_argument("--rss-kib", type=int, required=True)
    m.add_argument("--base-kib", type=int, required=True)
    m.add_argument("--held", default="0 0 0 0")
    m.add_argument("--conns", type=int, required=True)
    m.add_argument("--detail", default="")
    t = sub.add_parser("table")
    t.add_argument("results")
    a = p.parse_args()
    {"record": record, "record-rss": record_rss, "table": table}[a.cmd](a)


if __name__ == "__main__":
    main()
