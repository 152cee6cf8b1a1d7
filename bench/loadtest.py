#!/usr/bin/env python3
"""Load test for `encdec serve` (Python standard library only).

Drives a running server with N concurrent clients (one keep-alive connection each) for a
fixed number of requests, then prints throughput, latency percentiles, status counts and,
from the server's /metrics, the mean batch size of the run.

    python3 bench/loadtest.py --url http://127.0.0.1:8080 --endpoint /summarize \
        --concurrency 16 --requests 400

Requests cycle through --inputs-file lines (one text per line) or built-in sentences.
Every loop is bounded by --requests and --max-seconds; only the given URL is contacted.
"""

import argparse
import http.client
import json
import re
import sys
import threading
import time
import urllib.parse

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Officials said the new bridge will open to traffic next spring after years of delays.",
    "Researchers found that the warm-started models match larger ones trained from scratch.",
    "The team won the final match after a penalty shoot-out that lasted twenty minutes.",
    "Heavy rain caused flooding in several villages, and schools were closed on Monday.",
    "The company reported higher profits, driven by strong sales of its new phone.",
    "She moved to Berlin in 2010 and has since written three novels about the city.",
    "Scientists observed the comet for the first time in more than seventy years.",
]


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def scrape(url, timeout):
    """Sum of encdec_batch_size_{sum,count} over all models."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    totals = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        m = re.match(r"encdec_batch_size_(sum|count)(\{[^}]*\})? (\S+)$", line)
        if m:
            totals[m.group(1)] += float(m.group(3))
    return totals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--endpoint", default="/summarize")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="total requests (after warm-up)")
    ap.add_argument("--warmup", type=int, default=8, help="requests sent first and not measured")
    ap.add_argument("--max-seconds", type=float, default=300, help="stop sending after this long")
    ap.add_argument("--timeout", type=float, default=120, help="per-request timeout (s)")
    ap.add_argument("--inputs-file", help="one input text per line")
    ap.add_argument("--parameters", default="{}", help='JSON generation parameters, e.g. \'{"num_beams": 4}\'')
    ap.add_argument("--extra", default="{}", help='JSON merged into each body, e.g. \'{"source_lang": "en", "target_lang": "de"}\'')
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args()

    texts = SENTENCES
    if args.inputs_file:
        with open(args.inputs_file, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    parameters = json.loads(args.parameters)
    extra = json.loads(args.extra)
    u = urllib.parse.urlsplit(args.url)
    if u.scheme != "http":
        sys.exit("only http:// URLs are supported")

    def body(i):
        b = {"inputs": texts[i % len(texts)], "parameters": parameters}
        b.update(extra)
        return json.dumps(b).encode()

    lock = threading.Lock()
    next_index = [0]
    latencies = []
    statuses = {}
    errors = []

    def take(limit):
        with lock:
            if next_index[0] >= limit:
                return None
            next_index[0] += 1
            return next_index[0] - 1

    def client(limit, deadline, record):
        conn = None
        while time.monotonic() < deadline:
            i = take(limit)
            if i is None:
                break
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=args.timeout)
            started = time.monotonic()
            try:
                conn.request("POST", args.endpoint, body=body(i), headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except Exception as e:  # noqa: BLE001 - report and reconnect
                status = "error"
                with lock:
                    errors.append(repr(e))
                conn.close()
                conn = None
            elapsed = time.monotonic() - started
            if record:
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        latencies.append(elapsed)
        if conn is not None:
            conn.close()

    def run(limit, record):
        next_index[0] = 0
        deadline = time.monotonic() + args.max_seconds
        threads = [
            threading.Thread(target=client, args=(limit, deadline, record), daemon=True)
            for _ in range(args.concurrency)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - started

    if args.warmup:
        run(args.warmup, record=False)
    before = scrape(args.url, args.timeout)
    wall = run(args.requests, record=True)
    after = scrape(args.url, args.timeout)

    latencies.sort()
    ok = len(latencies)
    batches = after["count"] - before["count"]
    summary = {
        "endpoint": args.endpoint,
        "concurrency": args.concurrency,
        "requests": sum(statuses.values()),
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "seconds": round(wall, 3),
        "throughput_rps": round(ok / wall, 2) if wall > 0 else 0.0,
        "latency_ms": {
            "mean": round(1000 * sum(latencies) / ok, 1) if ok else None,
            "p50": round(1000 * percentile(latencies, 0.50), 1) if ok else None,
            "p95": round(1000 * percentile(latencies, 0.95), 1) if ok else None,
            "p99": round(1000 * percentile(latencies, 0.99), 1) if ok else None,
            "max": round(1000 * latencies[-1], 1) if ok else None,
        },
        "mean_batch_size": round((after["sum"] - before["sum"]) / batches, 2) if batches else None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        lat = summary["latency_ms"]
        print(f"endpoint {args.endpoint}  concurrency {args.concurrency}  requests {summary['requests']}  ok {ok}  statuses {summary['statuses']}")
        print(f"throughput {summary['throughput_rps']} req/s over {summary['seconds']} s")
        print(f"latency ms  mean {lat['mean']}  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}")
        print(f"mean batch size {summary['mean_batch_size']}")
    if errors:
        print(f"{len(errors)} connection errors, first: {errors[0]}", file=sys.stderr)
    return 0 if ok == summary["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
