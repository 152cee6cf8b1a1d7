//! `encdec finetune` against transformers + torch: per-step loss of the same training
//! run (dropout off, batches in file order, AdamW + linear schedule + clipping), and
//! `generate()` of the trained weights, from `tests/fixtures/finetune/*.json`
//! (made by `scripts/finetune_reference.py`; see that folder's README).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use encdec::engine::{Engine, EngineOptions};
use encdec::eval::data::{self, DataSpec};
use encdec::generation::{NoObserver, Outcome};
use encdec::task::Task;
use encdec::train::optim::AdamWConfig;
use encdec::train::{FinetuneOptions, Length, LogRow, Trainer};
use serde_json::Value;

fn finetune_dir() -> PathBuf {
    fixtures().join("finetune")
}

fn reference(name: &str) -> Value {
    let path = finetune_dir().join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The options the reference was made with.
fn options(reference: &Value, model: &Path, out: &Path) -> FinetuneOptions {
    let o = &reference["options"];
    let n = |k: &str| o[k].as_u64().unwrap() as usize;
    let train = data::load(&DataSpec {
        data: &finetune_dir().join("train.tsv"),
        reference: None,
        format: None,
        limit: None,
    })
    .unwrap()
    .examples;
    FinetuneOptions {
        model: model.to_path_buf(),
        out: out.to_path_buf(),
        task: Task::Split,
        train,
        eval: Vec::new(),
        max_input_tokens: n("max_input_tokens"),
        max_target_tokens: n("max_target_tokens"),
        optimizer: AdamWConfig {
            lr: o["lr"].as_f64().unwrap(),
            weight_decay: o["weight_decay"].as_f64().unwrap(),
            ..AdamWConfig::default()
        },
        warmup_steps: n("warmup_steps"),
        max_grad_norm: 1.0,
        batch_size: n("batch_size"),
        grad_accum: n("grad_accum"),
        length: Length::Steps(n("steps")),
        seed: 0,
        shuffle: false,
        dropout: false,
        eval_every: None,
        eval_batch_size: 8,
        save_every: None,
        resume: None,
        engine: EngineOptions::default(),
    }
}

fn train_losses(opts: FinetuneOptions) -> Vec<f64> {
    let mut losses = Vec::new();
    Trainer::new(opts)
        .unwrap()
        .run(|row| {
            if let LogRow::Train { loss, .. } = row {
                losses.push(*loss);
            }
        })
        .unwrap();
    losses
}

fn check_family(fixture: &str, model: &str) {
    let reference = reference(fixture);
    let out = tempfile::tempdir().unwrap();
    let losses = train_losses(options(&reference, &model_dir(model), out.path()));
    let expected: Vec<f64> = reference["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), expected.len(), "{fixture}: steps");
    for (step, (got, want)) in losses.iter().zip(&expected).enumerate() {
        let rel = (got - want).abs() / want.abs();
        assert!(
            rel < 1e-4,
            "{fixture}: step {} loss {got} vs transformers {want} (rel {rel:.2e})",
            step + 1
        );
    }
    // The saved checkpoint generates what the torch-trained model generates.
    let engine = Engine::load(out.path(), &EngineOptions::default()).unwrap();
    let eos = engine.defaults().eos_token_ids.clone();
    for case in reference["generate"].as_array().unwrap() {
        let input = ids(&case["input_ids"]);
        let outcome = engine
            .generate_ids(&[input], engine.defaults(), &NoObserver)
            .unwrap();
        let Outcome::Finished(hyps) = &outcome[0] else {
            panic!("cancelled")
        };
        assert_eq!(
            trim_row(&hyps[0].ids, &eos),
            trim_row(&ids(&case["output_ids"]), &eos),
            "{fixture}: generate after training"
        );
    }
}

#[test]
fn bert_families_train_like_transformers() {
    for model in ["bert2bert", "bertshare", "roberta2roberta", "robertashare"] {
        check_family(model, model);
    }
}

#[test]
fn gpt2_and_bertgeneration_decoders_train_like_transformers() {
    for model in ["bert2gpt2", "roberta2gpt2", "bertgeneration2bertgeneration"] {
        check_family(model, model);
    }
}

#[test]
fn gradient_accumulation_averages_over_the_steps_tokens() {
    check_family("bert2gpt2-accum2", "bert2gpt2");
}

#[test]
fn an_epochs_last_step_takes_the_micro_batches_left() {
    // 24 examples in batches of 5 are 5 micro-batches an epoch: with 2 per step, every
    // third step has one, and the 7 steps cross two epoch boundaries.
    check_family("bert2bert-epochs", "bert2bert");
    let reference = reference("bert2bert-epochs");
    let out = tempfile::tempdir().unwrap();
    let mut opts = options(&reference, &model_dir("bert2bert"), out.path());
    opts.length = Length::Epochs(2);
    assert_eq!(Trainer::new(opts).unwrap().total_steps(), 6);
}

#[test]
fn resuming_from_a_checkpoint_continues_the_same_run() {
    let reference = reference("bert2bert");
    let model = model_dir("bert2bert");
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = train_losses(options(&reference, &model, whole_dir.path()));

    // A run that saved every 5 steps, resumed from its step-5 checkpoint elsewhere.
    let first_dir = tempfile::tempdir().unwrap();
    let mut first = options(&reference, &model, first_dir.path());
    first.save_every = Some(5);
    assert_eq!(train_losses(first), whole, "saving changes nothing");
    let out = tempfile::tempdir().unwrap();
    let mut second = options(&reference, &model, out.path());
    second.resume = Some(first_dir.path().join("checkpoint-5"));
    let resumed = train_losses(second);
    assert_eq!(resumed.len(), whole.len() - 5);
    for (i, (a, b)) in resumed.iter().zip(&whole[5..]).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs(),
            "step {}: {a} vs {b}",
            i + 6
        );
    }
    let log = std::fs::read_to_string(out.path().join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 15, "the resumed run logs steps 6..=20");
}

#[test]
fn finetune_cli_trains_evaluates_and_refuses_bad_input() {
    let out = tempfile::tempdir().unwrap();
    let model = model_dir("bert2bert");
    let data = finetune_dir().join("train.tsv");
    let (m, d, o) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        out.path().to_str().unwrap(),
    );
    let run = run_encdec(
        &[
            "finetune",
            "--model",
            m,
            "--task",
            "split",
            "--data",
            d,
            "--eval-data",
            d,
            "--eval-limit",
            "4",
            "--limit",
            "8",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--eval-every",
            "2",
            "--save-every",
            "2",
            "--out",
            o,
        ],
        "",
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let log = std::fs::read_to_string(out.path().join("train_log.jsonl")).unwrap();
    let rows: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let evals: Vec<&Value> = rows.iter().filter(|r| r.get("metrics").is_some()).collect();
    assert_eq!(evals.len(), 2, "at step 2 and at the end: {log}");
    assert!(evals[0]["metrics"]["sari"].as_f64().is_some(), "{log}");
    assert!(out.path().join("checkpoint-2/model.safetensors").is_file());
    assert!(out.path().join("model.safetensors").is_file());
    assert!(out.path().join("tokenizer.json").is_file());
    // The result serves: `generate` on the trained directory.
    let gen = run_encdec(&["generate", "--model", o], "{\"text\": \"a b c\"}\n");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );

    let missing = run_encdec(
        &[
            "finetune",
            "--model",
            m,
            "--task",
            "split",
            "--data",
            "/nonexistent.tsv",
            "--out",
            o,
        ],
        "",
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("nonexistent") && !err.contains("panicked"),
        "{err}"
    );
}
