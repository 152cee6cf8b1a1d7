#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: build with `--features cuda`, check the
# parity fixtures on the GPU, and time a short batch 1/8/32 bench. Aims at < 5 minutes
# once the cuda build is warm (the first build compiles candle's kernels: much longer).
#
#   scripts/gpu-check.sh                    # build (scripts/cuda-build-check.sh) + checks
#   ENCDEC_CUDA_BIN=path/to/encdec scripts/gpu-check.sh   # a cuda binary built elsewhere
#
# Checks, for every fixture model × recorded parameter set in tests/fixtures/expected
# (transformers' own outputs), through `encdec generate --device cuda`:
#   f32:       token ids identical to transformers (the CPU build's contract): FAIL if not
#   f16, bf16: the share of sequences with identical ids, reported (reduced precision
#              legitimately flips near-tied beams on random-weight models)
# Bench: `encdec generate --timings` on BENCH_MODEL (default the bert2bert fixture; point
# it at a real checkpoint directory for meaningful numbers), 4 beams, batch 1, 8 and 32,
# cuda f32 / f16 and cpu f32 for reference.
#
# Without a GPU it stops at once with a clear message (exit 2).
# Environment: ENCDEC_CUDA_BIN, BENCH_MODEL, BENCH_INPUTS (default 64), CUDA_DEVICE
# (default cuda:0; `cpu` dry-runs the script on the CPU), and what
# scripts/cuda-build-check.sh reads (CUDA_HOME, CUDA_COMPUTE_CAP, ...).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
device=${CUDA_DEVICE:-cuda:0}
bench_inputs=${BENCH_INPUTS:-64}
fixtures=$repo/tests/fixtures

log() { printf '[gpu-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ $device == cpu ]]; then
    # Dry run of this script's own logic (parity comparison, bench) on the CPU.
    log "CUDA_DEVICE=cpu: dry run on the CPU, no GPU involved"
elif ! command -v nvidia-smi >/dev/null || ! gpus=$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1) || [[ -z $gpus ]]; then
    log "FAIL: no NVIDIA GPU here (nvidia-smi: ${gpus:-not found}); this check needs one."
    log "      Without a GPU, scripts/cuda-build-check.sh checks that the cuda build compiles."
    exit 2
else
    log "GPU: $gpus"
fi
command -v python3 >/dev/null || { log "FAIL: python3 is needed to compare outputs"; exit 1; }

# --- build -------------------------------------------------------------------------
if [[ -n ${ENCDEC_CUDA_BIN:-} ]]; then
    bin=$ENCDEC_CUDA_BIN
else
    start=$SECONDS
    scripts/cuda-build-check.sh
    # shellcheck disable=SC1091
    source "${CUDA_CHECK_DIR:-$repo/target/cuda}/cuda-env.sh"
    bin=${CUDA_CHECK_DIR:-$repo/target/cuda}/release/encdec
    log "cuda build: $((SECONDS - start)) s"
