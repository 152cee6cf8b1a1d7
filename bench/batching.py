#!/usr/bin/env python3
"""Continuous vs static batching in `encdec serve`, one machine, one run (issue 14).

Python standard library only. The full benchmark (bert-base BERT2BERT, random weights,
made with `encdec warmstart` when --model does not exist; about 15-25 minutes on 2 cores):

    python3 bench/batching.py --encdec target/release/encdec --model /tmp/b2b-base \\
        --json /tmp/batching.json > /tmp/batching.md

A development run on the tiny fixture checkpoint (under 2 minutes):

    python3 bench/batching.py --quick

Against a binary without `batching.mode` (before continuous batching): `--modes static
--mode-env never`. With the default `--mode-env auto`, a server that refuses the mode
variable at start (a config error naming `mode`) is restarted without it for `static`
(and the report says so); `continuous` is then skipped.

What it runs, each server scenario once per mode (`--modes continuous,static`), a fresh
`encdec serve --model DIR` per mode on a free 127.0.0.1 port with
ENCDEC_BATCHING__MODE=<mode>, waiting for /ready and stopped with SIGTERM after:

0. baseline: `encdec generate` on the same input at batch sizes 1, 8, 32 (num_beams 4,
   exactly 64 new tokens); sequences/s from the `generate_seconds` of --timings (the
   process wall time, model load included, is reported too). The best is the baseline.
1. closed loop: 1, 8, 32 clients (one keep-alive connection each), num_beams 4, exactly
   64 new tokens (min_length 65 = max_new_tokens 64 + the start token): throughput
   (sequences/s) and p50/p99 latency.
2. open loop: Poisson arrivals at 50 % and 90 % of one capacity number, the closed-loop
   throughput at 32 clients of the capacity mode (`--capacity-from`, default
   continuous, which runs first) or `--capacity`: the same offered load in both modes.
   Latency counts from the scheduled arrival (no coordinated omission).
3. head-of-line: one heavy request (8 inputs, 8 beams, exactly 256 new tokens), then
   1 s later 10 small ones (1 input, greedy, exactly 16 new tokens) sent together;
   each small request's latency; plus, on the idle server, the small request alone
   (median of 3) and the heavy request alone.

Targets (pass/miss per mode): (1) 32-client throughput >= 1.0x the best `encdec
generate`; (2) p50 at 50 % load <= 1.5x the 1-client closed-loop p50; (3) every small
request under the heavy one <= 10x the small request alone and <= 0.15x the heavy
request alone.

Every input is one text that the checkpoint's WordPiece vocabulary encodes to exactly
--input-tokens tokens (checked against the server's encdec_input_tokens_total); every
generation length is checked once per server through /generate's generated_tokens.
Every loop is bounded: per-request --timeout, per-scenario --max-seconds, open-loop
--drain-seconds, server --ready-timeout, and --max-total-seconds between scenarios.
A failed measurement (e.g. a 422 from a server limit) is listed under "Failures" and the
run goes on; a mode whose /info `batching.mode` differs from the one asked for is flagged.
Only 127.0.0.1 is contacted. Server logs go to --log-dir.

Knobs of one mode only: `--mode-set continuous:batching.max_batch_rows=256` (repeatable);
of both: `--set batching.max_wait_ms=5`. Shorter runs: `--scenarios closed,hol`,
`--requests-per-client 3`, `--open-loop-seconds 30`, `--capacity 0.6` (a fixed open-loop capacity, seq/s).
"""
import argparse
import http.client
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no bench/__pycache__ from importing loadtest
sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadtest import percentile  # noqa: E402  (same interpolated percentile as loadtest)

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "models" / "bert2bert"
# Variables encdec serve reads (src/cli/serve.rs ENV_VARS, plus PORT): not inherited.
SERVE_ENV_VARS = ["ENCDEC_CONFIG", "MODEL_ID", "REVISION", "TASK", "DEVICE", "DTYPE",
                  "REPLICAS", "HOST", "LOG_FORMAT", "JSON_OUTPUT", "API_KEY",
                  "CORS_ALLOW_ORIGIN", "PORT"]
CPU_FLAGS = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
             "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]
WORDS = ("the storm swept across the northern plains on monday knocking out power to "
         "more than two hundred thousand homes and forcing the closure of highways").split()


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs

def load_vocab(model_dir):
    """The WordPiece vocabulary of a checkpoint (tokenizer.json or vocab.txt), or None."""
    tj = Path(model_dir) / "tokenizer.json"
    if tj.is_file():
        t = json.loads(tj.read_text(encoding="utf-8"))
        if t.get("model", {}).get("type") == "WordPiece":
            return set(t["model"]["vocab"])
        return None
    vt = Path(model_dir) / "vocab.txt"
    if vt.is_file():
        return {line.rstrip("\n") for line in vt.open(encoding="utf-8")}
    return None


def make_text(model_dir, n_tokens):
    """A text of n_tokens tokens, [CLS] and [SEP] included: n_tokens - 2 whole words,
    each one WordPiece token of the checkpoint's (lowercasing) vocabulary."""
    vocab = load_vocab(model_dir)
    words = [w for w in WORDS if vocab is None or w in vocab]
    if not words:
        sys.exit(f"none of the benchmark words is in the vocabulary of {model_dir}")
    n = max(1, n_tokens - 2)
    return " ".join(words[i % len(words)] for i in range(n)), vocab is not None


