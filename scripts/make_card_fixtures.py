#!/usr/bin/env python3
"""Tiny checkpoints laid out like the google model cards' checkpoints, and what
transformers gives for each card's calls (tests/fixtures/cards/).

* wmt/: like google/bert2bert_L-24_wmt_en_de: bert-generation encoder and decoder (not
  tied), `tokenizer_class: "BertTokenizer"` in config.json, config.json,
  generation_config.json, pytorch_model.bin and a cased WordPiece vocab.txt without
  [CLS]/[SEP] (no tokenizer_config.json). Card: AutoTokenizer.from_pretrained(id,
  pad_token="<pad>", eos_token="</s>", bos_token="<s>"), tokenizer(text,
  add_special_tokens=False), decode(..., skip_special_tokens=True).
* spiece/: like google/roberta2roberta_L-24_{wikisplit,discofuse}: bert-generation,
  tied (RoBERTaShare, `tie_encoder_decoder`, shared tensors stored only under
  `decoder.bert.*`), pytorch_model.bin and a sentencepiece `spiece.model` (no
  tokenizer.json). Cards: wikisplit tokenizes
  `bos_token + text + eos_token`; discofuse replaces `"` by a backtick first.

Expected values come from loading the directories exactly as written (the files the
Rust tests read). Run from the repository root:  python3 scripts/make_card_fixtures.py
Made with transformers 5.24.0, tokenizers 0.23, torch 2.15, sentencepiece 0.2 on CPU.
"""

import json
import math
import os

# Fewer sources of run-to-run differences; the trained vocabularies still break ties
# differently between runs, so the committed files and expected.json belong together:
# regenerate all of them at once.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
import shutil
import tempfile

import sentencepiece as spm
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    BertGenerationConfig,
    BertGenerationDecoder,
    BertGenerationEncoder,
    EncoderDecoderModel,
    GenerationConfig,
)

OUT = os.path.join("tests", "fixtures", "cards")
EOS_BOOST_WMT = float(os.environ.get("EOS_BOOST_WMT", "2.0"))
EOS_BOOST_SPIECE = float(os.environ.get("EOS_BOOST_SPIECE", "0.0"))

CORPUS = [
    "Willst du einen Kaffee trinken gehen mit mir?",
    "Want to drink a coffee go with me?",
    "Due to the hurricane, Lobsterfest has been canceled, making Bob very happy about it and he decides to open Bob 's Burgers for customers who were planning on going to Lobsterfest.",
    "As a run-blocker, Zeitler moves relatively well. Zeitler often struggles at the point of contact in space.",
    'He said "no" and left. She said "yes" and stayed.',
    "He said `no` and left. She said `yes` and stayed.",
    "The quick brown fox jumps over the lazy dog. Der schnelle braune Fuchs springt über den faulen Hund.",
    "I went to the cinema to see a film. Ich ging ins Kino, um einen Film zu sehen.",
    "Machine translation with warm-started encoder-decoder models works well.",
    "The weather is nice today, and tomorrow it will rain in Berlin and Paris.",
    "Das Wetter ist heute schön, und morgen wird es in Berlin und Paris regnen.",
]

# Inputs of the card calls (the first of each is the card's own example).
WMT_INPUTS = [
    "Willst du einen Kaffee trinken gehen mit mir?",
    "The quick brown fox jumps over the lazy dog.",
    "Das Wetter ist heute schön.",
    "machine translation works well",
    "Kaffee 日本",
]
WIKISPLIT_INPUTS = [
    CORPUS[2],
    "The weather is nice today, and tomorrow it will rain in Berlin.",
]
DISCOFUSE_INPUTS = [
    CORPUS[3],
    'He said "no" and left. She said "yes" and stayed.',
]


