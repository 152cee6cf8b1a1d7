//! Token-for-token parity with transformers 5.24 `generate()` on the seven fixture
//! families × every recorded parameter set (greedy, CNN/DM-style beam, beam with
//! several returned sequences; batch 1 and batch 8 with padding).

mod common;

use common::*;
use encdec::engine::{Engine, EngineOptions, InputFailure};
use encdec::tokenizer::InputError;

fn check_model(model: &str) {
    check_against_fixtures(model, &model_dir(model), None);
}

#[test]
fn bert2bert() {
    check_model("bert2bert");
}

#[test]
fn bertshare() {
    check_model("bertshare");
}

#[test]
fn roberta2roberta() {
    check_model("roberta2roberta");
}

#[test]
fn robertashare() {
    check_model("robertashare");
}

#[test]
fn bert2gpt2() {
    check_model("bert2gpt2");
}

#[test]
fn roberta2gpt2() {
    check_model("roberta2gpt2");
}

#[test]
fn bertgeneration2bertgeneration() {
    check_model("bertgeneration2bertgeneration");
}

#[test]
fn generate_texts_reports_empty_inputs_per_input() {
    let engine = Engine::load(
        &model_dir("bertgeneration2bertgeneration"),
        &EngineOptions::default(),
    )
    .unwrap();
    let cfg = engine.defaults().clone();
    let out = engine
        .generate_texts(&["   ", "Hello world."], &cfg)
        .unwrap();
    assert_eq!(out[0], Err(InputFailure::Input(InputError::Empty)));
    assert!(out[1].is_ok());
}