# ----------------------------------------------------------------------------- machine

def machine_info(args):
    info = {"platform": f"{platform.system()} {platform.release()}",
            "cores": os.cpu_count(), "threads": args.threads}
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        info["cpu"] = m.group(1).strip() if m else platform.processor()
        fm = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(fm.group(1).split()) if fm else set()
        info["cpu_flags"] = {f: f in flags for f in CPU_FLAGS}
        info["amx_flags"] = sorted(f for f in flags if f.startswith("amx"))
    except OSError:
        info["cpu"], info["cpu_flags"], info["amx_flags"] = platform.processor(), {}, []
    try:
        info["loadavg_start"] = os.getloadavg()[0]
    except OSError:
        pass

    def git(*a):
        r = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *a],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else None

    info["commit"] = git("rev-parse", "HEAD")
    try:
        info["binary_mtime"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(args.encdec)))
        info["commit_time"] = git("log", "-1", "--format=%ci")
    except OSError:
        pass
    info["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    try:
        r = subprocess.run([args.encdec, "--version"], capture_output=True, text=True, timeout=30)
        info["encdec_version"] = (r.stdout or r.stderr).strip()
    except OSError as e:
        info["encdec_version"] = f"unavailable ({e})"
    return info


def thread_env(args):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ENCDEC_") and k not in SERVE_ENV_VARS}
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["RAYON_NUM_THREADS"] = str(args.threads)
    return env


# ----------------------------------------------------------------------------- HTTP

def post(port, path, body, timeout, conn=None):
    """POSTs JSON; returns (seconds, status, parsed body or None, error, conn to reuse)."""
    data = json.dumps(body).encode()
    started = time.perf_counter()
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter() - started
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        err = None if resp.status == 200 else raw[:300].decode(errors="replace")
        return elapsed, resp.status, parsed, err, conn
    except Exception as e:  # noqa: BLE001 - reported as a failed request
        if conn is not None:
            conn.close()
        return time.perf_counter() - started, "error", None, repr(e), None


def get(port, path, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def metric_sums(text):
    """name -> value summed over label sets, for every sample line of /metrics."""
    sums = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if m:
            try:
                sums[m.group(1)] = sums.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                pass
    return sums


def scrape(port):
    try:
        status, text = get(port, "/metrics")
        return metric_sums(text) if status == 200 else {}
    except Exception:  # noqa: BLE001 - metrics are optional
        return {}


class Sampler:
    """Polls /metrics every `interval` s: running sequences and queue size (max, mean)."""

    def __init__(self, port, interval):
        self.port, self.interval = port, interval
        self.running, self.queued = [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.wait(self.interval):
            m = scrape(self.port)
            if "encdec_running_sequences" in m:
                self.running.append(m["encdec_running_sequences"])
            if "encdec_queue_size" in m:
                self.queued.append(m["encdec_queue_size"])

    def __enter__(self):
        self.before = scrape(self.port)
        if self.interval > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        self.after = scrape(self.port)

    def summary(self):
        def d(name):
            return self.after.get(name, 0.0) - self.before.get(name, 0.0)
        batches = d("encdec_batch_size_count")
        return {
            "max_running_sequences": max(self.running) if self.running else None,
            "mean_running_sequences": round(statistics.mean(self.running), 2) if self.running else None,
            "max_queue_size": max(self.queued) if self.queued else None,
            "batches": batches,
            "mean_batch_size": round(d("encdec_batch_size_sum") / batches, 2) if batches else None,
        }


# ----------------------------------------------------------------------------- server

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, mode, set_mode_env, log_path):
        self.port = free_port()
        self.mode, self.set_mode_env, self.log_path = mode, set_mode_env, log_path
        cmd = [args.encdec, "serve", "--model", str(args.model), "--host", "127.0.0.1",
               "--port", str(self.port)]
        sets = ["batching.max_batch_size=32", "batching.max_batch_tokens=1000000",
                "limits.request_deadline_ms=3600000", "limits.queue_capacity=1024"]
        sets += args.set
        sets += [kv.split(":", 1)[1] for kv in args.mode_set if kv.split(":", 1)[0] == mode]
        for kv in sets:
            cmd += ["--set", kv]
        env = thread_env(args)
        if set_mode_env:
            env["ENCDEC_BATCHING__MODE"] = mode
        self.cmd = cmd
        self.logf = open(log_path, "w")
        log(f"starting {' '.join(cmd)}"
            + (f"  (ENCDEC_BATCHING__MODE={mode})" if set_mode_env else "  (no mode variable)"))
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.logf, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout):
        """True when /ready answers 200; False when the process exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if get(self.port, "/ready", timeout=5)[0] == 200:
                    return True
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"encdec serve not ready after {timeout} s (log: {self.log_path})")

    def log_text(self):
        self.logf.flush()
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                log(f"server pid {self.proc.pid} ignored SIGTERM for 90 s; killing it")
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.logf.close()
        return self.proc.returncode


def start_mode(args, mode):
    """(server, note): a ready server for `mode`, or (None, why not)."""
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    want_env = args.mode_env in ("auto", "always") and not getattr(args, "mode_refused", False)
    if getattr(args, "mode_refused", False) and mode == "continuous":
        return None, "skipped: the binary refused batching.mode (see the first mode's log)"
    if not want_env and mode == "continuous":
        return None, "skipped: --mode-env never (a binary without batching.mode has no continuous batcher)"
    srv = Server(args, mode, want_env, log_dir / f"serve-{mode}.log")
    if srv.wait_ready(args.ready_timeout):
        if want_env:
            return srv, f"ENCDEC_BATCHING__MODE={mode}"
        if getattr(args, "mode_refused", False):
            return srv, "binary has no batching.mode: its static batcher, no mode variable"
        return srv, "no mode variable (--mode-env never): the binary's default batcher"
    text = srv.log_text()
    srv.stop()
    tail = "\n".join(text.strip().splitlines()[-5:])
    if args.mode_env == "auto" and re.search(r"\bmode\b", text):
        args.mode_refused = True
        if mode != "static":
            return None, f"skipped: the binary refused batching.mode ({tail[-300:]})"
        log("the binary refused batching.mode; restarting static without the variable")
        srv = Server(args, mode, False, log_dir / f"serve-{mode}-nomode.log")
        if srv.wait_ready(args.ready_timeout):
            return srv, "binary has no batching.mode: its static batcher, no mode variable"
        tail = "\n".join(srv.log_text().strip().splitlines()[-5:])
        srv.stop()
    raise RuntimeError(f"encdec serve ({mode}) exited before ready:\n{tail}")


# ----------------------------------------------------------------------------- workloads

def gen_params(beams, new_tokens):
    # exactly new_tokens: EOS banned until new_tokens (+1: min_length counts the start token)
    return {"num_beams": beams, "max_new_tokens": new_tokens, "min_length": new_tokens + 1}


def summarize_latencies(lat):
    lat = sorted(lat)
    if not lat:
        return {"n": 0, "mean_s": None, "p50_s": None, "p99_s": None, "max_s": None}
    return {"n": len(lat), "mean_s": statistics.mean(lat), "p50_s": percentile(lat, 0.5),
            "p99_s": percentile(lat, 0.99), "max_s": lat[-1]}


def check_lengths(port, model_name, text, shapes, timeout):
    """One /generate request per (beams, new_tokens): the generated_tokens seen."""
    seen = {}
    for beams, n in shapes:
        body = {"model": model_name, "inputs": text, "parameters": gen_params(beams, n),
                "return_token_ids": True}  # generated_tokens comes with the token details
        _, status, parsed, err, conn = post(port, "/generate", body, timeout)
        if conn:
            conn.close()
        if status != 200:
            raise RuntimeError(f"/generate warm-up failed: {status} {err}")
        out = parsed["outputs"][0]
        out = out[0] if isinstance(out, list) else out
        seen[f"beams{beams}_tokens{n}"] = out.get("generated_tokens")
        if out.get("generated_tokens") not in (None, n):
            log(f"WARNING: asked for exactly {n} new tokens, got {out.get('generated_tokens')}")
    return seen


def closed_loop(args, port, text, clients, per_client):
    body = {"inputs": text, "parameters": gen_params(args.beams, args.new_tokens)}
    lock = threading.Lock()
    lat, statuses, errors, server_batch = [], {}, [], []
    deadline = time.monotonic() + args.max_seconds

    def client():
        conn = None
        for _ in range(per_client):
            if time.monotonic() >= deadline:
                break
            elapsed, status, parsed, err, conn = post(port, "/summarize", body, args.timeout, conn)
            with lock:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 200:
                    lat.append(elapsed)
                    if parsed and "timings" in parsed:
                        server_batch.append(parsed["timings"].get("batch_size", 0))
                elif err:
                    errors.append(f"{status}: {err}")
        if conn is not None:
            conn.close()

    with Sampler(port, args.sample_interval) as s:
        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.max_seconds + args.timeout + 60)
        wall = time.perf_counter() - started
    r = {"clients": clients, "requests": sum(statuses.values()), "statuses": statuses,
         "seconds": wall, "throughput_seq_s": len(lat) / wall if wall > 0 else 0.0,
         **summarize_latencies(lat), **s.summary(),
         "mean_response_batch_size": statistics.mean(server_batch) if server_batch else None}
    if errors:
        r["first_error"] = errors[0]
    return r


def open_loop(args, port, text, rate, label):
    """Poisson arrivals at `rate` requests/s for --open-loop-seconds."""
    body = {"inputs": text, "parameters": gen_params(args.beams, args.new_tokens)}
    rng = random.Random(f"{args.seed}-{label}")
    arrivals, t = [], rng.expovariate(rate)
    while t < args.open_loop_seconds:
        arrivals.append(t)
        t += rng.expovariate(rate)
    lock = threading.Lock()
    lat, statuses, errors, done_at = [], {}, [], []
    inflight = threading.BoundedSemaphore(args.max_inflight)
    dropped = [0]

    def one(scheduled):
        try:
            elapsed, status, _, err, conn = post(port, "/summarize", body, args.timeout)
            if conn:
                conn.close()
            finished = time.perf_counter()
            with lock:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 200:
                    lat.append(finished - scheduled)  # from the scheduled arrival
                    done_at.append(finished)
                elif err:
                    errors.append(f"{status}: {err}")
        finally:
            inflight.release()

    threads = []
    with Sampler(port, args.sample_interval) as s:
        t0 = time.perf_counter()
        for a in arrivals:
            delay = t0 + a - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if not inflight.acquire(blocking=False):
                dropped[0] += 1
                continue
            th = threading.Thread(target=one, args=(t0 + a,), daemon=True)
            th.start()
            threads.append(th)
        drain_deadline = time.monotonic() + args.drain_seconds
        for th in threads:
            th.join(timeout=max(0.0, drain_deadline - time.monotonic()))
        unfinished = sum(th.is_alive() for th in threads)
        wall = time.perf_counter() - t0
    r = {"label": label, "offered_seq_s": rate, "arrivals": len(arrivals),
         "dropped_client_side": dropped[0], "unfinished_after_drain": unfinished,
         "statuses": dict(statuses), "seconds": wall,
         "achieved_seq_s": len(lat) / (max(done_at) - t0) if done_at else 0.0,
         **summarize_latencies(lat), **s.summary()}
    if errors:
        r["first_error"] = errors[0]
    return r


def head_of_line(args, port, text):
    heavy = {"inputs": [text] * args.heavy_inputs,
             "parameters": gen_params(args.heavy_beams, args.heavy_tokens)}
    small = {"inputs": text, "parameters": gen_params(1, args.small_tokens)}

    def must(elapsed, status, err, what):
        if status != 200:
            raise RuntimeError(f"head-of-line {what}: {status} {err}")
        return elapsed

    idle_small = []
    for _ in range(args.small_repeats):
        e, st, _, err, c = post(port, "/summarize", small, args.timeout)
        if c:
            c.close()
        idle_small.append(must(e, st, err, "small alone"))
    e, st, _, err, c = post(port, "/summarize", heavy, args.timeout)
    if c:
        c.close()
    heavy_idle = must(e, st, err, "heavy alone")
    delay = min(args.hol_delay, heavy_idle / 4)

    res = {}
    lock = threading.Lock()

    def send(key, body):
        e, st, _, err, c = post(port, "/summarize", body, args.timeout)
        if c:
            c.close()
        with lock:
            res[key] = (e, st, err)

    with Sampler(port, args.sample_interval) as s:
        h = threading.Thread(target=send, args=("heavy", heavy), daemon=True)
        h.start()
        time.sleep(delay)
        smalls = [threading.Thread(target=send, args=(i, small), daemon=True)
                  for i in range(args.small_requests)]
        for t in smalls:
            t.start()
        for t in smalls + [h]:
            t.join(timeout=args.timeout + 60)
    small_lat = []
    for i in range(args.small_requests):
        e, st, err = res.get(i, (None, "unfinished", None))
        small_lat.append(e if st == 200 else None)
    hv = res.get("heavy", (None, "unfinished", None))
    return {"delay_s": delay, "small_idle_s": statistics.median(idle_small),
            "small_idle_all_s": idle_small, "heavy_idle_s": heavy_idle,
            "heavy_loaded_s": hv[0] if hv[1] == 200 else None,
            "small_loaded_s": small_lat,
            "small_failures": [str(res.get(i, (0, "unfinished", 0))[1])
                               for i in range(args.small_requests)
                               if res.get(i, (0, "unfinished", 0))[1] != 200],
            **s.summary()}


def baseline(args, text):
    rows = []
    for b in args.generate_batches:
        cmd = [args.encdec, "generate", "--model", str(args.model), "--batch-size", str(b),
               "--num-beams", str(args.beams), "--max-new-tokens", str(args.new_tokens),
               "--min-length", str(args.new_tokens + 1), "--timings"]
        gens, walls = [], []
        for _ in range(args.generate_repeats):
            log(f"baseline: {' '.join(cmd)} < {b} lines")
            started = time.perf_counter()
            p = subprocess.run(cmd, input=(json.dumps({"text": text}) + "\n") * b,
                               capture_output=True, text=True, env=thread_env(args),
                               timeout=args.generate_timeout)
            walls.append(time.perf_counter() - started)
            if p.returncode != 0:
                raise RuntimeError(f"encdec generate failed: {p.stderr[-2000:]}")
            lines = [json.loads(l) for l in p.stderr.splitlines() if l.startswith("{")]
            gens.append(sum(l["generate_seconds"] for l in lines if "generate_seconds" in l))
            outs = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
            got = {len(o["ids"][0]) - 1 for o in outs if "ids" in o}
            if got != {args.new_tokens}:
                log(f"WARNING: generate produced {sorted(got)} new tokens, not {args.new_tokens}")
        g = statistics.median(gens)
        rows.append({"batch": b, "generate_seconds": g, "process_seconds": statistics.median(walls),
                     "seq_s": b / g, "process_seq_s": b / statistics.median(walls)})
    return rows


# ----------------------------------------------------------------------------- report

def f(v, d=2, unit=""):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{d}f}{unit}"


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def render(res, args):
    m = res["machine"]
    modes = [md for md in res["modes"] if res["modes"][md].get("ran")]
    two = "continuous" in modes and "static" in modes
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    L = ["## Continuous vs static batching (bench/batching.py)", ""]
    L.append(f"CPU: {m['cpu']}, {m['cores']} cores; {m['threads']} threads "
             f"(OMP_NUM_THREADS = RAYON_NUM_THREADS = {m['threads']}); {m['platform']}; "
             f"load average {f(m.get('loadavg_start'))} at start, {f(m.get('loadavg_end'))} at end.")
    L.append(f"CPU flags: {flags}" + (f"; all amx: {' '.join(m['amx_flags'])}" if m["amx_flags"] else "") + ".")
    L.append(f"encdec: commit {m['commit']}{' (uncommitted changes)' if m['dirty'] else ''}, "
             f"`{m['encdec_version']}`, binary {args.encdec} (built {m.get('binary_mtime')}; "
             f"the commit is the checkout's, dated {m.get('commit_time')}).")
    L.append(f"Model: {args.model}; {res['input_tokens_server'] or res['input_tokens']} input tokens "
             f"(server-counted: {res['input_tokens_server']}); num_beams {args.beams}, exactly "
             f"{args.new_tokens} new tokens unless stated; one input per request. "
             f"Started {res['started']}, took {f(res['total_seconds'] / 60, 1)} min.")
    for md in res["modes"]:
        info = res["modes"][md]
        L.append(f"- mode `{md}`: {info['note']}"
                 + (f"; /info batching: `{json.dumps(info.get('batching'))}`" if info.get("batching") else "")
                 + (f"; generated tokens checked: {info.get('length_check')}" if info.get("length_check") else ""))
    L.append("")

    # Per metric: one column per mode, then continuous / static for the metrics in `ratios`.
    def header(first, cols, ratios=()):
        cells = []
        for c in cols:
            cells += [f"{c} {md}" for md in modes]
            if two and c in ratios:
                cells.append(f"{c} cont/static")
        return [f"| {first} | " + " | ".join(cells) + " |", "|---" * (1 + len(cells)) + "|"]

    def row(first, cols, get, digits, ratios=()):
        cells = []
        for c in cols:
            d = digits.get(c, 2) if isinstance(digits, dict) else digits
            vals = {md: get(md, c) for md in modes}
            cells += [f(vals[md], d) for md in modes]
            if two and c in ratios:
                cells.append(f(ratio(vals["continuous"], vals["static"]), 2))
        return f"| {first} | " + " | ".join(cells) + " |"

    bl = res.get("baseline")
    if bl:
        L += ["Baseline, `encdec generate` (num_beams %d, %d new tokens; seq/s from "
              "`generate_seconds`, model load excluded):" % (args.beams, args.new_tokens), "",
              "| batch | generate s | seq/s | process s (incl. load) | process seq/s |",
              "|---:|---:|---:|---:|---:|"]
        for r in bl:
            L.append(f"| {r['batch']} | {f(r['generate_seconds'])} | {f(r['seq_s'], 3)} | "
                     f"{f(r['process_seconds'])} | {f(r['process_seq_s'], 3)} |")
        L += ["", f"Best: {f(res['baseline_best'], 3)} seq/s.", ""]

    def scen(md, name):
        return res["modes"][md].get(name)

    if any(scen(md, "closed") for md in modes):
        L += ["Closed loop (each client sends its next request when the last returns); "
              "throughput seq/s, latency s:", ""]
        cols = ["seq/s", "p50", "p99", "mean batch"]
        rat = ("seq/s", "p50", "p99")
        L += header("clients (requests)", cols, rat)
        counts = [r["clients"] for r in (scen(modes[0], "closed") or [])]
        keys = {"seq/s": "throughput_seq_s", "p50": "p50_s", "p99": "p99_s",
                "mean batch": "mean_response_batch_size"}
        for i, c in enumerate(counts):
            def get(md, col, i=i):
                rows = scen(md, "closed") or []
                return rows[i][keys[col]] if i < len(rows) else None
            n = "/".join(str(scen(md, "closed")[i]["requests"]) for md in modes if scen(md, "closed"))
            L.append(row(f"{c} ({n})", cols, get, {"seq/s": 3, "p50": 3, "p99": 3, "mean batch": 1}, rat))
        L += ["", "(mean batch: the mean over requests of the response's `timings.batch_size`, "
              "the largest batch the request ran in.)", ""]

    if any(scen(md, "open") for md in modes):
        L += [f"Open loop, Poisson arrivals for {f(args.open_loop_seconds, 0)} s; capacity "
              f"{f(res.get('capacity'), 3)} seq/s ({res.get('capacity_source')}); latency s from "
              f"the scheduled arrival:", ""]
        cols = ["p50", "p99", "done", "achieved seq/s", "max running"]
        rat = ("p50", "p99")
        L += header("offered load", cols, rat)
        keys = {"p50": "p50_s", "p99": "p99_s", "done": "n", "achieved seq/s": "achieved_seq_s",
                "max running": "max_running_sequences"}
        labels = [r["label"] for r in (scen(modes[0], "open") or [])]
        for i, lab in enumerate(labels):
            def get(md, col, i=i):
                rows = scen(md, "open") or []
                return rows[i].get(keys[col]) if i < len(rows) else None
            rate = scen(modes[0], "open")[i]["offered_seq_s"]
            arr = "/".join(str(scen(md, "open")[i]["arrivals"]) for md in modes if scen(md, "open"))
            L.append(row(f"{lab} ({f(rate, 3)} seq/s, {arr} arrivals)", cols, get,
                         {"p50": 3, "p99": 3, "done": 0, "achieved seq/s": 3, "max running": 0}, rat))
        L.append("")

    if any(scen(md, "hol") for md in modes):
        h0 = scen(modes[0], "hol")
        L += [f"Head-of-line: one heavy request ({args.heavy_inputs} inputs, {args.heavy_beams} "
              f"beams, {args.heavy_tokens} new tokens), then after {f(h0['delay_s'], 2)} s "
              f"{args.small_requests} small ones (1 input, greedy, {args.small_tokens} new tokens) "
              f"together; seconds:", ""]
        cols = ["s"]
        L += header("request", cols, cols)
        items = [("small alone (idle, median)", lambda h: h["small_idle_s"]),
                 ("heavy alone (idle)", lambda h: h["heavy_idle_s"]),
                 ("heavy, with the small ones", lambda h: h["heavy_loaded_s"])]
        for i in range(args.small_requests):
            items.append((f"small #{i + 1} under the heavy one",
                          lambda h, i=i: h["small_loaded_s"][i] if i < len(h["small_loaded_s"]) else None))
        items.append(("worst small under the heavy one", lambda h: max_or_none(h["small_loaded_s"])))
        for name, fn in items:
            L.append(row(name, cols, lambda md, c, fn=fn: fn(scen(md, "hol")) if scen(md, "hol") else None,
                         3, cols))
        L.append("")

    problems = []
    for md in modes:
        r = res["modes"][md]
        for e in r.get("errors", []):
            problems.append(f"- {md}: {e}")
        for kind in ("closed", "open"):
            for x in r.get(kind) or []:
                bad = {k: v for k, v in x["statuses"].items() if k != "200"}
                extra = x.get("unfinished_after_drain") or x.get("dropped_client_side")
                if bad or extra:
                    what = f"{x['clients']} clients" if kind == "closed" else x["label"]
                    problems.append(f"- {md}, {kind} loop {what}: statuses {x['statuses']}"
                                    + (f", unfinished {x.get('unfinished_after_drain')}, dropped "
                                       f"{x.get('dropped_client_side')}" if extra else "")
                                    + (f"; first error {x['first_error'][:200]}" if x.get("first_error") else ""))
        h = r.get("hol")
        if h and h.get("small_failures"):
            problems.append(f"- {md}, head-of-line: small requests failed: {h['small_failures']}")
    if problems:
        L += ["Failures (not in the numbers above):", ""] + problems + [""]

    L += ["Targets:", "", "| target | " + " | ".join(modes) + " |", "|---" * (1 + len(modes)) + "|"]
    for t in res["targets"]:
        cells = []
        for md in modes:
            v = t["modes"].get(md)
            cells.append("–" if v is None or v["value"] is None else
                         f"{'pass' if v['pass'] else 'MISS'} ({v['text']})")
        L.append(f"| {t['name']} | " + " | ".join(cells) + " |")
    L += ["", f"Command: `{res['command']}`"]
    return "\n".join(L)


def max_or_none(xs):
    if not xs or any(x is None for x in xs):
        return None
    return max(xs)


def targets(res, args):
    out = []
    t1 = {"name": f"(1) {args.clients[-1]} clients: seq/s >= 1.0x best `encdec generate` "
                  f"({f(res.get('baseline_best'), 3)})", "modes": {}}
    t2 = {"name": "(2) 50 % load: p50 <= 1.5x 1-client closed-loop p50", "modes": {}}
    t3 = {"name": "(3) every small request under the heavy one <= 10x small alone and "
                  "<= 0.15x heavy alone", "modes": {}}
    for md, r in res["modes"].items():
        if not r.get("ran"):
            continue
        closed = r.get("closed") or []
        big = next((c for c in closed if c["clients"] == args.clients[-1]), None)
        if big and res.get("baseline_best"):
            x = big["throughput_seq_s"] / res["baseline_best"]
            t1["modes"][md] = {"value": x, "pass": x >= 1.0, "text": f"{x:.2f}x"}
        one = next((c for c in closed if c["clients"] == 1), None)
        half = next((o for o in (r.get("open") or []) if o["label"] == "50 %"), None)
        if one and half and one["p50_s"] and half["p50_s"] is not None:
            x = half["p50_s"] / one["p50_s"]
            t2["modes"][md] = {"value": x, "pass": x <= 1.5, "text": f"{x:.2f}x"}
        h = r.get("hol")
        if h:
            worst = max_or_none(h["small_loaded_s"])
            if worst is None:
                t3["modes"][md] = {"value": float("inf"), "pass": False, "text": "a small request failed"}
            else:
                a, b = worst / h["small_idle_s"], worst / h["heavy_idle_s"]
                t3["modes"][md] = {"value": worst, "pass": a <= 10 and b <= 0.15,
                                   "text": f"worst {a:.1f}x small alone, {b:.3f}x heavy alone"}
    return [t1, t2, t3]


# ----------------------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encdec", default=str(ROOT / "target" / "release" / "encdec"))
    ap.add_argument("--model", help="checkpoint dir (default /tmp/b2b-base; made with "
                    "`encdec warmstart --encoder random:bert:base --decoder random:bert:base` "
                    "when missing; --quick: the tiny fixture)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny fixture model, fewer requests and tokens (under 2 minutes)")
    ap.add_argument("--modes", default="continuous,static")
    ap.add_argument("--mode-env", choices=["auto", "always", "never"], default="auto",
                    help="set ENCDEC_BATCHING__MODE: auto = set it, and if the server refuses "
                    "it, rerun static without it; never = for binaries without batching.mode")
    ap.add_argument("--no-mode-env", dest="mode_env", action="store_const", const="never",
                    help="same as --mode-env never")
    ap.add_argument("--scenarios", default="baseline,closed,open,hol",
                    help="subset of baseline,closed,open,hol")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra `encdec serve --set` for every mode (repeatable); the script "
                    "sets batching.max_batch_size=32, batching.max_batch_tokens=1000000, "
                    "limits.request_deadline_ms=3600000, limits.queue_capacity=1024 first")
    ap.add_argument("--mode-set", action="append", default=[], metavar="MODE:KEY=VALUE",
                    help="extra --set for one mode, e.g. continuous:batching.max_batch_rows=256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input-tokens", type=int, default=None, help="default 256 (quick: 64)")
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=None, help="default 64 (quick: 16)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests-per-client", default=None,
                    help="one number, or one per --clients entry (default 5,3,2; quick 8,4,2)")
    ap.add_argument("--generate-batches", default="1,8,32")
    ap.add_argument("--generate-repeats", type=int, default=1)
    ap.add_argument("--capacity", type=float, help="seq/s for the open loop (default: measured)")
    ap.add_argument("--capacity-from", default="continuous",
                    help="mode whose largest closed-loop throughput is the capacity (run first)")
    ap.add_argument("--loads", default="0.5,0.9", help="open-loop fractions of capacity")
    ap.add_argument("--open-loop-seconds", type=float, default=None, help="default 90 (quick: 10)")
    ap.add_argument("--drain-seconds", type=float, default=300,
                    help="open loop: wait at most this long for answers after the last arrival")
    ap.add_argument("--max-inflight", type=int, default=512)
    ap.add_argument("--heavy-inputs", type=int, default=8)
    ap.add_argument("--heavy-beams", type=int, default=8)
    ap.add_argument("--heavy-tokens", type=int, default=None, help="default 256 (quick: 64)")
    ap.add_argument("--small-requests", type=int, default=10)
    ap.add_argument("--small-tokens", type=int, default=16)
    ap.add_argument("--small-repeats", type=int, default=3)
    ap.add_argument("--hol-delay", type=float, default=1.0,
                    help="seconds between the heavy and the small requests (at most a quarter "
                    "of the heavy request's idle duration)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900, help="per-request timeout, s")
    ap.add_argument("--max-seconds", type=float, default=1200,
                    help="closed loop: no new request after this long, s")
    ap.add_argument("--max-total-seconds", type=float, default=3600,
                    help="skip the remaining scenarios after this long, s")
    ap.add_argument("--ready-timeout", type=float, default=600)
    ap.add_argument("--generate-timeout", type=float, default=1800)
    ap.add_argument("--sample-interval", type=float, default=1.0,
                    help="/metrics polling period during a scenario (0: off)")
    ap.add_argument("--log-dir", default="/tmp/encdec-batching-logs")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON ('-': stdout, "
                    "the markdown then goes to stderr)")
    a = ap.parse_args()

    q = a.quick
    a.model = Path(a.model) if a.model else (FIXTURE if q else Path("/tmp/b2b-base"))
    a.input_tokens = a.input_tokens or (64 if q else 256)
    a.new_tokens = a.new_tokens or (16 if q else 64)
    a.heavy_tokens = a.heavy_tokens or (64 if q else 256)
    a.open_loop_seconds = a.open_loop_seconds or (10.0 if q else 90.0)
    a.clients = [int(x) for x in a.clients.split(",")]
    rpc = [int(x) for x in (a.requests_per_client or ("8,4,2" if q else "5,3,2")).split(",")]
    if len(rpc) == 1:
        rpc *= len(a.clients)
    if len(rpc) != len(a.clients):
        ap.error("--requests-per-client: one number or one per --clients entry")
    a.rpc = rpc
    a.generate_batches = [int(x) for x in a.generate_batches.split(",")]
    a.loads = [float(x) for x in a.loads.split(",")]
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in a.modes:
        if m not in ("continuous", "static"):
            ap.error(f"unknown mode {m!r}")
    a.scenarios = set(a.scenarios.split(","))
    if a.capacity_from in a.modes:  # the capacity mode first
        a.modes.sort(key=lambda m: m != a.capacity_from)
    return a


def ensure_model(args):
    if (args.model / "config.json").is_file():
        return
    if args.quick:
        sys.exit(f"no checkpoint at {args.model}")
    log(f"making {args.model} (bert-base BERT2BERT, random weights)")
    partial = args.model.with_name(args.model.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([args.encdec, "warmstart", "--encoder", "random:bert:base", "--decoder",
                    "random:bert:base", "--seed", "0", "--out", str(partial)],
                   check=True, env=thread_env(args), timeout=1800)
    partial.rename(args.model)


def main():
    args = parse_args()
    t_start = time.monotonic()
    if not Path(args.encdec).is_file():
        sys.exit(f"no encdec binary at {args.encdec} (--encdec)")
    ensure_model(args)
    text, exact = make_text(args.model, args.input_tokens)
    if not exact:
        log(f"WARNING: no WordPiece vocabulary in {args.model}; input length is approximate")
    res = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "command": " ".join(["python3", "bench/batching.py"] + sys.argv[1:]),
           "machine": machine_info(args), "input_tokens": args.input_tokens,
           "input_tokens_server": None,
           "args": {k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
                    for k, v in vars(args).items()},
           "modes": {}}

    def time_left():
        return args.max_total_seconds - (time.monotonic() - t_start)

    if "baseline" in args.scenarios:
        res["baseline"] = baseline(args, text)
        res["baseline_best"] = max(r["seq_s"] for r in res["baseline"])
        log(f"baseline: {json.dumps(res['baseline'])}")

    capacity, res["capacity_source"] = args.capacity, "--capacity"
    for mode in args.modes:
        info = res["modes"][mode] = {"ran": False}
        if time_left() <= 0:
            info["note"] = "skipped: --max-total-seconds reached"
            continue
        srv, info["note"] = start_mode(args, mode)
        if srv is None:
            log(f"mode {mode}: {info['note']}")
            continue
        try:
            info["ran"] = True
            status, body = get(srv.port, "/info")
            inf = json.loads(body) if status == 200 else {}
            info["batching"] = inf.get("batching")
            shown = (info["batching"] or {}).get("mode")
            if srv.set_mode_env and shown != mode:
                log(f"WARNING: asked for mode {mode}, /info batching.mode is {shown!r}")
                info.setdefault("errors", []).append(f"/info batching.mode is {shown!r}")
            model_name = inf["models"][0]["name"]
            before = scrape(srv.port)
            info["length_check"] = check_lengths(
                srv.port, model_name, text,
                [(args.beams, args.new_tokens), (1, args.small_tokens)], args.timeout)
            after = scrape(srv.port)
            n_tok = after.get("encdec_input_tokens_total", 0) - before.get("encdec_input_tokens_total", 0)
            res["input_tokens_server"] = round(n_tok / 2) if n_tok else None
            if res["input_tokens_server"] not in (None, args.input_tokens):
                log(f"WARNING: the server counted {n_tok / 2} input tokens, not {args.input_tokens}")

            def attempt(what, fn):
                """Runs one measurement; a failure is recorded and the run goes on."""
                try:
                    r = fn()
                    log(f"{mode}: {json.dumps(r)}")
                    return r
                except Exception as e:  # noqa: BLE001 - reported in the output
                    log(f"{mode}: {what} failed: {e!r}")
                    info.setdefault("errors", []).append(f"{what}: {e}")
                    return None

            if "closed" in args.scenarios:
                info["closed"] = []
                for c, n in zip(args.clients, args.rpc):
                    if time_left() <= 0:
                        break
                    log(f"{mode}: closed loop, {c} clients x {n} requests")
                    r = attempt(f"closed loop {c} clients",
                                lambda c=c, n=n: closed_loop(args, srv.port, text, c, n))
                    if r:
                        info["closed"].append(r)
            if "open" in args.scenarios:
                if capacity is None:
                    big = [r for r in info.get("closed", []) if r["clients"] == max(args.clients)]
                    if big and big[0]["throughput_seq_s"] > 0:
                        capacity = big[0]["throughput_seq_s"]
                        res["capacity_source"] = (f"closed loop, {big[0]['clients']} clients, "
                                                  f"{mode} mode, same run; used for every mode")
                if capacity is None:
                    log("no capacity: run the closed loop or pass --capacity; open loop skipped")
                    info.setdefault("errors", []).append("open loop skipped: no capacity")
                else:
                    res["capacity"] = capacity
                    info["open"] = []
                    for frac in args.loads:
                        if time_left() <= 0:
                            break
                        label = f"{frac * 100:g} %"
                        log(f"{mode}: open loop at {label} of {capacity:.3f} seq/s")
                        r = attempt(f"open loop {label}", lambda frac=frac, label=label: open_loop(
                            args, srv.port, text, frac * capacity, label))
                        if r:
                            info["open"].append(r)
            if "hol" in args.scenarios and time_left() > 0:
                log(f"{mode}: head-of-line")
                info["hol"] = attempt("head-of-line", lambda: head_of_line(args, srv.port, text))
        finally:
            rc = srv.stop()
            info["server_exit_code"] = rc
            log(f"{mode}: server stopped (exit code {rc})")

    try:
        res["machine"]["loadavg_end"] = os.getloadavg()[0]
    except OSError:
        pass
    res["total_seconds"] = time.monotonic() - t_start
    res["targets"] = targets(res, args)
    report = render(res, args)
    if args.json == "-":
        print(report, file=sys.stderr)
        print(json.dumps(res, indent=1, default=str))
    else:
        print(report)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
