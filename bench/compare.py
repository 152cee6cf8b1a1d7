#!/usr/bin/env python3
"""encdec vs transformers vs CTranslate2, side by side, on one machine, in one run.

    python3 bench/compare.py [--quick] [--encdec PATH] [--skip-serve] [--write-docs]

1. builds `encdec` (release; skipped with --encdec PATH or --no-build) and makes a
   BERT2BERT with random weights (`encdec warmstart --encoder random:bert:base
   --decoder random:bert:base`; `:tiny` with --quick);
2. installs torch + transformers + ctranslate2 into a throw-away virtualenv (bench/.venv)
   and builds the CTranslate2 peer (bench/ct2_peer.py): a random
   `BartForConditionalGeneration` of the same shape (vocabulary, width, layers, heads,
   feed-forward, 512 positions), converted to CTranslate2 float32 and int8;
3. times, on identical inputs (the same WordPiece tokens; 256 input tokens, exactly 64 new
   tokens, 2 threads each) for each batch size (1/8/32) and beam count (1/4):
   transformers `generate()` (f32), CTranslate2 `translate_batch` (float32, int8) and
   `encdec generate` (f32, bf16, int8: each dtype is probed first and reported "not
   available" when this encdec does not take it), in-process generate time (load
   excluded) for every engine, plus encdec's whole-process time and every peak RSS;
4. drives `encdec serve` (f32) with 1, 8 and 32 concurrent clients and compares with
   transformers serving one request at a time;
5. measures the floors in the same run (read bandwidth; f32, bf16 and int8 GEMM peaks
   with torch) and reports each time as a multiple of its dtype's floor.
It prints one markdown report and, with --write-docs, replaces the generated section of
docs/PERFORMANCE.md. Not part of the test run.

--quick runs the whole pipeline on tiny shapes (`random:bert:tiny`: width 32, 2 layers,
the full 30,522-token vocabulary; 64 input tokens; 2 repeats) in a few minutes: a check
that the script works, not a measurement.
"""
import argparse
import json
import os
import platform
import shlex
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
ENCDEC_BUILT = ROOT / "target" / "release" / "encdec"
MARK_BEGIN = "<!-- bench/compare.py: begin -->"
MARK_END = "<!-- bench/compare.py: end -->"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8")

# engine key -> (label, dtype whose floor applies)
ENGINES = {
    ("transformers", "f32"): ("transformers f32", "f32"),
    ("ct2", "float32"): ("CTranslate2 float32", "f32"),
    ("ct2", "int8"): ("CTranslate2 int8", "int8"),
    ("encdec", "f32"): ("encdec f32", "f32"),
    ("encdec", "bf16"): ("encdec bf16", "bf16"),
    ("encdec", "int8"): ("encdec int8", "int8"),
}
DTYPE_BYTES = {"f32": 4, "bf16": 2, "int8": 1}


