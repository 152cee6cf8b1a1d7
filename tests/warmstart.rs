//! `encdec warmstart`: standalone checkpoints cut out of the fixture EncoderDecoder
//! models are composed back, and the result must be the fixture again — every tensor
//! that is not new (cross-attention, `enc_to_dec_proj`, heads the source lacks)
//! bit-identical, the same tensor names, transformers' config fields and special ids —
//! and it must load and generate in encdec (exactly like transformers where nothing is
//! random).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use common::*;
use encdec::engine::{Engine, EngineOptions};
use encdec::warmstart::{self, Component, Options, SourceSpec};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

/// A tensor as stored: dtype, shape, raw bytes.
#[derive(Clone, PartialEq)]
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Raw {
    fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.dtype, Dtype::F32);
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

fn read_tensors(path: &Path) -> BTreeMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                Raw {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect()
}

fn write_tensors(path: &Path, tensors: &BTreeMap<String, Raw>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, r)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(r.dtype, r.shape.clone(), &r.data).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

use encdec::hub::TOKENIZER_FILES;

fn copy_tokenizer(from: &Path, to: &Path) {
    for f in TOKENIZER_FILES {
        if from.join(f).is_file() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
}

/// Parameters a warm start creates: nothing standalone holds them.
fn is_new(name: &str) -> bool {
    name.contains("crossattention")
        || name.contains("ln_cross_attn")
        || name.starts_with("enc_to_dec_proj")
}

fn base_prefix(model_type: &str) -> &'static str {
    match model_type {
        "roberta" => "roberta",
        "gpt2" => "transformer",
        _ => "bert",
    }
}

/// How the standalone checkpoints are cut out of a fixture.
#[derive(Clone, Copy)]
struct Cut {
    /// Encoder stored under `bert.` / `roberta.` (BertForPreTraining-style) instead of bare.
    encoder_prefixed: bool,
    /// Decoder saved as its base model only (BertModel, GPT2Model: no head, no prefix).
    decoder_base_only: bool,
    /// Decoder keeps its cross-attention (a saved `*ForCausalLM` with add_cross_attention).
    decoder_with_cross: bool,
    /// Pre-2019 `LayerNorm.gamma` / `.beta` names in the encoder.
    legacy_layer_norm_names: bool,
}

const PRETRAINED: Cut = Cut {
    encoder_prefixed: false,
    decoder_base_only: false,
    decoder_with_cross: false,
    legacy_layer_norm_names: false,
};

struct Standalone {
    _tmp: tempfile::TempDir,
    encoder: std::path::PathBuf,
    decoder: std::path::PathBuf,
}

