#!/usr/bin/env python3
"""A soak of `moe serve`: C streaming clients for S seconds, each sending chat completions
one after another. Prints requests, lost streams (no [DONE], an error status or a broken
connection), p50/p99 latency and the server's RSS at the start and end, as JSON.

    python3 benches/scripts/soak.py [--moe target/release/moe] [--clients 64] [--seconds 300]

Standard library only; starts its own server on a free port with the embedded model.
"""
import argparse
import http.client
import json
import statistics
import subprocess
import threading
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe", default="target/release/moe")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    server = subprocess.Popen(
        [a.moe, "serve", "--port", "0", "--max-batch", "32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = server.stdout.readline()
    host, port = line.split("http://")[1].split()[0].split(":")
    port = int(port)
    rss_start = rss_kib(server.pid)
    prompts = ["What is 24 plus 17?", "What is 7 times 6?", "Reverse the word cat.", "Count to 5."]
    lock = threading.Lock()
    latencies, lost, errors = [], [0], []
    stop = time.time() + a.seconds

    def client(i):
        k = 0
        while time.time() < stop:
            body = json.dumps({
                "model": "student",
                "messages": [{"role": "user", "content": prompts[(i + k) % len(prompts)]}],
                "max_tokens": a.max_tokens,
                "temperature": 0.7,
                "seed": i * 1000 + k,
                "stream": True,
            })
            k += 1
            t = time.time()
            ok = False
            try:
                c = http.client.HTTPConnection(host, port, timeout=120)
                c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                data = r.read().decode()
                ok = r.status == 200 and data.rstrip().endswith("data: [DONE]")
                if not ok:
                    with lock:
                        errors.append(f"{r.status}: {data[-200:]}")
                c.close()
            except Exception as e:  # a broken stream counts as lost
                with lock:
                    errors.append(repr(e))
            with lock:
                if ok:
                    latencies.append(time.time() - t)
                else:
                    lost[0] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss_end = rss_kib(server.pid)
    server.terminate()
    server.wait(timeout=30)
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None
    print(json.dumps({
        "clients": a.clients,
        "seconds": a.seconds,
        "requests": len(latencies) + lost[0],
        "completed": len(latencies),
        "lost": lost[0],
        "p50_s": q(0.5),
        "p99_s": q(0.99),
        "rss_start_mib": rss_start / 1024,
        "rss_end_mib": rss_end / 1024,
        "server_exit": server.returncode,
        "first_errors": errors[:3],
    }, indent=1))


if __name__ == "__main__":
    main()
