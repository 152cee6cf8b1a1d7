//! Token-for-token parity with transformers 5.24 `generate()` on the seven fixture
//! families × every recorded parameter set (greedy, CNN/DM-style beam, beam with
//! several returned sequences; batch 1 and batch 8 with padding).

mod common;

use common::*;
use encdec::engine::{Engine, EngineOptions, InputFailure};
use encdec::generation::{NoObserver, Outcome};
use encdec::tokenizer::InputError;

const SCORE_TOL: f64 = 1e-4;

fn check_model(model: &str) {
    let engine = Engine::load(&model_dir(model), &EngineOptions::default())
        .unwrap_or_else(|e| panic!("loading {model}: {e:#}"));
    let mut failures = Vec::new();
    let mut checked = 0;
    for set in param_sets(model) {
        let cfg = engine
            .defaults()
            .with_overrides(&set.overrides())
            .unwrap();
        // The checkpoint's resolved special ids must be the ones transformers used.
        assert_eq!(
            cfg.decoder_start_token_id as u64,
            set.kwargs["decoder_start_token_id"].as_u64().unwrap(),
            "{model}: decoder_start_token_id"
        );
        assert_eq!(
            cfg.eos_token_ids,
            vec![set.kwargs["eos_token_id"].as_u64().unwrap() as u32],
            "{model}: eos"
        );
        for chunk in set.lines.chunks(set.batch_size) {
            let mut batch = Vec::new();
            let mut positions = Vec::new();
            for (i, line) in chunk.iter().enumerate() {
                let text = line["input"].as_str().unwrap();
                let encoded = engine.encode(text, None);
                if line.get("error").is_some() {
                    assert_eq!(encoded, Err(InputError::Empty), "{model}: {}", line["id"]);
                    continue;
                }
                let encoded = encoded.unwrap();
                assert_eq!(encoded, ids(&line["input_ids"]), "{model}: input ids of {}", line["id"]);
                batch.push(encoded);
                positions.push(i);
            }
            let outcomes = engine.generate_ids(&batch, &cfg, &NoObserver).unwrap();
            for (outcome, &i) in outcomes.into_iter().zip(&positions) {
                let line = &chunk[i];
                let id = format!("{}/{}/{}", model, set.name, line["id"].as_str().unwrap());
                let Outcome::Finished(hyps) = outcome else {
                    panic!("{id}: cancelled")
                };
                let rows = line["output_ids"].as_array().unwrap();
                assert_eq!(hyps.len(), rows.len(), "{id}: number of sequences");
                for (r, (hyp, row)) in hyps.iter().zip(rows).enumerate() {
                    checked += 1;
                    let want = trim_row(&ids(row), &cfg.eos_token_ids);
                    if hyp.ids != want {
                        failures.push(format!("{id}[{r}]: ids\n  got  {:?}\n  want {:?}", hyp.ids, want));
                        continue;
                    }
                    let want_score = line["sequence_scores"][r].as_f64().unwrap();
                    if (hyp.score as f64 - want_score).abs() > SCORE_TOL {
                        failures.push(format!("{id}[{r}]: score {} vs {}", hyp.score, want_score));
                    }
                    let want_lp = floats(&line["token_logprobs"][r]);
                    for (k, (g, w)) in hyp.token_logprobs.iter().zip(&want_lp).enumerate() {
                        if (*g as f64 - w).abs() > SCORE_TOL {
                            failures.push(format!("{id}[{r}]: token_logprob {k}: {g} vs {w}"));
                            break;
                        }
                    }
                    let text = engine.decode(&hyp.ids).unwrap();
                    let want_text = line["output_text"][r].as_str().unwrap();
                    if text != want_text {
                        failures.push(format!("{id}[{r}]: text {text:?} vs {want_text:?}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} sequences differ from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 0);
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
    let out = engine.generate_texts(&["   ", "Hello world."], &cfg).unwrap();
    assert_eq!(out[0], Err(InputFailure::Input(InputError::Empty)));
    assert!(out[1].is_ok());
}
