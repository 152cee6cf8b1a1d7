//! `encdec generate` end to end: the real binary, JSONL in and out.

mod common;

use common::*;

fn run_generate(args: &[&str], stdin: &str) -> std::process::Output {
    run_encdec(&[&["generate"], args].concat(), stdin)
}

#[test]
fn beam_search_output_matches_transformers_line_for_line() {
    let model = model_dir("bert2bert");
    let inputs = std::fs::read_to_string(fixtures().join("inputs.jsonl")).unwrap();
    let out = run_generate(
        &[
            "--model",
            model.to_str().unwrap(),
            "--batch-size",
            "8",
            "--num-beams",
            "4",
            "--length-penalty",
            "2.0",
            "--no-repeat-ngram-size",
            "3",
            "--early-stopping",
            "true",
            "--min-length",
            "5",
            "--max-length",
            "32",
        ],
        &inputs,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = param_sets("bert2bert")
        .into_iter()
        .find(|s| s.name == "cnndm")
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), expected.lines.len());
    for (got, want) in lines.iter().zip(&expected.lines) {
        assert_eq!(got["id"], want["id"]);
        let want_ids = trim_row(&ids(&want["output_ids"][0]), &[102]);
        assert_eq!(ids(&got["ids"][0]), want_ids, "{}", want["id"]);
        assert_eq!(got["texts"][0], want["output_text"][0]);
        let score = got["scores"][0].as_f64().unwrap();
        assert!((score - want["sequence_scores"][0].as_f64().unwrap()).abs() < 1e-4);
    }
}

#[test]
fn per_line_errors_do_not_stop_the_run() {
    let model = model_dir("bertgeneration2bertgeneration");
    let out = run_generate(
        &["--model", model.to_str().unwrap(), "--max-new-tokens", "3"],
        "{\"id\": 1, \"text\": \"   \"}\nnot json\n{\"id\": 3, \"text\": \"Hello world.\"}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["error"].as_str().unwrap().contains("no tokens"));
    assert!(lines[1]["error"].as_str().unwrap().contains("line 2"));
    assert_eq!(lines[2]["id"], 3);
    assert_eq!(lines[2]["ids"][0].as_array().unwrap().len(), 4);
}

#[test]
fn invalid_parameters_fail_with_a_clear_message() {
    let model = model_dir("bert2bert");
    let out = run_generate(
        &[
            "--model",
            model.to_str().unwrap(),
            "--num-beams",
            "2",
            "--num-return-sequences",
            "3",
        ],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("num_return_sequences"), "{err}");

    let out = run_generate(
        &[
            "--model",
            model.to_str().unwrap(),
            "--early-stopping",
            "maybe",
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("early"));

    let out = run_generate(&["--model", "/nonexistent/model"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}

/// `--dtype int8` and `bf16` run from the command line and say so in `--timings`; an
/// unknown dtype is refused by name.
#[test]
fn low_precision_dtypes_run_and_unknown_ones_are_refused() {
    let model = model_dir("bert2bert");
    for dtype in ["bf16", "int8"] {
        let out = run_generate(
            &[
                "--model",
                model.to_str().unwrap(),
                "--dtype",
                dtype,
                "--timings",
            ],
            "{\"id\": 1, \"text\": \"Hello world.\"}\n",
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{dtype}: {err}");
        assert!(err.contains(&format!("\"dtype\":\"{dtype}\"")), "{err}");
        let line: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        assert_eq!(line["id"], 1, "{line}");
        assert!(!line["ids"][0].as_array().unwrap().is_empty(), "{line}");
    }
    let out = run_generate(&["--model", model.to_str().unwrap(), "--dtype", "int4"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("int4"));
}