/// Cuts the fixture `model` into a standalone encoder and decoder checkpoint.
fn cut(model: &str, how: Cut) -> Standalone {
    let src = model_dir(model);
    let cfg = read_json(&src.join("config.json"));
    let tied = cfg["tie_encoder_decoder"].as_bool().unwrap_or(false);
    let tensors = read_tensors(&src.join("model.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let (enc_dir, dec_dir) = (tmp.path().join("encoder"), tmp.path().join("decoder"));
    std::fs::create_dir_all(&enc_dir).unwrap();
    std::fs::create_dir_all(&dec_dir).unwrap();

    // Encoder: `encoder.X` (tied files keep X under `decoder.<base>.X`).
    let enc_type = cfg["encoder"]["model_type"].as_str().unwrap();
    let dec_type = cfg["decoder"]["model_type"].as_str().unwrap();
    let enc_pre = base_prefix(enc_type);
    let dec_pre = format!("decoder.{}.", base_prefix(dec_type));
    let mut enc = BTreeMap::new();
    for (name, t) in &tensors {
        let rel = if let Some(rel) = name.strip_prefix("encoder.") {
            Some(rel.to_string())
        } else if tied && !is_new(name) {
            name.strip_prefix(&dec_pre).map(str::to_string)
        } else {
            None
        };
        let Some(mut rel) = rel else { continue };
        if how.legacy_layer_norm_names {
            rel = rel
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
        }
        let stored = if how.encoder_prefixed {
            format!("{enc_pre}.{rel}")
        } else {
            rel
        };
        enc.insert(stored, t.clone());
    }
    let mut enc_cfg = cfg["encoder"].clone();
    enc_cfg["architectures"] = json!([match enc_type {
        "roberta" => "RobertaModel",
        "bert-generation" => "BertGenerationEncoder",
        _ => "BertModel",
    }]);
    write_tensors(&enc_dir.join("model.safetensors"), &enc);
    write_json(&enc_dir.join("config.json"), &enc_cfg);
    copy_tokenizer(&src, &enc_dir);

    // Decoder: `decoder.X` → X (a head model's layout: `bert.*` + `cls.*`, ...).
    let mut dec = BTreeMap::new();
    for (name, t) in &tensors {
        let Some(rel) = name.strip_prefix("decoder.") else {
            continue;
        };
        if is_new(name) && !how.decoder_with_cross {
            continue;
        }
        let stored = if how.decoder_base_only {
            match rel.strip_prefix(&format!("{}.", base_prefix(dec_type))) {
                Some(r) => r.to_string(),
                None => continue, // the head
            }
        } else {
            rel.to_string()
        };
        dec.insert(stored, t.clone());
    }
    if dec_type == "gpt2" {
        // Old GPT-2 checkpoints carry the causal-mask buffers: not parameters.
        let n = cfg["decoder"]["n_layer"].as_u64().unwrap();
        let pre = if how.decoder_base_only {
            ""
        } else {
            "transformer."
        };
        for i in 0..n {
            let buf = Raw {
                dtype: Dtype::F32,
                shape: vec![1, 1, 4, 4],
                data: vec![0; 64],
            };
            dec.insert(format!("{pre}h.{i}.attn.bias"), buf.clone());
            dec.insert(format!("{pre}h.{i}.attn.masked_bias"), buf);
        }
    }
    let mut dec_cfg = cfg["decoder"].clone();
    if !how.decoder_with_cross {
        dec_cfg["is_decoder"] = json!(false);
        dec_cfg["add_cross_attention"] = json!(false);
    }
    dec_cfg["architectures"] = json!([match (dec_type, how.decoder_base_only) {
        ("gpt2", true) => "GPT2Model",
        ("gpt2", false) => "GPT2LMHeadModel",
        ("roberta", _) => "RobertaForMaskedLM",
        ("bert-generation", _) => "BertGenerationDecoder",
        (_, true) => "BertModel",
        _ => "BertForMaskedLM",
    }]);
    write_tensors(&dec_dir.join("model.safetensors"), &dec);
    write_json(&dec_dir.join("config.json"), &dec_cfg);
    let dec_tok = if src.join("decoder_tokenizer").is_dir() {
        src.join("decoder_tokenizer")
    } else {
        src.clone()
    };
    copy_tokenizer(&dec_tok, &dec_dir);
    Standalone {
        _tmp: tmp,
        encoder: enc_dir,
        decoder: dec_dir,
    }
}

fn options(s: &Standalone, tie: bool) -> Options {
    let mut o = Options::new(
        SourceSpec::Checkpoint(s.encoder.clone()),
        SourceSpec::Checkpoint(s.decoder.clone()),
    );
    o.tie_encoder_decoder = tie;
    o.seed = 1234;
    o
}

fn strip_architectures(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("architectures");
    v
}

fn std_dev(x: &[f32]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// A new tensor initialised as transformers does.
fn assert_initialised(name: &str, t: &Raw, n_layer: usize) {
    let v = t.f32s();
    if name.starts_with("enc_to_dec_proj") {
        // PyTorch's default nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let fan_in = if name.ends_with("weight") {
            t.shape[1]
        } else {
            32
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        assert!(v.iter().all(|x| x.abs() <= bound), "{name}");
        assert!(v.iter().any(|&x| x != 0.0), "{name}");
    } else if name.ends_with("LayerNorm.weight") || name.contains("ln_cross_attn.weight") {
        assert!(v.iter().all(|&x| x == 1.0), "{name}");
    } else if name.ends_with("bias") {
        assert!(v.iter().all(|&x| x == 0.0), "{name}");
    } else {
        let want = if name.ends_with("crossattention.c_proj.weight") {
            0.02 / ((2 * n_layer) as f64).sqrt()
        } else {
            0.02
        };
        let s = std_dev(&v);
        assert!(
            (s - want).abs() < 0.15 * want,
            "{name}: std {s}, want {want}"
        );
    }
}

/// Composes the cut-up fixture back and compares with the fixture.
fn compose_back(model: &str, how: Cut) -> tempfile::TempDir {
    let fixture = model_dir(model);
    let fcfg = read_json(&fixture.join("config.json"));
    let tied = fcfg["tie_encoder_decoder"].as_bool().unwrap_or(false);
    let s = cut(model, how);
    let out = tempfile::tempdir().unwrap();
    let report = warmstart::warmstart(&options(&s, tied), out.path(), false)
        .unwrap_or_else(|e| panic!("{model}: {e:#}"));

    // Same tensors, same names; non-random ones bit-identical.
    let want = read_tensors(&fixture.join("model.safetensors"));
    let got = read_tensors(&out.path().join("model.safetensors"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{model}: tensor names"
    );
    let n_layer = fcfg["decoder"]
        .get("num_hidden_layers")
        .or(fcfg["decoder"].get("n_layer"))
        .and_then(Value::as_u64)
        .unwrap() as usize;
    let mut new_params = 0;
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!((g.dtype, &g.shape), (w.dtype, &w.shape), "{model}: {name}");
        let random =
            name.starts_with("enc_to_dec_proj") || (is_new(name) && !how.decoder_with_cross);
        if random {
            new_params += w.shape.iter().product::<usize>();
            assert_initialised(name, g, n_layer);
        } else {
            assert!(g.data == w.data, "{model}: {name} differs from its source");
        }
    }
    let table = report.table();
    assert_eq!(table.total().random, new_params, "{model}: random count");
    let total: usize = want
        .values()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    assert_eq!(table.total().params, total, "{model}: total params");

    // Config: transformers' sub-configs and the special ids users set.
    let cfg = read_json(&out.path().join("config.json"));
    for side in ["encoder", "decoder"] {
        assert_eq!(
            strip_architectures(&cfg[side]),
            fcfg[side],
            "{model}: {side} sub-config"
        );
    }
    for key in [
        "architectures",
        "model_type",
        "is_encoder_decoder",
        "decoder_start_token_id",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "vocab_size",
        "tie_encoder_decoder",
        "dtype",
    ] {
        assert_eq!(cfg.get(key), fcfg.get(key), "{model}: config.json `{key}`");
    }
    let gen = read_json(&out.path().join("generation_config.json"));
    let fgen = read_json(&fixture.join("generation_config.json"));
    for key in [
        "decoder_start_token_id",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ] {
        assert_eq!(
            gen.get(key),
            fgen.get(key),
            "{model}: generation_config `{key}`"
        );
    }

    // Tokenizers: the encoder's at the top, the decoder's apart when it differs.
    let fdec = fixture.join("decoder_tokenizer");
    assert_eq!(
        out.path().join("decoder_tokenizer").is_dir(),
        fdec.is_dir(),
        "{model}"
    );
    for (got_dir, want_dir) in [
        (out.path().to_path_buf(), fixture.clone()),
        (out.path().join("decoder_tokenizer"), fdec),
    ] {
        for f in TOKENIZER_FILES {
            if want_dir.join(f).is_file() {
                assert_eq!(
                    std::fs::read(got_dir.join(f)).unwrap(),
                    std::fs::read(want_dir.join(f)).unwrap(),
                    "{model}: {f}"
                );
            }
        }
    }

    // It loads and generates.
    let engine = Engine::load(out.path(), &EngineOptions::default())
        .unwrap_or_else(|e| panic!("{model}: loading the composed model: {e:#}"));
    let cfg = engine.defaults().clone();
    let res = engine.generate_texts(&["Hello world."], &cfg).unwrap();
    let hyps = res[0].as_ref().unwrap();
    assert_eq!(hyps[0].hypothesis.ids[0], cfg.decoder_start_token_id);
    assert!(hyps[0].hypothesis.ids.len() > 1);
    out
}

#[test]
fn every_fixture_composes_back_from_pretrained_style_checkpoints() {
    for model in MODELS {
        compose_back(model, PRETRAINED);
    }
}

#[test]
fn with_the_cross_attention_in_the_decoder_checkpoint_outputs_match_transformers() {
    // Nothing random left (but roberta2gpt2's enc_to_dec_proj): the composed model is the
    // fixture, and generates transformers' reference outputs.
    for model in MODELS {
        let how = Cut {
            decoder_with_cross: true,
            ..PRETRAINED
        };
        let out = compose_back(model, how);
        if model != "roberta2gpt2" {
            check_against_fixtures(model, out.path(), Some(&["greedy", "cnndm"]));
        }
    }
}

#[test]
fn prefixed_and_legacy_named_encoders_and_base_model_decoders() {
    let how = Cut {
        encoder_prefixed: true,
        legacy_layer_norm_names: true,
        decoder_base_only: true,
        decoder_with_cross: false,
    };
    for model in ["bert2gpt2", "roberta2gpt2"] {
        compose_back(model, how);
    }
    // A BertModel decoder has no MLM head: transformers initialises cls.predictions.*.
    let s = cut("bert2bert", how);
    let out = tempfile::tempdir().unwrap();
    let report = warmstart::warmstart(&options(&s, false), out.path(), false).unwrap();
    let head = report.table().row(Component::DecoderLmHead);
    assert_eq!(head.random, head.params);
    assert_eq!(head.params, 32 * 32 + 32 + 2 * 32 + 30522);
    assert!(report
        .composition
        .notes
        .iter()
        .any(|n| n.contains("decoder LM head")));
    let got = read_tensors(&out.path().join("model.safetensors"));
    let want = read_tensors(&model_dir("bert2bert").join("model.safetensors"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want {
        if name.starts_with("decoder.cls.") || is_new(name) {
            assert_initialised(name, &got[name], 2);
        } else {
            assert!(got[name].data == w.data, "{name}");
        }
    }
    Engine::load(out.path(), &EngineOptions::default()).unwrap();
}

#[test]
fn unused_source_tensors_are_reported() {
    // bert2bert cut with the encoder's pooler copied into the decoder source too: a
    // BertForPreTraining-like decoder whose pooler BertLMHeadModel does not use.
    let s = cut("bert2bert", PRETRAINED);
    let mut dec = read_tensors(&s.decoder.join("model.safetensors"));
    let enc = read_tensors(&s.encoder.join("model.safetensors"));
    for n in ["pooler.dense.weight", "pooler.dense.bias"] {
        dec.insert(format!("bert.{n}"), enc[n].clone());
    }
    write_tensors(&s.decoder.join("model.safetensors"), &dec);
    let comp = warmstart::compose(&options(&s, false)).unwrap();
    let unused: Vec<&String> = comp.unused.iter().flat_map(|(_, n)| n).collect();
    assert_eq!(
        unused,
        ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    );
}

fn random(spec: &str) -> SourceSpec {
    spec.parse().unwrap()
}

#[test]
fn random_sides_are_seeded_initialised_and_servable() {
    let mut opts = Options::new(random("random:bert:tiny"), random("random:gpt2:tiny"));
    opts.seed = 7;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let report = warmstart::warmstart(&opts, a.path(), false).unwrap();
    assert_eq!(report.table().total().random, report.table().total().params);
    warmstart::warmstart(&opts, b.path(), false).unwrap();
    opts.seed = 8;
    warmstart::warmstart(&opts, c.path(), false).unwrap();
    let bytes = |d: &tempfile::TempDir| std::fs::read(d.path().join("model.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&b), "same seed, same weights");
    assert!(bytes(&a) != bytes(&c), "another seed, other weights");

    // The random BERT gets bert-base-uncased's vocabulary; the GPT-2 decoder borrows it.
    let cfg = read_json(&a.path().join("config.json"));
    assert_eq!(cfg["encoder"]["vocab_size"], 30522);
    assert_eq!(cfg["decoder"]["vocab_size"], 30522);
    assert_eq!(cfg["decoder"]["n_embd"], 32);
    assert_eq!(cfg["decoder"]["is_decoder"], true);
    assert_eq!(cfg["decoder"]["add_cross_attention"], true);
    assert_eq!(cfg["encoder"]["is_decoder"], false);
    assert_eq!(
        (
            cfg["decoder_start_token_id"].as_u64(),
            cfg["eos_token_id"].as_u64(),
            cfg["pad_token_id"].as_u64()
        ),
        (Some(101), Some(102), Some(0))
    );
    assert!(!a.path().join("decoder_tokenizer").exists());

    let t = read_tensors(&a.path().join("model.safetensors"));
    let word = t["encoder.embeddings.word_embeddings.weight"].f32s();
    assert!(word[..32].iter().all(|&x| x == 0.0), "padding row is zero");
    assert!((std_dev(&word[32..]) - 0.02).abs() < 0.001);
    assert!(t["encoder.embeddings.LayerNorm.weight"]
        .f32s()
        .iter()
        .all(|&x| x == 1.0));
    assert!(t["decoder.transformer.h.0.mlp.c_fc.bias"]
        .f32s()
        .iter()
        .all(|&x| x == 0.0));
    let c_proj = t["decoder.transformer.h.1.mlp.c_proj.weight"].f32s();
    assert!(
        (std_dev(&c_proj) - 0.01).abs() < 0.001,
        "GPT-2 scaled residual init"
    );
    assert!(!t.contains_key("decoder.lm_head.weight"), "tied to wte");

    let engine = Engine::load(a.path(), &EngineOptions::default()).unwrap();
    let cfg = engine.defaults().clone();
    let res = engine.generate_texts(&["Hello world."], &cfg).unwrap();
    assert!(res[0].as_ref().unwrap()[0].hypothesis.ids.len() > 1);

    // Overwriting needs --force.
    let err = warmstart::warmstart(&opts, a.path(), false).err().unwrap();
    assert!(format!("{err:#}").contains("--force"), "{err:#}");
    warmstart::warmstart(&opts, a.path(), true).unwrap();
}

#[test]
fn a_random_side_borrows_the_checkpoint_sides_tokenizer() {
    // Rnd2GPT2: a random BERT encoder reads GPT-2's vocabulary.
    let s = cut("bert2gpt2", PRETRAINED);
    let opts = Options::new(
        random("random:bert:tiny"),
        SourceSpec::Checkpoint(s.decoder.clone()),
    );
    let out = tempfile::tempdir().unwrap();
    let report = warmstart::warmstart(&opts, out.path(), false).unwrap();
    let cfg = read_json(&out.path().join("config.json"));
    assert_eq!(cfg["encoder"]["vocab_size"], 50257);
    // GPT-2's tokenizer has no pad token: BertConfig's default stays, as in transformers.
    assert_eq!(cfg["encoder"]["pad_token_id"], 0);
    assert_eq!(cfg["decoder_start_token_id"], 50256);
    assert!(!out.path().join("decoder_tokenizer").exists());
    assert!(out.path().join("vocab.json").is_file());
    let t = report.table();
    assert_eq!(
        t.row(Component::EncoderEmbeddings).random,
        t.row(Component::EncoderEmbeddings).params
    );
    assert_eq!(t.row(Component::DecoderSelfAttention).random, 0);
    Engine::load(out.path(), &EngineOptions::default()).unwrap();
}

#[test]
fn tying_needs_matching_stacks() {
    let s = cut("bert2gpt2", PRETRAINED);
    let mut opts = options(&s, true);
    let err = warmstart::compose(&opts).err().unwrap();
    assert!(format!("{err:#}").contains("same family"), "{err:#}");
    opts.tie_encoder_decoder = false;
    opts.encoder = random("random:gpt2:tiny");
    let err = warmstart::compose(&opts).err().unwrap();
    assert!(
        format!("{err:#}").contains("GPT-2 can't be the encoder"),
        "{err:#}"
    );
    // An EncoderDecoderModel is not a standalone source.
    opts.encoder = SourceSpec::Checkpoint(model_dir("bert2bert"));
    let err = warmstart::compose(&opts).err().unwrap();
    assert!(
        format!("{err:#}").contains("already an EncoderDecoderModel"),
        "{err:#}"
    );
}

fn encdec(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_encdec"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_prints_the_bert2bert_base_bookkeeping_and_writes_a_model() {
    let out = encdec(&[
        "warmstart",
        "--encoder",
        "random:bert:base",
        "--decoder",
        "random:bert:base",
        "--dry-run",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "247,363,386",
        "28,366,848",
        "decoder cross-attention (12 new blocks)",
        "\"decoder_start_token_id\": 101",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }

    let s = cut("robertashare", PRETRAINED);
    let dir = tempfile::tempdir().unwrap();
    let out = encdec(&[
        "warmstart",
        "--encoder",
        s.encoder.to_str().unwrap(),
        "--decoder",
        s.decoder.to_str().unwrap(),
        "--tie-encoder-decoder",
        "--seed",
        "3",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[shared w/ encoder]"), "{text}");
    let cfg = read_json(&dir.path().join("config.json"));
    assert_eq!(cfg["tie_encoder_decoder"], true);
    Engine::load(dir.path(), &EngineOptions::default()).unwrap();
}
