//! Loader edge cases: PyTorch `.bin` weights, legacy-only tokenizer files, the tied
//! (transformers 4.x) layout, sharded safetensors, stored half precision, and clear
//! errors for missing or mis-shaped tensors.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use encdec::engine::{Engine, EngineOptions};

fn load_tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

/// A copy of fixture `model` in a temp dir with the weights replaced by `tensors`.
fn copy_with_weights(model: &str, tensors: &HashMap<String, Tensor>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir(model), tmp.path(), &["model.safetensors"]);
    candle_core::safetensors::save(tensors, tmp.path().join("model.safetensors")).unwrap();
    tmp
}

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target, skip);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn load_error(dir: &Path) -> String {
    match Engine::load(dir, &EngineOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// The shape of the google hub checkpoints: `pytorch_model.bin` only, legacy tokenizer
/// files only (no tokenizer.json), shared encoder/decoder tensors stored once.
#[test]
fn pytorch_bin_with_legacy_tokenizer_and_tied_layout_matches_transformers() {
    let dir = fixtures().join("models_extra/robertashare_bin");
    assert!(!dir.join("tokenizer.json").exists());
    assert!(!dir.join("model.safetensors").exists());
    check_against_fixtures("robertashare", &dir, None);
}

#[test]
fn legacy_tokenizer_files_give_the_same_outputs_as_tokenizer_json() {
    // bertgeneration's fixture spiece.model has stale protobuf lengths (see
    // tests/tokenizer_legacy.rs, which tests a repaired copy), so it is not used here.
    for model in ["bert2bert", "roberta2gpt2", "bert2gpt2"] {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&model_dir(model), tmp.path(), &["tokenizer.json"]);
        check_against_fixtures(model, tmp.path(), Some(&["greedy"]));
    }
}

#[test]
fn sharded_safetensors_load_like_a_single_file() {
    let tensors = load_tensors(&model_dir("bert2gpt2"));
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("bert2gpt2"), tmp.path(), &["model.safetensors"]);
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (name, t) in tensors {
        let (shard, file) = if name.starts_with("encoder.") {
            (&mut a, "model-00001-of-00002.safetensors")
        } else {
            (&mut b, "model-00002-of-00002.safetensors")
        };
        weight_map.insert(name.clone(), file.into());
        shard.insert(name, t);
    }
    candle_core::safetensors::save(&a, tmp.path().join("model-00001-of-00002.safetensors"))
        .unwrap();
    candle_core::safetensors::save(&b, tmp.path().join("model-00002-of-00002.safetensors"))
        .unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    check_against_fixtures("bert2gpt2", tmp.path(), Some(&["greedy"]));
}

#[test]
fn half_precision_weights_are_converted_to_the_run_dtype() {
    let tensors: HashMap<String, Tensor> = load_tensors(&model_dir("roberta2roberta"))
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F16).unwrap()))
        .collect();
    let tmp = copy_with_weights("roberta2roberta", &tensors);
    let engine = Engine::load(tmp.path(), &EngineOptions::default()).unwrap();
    let cfg = engine.defaults().clone();
    let out = engine.generate_texts(&["Hello world."], &cfg).unwrap();
    let hyps = out[0].as_ref().unwrap();
    assert_eq!(hyps[0].hypothesis.ids[0], cfg.decoder_start_token_id);
    assert!(hyps[0].hypothesis.ids.len() > 1);
}

#[test]
fn a_missing_tensor_is_a_load_error_naming_it() {
    let missing = "decoder.bert.encoder.layer.1.crossattention.self.query.weight";
    let mut tensors = load_tensors(&model_dir("bert2bert"));
    assert!(tensors.remove(missing).is_some());
    let tmp = copy_with_weights("bert2bert", &tensors);
    let err = load_error(tmp.path());
    assert!(err.contains(missing), "{err}");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_a_load_error_naming_it() {
    let name = "encoder.encoder.layer.0.intermediate.dense.weight";
    let mut tensors = load_tensors(&model_dir("bert2bert"));
    tensors.insert(
        name.into(),
        Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap(),
    );
    let tmp = copy_with_weights("bert2bert", &tensors);
    let err = load_error(tmp.path());
    assert!(err.contains(name) && err.contains("[3, 5]"), "{err}");
}

#[test]
fn a_tied_checkpoint_without_the_flag_does_not_load_a_random_encoder() {
    // bertshare stores the encoder only under decoder.bert.*; without
    // tie_encoder_decoder the encoder tensors are missing, which must be an error.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("bertshare"), tmp.path(), &[]);
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["tie_encoder_decoder"] = serde_json::Value::Bool(false);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load_error(tmp.path());
    assert!(err.contains("encoder.embeddings"), "{err}");
}

#[test]
fn a_standalone_config_is_rejected_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("bert2bert"), tmp.path(), &[]);
    let cfg_path = tmp.path().join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    std::fs::write(&cfg_path, cfg["encoder"].to_string()).unwrap();
    let err = load_error(tmp.path());
    assert!(err.contains("not an EncoderDecoderModel"), "{err}");
}

#[test]
fn no_weights_at_all_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&model_dir("bert2bert"), tmp.path(), &["model.safetensors"]);
    let err = load_error(tmp.path());
    assert!(err.contains("no weights"), "{err}");
}
