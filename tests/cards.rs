//! The google checkpoints used as their model cards say, with the settings of
//! `config/default.toml`: tiny checkpoints of the same layout (tests/fixtures/cards/, made
//! by scripts/make_card_fixtures.py) against transformers' output for the cards' calls.

mod common;

use std::path::{Path, PathBuf};

use encdec::engine::{Engine, EngineOptions};
use encdec::generation::{NoObserver, Outcome};
use encdec::server::config::{Config, ModelConfig};
use encdec::tokenizer::{InputError, TokenizerSettings};
use serde_json::Value;

fn cards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cards")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(cards().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The entry of config/default.toml serving `source`.
fn default_config_model(source: &str) -> ModelConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let config = Config::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config.validate().unwrap();
    config
        .models
        .into_iter()
        .find(|m| m.source == source)
        .unwrap_or_else(|| panic!("config/default.toml serves no {source}"))
}

fn load(dir: &str, tokenizer: &TokenizerSettings) -> Engine {
    let opts = EngineOptions {
        tokenizer: tokenizer.clone(),
        ..Default::default()
    };
    Engine::load(&cards().join(dir), &opts).unwrap_or_else(|e| panic!("{dir}: {e:#}"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an id list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Greedy generation with the checkpoint's defaults (the cards' `model.generate(input_ids)`).
fn generate(engine: &Engine, input: Vec<u32>) -> Vec<u32> {
    let outcomes = engine
        .generate_ids(&[input], engine.defaults(), &NoObserver)
        .unwrap();
    match outcomes.as_slice() {
        [Outcome::Finished(hyps)] => hyps[0].ids.clone(),
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// Each case: the model entry's preprocessing and tokenizer settings give transformers'
/// input ids, generate gives its output ids, decoding (special tokens skipped) its text.
fn check_cases(engine: &Engine, model: &ModelConfig, cases: &Value, what: &str) {
    let cases = cases.as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let input = case["input"].as_str().unwrap();
        let text = model.preprocess.apply(input);
        if let Some(err) = case.get("error") {
            // transformers raises for this input; so must we, per input, without panicking.
            match engine.encode(&text, None) {
                Err(InputError::Tokenizer(msg)) => assert!(!msg.is_empty()),
                other => panic!("{what} {input:?}: transformers raised {err}, we gave {other:?}"),
            }
            continue;
        }
        let got = engine.encode(&text, None).unwrap();
        assert_eq!(got, ids(&case["input_ids"]), "{what} {input:?}: input ids");
        let out = generate(engine, got);
        assert_eq!(
            out,
            ids(&case["output_ids"]),
            "{what} {input:?}: output ids"
        );
        assert_eq!(
            engine.decode(&out).unwrap(),
            case["output_text"].as_str().unwrap(),
            "{what} {input:?}: text"
        );
    }
}

#[test]
fn wmt_card_with_the_default_config() {
    let exp = &expected()["wmt"];
    for source in [
        "google/bert2bert_L-24_wmt_en_de",
        "google/bert2bert_L-24_wmt_de_en",
    ] {
        let model = default_config_model(source);
        // The card: from_pretrained(id, pad_token="<pad>", eos_token="</s>",
        // bos_token="<s>") and tokenizer(text, add_special_tokens=False).
        assert_eq!(model.tokenizer.add_special_tokens, Some(false), "{source}");
        let engine = load("wmt", &model.tokenizer);
        check_cases(&engine, &model, &exp["cases"], source);
    }
}

#[test]
fn wmt_layout_adds_the_missing_special_tokens() {
    // vocab.txt has no [CLS]/[SEP]: transformers adds them (and [UNK], [MASK]) after the
    // vocabulary, and `tokenizer(text)` wraps inputs in them.
    let exp = &expected()["wmt"];
    let mut card = default_config_model("google/bert2bert_L-24_wmt_en_de").tokenizer;
    card.add_special_tokens = None;
    let engine = load("wmt", &card);
    for case in exp["cases"].as_array().unwrap() {
        let Some(want) = case.get("input_ids_with_special_tokens") else {
            continue;
        };
        let input = case["input"].as_str().unwrap();
        // Tokenizer level: the added ids are beyond this model's embeddings.
        let got = engine.tokenizers().encode(input, None).unwrap();
        assert_eq!(got, ids(want), "{input:?}");
    }
}

#[test]
fn wmt_special_tokens_are_skipped_when_decoding() {
    let exp = &expected()["wmt"];
    let model = default_config_model("google/bert2bert_L-24_wmt_en_de");
    let engine = load("wmt", &model.tokenizer);
    let specials = ids(&exp["all_special_ids"]);
    let case = &exp["cases"][0];
    let out = ids(&case["output_ids"]);
    // Every special token of transformers' tokenizer, spliced in, leaves the text as is.
    let mut spliced = specials.clone();
    spliced.extend(&out);
    spliced.extend(&specials);
    assert_eq!(
        engine.decode(&spliced).unwrap(),
        case["output_text"].as_str().unwrap()
    );
}

#[test]
fn wikisplit_card_with_the_default_config() {
    // The card: tokenizer(tokenizer.bos_token + text + tokenizer.eos_token).
    let model = default_config_model("google/roberta2roberta_L-24_wikisplit");
    assert_eq!(model.preprocess.apply("x"), "<s>x</s>");
    let engine = load("spiece", &model.tokenizer);
    check_cases(
        &engine,
        &model,
        &expected()["spiece"]["wikisplit"],
        "wikisplit",
    );
}

#[test]
fn discofuse_card_with_the_default_config() {
    // `"` written as a backtick, as in the model's training data.
    let model = default_config_model("google/roberta2roberta_L-24_discofuse");
    assert_eq!(model.preprocess.apply(r#"a "b""#), "a `b`");
    let engine = load("spiece", &model.tokenizer);
    check_cases(
        &engine,
        &model,
        &expected()["spiece"]["discofuse"],
        "discofuse",
    );
}

#[test]
fn every_default_model_names_a_revision() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    let config = Config::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config.validate().unwrap();
    for m in &config.models {
        assert!(
            m.revision.as_deref().is_some_and(|r| !r.is_empty()),
            "{}: no revision",
            m.name
        );
    }
}

#[test]
fn settings_override_the_tokenizer_files() {
    // from_pretrained(id, sep_token="<sep>", cls_token="<s>"): "<sep>" is not in vocab.txt
    // and becomes a special token after it; do_lower_case=False keeps the input's case.
    let exp = &expected()["wmt"];
    let mut over = TokenizerSettings::default();
    over.set("sep_token=<sep>").unwrap();
    over.set("cls_token=<s>").unwrap();
    let over = load("wmt", &over);
    let mut cased = TokenizerSettings::default();
    cased.set("do_lower_case=false").unwrap();
    cased.set("add_special_tokens=false").unwrap();
    let cased = load("wmt", &cased);
    for case in exp["cases"].as_array().unwrap() {
        let Some(want) = case.get("input_ids_sep_cls_override") else {
            continue;
        };
        let input = case["input"].as_str().unwrap();
        let got = over.tokenizers().encode(input, None).unwrap();
        assert_eq!(got, ids(want), "{input:?}");
        let want = ids(&case["input_ids_do_lower_case_false"]);
        assert_eq!(cased.encode(input, None).unwrap(), want, "{input:?}");
    }
    // The override is special: skipped when decoding.
    let du_ids = over.tokenizers().encode("du", None).unwrap();
    let (du, sep) = (du_ids[1], du_ids[2]);
    assert_eq!(over.decode(&[du, sep]).unwrap(), "du");
}

#[test]
fn generate_cli_takes_the_card_settings_as_flags() {
    let exp = &expected()["wmt"];
    let case = &exp["cases"][0];
    let line = serde_json::json!({"id": 1, "text": case["input"]}).to_string();
    let model = cards().join("wmt");
    let out = common::run_encdec(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--no-special-tokens",
            "--tokenizer-option",
            "pad_token=<pad>",
            "--tokenizer-option",
            "eos_token=</s>",
            "--tokenizer-option",
            "bos_token=<s>",
        ],
        &line,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&got["ids"][0]), ids(&case["output_ids"]), "{got}");
    assert_eq!(got["texts"][0], case["output_text"]);

    let out = common::run_encdec(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--tokenizer-option",
            "eos=</s>",
        ],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown tokenizer option `eos`"), "{err}");
}

#[test]
fn split_fuse_and_translate_get_a_task_length_when_the_checkpoint_sets_none() {
    use encdec::server::config::{Limits, Task};
    use encdec::server::pool::load_model;
    // The card checkpoints set no max_length: transformers stops at 20 new tokens.
    let dir = cards().join("wmt");
    let src = dir.to_str().unwrap();
    let limits = Limits::default();
    let length = |mc: &ModelConfig| load_model(0, mc, &limits).unwrap().defaults.max_length;
    let card = default_config_model("google/bert2bert_L-24_wmt_en_de").tokenizer;
    let mut summarize = Config::single_model(src, &[Task::Summarize]);
    summarize.tokenizer = card.clone();
    assert_eq!(length(&summarize), 21);
    // Translate's 256 new tokens, within the fixture decoder's 128 positions.
    let mut translate = Config::single_model(src, &[Task::Translate]);
    translate.tokenizer = card.clone();
    assert_eq!(length(&translate), 128);
    let mut split = Config::single_model(src, &[Task::Split]);
    split.tokenizer = card.clone();
    assert_eq!(length(&split), 128);
    // Configurable: the model's own setting wins.
    split.generation.max_new_tokens = Some(5);
    assert_eq!(length(&split), 6);
    // And so does a length the checkpoint sets.
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "pytorch_model.bin", "vocab.txt"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let gen = std::fs::read_to_string(dir.join("generation_config.json")).unwrap();
    let mut gen: Value = serde_json::from_str(&gen).unwrap();
    gen["max_length"] = 40.into();
    std::fs::write(tmp.path().join("generation_config.json"), gen.to_string()).unwrap();
    let mut fuse = Config::single_model(tmp.path().to_str().unwrap(), &[Task::Fuse]);
    fuse.tokenizer = card;
    assert_eq!(length(&fuse), 40);
}

#[test]
fn an_added_token_outside_the_embeddings_is_a_clear_input_error() {
    // Without the card's add_special_tokens=False, [CLS]/[SEP] get ids after vocab.txt,
    // beyond the model's embeddings (an IndexError in transformers).
    let engine = load("wmt", &TokenizerSettings::default());
    match engine.encode("willst du", None) {
        Err(InputError::Tokenizer(msg)) => {
            assert!(msg.contains("outside the encoder's vocabulary"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn spiece_special_tokens_are_skipped_when_decoding() {
    let exp = &expected()["spiece"];
    let model = default_config_model("google/roberta2roberta_L-24_wikisplit");
    let engine = load("spiece", &model.tokenizer);
    let specials: Vec<u32> = ids(&exp["all_special_ids"]);
    let case = &exp["wikisplit"][0];
    let mut spliced = specials.clone();
    spliced.extend(ids(&case["output_ids"]));
    spliced.extend(&specials);
    assert_eq!(
        engine.decode(&spliced).unwrap(),
        case["output_text"].as_str().unwrap()
    );
}

#[test]
fn settings_on_a_tokenizer_json_checkpoint() {
    // transformers 5 applies the same kwargs to a checkpoint shipping tokenizer.json:
    // cls/sep replace the template's, do_lower_case the normalizer's, new tokens are added.
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    for case in expected()["tokenizer_json"].as_array().unwrap() {
        let mut settings = TokenizerSettings::default();
        for (k, v) in case["kwargs"].as_object().unwrap() {
            let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
            settings.set(&format!("{k}={v}")).unwrap();
        }
        let dir = models.join(case["model"].as_str().unwrap());
        let tok = encdec::tokenizer::Tokenizers::load(&dir, None, 512, &settings).unwrap();
        let texts = case["texts"].as_array().unwrap();
        for (text, want) in texts.iter().zip(case["input_ids"].as_array().unwrap()) {
            let text = text.as_str().unwrap();
            let got = tok.encode(text, None).unwrap();
            assert_eq!(got, ids(want), "{} {settings:?} {text:?}", case["model"]);
        }
    }
}

#[test]
fn bad_tokenizer_settings_are_named_in_the_error() {
    let base = "[[models]]\nname = \"m\"\nsource = \"x\"\n[models.tokenizer]\n";
    let err = Config::from_toml_str(&format!("{base}eos = \"</s>\"\n")).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("models[0].tokenizer") && err.contains("eos"),
        "{err}"
    );
    let err = Config::from_toml_str(&format!("{base}add_special_tokens = \"no\"\n")).unwrap_err();
    assert!(format!("{err:#}").contains("add_special_tokens"), "{err:#}");
    let config = Config::from_toml_str(&format!("{base}bos_token = \"\"\n")).unwrap();
    let err = config.validate().unwrap_err();
    assert!(
        format!("{err:#}").contains("models[0].tokenizer.bos_token"),
        "{err:#}"
    );
}
