#!/usr/bin/env python3
"""encdec vs transformers, side by side, on one machine, in one run.

    python3 bench/compare.py [--quick] [--skip-serve] [--write-docs]

1. builds `encdec` (release) and makes a bert-base BERT2BERT with random weights
   (`encdec warmstart --encoder random:bert:base --decoder random:bert:base`);
2. installs torch + transformers into a throw-away virtualenv (bench/.venv);
3. times transformers `generate()` and `encdec generate` on identical inputs
   (256 input tokens, exactly 64 new tokens, f32, 2 threads) for each batch size and
   beam count, plus peak RSS;
4. drives `encdec serve` with 1, 8 and 32 concurrent clients and compares with
   transformers serving one request at a time;
5. measures the floors (memory bandwidth, sgemm peak) and reports each time as a
   multiple of its floor.
It prints one table of medians and ratios and, with --write-docs, replaces the
generated section of docs/PERFORMANCE.md. Not part of the test run.
"""
import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
VENV = ROOT / "bench" / ".venv"
ENCDEC = ROOT / "target" / "release" / "encdec"
MODEL = OUT / "bert2bert-base"
THREADS = 2
MARK_BEGIN = "<!-- bench/compare.py: begin -->"
MARK_END = "<!-- bench/compare.py: end -->"


