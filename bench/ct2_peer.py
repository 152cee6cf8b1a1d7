"""The CTranslate2 peer of bench/compare.py: a random BART of the BERT2BERT's shape.

Run by bench/compare.py inside the throw-away virtualenv (torch, transformers, ctranslate2).

    python ct2_peer.py build --like ENCDEC_MODEL --out DIR
        Builds a random `BartForConditionalGeneration` with the shape of the encdec
        checkpoint ENCDEC_MODEL (vocabulary, width, layers, heads, feed-forward width,
        positions), with its WordPiece tokenizer, into DIR/hf, and converts it with
        `ctranslate2.converters.TransformersConverter` into DIR/ct2-float32 and
        DIR/ct2-int8. Prints one JSON line (parameter count).

    python ct2_peer.py time --model DIR/ct2-int8 --tokens FILE.json ...
    python ct2_peer.py time --model DIR/ct2-int8 --tokenizer ENCDEC_MODEL --text T ...
        Times `Translator.translate_batch` on `--batch` copies of one input, exactly
        `--new-tokens` new tokens, `--beams` beams, and prints one JSON line. The input is
        a JSON list of token strings (compare.py writes the encdec checkpoint's WordPiece
        tokens of its text, specials included, so every engine sees the same tokens; this
        keeps transformers and torch out of the timed process and its RSS), or T
        tokenized here by ENCDEC_MODEL's tokenizer.
"""
import argparse
import json
import resource
import statistics
import time
from pathlib import Path


def build(a):
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration
    import ctranslate2

    like = json.loads((Path(a.like) / "config.json").read_text())
    enc, dec = like["encoder"], like["decoder"]
    out = Path(a.out)
    hf = out / "hf"
    torch.manual_seed(a.seed)
    cfg = BartConfig(
        vocab_size=dec["vocab_size"],
        d_model=dec["hidden_size"],
        encoder_layers=enc["num_hidden_layers"],
        decoder_layers=dec["num_hidden_layers"],
        encoder_attention_heads=enc["num_attention_heads"],
        decoder_attention_heads=dec["num_attention_heads"],
        encoder_ffn_dim=enc["intermediate_size"],
        decoder_ffn_dim=dec["intermediate_size"],
        max_position_embeddings=dec.get("max_position_embeddings", 512),
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=like.get("pad_token_id", 0),
        bos_token_id=like.get("bos_token_id", 101),
        eos_token_id=like.get("eos_token_id", 102),
        decoder_start_token_id=like.get("decoder_start_token_id", 101),
        forced_eos_token_id=None,
        tie_word_embeddings=True,
    )
    # CTranslate2 4.8's BART loader reads these (transformers 4.x BartConfig attributes
    # that transformers 5 no longer defines).
    for k, v in dict(normalize_before=False, add_final_layer_norm=False,
                     normalize_embedding=True, static_position_embeddings=False,
                     add_bias_logits=False).items():
        setattr(cfg, k, v)
    model = BartForConditionalGeneration(cfg).eval()
    model.save_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(a.like)
    tok.save_pretrained(hf)
    n_params = sum(p.numel() for p in model.parameters())
    del model

    for quant in ("float32", "int8"):
        dst = out / f"ct2-{quant}"
        ctranslate2.converters.TransformersConverter(str(hf)).convert(
            str(dst), quantization=quant, force=True)
        # With a BERT vocabulary the converter writes null bos/eos (the WordPiece
        # tokenizer has neither) and a null layer_norm_epsilon.
        cpath = dst / "config.json"
        c = json.loads(cpath.read_text())
        if c.get("bos_token") is None:
            c["bos_token"] = tok.cls_token
        if c.get("eos_token") is None:
            c["eos_token"] = tok.sep_token
        if c.get("layer_norm_epsilon") is None:
            c["layer_norm_epsilon"] = 1e-5
        cpath.write_text(json.dumps(c, indent=2))
    print(json.dumps({"parameters": n_params, "config": cfg.to_diff_dict()}))


def time_it(a):
    import ctranslate2

    if a.tokens:
        tokens = json.loads(Path(a.tokens).read_text())
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(a.tokenizer)
        ids = tok(a.text, truncation=True, max_length=512)["input_ids"]
        tokens = tok.convert_ids_to_tokens(ids)
    tr = ctranslate2.Translator(a.model, device="cpu", compute_type=a.compute_type,
                                intra_threads=a.threads, inter_threads=1)
    kwargs = dict(beam_size=a.beams, min_decoding_length=a.new_tokens,
                  max_decoding_length=a.new_tokens, max_batch_size=0,
                  return_scores=True)
    times = []
    for _ in range(a.repeats):
        start = time.perf_counter()
        res = tr.translate_batch([tokens] * a.batch, **kwargs)
        times.append(time.perf_counter() - start)
    lengths = sorted({len(r.hypotheses[0]) for r in res})
    if lengths != [a.new_tokens]:
        raise SystemExit(f"CTranslate2 generated {lengths} tokens, not {a.new_tokens}")
    print(json.dumps({
        "input_tokens": len(tokens),
        "output_tokens": lengths[0],
        "seconds": statistics.median(times),
        "all_seconds": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--like", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("time")
    t.add_argument("--model", required=True)
    t.add_argument("--tokens", help="JSON list of input token strings")
    t.add_argument("--tokenizer")
    t.add_argument("--text")
    t.add_argument("--compute-type", default="default")
    t.add_argument("--batch", type=int, required=True)
    t.add_argument("--beams", type=int, required=True)
    t.add_argument("--new-tokens", type=int, required=True)
    t.add_argument("--repeats", type=int, default=1)
    t.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.cmd == "time" and not (a.tokens or (a.tokenizer and a.text)):
        p.error("time needs --tokens, or --tokenizer and --text")
    build(a) if a.cmd == "build" else time_it(a)


if __name__ == "__main__":
    main()