def sh(cmd, **kw):
    """Runs cmd; its stdout goes to stderr too, so that stdout carries only the report."""
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr)
    kw.setdefault("stdout", sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


def run_measured(cmd, stdin=None):
    """Runs cmd; returns (stdout, stderr, peak RSS in MB of the child, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_buf, err_buf = [], []
    t_out = threading.Thread(target=lambda: out_buf.append(proc.stdout.read()))
    t_err = threading.Thread(target=lambda: err_buf.append(proc.stderr.read()))
    t_out.start()
    t_err.start()
    if stdin:
        proc.stdin.write(stdin)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    t_out.join()
    t_err.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed:\n{''.join(err_buf)[-2000:]}")
    return "".join(out_buf), "".join(err_buf), usage.ru_maxrss / 1024, wall


def reachable(url):
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except Exception:  # noqa: BLE001 - any failure means "use PyPI"
        return False


def setup_venv():
    py = VENV / "bin" / "python"
    if not py.exists():
        sh([sys.executable, "-m", "venv", VENV])
        if reachable(TORCH_CPU_INDEX + "/torch/"):
            sh([py, "-m", "pip", "install", "-q", "torch", "--index-url", TORCH_CPU_INDEX])
        sh([py, "-m", "pip", "install", "-q", "torch", "transformers", "safetensors"])
    if subprocess.run([py, "-c", "import ctranslate2"], capture_output=True).returncode != 0:
        sh([py, "-m", "pip", "install", "-q", "ctranslate2"])
    return py


def setup(args):
    if args.encdec:
        encdec = Path(args.encdec).resolve()
    else:
        encdec = ENCDEC_BUILT
        if not args.no_build:
            sh(["cargo", "build", "--release"], cwd=ROOT)
    model = OUT / f"bert2bert-{args.size}"
    if not (model / "model.safetensors").exists():
        OUT.mkdir(parents=True, exist_ok=True)
        sh([encdec, "warmstart", "--encoder", f"random:bert:{args.size}", "--decoder",
            f"random:bert:{args.size}", "--seed", "0", "--force", "--out", model])
    py = setup_venv()
    bart = OUT / f"bart-{args.size}"
    if not args.skip_ct2 and not all((bart / f"ct2-{q}" / "model.bin").exists()
                                     for q in ("float32", "int8")):
        sh([py, ROOT / "bench" / "ct2_peer.py", "build", "--like", model, "--out", bart])
    return encdec, model, bart, py


def versions(py):
    code = ("import json, torch, transformers\n"
            "v = {'torch': torch.__version__, 'transformers': transformers.__version__}\n"
            "try:\n import ctranslate2; v['ctranslate2'] = ctranslate2.__version__\n"
            "except Exception: pass\n"
            "print(json.dumps(v))")
    return json.loads(subprocess.run([py, "-c", code], check=True, capture_output=True,
                                     text=True).stdout)


def make_text(py, model, n_tokens):
    """A text that the checkpoint's tokenizer encodes to exactly n_tokens (specials incl.),
    and those tokens as WordPiece strings (CTranslate2's input)."""
    code = f"""
import json
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(model)!r})
words = ("the storm swept across the northern plains on monday knocking out power to "
         "more than two hundred thousand homes and forcing the closure of highways ").split()
text = []
i = 0
while len(tok(" ".join(text))["input_ids"]) < {n_tokens}:
    text.append(words[i % len(words)]); i += 1
text = " ".join(text)
ids = tok(text, truncation=True, max_length=512)["input_ids"]
print(json.dumps({{"text": text, "tokens": tok.convert_ids_to_tokens(ids)}}))
"""
    r = json.loads(subprocess.run([py, "-c", code], check=True, capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1])
    return r["text"], r["tokens"]


def floors(py, threads):
    """Read bandwidth (GB/s) and GEMM peaks (GFLOP/s or GOP/s: f32, bf16, int8), with torch."""
    code = f"""
import json, time, torch
torch.set_num_threads({threads})
def best(f, reps=5):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps
x = torch.ones(256 * 1024 * 1024)  # 1 GiB f32
r = {{"bandwidth_gbs": x.numel() * 4 / best(x.sum) / 1e9}}
del x
n = 2048
a = torch.randn(n, n); b = torch.randn(n, n)
r["f32_gflops"] = 2 * n**3 / best(lambda: a @ b) / 1e9
try:
    a16, b16 = a.bfloat16(), b.bfloat16()
    r["bf16_gflops"] = 2 * n**3 / best(lambda: a16 @ b16) / 1e9
except Exception as e:
    r["bf16_error"] = str(e)[:200]
try:
    a8 = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    b8 = torch.randint(-128, 128, (n, n), dtype=torch.int8)
    r["int8_gflops"] = 2 * n**3 / best(lambda: torch._int_mm(a8, b8)) / 1e9
except Exception as e:
    r["int8_error"] = str(e)[:200]
print(json.dumps(r))
"""
    return json.loads(subprocess.run([py, "-c", code], check=True, capture_output=True,
                                     text=True).stdout)


def model_shape(model):
    """Parameter counts of the encdec checkpoint, split by when they are used."""
    raw = open(model / "model.safetensors", "rb")
    n = struct.unpack("<Q", raw.read(8))[0]
    header = json.loads(raw.read(n))
    header.pop("__metadata__", None)
    cfg = json.loads((model / "config.json").read_text())
    size = {"F32": 4, "F16": 2, "BF16": 2}
    step, cross_kv, enc = 0, 0, 0
    for name, info in header.items():
        params = (info["data_offsets"][1] - info["data_offsets"][0]) // size[info["dtype"]]
        if name.startswith("decoder."):
            if "position_embeddings" in name or "token_type" in name:
                continue
            if "crossattention.self.key" in name or "crossattention.self.value" in name:
                cross_kv += params  # applied to the encoder output once, not per step
            else:
                step += params  # word embeddings count once: they are the tied LM head
        elif name.startswith("encoder.") and "embeddings" not in name and "pooler" not in name:
            enc += params
    return {"step_params": step, "cross_kv_params": cross_kv, "enc_params": enc,
            "layers": cfg["decoder"]["num_hidden_layers"],
            "hidden": cfg["decoder"]["hidden_size"],
            "enc_layers": cfg["encoder"]["num_hidden_layers"]}


def make_floors(fl, shape, n_in, new_tokens):
    """floor(dtype, batch, beams) in seconds, and the peaks used."""
    peaks = {"f32": fl["f32_gflops"]}
    notes = []
    # Any dtype can be computed at the f32 peak after widening, so a dtype's peak is at
    # least sgemm's.
    peaks["bf16"] = max(fl.get("bf16_gflops", 0), fl["f32_gflops"])
    if "int8_gflops" in fl:
        peaks["int8"] = max(fl["int8_gflops"], peaks["bf16"])
    else:
        peaks["int8"] = peaks["bf16"]
        notes.append(f"int8 GEMM peak not measured ({fl.get('int8_error', '?')}): the int8 "
                     "compute floor uses the bf16/f32 peak")
    enc_flops = (2 * (shape["enc_params"] + shape["cross_kv_params"]) * n_in
                 + 4 * shape["enc_layers"] * shape["hidden"] * n_in * n_in)
    # per generated row and step: the step's matmuls, plus self- and cross-attention scores
    step_flops = 2 * shape["step_params"] + 4 * shape["layers"] * shape["hidden"] * (
        n_in + new_tokens / 2)
    bw = fl["bandwidth_gbs"] * 1e9

    def floor(dtype, batch, beams):
        peak = peaks[dtype] * 1e9
        step = max(shape["step_params"] * DTYPE_BYTES[dtype] / bw,
                   batch * beams * step_flops / peak)
        return batch * enc_flops / peak + new_tokens * step

    return floor, peaks, enc_flops, notes


def time_hf(py, model, text, batch, beams, new_tokens, repeats, threads):
    out, _, rss, _ = run_measured([py, ROOT / "bench" / "hf_generate.py", "--model", model,
                                   "--text", text, "--batch", batch, "--beams", beams,
                                   "--new-tokens", new_tokens, "--repeats", repeats,
                                   "--threads", threads])
    r = json.loads(out.strip().splitlines()[-1])
    if r["output_tokens"] != new_tokens:
        raise RuntimeError(f"transformers generated {r['output_tokens']} tokens")
    return {"s": r["seconds"], "rss": max(rss, r["peak_rss_mb"]), "input_tokens": r["input_tokens"]}


def time_ct2(py, ct2_dir, compute_type, tokens_file, batch, beams, new_tokens, repeats,
             threads):
    out, _, rss, _ = run_measured([py, ROOT / "bench" / "ct2_peer.py", "time", "--model",
                                   ct2_dir, "--compute-type", compute_type, "--tokens",
                                   tokens_file, "--batch", batch, "--beams", beams,
                                   "--new-tokens", new_tokens, "--repeats", repeats,
                                   "--threads", threads])
    r = json.loads(out.strip().splitlines()[-1])
    return {"s": r["seconds"], "rss": max(rss, r["peak_rss_mb"]), "input_tokens": r["input_tokens"]}


def encdec_cmd(encdec, model, dtype, batch, beams, new_tokens):
    return [encdec, "generate", "--model", model, "--dtype", dtype, "--batch-size", batch,
            "--num-beams", beams, "--max-new-tokens", new_tokens, "--min-length",
            new_tokens + 1, "--timings"]


def probe_encdec(encdec, model, dtype):
    """None when `encdec generate --dtype dtype` works, else the reason."""
    try:
        out, _, _, _ = run_measured(encdec_cmd(encdec, model, dtype, 1, 1, 2),
                                    stdin=json.dumps({"id": 0, "text": "Hello world."}) + "\n")
        r = json.loads(out.strip().splitlines()[-1])
        if "error" in r:
            return str(r["error"])[:160]
        return None
    except Exception as e:  # noqa: BLE001 - reported in the table
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        reason = next((l for l in lines if "error" in l.lower() or "invalid" in l.lower()),
                      lines[-1] if lines else "failed")
        return reason[:160]


def time_encdec(encdec, model, dtype, text, batch, beams, new_tokens, repeats):
    line = json.dumps({"text": text}) + "\n"
    times, walls, rss = [], [], 0
    for _ in range(repeats):
        out, err, peak, wall = run_measured(
            encdec_cmd(encdec, model, dtype, batch, beams, new_tokens), stdin=line * batch)
        for l in out.splitlines():
            r = json.loads(l)
            if "error" in r:
                raise RuntimeError(f"encdec: {r['error']}")
            got = {len(ids) - 1 for ids in r["ids"]}  # ids start with the decoder start token
            if got != {new_tokens}:
                raise RuntimeError(f"encdec generated {got} tokens, not {new_tokens}")
        t = [json.loads(l)["generate_seconds"] for l in err.splitlines() if "generate_seconds" in l]
        times.append(sum(t))
        walls.append(wall)
        rss = max(rss, peak)
    return {"s": statistics.median(times), "wall": statistics.median(walls), "rss": rss}


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


def start_server(encdec, model, port, max_batch):
    proc = subprocess.Popen([str(encdec), "serve", "--model", str(model), "--port", str(port),
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


def cpu_info():
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return model, flags


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes (random:bert:tiny, 64 input tokens, 2 repeats): checks "
                         "the pipeline end to end in a few minutes")
    ap.add_argument("--size", choices=("tiny", "base"), default=None,
                    help="random BERT2BERT preset (default: base; tiny with --quick)")
    ap.add_argument("--encdec", metavar="PATH",
                    help="encdec binary to time (skips the cargo build)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/encdec as is")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--skip-hf", action="store_true", help="do not time transformers")
    ap.add_argument("--skip-ct2", action="store_true", help="do not time CTranslate2")
    ap.add_argument("--dtypes", default="f32,bf16,int8", help="encdec dtypes to time")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--beams", default="1,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE for every engine: on a machine that is not "
                         "idle, OpenMP's spin-waiting slows torch and CTranslate2 float32 "
                         "many times over; off by default (the engines' shipped behaviour)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per cell, median reported (default: 3 at batch 1 and 1 above; "
                         "2 everywhere with --quick)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--input-tokens", type=int, default=None,
                    help="default 256 (64 with --quick)")
    args = ap.parse_args()
    args.size = args.size or ("tiny" if args.quick else "base")
    if args.input_tokens is None:
        args.input_tokens = 64 if args.quick else 256
    batches = [int(b) for b in args.batches.split(",")]
    beam_list = [int(b) for b in args.beams.split(",")]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

    def repeats(batch):
        if args.repeats:
            return args.repeats
        return 2 if args.quick else (3 if batch == 1 else 1)

    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f} before the run: the engines' "
              "OpenMP/rayon threads will contend with whatever else runs (OpenMP spin-waits "
              "can slow torch and CTranslate2 float32 tenfold); run on an idle machine, "
              "or pass --omp-passive", file=sys.stderr)
    encdec, model, bart, py = setup(args)
    vers = versions(py)
    text, tokens = make_text(py, model, args.input_tokens)
    OUT.mkdir(parents=True, exist_ok=True)
    tokens_file = OUT / f"input-{args.size}-{args.input_tokens}.tokens.json"
    tokens_file.write_text(json.dumps(tokens))
    fl = floors(py, args.threads)
    shape = model_shape(model)
    floor, peaks, enc_flops, notes = make_floors(fl, shape, args.input_tokens, args.new_tokens)
    print(json.dumps({"floors": fl, "shape": shape}), file=sys.stderr)

    engines = []
    unavailable = {}
    if not args.skip_hf:
        engines.append(("transformers", "f32"))
    if not args.skip_ct2:
        engines += [("ct2", "float32"), ("ct2", "int8")]
    for dtype in args.dtypes.split(","):
        key = ("encdec", dtype)
        if key not in ENGINES:
            ENGINES[key] = (f"encdec {dtype}", dtype if dtype in DTYPE_BYTES else "f32")
        reason = probe_encdec(encdec, model, dtype)
        if reason:
            unavailable[key] = reason
            print(f"encdec --dtype {dtype}: not available: {reason}", file=sys.stderr)
        engines.append(key)

    cells = [(batch, beams) for beams in beam_list for batch in batches]
    res = {e: {} for e in engines}
    failures = []
    for batch, beams in cells:
        reps = repeats(batch)
        for e in engines:
            if e in unavailable:
                continue
            kind, dtype = e
            try:
                if kind == "transformers":
                    r = time_hf(py, model, text, batch, beams, args.new_tokens, reps,
                                args.threads)
                elif kind == "ct2":
                    r = time_ct2(py, bart / f"ct2-{dtype}", dtype, tokens_file, batch, beams,
                                 args.new_tokens, reps, args.threads)
                else:
                    r = time_encdec(encdec, model, dtype, text, batch, beams, args.new_tokens,
                                    reps)
            except Exception as ex:  # noqa: BLE001 - one failed cell must not lose the run
                failures.append(f"{ENGINES[e][0]}, batch {batch}, beams {beams}: "
                                + " ".join(str(ex).split())[-300:])
                print("FAILED:", failures[-1], file=sys.stderr)
                continue
            r["floor_x"] = r["s"] / floor(ENGINES[e][1], batch, beams)
            res[e][(batch, beams)] = r
            print(json.dumps({"engine": ENGINES[e][0], "batch": batch, "beams": beams, **r}),
                  file=sys.stderr)

    serve_rows = []
    hf = res.get(("transformers", "f32"), {})
    if not args.skip_serve and 4 in beam_list:
        port = 18080
        server = start_server(encdec, model, port, 32)
        try:
            for clients in (1, 8, 32):
                per_client = 2 if clients < 32 else 1
                tput, p50 = serve_throughput(text, clients, per_client, 4, args.new_tokens, port)
                row = {"clients": clients, "seq_s": tput, "p50_s": p50}
                if (1, 4) in hf:
                    row["vs_hf_sequential"] = tput * hf[(1, 4)]["s"]
                    row["vs_hf_best_batched"] = tput / max(
                        b / hf[(b, 4)]["s"] for b in batches if (b, 4) in hf)
                serve_rows.append(row)
                print(json.dumps(serve_rows[-1]), file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=60)

    report = render(res, engines, unavailable, cells, serve_rows, fl, peaks, shape, enc_flops,
                    floor, notes, failures, vers, text_tokens(res, args), encdec, args,
                    (load_before, os.getloadavg()[0]))
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


