#!/usr/bin/env python3
"""The reference for `encdec finetune`: the same training step in transformers + torch.

Trains an EncoderDecoderModel checkpoint on a TSV (source<TAB>target) in file order,
without dropout, with the Trainer's optimiser (torch AdamW, weight decay not on biases
and LayerNorm parameters), linear warm-up/decay schedule and gradient clipping at 1.0,
and writes per-step loss / lr / grad norm and the trained model's `generate()` output
on the first training sources (the checkpoint's generation settings) as JSON.

    python scripts/finetune_reference.py --model tests/fixtures/models/bert2bert \
        --data tests/fixtures/finetune/train.tsv --steps 20 --out ref.json \
        [--encdec-out DIR]   # also load encdec's fine-tuned DIR and compare

With --encdec-out it loads the directory `encdec finetune` wrote in transformers and
reports the largest weight difference to the torch-trained model and whether both
generate the same ids. Needs torch and transformers (not a test dependency: the
tests read the JSON this writes, see tests/fixtures/finetune/README.md).
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, EncoderDecoderModel
from transformers.trainer_pt_utils import get_parameter_names


def load(model_dir: Path) -> EncoderDecoderModel:
    model = EncoderDecoderModel.from_pretrained(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("tie_encoder_decoder"):
        # transformers 5 no longer ties: share the decoder's base-model parameters with
        # the encoder again, as transformers 4 did (the file stores them once,
        # decoder-side). Parameters, not modules: a decoder attention module is causal.
        base = getattr(model.decoder, model.decoder.base_model_prefix)
        shared = dict(base.named_parameters())
        for mod_name, module in model.encoder.named_modules():
            for p_name, _ in list(module.named_parameters(recurse=False)):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if full in shared:
                    setattr(module, p_name, shared[full])
    return model


def tokenizers(model_dir: Path):
    meta_path = model_dir / "oracle_meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    enc = AutoTokenizer.from_pretrained(model_dir)
    dec_dir = model_dir / "decoder_tokenizer"
    dec = AutoTokenizer.from_pretrained(dec_dir) if dec_dir.is_dir() else enc
    return enc, dec, meta.get("add_special_tokens", True), dec_dir.is_dir()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--max-input-tokens", type=int, default=64)
    ap.add_argument("--max-target-tokens", type=int, default=32)
    ap.add_argument("--generate", type=int, default=6, help="training sources to generate for")
    ap.add_argument("--encdec-out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    model = load(args.model)
    model.eval()  # dropout off; gradients still flow
    gen_cfg = model.generation_config
    start, pad = model.config.decoder_start_token_id, model.config.pad_token_id
    eos = gen_cfg.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    enc_tok, dec_tok, add_special, separate_dec = tokenizers(args.model)

    pairs = []
    for line in args.data.read_text().splitlines():
        if not line.strip():
            continue
        source, target = line.split("\t")[:2]
        # As `encdec`'s data readers: WikiSplit's `<::::>` joins sentences by a space.
        if "<::::>" in target:
            target = " ".join(part.strip() for part in target.split("<::::>"))
        ids = enc_tok(source, truncation=True, max_length=args.max_input_tokens,
                      add_special_tokens=add_special).input_ids
        tgt = dec_tok(target, truncation=True, max_length=args.max_target_tokens,
                      add_special_tokens=True if separate_dec else add_special).input_ids
        if eos is not None and (not tgt or tgt[-1] != eos):
            tgt = tgt[: args.max_target_tokens - 1] + [eos]
        pairs.append((ids, tgt))

    enc_pad = model.encoder.config.pad_token_id
    enc_pad = 0 if enc_pad is None else enc_pad

    def collate(chunk):
        s = max(len(p[0]) for p in chunk)
        t = max(len(p[1]) for p in chunk)
        input_ids = torch.tensor([p[0] + [enc_pad] * (s - len(p[0])) for p in chunk])
        mask = torch.tensor([[1] * len(p[0]) + [0] * (s - len(p[0])) for p in chunk])
        labels = torch.tensor([p[1] + [-100] * (t - len(p[1])) for p in chunk])
        return input_ids, mask, labels

    decay = set(get_parameter_names(
        model, [nn.LayerNorm],
        [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]))
    named = list(dict(model.named_parameters()).items())  # shared parameters once
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    total, warmup = args.steps, args.warmup_steps

    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    per_epoch = math.ceil(len(pairs) / args.batch_size)
    # As the Trainer: a step never reaches into the next epoch; an epoch's last step
    # takes the micro-batches that are left.
    steps_per_epoch = math.ceil(per_epoch / args.grad_accum)
    rows = []
    # Timed like `encdec finetune`'s tokens_per_second: the steps only, input (padded)
    # + label tokens.
    train_seconds, seen_tokens = 0.0, 0
    for step in range(total):
        began = time.perf_counter()
        first = (step % steps_per_epoch) * args.grad_accum
        chunks = [pairs[m * args.batch_size:(m + 1) * args.batch_size]
                  for m in range(first, min(first + args.grad_accum, per_epoch))]
        tokens = sum(len(p[1]) for c in chunks for p in c)
        lr = sched.get_last_lr()[0]
        step_loss = 0.0
        for chunk in chunks:
            input_ids, mask, labels = collate(chunk)
            seen_tokens += input_ids.numel() + int((labels != -100).sum())
            out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
            # Mean over the step's label tokens (the micro-batch mean re-weighted).
            n = int((labels != -100).sum())
            loss = out.loss * (n / tokens)
            loss.backward()
            step_loss += float(loss)
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        opt.step()
        sched.step()
        opt.zero_grad()
        train_seconds += time.perf_counter() - began
        rows.append({"step": step + 1, "loss": step_loss, "lr": lr, "grad_norm": norm})
        print(json.dumps(rows[-1]), file=sys.stderr)

    def generate(m):
        outs = []
        with torch.no_grad():
            for ids, _ in pairs[: args.generate]:
                x = torch.tensor([ids])
                outs.append(m.generate(x, attention_mask=torch.ones_like(x))[0].tolist())
        return outs

    result = {
        "model": args.model.name,
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("out", "encdec_out")},
        "start": start, "pad": pad, "eos": eos,
        "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "tokens_per_second": seen_tokens / max(train_seconds, 1e-9),
        "steps": rows,
        "generate": [{"input_ids": p[0], "output_ids": o}
                     for p, o in zip(pairs, generate(model))],
    }
    if args.encdec_out:
        theirs = load(args.encdec_out)
        theirs.eval()
        mine = dict(model.named_parameters())
        diff = max(float((mine[n] - p).abs().max()) for n, p in theirs.named_parameters())
        result["encdec_out"] = {
            "max_abs_weight_diff": diff,
            "same_generate": generate(theirs) == [g["output_ids"] for g in result["generate"]],
        }
        print(json.dumps(result["encdec_out"]), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
