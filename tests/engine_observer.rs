//! The engine's hooks into a running batch: an input is reported as soon as it finishes
//! (so a server can answer it early), and a cancelled input leaves the batch.

mod common;

use std::cell::RefCell;

use common::*;
use encdec::engine::{Engine, EngineOptions};
use encdec::generation::{Hypothesis, Outcome, StepObserver};

#[derive(Default)]
struct Recorder {
    steps: RefCell<usize>,
    /// (input, step at which it was reported, hypotheses)
    finished: RefCell<Vec<(usize, usize, Vec<Hypothesis>)>>,
    cancel_input: Option<usize>,
}

impl StepObserver for Recorder {
    fn is_cancelled(&self, input: usize) -> bool {
        self.cancel_input == Some(input)
    }
    fn on_step(&self, _rows: usize, _elapsed: std::time::Duration) {
        *self.steps.borrow_mut() += 1;
    }
    fn on_finished(&self, input: usize, hypotheses: &[Hypothesis]) {
        let step = *self.steps.borrow();
        self.finished
            .borrow_mut()
            .push((input, step, hypotheses.to_vec()));
    }
}

fn engine_and_inputs() -> (Engine, Vec<Vec<u32>>, encdec::generation::GenerationConfig) {
    let engine = Engine::load(&model_dir("bert2gpt2"), &EngineOptions::default()).unwrap();
    let greedy = param_sets("bert2gpt2")
        .into_iter()
        .find(|s| s.name == "greedy")
        .unwrap();
    let cfg = engine
        .defaults()
        .with_overrides(&greedy.overrides())
        .unwrap();
    // In transformers' outputs "short" ends after one token and "numbers" runs to max_length.
    let text = |id: &str| {
        greedy.lines.iter().find(|l| l["id"] == id).unwrap()["input"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let inputs = vec![
        engine.encode(&text("numbers"), None).unwrap(),
        engine.encode(&text("short"), None).unwrap(),
    ];
    (engine, inputs, cfg)
}

#[test]
fn each_input_is_reported_when_it_finishes_not_when_the_batch_does() {
    let (engine, inputs, cfg) = engine_and_inputs();
    let recorder = Recorder::default();
    let outcomes = engine.generate_ids(&inputs, &cfg, &recorder).unwrap();
    let finished = recorder.finished.borrow();
    assert_eq!(finished.len(), 2);
    let (first_input, first_step, first_hyps) = &finished[0];
    assert_eq!(*first_input, 1, "the short input finishes first");
    assert_eq!(*first_step, 1, "reported right after its only step");
    assert!(*recorder.steps.borrow() > 1, "the batch went on");
    // What was reported is exactly what the call returns.
    assert_eq!(outcomes[1], Outcome::Finished(first_hyps.clone()));
    assert_eq!(outcomes[0], Outcome::Finished(finished[1].2.clone()));
}

#[test]
fn a_cancelled_input_leaves_the_batch_and_the_others_are_unchanged() {
    let (engine, inputs, cfg) = engine_and_inputs();
    let alone = engine
        .generate_ids(&inputs[1..], &cfg, &Recorder::default())
        .unwrap();
    let recorder = Recorder {
        cancel_input: Some(0),
        ..Default::default()
    };
    let outcomes = engine.generate_ids(&inputs, &cfg, &recorder).unwrap();
    assert_eq!(outcomes[0], Outcome::Cancelled);
    let (Outcome::Finished(batched), Outcome::Finished(single)) = (&outcomes[1], &alone[0]) else {
        panic!("the short input should finish: {:?}", outcomes[1]);
    };
    assert_eq!(batched[0].ids, single[0].ids);
    assert!((batched[0].score - single[0].score).abs() < 1e-4);
    assert_eq!(
        *recorder.steps.borrow(),
        1,
        "nothing left to run after step 1"
    );
}