def secs(s):
    """Seconds for a table cell: two decimals, three below 0.1 s (tiny --quick shapes)."""
    return f"{s:.2f}" if s >= 0.1 else f"{s:.3f}"


def text_tokens(res, args):
    """Input tokens each engine saw (they must agree)."""
    seen = {r["input_tokens"] for rows in res.values() for r in rows.values()
            if "input_tokens" in r}
    if len(seen) > 1:
        raise RuntimeError(f"engines saw different input lengths: {sorted(seen)}")
    return seen.pop() if seen else args.input_tokens


def render(res, engines, unavailable, cells, serve_rows, fl, peaks, shape, enc_flops, floor,
           notes, failures, vers, n_in, encdec, args, load):
    cpu, flags = cpu_info()
    hf = res.get(("transformers", "f32"), {})
    ct2 = res.get(("ct2", "float32"), {})
    flag_text = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    amx = sorted(f for f in flags if f.startswith("amx"))
    size_name = {"base": "bert-base", "tiny": "tiny (width 32, 2 layers)"}[args.size]
    reps = (f"{args.repeats}" if args.repeats else
            ("2" if args.quick else "3 at batch 1, 1 at larger batches"))
    ver_text = ", ".join(f"{k} {v}" for k, v in vers.items())
    head = [
        "## encdec vs transformers vs CTranslate2 (bench/compare.py)",
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"CPU flags: {flag_text} (amx_*: {', '.join(amx) if amx else 'none'}). "
        f"{args.threads} threads each engine ({ver_text}, encdec `{encdec.name}`). "
        f"Load average (1 min) {load[0]:.2f} before the run, {load[1]:.2f} after"
        + ("; OMP_WAIT_POLICY=PASSIVE." if args.omp_passive else "."),
        "",
        f"Model: {size_name} BERT2BERT with random weights (`encdec warmstart --encoder "
        f"random:bert:{args.size} --decoder random:bert:{args.size}`); CTranslate2 runs a "
        f"random BART of the same shape (bench/ct2_peer.py; same WordPiece input tokens). "
        f"{n_in} input tokens, exactly {args.new_tokens} new tokens; generate time in-process, "
        f"load excluded; median of {reps} run(s).",
        "",
        f"Floors measured in the same run (torch, {args.threads} threads): read bandwidth "
        f"{fl['bandwidth_gbs']:.1f} GB/s; GEMM peaks f32 {fl['f32_gflops']:.0f}, bf16 "
        + (f"{fl['bf16_gflops']:.0f}" if "bf16_gflops" in fl else "n/a")
        + " GFLOP/s, int8 "
        + (f"{fl['int8_gflops']:.0f} GOP/s (`torch._int_mm`)" if "int8_gflops" in fl else "n/a")
        + " (2048³). A decode step reads "
        + ", ".join(f"{shape['step_params'] * b / 1e6:.3g} MB ({d})" for d, b in DTYPE_BYTES.items())
        + " of decoder + LM-head weights: ≥ "
        + ", ".join(f"{shape['step_params'] * b / fl['bandwidth_gbs'] / 1e6:.3g} ms"
                    for b in DTYPE_BYTES.values())
        + f"; the encoder is {enc_flops / 1e9:.3g} GFLOP per input (cross-attention K/V "
        "projections included): ≥ "
        + ", ".join(f"{enc_flops / p / 1e9:.3g} s ({d})" for d, p in peaks.items())
        + ". floor = batch × encoder / peak + steps × max(weight bytes / bandwidth, rows × "
        "step FLOPs / peak), with peak(bf16) = max(bf16, f32) and peak(int8) = max(int8, "
        "bf16, f32); the cross-attention K/V reads ("
        f"{shape['layers'] * 2 * shape['hidden'] * n_in * 4 / 1e6:.3g} MB per input per step "
        "in f32) are not in it."
        + "".join(f" {n}." for n in notes),
        "",
    ]

    def col(batch, beams):
        return f"batch {batch}, beams {beams}"

    lines = head + [
        "Generate seconds (median; in brackets: ÷ transformers / ÷ CTranslate2 float32):",
        "",
        "| engine | " + " | ".join(col(*c) for c in cells) + " |",
        "|---|" + "---:|" * len(cells),
    ]

    def ratio(r, base, c):
        return f"{r['s'] / base[c]['s']:.2f}" if c in base else "–"

    for e in engines:
        label = ENGINES[e][0]
        if e in unavailable:
            lines.append(f"| {label} | " + " | ".join("not available" for _ in cells) + " |")
            continue
        out = []
        for c in cells:
            r = res[e].get(c)
            if r is None:
                out.append("failed")
            elif e == ("transformers", "f32"):
                out.append(secs(r["s"]))
            else:
                out.append(f"{secs(r['s'])} ({ratio(r, hf, c)} / {ratio(r, ct2, c)})")
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    for e in engines:
        if e[0] == "encdec" and e not in unavailable:
            lines.append(f"| {ENGINES[e][0]}, whole process | " + " | ".join(
                secs(res[e][c]["wall"]) if c in res[e] else "–" for c in cells) + " |")
    for d in DTYPE_BYTES:
        lines.append(f"| floor {d} | " + " | ".join(secs(floor(d, *c)) for c in cells) + " |")
    for e, reason in unavailable.items():
        lines.append(f"\n{ENGINES[e][0]}: not available (`--dtype {e[1]}`: {reason}).")
    for f in failures:
        lines.append(f"\nFailed: {f}")

    lines += ["", "Generate time ÷ the floor of the engine's dtype · peak RSS MiB (whole process):",
              "", "| engine | " + " | ".join(col(*c) for c in cells) + " |",
              "|---|" + "---:|" * len(cells)]
    for e in engines:
        if e in unavailable:
            continue
        lines.append(f"| {ENGINES[e][0]} | " + " | ".join(
            f"{res[e][c]['floor_x']:.2f}× · {res[e][c]['rss']:.0f}" if c in res[e] else "–"
            for c in cells) + " |")

    if serve_rows:
        with_hf = "vs_hf_sequential" in serve_rows[0]
        lines += ["", "| encdec serve (f32), num_beams 4 | seq/s | p50 latency s"
                  + (" | vs transformers one at a time | vs transformers best batched "
                     "generate |" if with_hf else " |"),
                  "|---|---|---|" + ("---|---|" if with_hf else "")]
        for s in serve_rows:
            extra = (f" {s['vs_hf_sequential']:.2f}× | {s['vs_hf_best_batched']:.2f}× |"
                     if with_hf else "")
            lines.append(f"| {s['clients']} concurrent clients | {s['seq_s']:.3f} | "
                         f"{s['p50_s']:.2f} |" + extra)
    argv = [a for a in sys.argv[1:]]
    if "--encdec" in argv:  # the binary's path says nothing to a reader
        i = argv.index("--encdec")
        del argv[i:i + 2]
    argv = [a for a in argv if not a.startswith("--encdec=")]
    if "--write-docs" not in argv:
        argv.append("--write-docs")
    lines += ["", "Command: `python3 bench/compare.py " + shlex.join(argv) + "`"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