def sh(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def run_measured(cmd, stdin=None):
    """Runs cmd; returns (stdout, stderr, peak RSS in MB of the child)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out_buf, err_buf = [], []
    t_out = threading.Thread(target=lambda: out_buf.append(proc.stdout.read()))
    t_err = threading.Thread(target=lambda: err_buf.append(proc.stderr.read()))
    t_out.start()
    t_err.start()
    if stdin:
        proc.stdin.write(stdin)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    t_out.join()
    t_err.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {''.join(err_buf)[-2000:]}")
    return "".join(out_buf), "".join(err_buf), usage.ru_maxrss / 1024


def setup(args):
    if not args.no_build:
        sh(["cargo", "build", "--release"], cwd=ROOT)
    if not (MODEL / "model.safetensors").exists():
        OUT.mkdir(parents=True, exist_ok=True)
        sh([ENCDEC, "warmstart", "--encoder", "random:bert:base", "--decoder",
            "random:bert:base", "--seed", "0", "--out", MODEL])
    py = VENV / "bin" / "python"
    if not py.exists():
        sh([sys.executable, "-m", "venv", VENV])
        sh([py, "-m", "pip", "install", "-q", "torch", "transformers", "safetensors"])
    return py


def make_text(py, n_tokens):
    """A text that the checkpoint's tokenizer encodes to exactly n_tokens (specials incl.)."""
    code = f"""
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(MODEL)!r})
words = ("the storm swept across the northern plains on monday knocking out power to "
         "more than two hundred thousand homes and forcing the closure of highways ").split()
text = []
i = 0
while len(tok(" ".join(text))["input_ids"]) < {n_tokens}:
    text.append(words[i % len(words)]); i += 1
print(" ".join(text))
"""
    text = subprocess.run([py, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    return text


def floors(py):
    """Memory read bandwidth (GB/s) and sgemm (GFLOP/s), measured with torch."""
    code = f"""
import json, time, torch
torch.set_num_threads({THREADS})
x = torch.ones(256 * 1024 * 1024)  # 1 GiB f32
x.sum()
t = time.perf_counter(); [x.sum() for _ in range(5)]; bw = 5 * x.numel() * 4 / (time.perf_counter() - t) / 1e9
a = torch.randn(2048, 2048); b = torch.randn(2048, 2048); a @ b
t = time.perf_counter(); [a @ b for _ in range(5)]; gf = 5 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9
print(json.dumps({{"bandwidth_gbs": bw, "sgemm_gflops": gf}}))
"""
    return json.loads(subprocess.run([py, "-c", code], check=True, capture_output=True,
                                     text=True).stdout)


def weight_bytes():
    """Bytes of decoder weights a decode step reads, and encoder parameter count."""
    raw = open(MODEL / "model.safetensors", "rb")
    n = struct.unpack("<Q", raw.read(8))[0]
    header = json.loads(raw.read(n))
    header.pop("__metadata__", None)
    dec, enc_params = 0, 0
    for name, info in header.items():
        size = info["data_offsets"][1] - info["data_offsets"][0]
        if name.startswith("decoder.") and "position_embeddings" not in name \
                and "token_type" not in name:
            dec += size  # word embeddings count once: they are the tied LM head
        elif name.startswith("encoder.") and "embeddings" not in name and "pooler" not in name:
            enc_params += size // 4
    return dec, enc_params


def time_hf(py, text, batch, beams, new_tokens, repeats):
    out, _, rss = run_measured([py, ROOT / "bench" / "hf_generate.py", "--model", MODEL,
                                "--text", text, "--batch", str(batch), "--beams", str(beams),
                                "--new-tokens", str(new_tokens), "--repeats", str(repeats),
                                "--threads", str(THREADS)])
    r = json.loads(out.strip().splitlines()[-1])
    return r["seconds"], max(rss, r["peak_rss_mb"]), r["input_tokens"]


def time_encdec(text, batch, beams, new_tokens, repeats):
    line = json.dumps({"text": text}) + "\n"
    times, rss = [], 0
    for _ in range(repeats):
        _, err, peak = run_measured(
            [ENCDEC, "generate", "--model", MODEL, "--batch-size", str(batch), "--num-beams",
             str(beams), "--min-length", str(new_tokens + 1), "--max-length",
             str(new_tokens + 1), "--timings"], stdin=line * batch)
        t = [json.loads(l)["generate_seconds"] for l in err.splitlines() if "generate_seconds" in l]
        times.append(sum(t))
        rss = max(rss, peak)
    return statistics.median(times), rss


def serve_throughput(text, clients, requests_per_client, beams, new_tokens, port):
    body = json.dumps({"inputs": text, "parameters": {
        "num_beams": beams, "min_length": new_tokens + 1, "max_length": new_tokens + 1}}).encode()
    latencies, errors = [], []

    def client():
        for _ in range(requests_per_client):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/summarize", data=body,
                                         headers={"content-type": "application/json"})
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=900) as r:
                    r.read()
                latencies.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(str(e))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    return len(latencies) / wall, statistics.median(latencies)


def start_server(port, max_batch):
    proc = subprocess.Popen([ENCDEC, "serve", "--model", MODEL, "--port", str(port),
                             "--set", f"batching.max_batch_size={max_batch}",
                             "--set", "batching.max_batch_tokens=1000000",
                             "--set", "limits.request_deadline_ms=3600000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    proc.kill()
    raise RuntimeError("encdec serve did not become ready")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8 only")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--input-tokens", type=int, default=256)
    args = ap.parse_args()

    py = setup(args)
    text = make_text(py, args.input_tokens)
    fl = floors(py)
    dec_bytes, enc_params = weight_bytes()
    decode_floor = dec_bytes / (fl["bandwidth_gbs"] * 1e9)  # seconds per step
    encoder_floor = 2 * enc_params * args.input_tokens / (fl["sgemm_gflops"] * 1e9)

    batches = [1, 8] if args.quick else [1, 8, 32]
    rows = []
    for beams in (1, 4):
        for batch in batches:
            reps = 2 if batch == 1 else 1
            hf_s, hf_rss, n_in = time_hf(py, text, batch, beams, args.new_tokens, reps)
            ed_s, ed_rss = time_encdec(text, batch, beams, args.new_tokens, reps)
            floor = batch * encoder_floor + args.new_tokens * decode_floor if batch == 1 else None
            rows.append({
                "what": f"generate, batch {batch}, beams {beams}",
                "hf_s": hf_s, "encdec_s": ed_s, "ratio": ed_s / hf_s,
                "hf_seq_s": batch / hf_s, "encdec_seq_s": batch / ed_s,
                "floor_x": ed_s / floor if floor else None,
                "hf_rss": hf_rss, "encdec_rss": ed_rss, "input_tokens": n_in,
            })
            print(json.dumps(rows[-1]), file=sys.stderr)

    serve_rows = []
    if not args.skip_serve:
        hf_one = next(r for r in rows if r["what"] == "generate, batch 1, beams 4")
        hf_sequential = 1 / hf_one["hf_s"]
        hf_best = max(r["hf_seq_s"] for r in rows if r["what"].endswith("beams 4"))
        port = 18080
        server = start_server(port, 32)
        try:
            for clients in (1, 8, 32):
                per_client = 2 if clients < 32 else 1
                tput, p50 = serve_throughput(text, clients, per_client, 4, args.new_tokens, port)
                serve_rows.append({"clients": clients, "seq_s": tput, "p50_s": p50,
                                   "vs_hf_sequential": tput / hf_sequential,
                                   "vs_hf_best_batched": tput / hf_best})
                print(json.dumps(serve_rows[-1]), file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=60)

    report = render(rows, serve_rows, fl, dec_bytes, decode_floor, encoder_floor, args)
    print(report)
    if args.write_docs:
        doc = ROOT / "docs" / "PERFORMANCE.md"
        old = doc.read_text() if doc.exists() else "# Performance\n"
        if MARK_BEGIN in old:
            head, rest = old.split(MARK_BEGIN, 1)
            tail = rest.split(MARK_END, 1)[1] if MARK_END in rest else ""
        else:
            head, tail = old.rstrip() + "\n\n", ""
        doc.write_text(head + MARK_BEGIN + "\n" + report + "\n" + MARK_END + tail)


def render(rows, serve_rows, fl, dec_bytes, decode_floor, encoder_floor, args):
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    lines = [
        "## encdec vs transformers (bench/compare.py)",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"{THREADS} threads each side; f32. Model: bert-base BERT2BERT (random weights, "
        f"`encdec warmstart --encoder random:bert:base --decoder random:bert:base`); "
        f"{rows[0]['input_tokens']} input tokens, exactly {args.new_tokens} new tokens.",
        "",
        f"Floors measured in the same run: read bandwidth {fl['bandwidth_gbs']:.1f} GB/s, "
        f"sgemm {fl['sgemm_gflops']:.0f} GFLOP/s (torch, {THREADS} threads) → decode step "
        f"≥ {decode_floor * 1e3:.1f} ms ({dec_bytes / 1e6:.0f} MB of decoder weights), "
        f"encoder ≥ {encoder_floor:.2f} s per input.",
        "",
        "| what | transformers s | encdec s | encdec / transformers | transformers seq/s | "
        "encdec seq/s | encdec × floor | peak RSS MiB (hf / encdec) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        floor = f"{r['floor_x']:.2f}" if r["floor_x"] else "–"
        lines.append(
            f"| {r['what']} | {r['hf_s']:.2f} | {r['encdec_s']:.2f} | {r['ratio']:.2f} | "
            f"{r['hf_seq_s']:.3f} | {r['encdec_seq_s']:.3f} | {floor} | "
            f"{r['hf_rss']:.0f} / {r['encdec_rss']:.0f} |")
    if serve_rows:
        lines += ["", "| encdec serve, num_beams 4 | seq/s | p50 latency s | vs transformers "
                  "one at a time | vs transformers best batched generate |", "|---|---|---|---|---|"]
        for s in serve_rows:
            lines.append(f"| {s['clients']} concurrent clients | {s['seq_s']:.3f} | "
                         f"{s['p50_s']:.2f} | {s['vs_hf_sequential']:.2f}× | "
                         f"{s['vs_hf_best_batched']:.2f}× |")
    lines += ["", f"Command: `python3 bench/compare.py{' --quick' if args.quick else ''} --write-docs`"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
