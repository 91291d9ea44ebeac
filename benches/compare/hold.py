#!/usr/bin/env python3
"""Open N TLS 1.3 keep-alive connections, one GET each, then hold them idle.

benches/compare/run.sh uses it to measure a terminator's memory with
10,000 idle connections. Usage:

    hold.py HOST PORT N [--sni NAME] [--path /1k] [--parallel 64] [--timeout 90] [--hold 300]

Prints "held N errors E seconds S" on stdout once every connection has
its answer (or failed), then keeps them open until SIGTERM/SIGINT or
--hold seconds (default 300) have passed. Exit status 0 if all N were held.
"""
import argparse
import asyncio
import signal
import ssl
import sys
import time


async def one(host, port, ctx, sni, request, sem, held, errors):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=sni)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
            held.append(writer)
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(repr(e))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("n", type=int)
    p.add_argument("--sni", default="localhost")
    p.add_argument("--path", default="/1k")
    p.add_argument("--parallel", type=int, default=64)
    p.add_argument("--timeout", type=float, default=90)
    p.add_argument("--hold", type=float, default=300)
    a = p.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    request = (f"GET {a.path} HTTP/1.1\r\nHost: {a.sni}\r\n\r\n").encode()
    sem = asyncio.Semaphore(a.parallel)
    held, errors = [], []
    t0 = time.monotonic()
    tasks = [one(a.host, a.port, ctx, a.sni, request, sem, held, errors) for _ in range(a.n)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), a.timeout)
    except asyncio.TimeoutError:
        errors.append("timeout")
    print(f"held {len(held)} errors {len(errors)} seconds {time.monotonic() - t0:.1f}", flush=True)
    for e in sorted(set(errors))[:5]:
        print(f"  error: {e}", file=sys.stderr)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), a.hold)
    except asyncio.TimeoutError:
        pass
    for w in held:
        w.transport.abort()
    return 0 if len(held) == a.n else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