fi
[[ -x $bin ]] || { log "FAIL: $bin is not an executable"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The device must come up before anything else is judged.
echo '{"text": "Hello world.", "id": "probe"}' >"$work/probe.jsonl"
if ! "$bin" generate --device "$device" --model "$fixtures/models/bert2bert" <"$work/probe.jsonl" >"$work/probe.out" 2>"$work/probe.err"; then
    log "FAIL: encdec cannot run on $device:"
    sed 's/^/    /' "$work/probe.err" >&2
    exit 1
fi

# --- parity ------------------------------------------------------------------------
# One `encdec generate` per (model, parameter set, dtype); the comparison is the one
# tests/parity.rs makes: expected rows trimmed after their first eos.
parity() { # parity DTYPE -> prints "matched total" and the mismatches on stderr
    local dtype=$1
    python3 - "$bin" "$device" "$dtype" "$fixtures" <<'EOF'
import glob, json, os, subprocess, sys
bin_, device, dtype, fixtures = sys.argv[1:]
flags = ["num_beams", "max_length", "min_length", "length_penalty", "early_stopping",
         "no_repeat_ngram_size", "repetition_penalty", "num_return_sequences", "max_new_tokens"]
matched = total = 0
for meta_path in sorted(glob.glob(f"{fixtures}/expected/*/*.meta.json")):
    meta = json.load(open(meta_path))
    lines = [json.loads(l) for l in open(meta_path.replace(".meta.json", ".jsonl"))]
    kw = meta["generate_kwargs"]
    eos = kw["eos_token_id"]
    args = [bin_, "generate", "--device", device, "--dtype", dtype,
            "--model", os.path.join(fixtures, meta["model"]), "--batch-size", str(meta["batch_size"])]
    for k in flags:
        if k in kw:
            v = kw[k]
            args += ["--" + k.replace("_", "-"), str(v).lower() if isinstance(v, bool) else str(v)]
    stdin = "".join(json.dumps({"text": l["input"], "id": l["id"]}) + "\n" for l in lines)
    run = subprocess.run(args, input=stdin, capture_output=True, text=True)
    name = os.path.relpath(meta_path, f"{fixtures}/expected").removesuffix(".meta.json")
    if run.returncode != 0:
        print(f"{name}: encdec failed: {run.stderr.strip()[-400:]}", file=sys.stderr)
        total += sum(len(l.get("output_ids", [])) for l in lines)
        continue
    got = [json.loads(l) for l in run.stdout.splitlines()]
    for want, g in zip(lines, got):
        if "error" in want:
            continue
        for r, row in enumerate(want["output_ids"]):
            total += 1
            cut = next((i for i, t in enumerate(row[1:]) if t == eos), None)
            row = row if cut is None else row[: cut + 2]
            ids = g.get("ids", [])
            if r < len(ids) and ids[r] == row:
                matched += 1
            else:
                print(f"{name}/{want['id']}[{r}]: got {ids[r] if r < len(ids) else g.get('error')} want {row}",
                      file=sys.stderr)
print(matched, total)
EOF
}

status=0
for dtype in f32 f16 bf16; do
    start=$SECONDS
    read -r matched total < <(parity "$dtype" 2>"$work/parity-$dtype.err")
    share=$(python3 -c "print(f'{100 * $matched / max($total, 1):.1f}')")
    log "parity $dtype on $device: $matched/$total sequences with identical ids ($share%), $((SECONDS - start)) s"
    if [[ $dtype == f32 && $matched != "$total" ]]; then
        log "FAIL: f32 on $device differs from transformers:"
        head -n 20 "$work/parity-$dtype.err" | sed 's/^/    /' >&2
        status=1
    elif [[ $matched != "$total" ]]; then
        head -n 3 "$work/parity-$dtype.err" | sed 's/^/    e.g. /' >&2
    fi
done

# --- bench -------------------------------------------------------------------------
bench_model=${BENCH_MODEL:-$fixtures/models/bert2bert}
python3 - "$fixtures/inputs.jsonl" "$bench_inputs" >"$work/bench.jsonl" <<'EOF'
import json, sys
texts = [json.loads(l)["text"] for l in open(sys.argv[1])]
texts = [t for t in texts if t.strip()]
for i in range(int(sys.argv[2])):
    print(json.dumps({"text": texts[i % len(texts)], "id": i}))
EOF
log "bench: $bench_model, $bench_inputs inputs, 4 beams, max 64 new tokens"
printf '%-6s %-5s %6s %10s %10s\n' device dtype batch seconds inputs/s >&2
runs=("$device f32" "$device f16" "cpu f32")
[[ $device == cpu ]] && runs=("cpu f32")
for run in "${runs[@]}"; do
    read -r dev dtype <<<"$run"
    for batch in 1 8 32; do
        start=$(date +%s.%N)
        if ! "$bin" generate --device "$dev" --dtype "$dtype" --model "$bench_model" --batch-size "$batch" \
            --num-beams 4 --max-new-tokens 64 <"$work/bench.jsonl" >/dev/null 2>"$work/bench.err"; then
            log "bench $dev $dtype batch $batch failed: $(tail -n 3 "$work/bench.err")"
            status=1
            continue
        fi
        python3 -c "import time; s = time.time() - $start; print(f'%-6s %-5s %6d %10.2f %10.1f' % ('$dev', '$dtype', $batch, s, $bench_inputs / s))" >&2
    done
done

if ((status == 0)); then log "OK"; else log "FAILED"; fi
exit "$status"
