#!/usr/bin/env python3
"""`encdec finetune` next to a transformers + torch loop: same checkpoint, same batches.

Trains the same warm-started EncoderDecoderModel for --steps optimiser steps twice, in one
run and on the same threads: once with `encdec finetune` (dropout off, batches in file
order) and once with scripts/finetune_reference.py (the Trainer's step in torch). Prints
per-step losses side by side, the largest relative loss difference, training tokens per
second of each (input + label tokens, evaluation and loading excluded), the largest
weight difference after training and whether both trained models generate the same ids
in transformers.

    python bench/finetune_compare.py --model /tmp/minilm-b2b \
        --data ../shared/data/wikisplit/tune.tsv --steps 20 --batch-size 8

Needs a release build (`cargo build --release`) and a Python with torch and
transformers (--python). Not part of the test run.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_line() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                  if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines()
                  if l.startswith("flags")), [])
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile"]
    return f"{model}; flags: {' '.join(f for f in wanted if f in flags)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="TSV: source<TAB>target")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--max-input-tokens", type=int, default=128)
    ap.add_argument("--max-target-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encdec", type=Path, default=ROOT / "target" / "release" / "encdec")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter with torch and transformers")
    ap.add_argument("--work", type=Path, help="keep outputs here (default: a temp dir)")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="finetune-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    # The whole data file is read by both; only the first steps x batch examples train.
    used = args.steps * args.batch_size * args.grad_accum
    data = work / "train.tsv"
    lines = [l for l in args.data.read_text().splitlines() if l.strip()][:used]
    data.write_text("\n".join(lines) + "\n")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    common = ["--steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--grad-accum", str(args.grad_accum), "--lr", str(args.lr),
              "--weight-decay", str(args.weight_decay),
              "--warmup-steps", str(args.warmup_steps),
              "--max-input-tokens", str(args.max_input_tokens),
              "--max-target-tokens", str(args.max_target_tokens)]

    ours_dir = work / "encdec"
    run = subprocess.run(
        [str(args.encdec), "finetune", "--model", str(args.model), "--task", "split",
         "--data", str(data), "--out", str(ours_dir), "--shuffle", "false",
         "--dropout", "false", "--no-progress", *common],
        env=env, check=True, capture_output=True, text=True)
    summary = json.loads(run.stdout)
    ours = [json.loads(l) for l in (ours_dir / "train_log.jsonl").read_text().splitlines()]
    ours = [r for r in ours if "loss" in r and "metrics" not in r]

    ref_json = work / "torch.json"
    subprocess.run(
        [args.python, str(ROOT / "scripts" / "finetune_reference.py"),
         "--model", str(args.model), "--data", str(data), "--out", str(ref_json),
         "--encdec-out", str(ours_dir), "--generate", "4", *common],
        env=env, check=True, stderr=subprocess.DEVNULL)
    ref = json.loads(ref_json.read_text())

    print(f"cpu: {cpu_line()}; {args.threads} threads")
    print(f"model: {args.model} ({summary['parameters']:,} parameters), "
          f"{args.steps} steps x {args.batch_size} examples x {args.grad_accum} micro-batches, "
          f"transformers {ref['transformers']}, torch {ref['torch']}")
    print("\n| step | encdec loss | torch loss | rel. diff |\n|---:|---:|---:|---:|")
    worst = 0.0
    for a, b in zip(ours, ref["steps"]):
        rel = abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-12)
        worst = max(worst, rel)
        print(f"| {a['step']} | {a['loss']:.6f} | {b['loss']:.6f} | {rel:.1e} |")
    print(f"\nlargest relative loss difference over {len(ours)} steps: {worst:.2e}")
    cmp = ref.get("encdec_out", {})
    print(f"after training: largest weight difference {cmp.get('max_abs_weight_diff'):.2e}, "
          f"same generate() ids in transformers: {cmp.get('same_generate')}")
    ratio = summary["tokens_per_second"] / ref["tokens_per_second"]
    print("\n| engine | train seconds | tokens/s |\n|---|---:|---:|")
    print(f"| encdec finetune | {summary['train_seconds']:.1f} | "
          f"{summary['tokens_per_second']:.0f} |")
    print(f"| transformers + torch | {ref['train_seconds']:.1f} | "
          f"{ref['tokens_per_second']:.0f} |")
    print(f"\nencdec / torch tokens per second: {ratio:.2f}x")


if __name__ == "__main__":
    main()