def init_weights(model, seed, eos_id, eos_boost):
    """Large seeded random weights, so that every part of the network changes the tokens."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layernorm" in name or "layer_norm" in name:
                if name.endswith("weight"):
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "embeddings" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
        # Varied tokens; the EOS logit raised so that some outputs end early.
        model.decoder.lm_head.bias.copy_(torch.randn(model.decoder.lm_head.bias.shape, generator=g))
        model.decoder.lm_head.bias[eos_id] += eos_boost


def tiny_model(vocab_size, start, eos, pad, seed, eos_boost):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        bos_token_id=start,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    enc = BertGenerationEncoder(BertGenerationConfig(**common))
    dec = BertGenerationDecoder(
        BertGenerationConfig(**common, is_decoder=True, add_cross_attention=True)
    )
    model = EncoderDecoderModel(encoder=enc, decoder=dec)
    model.config.decoder_start_token_id = start
    model.config.eos_token_id = eos
    model.config.pad_token_id = pad
    init_weights(model, seed, eos, eos_boost)
    model.eval()
    return model


def save_torch_bin(model, d):
    """pytorch_model.bin (torch.save zip format) instead of safetensors, as on the hub."""
    model.save_pretrained(d)
    os.remove(os.path.join(d, "model.safetensors"))
    torch.save(model.state_dict(), os.path.join(d, "pytorch_model.bin"))


def save_generation_config(d, start, eos, pad):
    # Like the google checkpoints: special ids only, no max_length (transformers: 20).
    gc = GenerationConfig(decoder_start_token_id=start, eos_token_id=eos, pad_token_id=pad)
    gc.save_pretrained(d)


def wordpiece_vocab():
    # Cased WordPiece vocabulary; the WMT specials first, no [CLS]/[SEP]/[UNK].
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=260, special_tokens=["<pad>", "</s>", "<s>", "<unk>"]
    )
    tok.train_from_iterator(CORPUS + [c.lower() for c in CORPUS], trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return [t for t, _ in vocab]


def make_wmt():
    d = os.path.join(OUT, "wmt")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    vocab = wordpiece_vocab()
    with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    pad, eos, start = vocab.index("<pad>"), vocab.index("</s>"), vocab.index("<s>")
    model = tiny_model(len(vocab), start, eos, pad, seed=6, eos_boost=EOS_BOOST_WMT)
    model.config.tokenizer_class = "BertTokenizer"
    save_torch_bin(model, d)
    save_generation_config(d, start, eos, pad)
    assert not os.path.exists(os.path.join(d, "tokenizer_config.json"))

    model = EncoderDecoderModel.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    # Other keyword arguments, for the settings' own tests.
    cased = AutoTokenizer.from_pretrained(d, do_lower_case=False)
    override = AutoTokenizer.from_pretrained(d, sep_token="<sep>", cls_token="<s>")
    cases = []
    for text in WMT_INPUTS:
        try:
            ids = tok(text, add_special_tokens=False).input_ids
        except Exception as e:  # a word outside vocab.txt: no [UNK] in it to map to
            cases.append({"input": text, "error": str(e)})
            continue
        out = model.generate(torch.tensor([ids]))[0].tolist()
        cases.append(
            {
                "input": text,
                "input_ids": ids,
                # The template transformers builds around a vocab without [CLS]/[SEP].
                "input_ids_with_special_tokens": tok(text).input_ids,
                "input_ids_do_lower_case_false": cased(text, add_special_tokens=False).input_ids,
                "input_ids_sep_cls_override": override(text).input_ids,
                "output_ids": out,
                "output_text": tok.decode(out, skip_special_tokens=True),
            }
        )
    return {
        "tokenizer_class": type(tok).__name__,
        "all_special_tokens": tok.all_special_tokens,
        "all_special_ids": tok.all_special_ids,
        "cases": cases,
    }


def make_spiece():
    d = os.path.join(OUT, "spiece")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "spiece")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 3),
            model_prefix=prefix,
            model_type="unigram",
            vocab_size=200,
            pad_id=0,
            eos_id=1,
            bos_id=2,
            unk_id=3,
            pad_piece="<pad>",
            eos_piece="</s>",
            bos_piece="<s>",
            unk_piece="<unk>",
            character_coverage=1.0,
            hard_vocab_limit=False,
            minloglevel=2,
            num_threads=1,
        )
        shutil.copy(prefix + ".model", os.path.join(d, "spiece.model"))
    n = spm.SentencePieceProcessor(model_file=os.path.join(d, "spiece.model")).get_piece_size()
    model = tiny_model(n, 2, 1, 0, seed=10, eos_boost=EOS_BOOST_SPIECE)
    model.config.tokenizer_class = "BertGenerationTokenizer"
    # RoBERTaShare: the encoder shares every weight with the decoder's stack (but its
    # cross-attention). transformers 5 no longer ties on load, so tie here and keep the
    # 4.x file layout: the shared tensors stored once, under decoder.bert.*.
    dec = dict(model.decoder.bert.named_parameters())
    with torch.no_grad():
        for name, p in model.encoder.named_parameters():
            p.copy_(dec[name])
    model.config.tie_encoder_decoder = True
    model.save_pretrained(d)
    os.remove(os.path.join(d, "model.safetensors"))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    torch.save(state, os.path.join(d, "pytorch_model.bin"))
    save_generation_config(d, 2, 1, 0)

    # The tied model as transformers 4 loads that file (encoder = decoder.bert).
    model.eval()
    tok = AutoTokenizer.from_pretrained(d)

    def run(text):
        ids = tok(text).input_ids
        out = model.generate(torch.tensor([ids]))[0].tolist()
        return {
            "input_ids": ids,
            "output_ids": out,
            "output_text": tok.decode(out, skip_special_tokens=True),
        }

    wikisplit = [
        {"input": t, **run(tok.bos_token + t + tok.eos_token)} for t in WIKISPLIT_INPUTS
    ]
    discofuse = [{"input": t, **run(t.replace('"', "`"))} for t in DISCOFUSE_INPUTS]
    return {
        "tokenizer_class": type(tok).__name__,
        "all_special_tokens": tok.all_special_tokens,
        "all_special_ids": tok.all_special_ids,
        "wikisplit": wikisplit,
        "discofuse": discofuse,
    }


# Keyword arguments on checkpoints that ship a tokenizer.json (tests/fixtures/models/).
TOKENIZER_JSON_CASES = [
    ("bert2bert", {"cls_token": "[MASK]", "sep_token": "[unused1]"}),
    ("bert2bert", {"do_lower_case": False}),
    ("bert2bert", {"eos_token": "<new>"}),
    ("roberta2roberta", {"cls_token": "<mask>", "sep_token": "<pad>"}),
]
TOKENIZER_JSON_TEXTS = ["Hello World", "The quick brown fox <new> jumps.", "a b"]


def tokenizer_json_cases():
    out = []
    for model, kwargs in TOKENIZER_JSON_CASES:
        tok = AutoTokenizer.from_pretrained(os.path.join("tests", "fixtures", "models", model), **kwargs)
        out.append(
            {
                "model": model,
                "kwargs": kwargs,
                "input_ids": [tok(t).input_ids for t in TOKENIZER_JSON_TEXTS],
                "texts": TOKENIZER_JSON_TEXTS,
                "all_special_ids": tok.all_special_ids,
            }
        )
    return out


def main():
    torch.manual_seed(0)
    expected = {
        "wmt": make_wmt(),
        "spiece": make_spiece(),
        "tokenizer_json": tokenizer_json_cases(),
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
