//! `encdec eval`: data formats, scoring existing predictions against the
//! metrics called directly, and an end-to-end run on fixture models.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use encdec::eval::bleu::corpus_bleu;
use encdec::eval::data::{self, DataFormat, DataSpec, Dataset};
use encdec::eval::rouge::{BootstrapAggregator, RougeScorer, RougeType};
use encdec::eval::sari::{corpus_sari, exact_match};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn eval_data(name: &str) -> PathBuf {
    fixtures().join("eval_data").join(name)
}

fn load(path: &Path, format: Option<DataFormat>) -> Result<Dataset, data::DataError> {
    data::load(&DataSpec {
        data: path,
        reference: None,
        format,
        limit: None,
    })
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn encdec(args: &[&str], stdin: Option<&str>) -> Output {
    common::run_encdec(args, stdin.unwrap_or(""))
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A metric value as it reads back from JSON (same float parser on both sides).
fn as_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}

fn tsv_columns(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------- data formats

#[test]
fn wikisplit_tsv_joins_reference_sentences_with_a_space() {
    let path = eval_data("wikisplit.tsv");
    let ds = load(&path, None).unwrap();
    assert_eq!(ds.format, DataFormat::Tsv);
    let rows = tsv_columns(&path);
    assert_eq!(ds.examples.len(), 5);
    for (i, (ex, row)) in ds.examples.iter().zip(&rows).enumerate() {
        assert_eq!(ex.id, json!(i));
        assert_eq!(ex.source, row[0]);
        assert!(row[1].contains(" <::::> "));
        assert_eq!(ex.references, vec![row[1].replace(" <::::> ", " ")]);
    }
    assert_eq!(
        ds.examples[1].references[0],
        "' Eden Black ' was grown from seed in the late 1980s by Stephen Morley . Under his \
         conditions it produces pitchers that are almost completley black ."
    );
    let limited = data::load(&DataSpec {
        data: &path,
        reference: None,
        format: Some(DataFormat::Tsv),
        limit: Some(2),
    })
    .unwrap();
    assert_eq!(limited.examples, ds.examples[..2]);
}

#[test]
fn extra_tsv_columns_are_more_references_and_crlf_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "multi.tsv",
        "src one\tref a\tref b\r\n\r\nsrc two\tref c\r\n",
    );
    let ds = load(&path, None).unwrap();
    assert_eq!(ds.examples.len(), 2);
    assert_eq!(ds.examples[0].references, ["ref a", "ref b"]);
    assert_eq!(ds.examples[1].source, "src two");
    assert_eq!(ds.examples[1].references, ["ref c"]);
}

#[test]
fn discofuse_tsv_fuses_incoherent_inputs_and_coherent_references() {
    let path = eval_data("discofuse.tsv");
    let ds = load(&path, None).unwrap();
    assert_eq!(ds.format, DataFormat::DiscoFuse);
    assert_eq!(ds.examples.len(), 1);
    let ex = &ds.examples[0];
    let first = "Four LPr and three LC2000r HP Netservers handle customer management and web \
                 server functions .";
    assert_eq!(
        ex.source,
        format!(
            "{first} An HP Netserver LT6000r hosts i2 Demand Planner and i2 Collaboration Planner ."
        )
    );
    assert_eq!(
        ex.references,
        [format!(
            "{first} Finally , an HP Netserver LT6000r hosts i2 Demand Planner and i2 \
             Collaboration Planner ."
        )]
    );

    // SINGLE_* rows have an empty second sentence: the joined text is trimmed.
    // Columns in another order are found by name.
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "single.tsv",
        "incoherent_first_sentence\tincoherent_second_sentence\tcoherent_second_sentence\tcoherent_first_sentence\tdiscourse_type\n\
         He was tired .\tHe went to bed .\t\tHe was tired , so he went to bed .\tSINGLE_S_COORD\n",
    );
    let ds = load(&path, Some(DataFormat::DiscoFuse)).unwrap();
    assert_eq!(ds.examples[0].source, "He was tired . He went to bed .");
    assert_eq!(
        ds.examples[0].references,
        ["He was tired , so he went to bed ."]
    );
}

#[test]
fn jsonl_takes_reference_or_references_and_ids() {
    let path = eval_data("xsum.jsonl");
    let ds = load(&path, None).unwrap();
    assert_eq!(ds.format, DataFormat::Jsonl);
    let raw: Vec<Value> = read_jsonl(&path);
    assert_eq!(ds.examples.len(), 4);
    for (ex, r) in ds.examples.iter().zip(&raw) {
        assert_eq!(ex.id, r["id"]);
        assert_eq!(ex.source, r["source"].as_str().unwrap());
        let want: Vec<String> = match r.get("references") {
            Some(refs) => serde_json::from_value(refs.clone()).unwrap(),
            None => vec![r["reference"].as_str().unwrap().to_string()],
        };
        assert_eq!(ex.references, want);
    }
    assert_eq!(ds.examples[1].references.len(), 2);
    assert_eq!(ds.examples[0].references.len(), 1);

    // Without ids: the example index. The separator is joined here too.
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "d.jsonl",
        "{\"source\": \"a b\", \"reference\": \"a . <::::> b .\", \"extra\": 1}\n\n{\"source\": \"c\", \"references\": [\"c\", \"C\"]}\n",
    );
    let ds = load(&path, None).unwrap();
    assert_eq!(ds.examples[0].id, json!(0));
    assert_eq!(ds.examples[0].references, ["a . b ."]);
    assert_eq!(ds.examples[1].id, json!(1));
    assert_eq!(ds.examples[1].references, ["c", "C"]);
}

#[test]
fn parallel_files_pair_lines() {
    let en = eval_data("newstest2014.en");
    let de = eval_data("newstest2014.de");
    let ds = data::load(&DataSpec {
        data: &en,
        reference: Some(&de),
        format: None,
        limit: Some(4),
    })
    .unwrap();
    assert_eq!(ds.format, DataFormat::Parallel);
    assert_eq!(ds.examples.len(), 4);
    let en_lines: Vec<String> = std::fs::read_to_string(&en)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let de_lines: Vec<String> = std::fs::read_to_string(&de)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    for (i, ex) in ds.examples.iter().enumerate() {
        assert_eq!(ex.id, json!(i));
        assert_eq!(ex.source, en_lines[i]);
        assert_eq!(ex.references, [de_lines[i].clone()]);
    }
    assert_eq!(
        ds.examples[0].references[0],
        "Gutach: Noch mehr Sicherheit für Fußgänger"
    );

    let dir = tempfile::tempdir().unwrap();
    let short = write(dir.path(), "short.de", "eins\nzwei\n");
    let err = data::load(&DataSpec {
        data: &en,
        reference: Some(&short),
        format: Some(DataFormat::Parallel),
        limit: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("newstest2014.en") && err.contains("short.de"),
        "{err}"
    );
    assert!(err.contains("5 lines") && err.contains("has 2"), "{err}");
}

#[test]
fn bad_lines_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, Option<DataFormat>, &str, &str); 8] = [
        ("no_tab.tsv", "a\tb\nc\td\njust one column\n", None, ":3:", "no tab"),
        ("bad.jsonl", "{\"source\": \"a\", \"reference\": \"b\"}\n{\"reference\": \"b\"}\n", None, ":2:", "missing `source`"),
        ("bad2.jsonl", "\n{not json\n", None, ":2:", "invalid JSON"),
        ("bad3.jsonl", "{\"source\": \"a\"}\n", None, ":1:", "missing `reference`"),
        ("bad4.jsonl", "{\"source\": \"a\", \"references\": []}\n", None, ":1:", "non-empty list"),
        ("bad5.jsonl", "[1, 2]\n", None, ":1:", "JSON object"),
        (
            "bad_disco.tsv",
            "coherent_first_sentence\tcoherent_second_sentence\tincoherent_first_sentence\tincoherent_second_sentence\n\
             a\tb\tc\td\n\
             a\tb\tc\n",
            None,
            ":3:",
            "expected 4 tab-separated columns",
        ),
        ("plain.txt", "a\tb\n", Some(DataFormat::DiscoFuse), ":1:", "DiscoFuse header"),
    ];
    for (name, text, format, line, msg) in cases {
        let path = write(dir.path(), name, text);
        let err = load(&path, format).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{name}{line}")) && err.contains(msg),
            "{name}: {err}"
        );
    }
    let bytes = dir.path().join("latin1.tsv");
    std::fs::write(&bytes, b"ok\tfine\nbad \xe9\tx\n").unwrap();
    let err = load(&bytes, None).unwrap_err().to_string();
    assert!(
        err.contains("latin1.tsv:2:") && err.contains("UTF-8"),
        "{err}"
    );

    let unknown = write(dir.path(), "data.csv", "a,b\n");
    let err = load(&unknown, None).unwrap_err().to_string();
    assert!(err.contains("--format"), "{err}");
}

#[test]
fn predictions_are_read_as_jsonl_or_plain_lines() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "p.txt", "one\n\nthree\r\n");
    assert_eq!(
        data::load_predictions(&plain).unwrap(),
        ["one", "", "three"]
    );
    let jsonl = write(
        dir.path(),
        "p.jsonl",
        "{\"prediction\": \"a\"}\n{\"text\": \"b\"}\n{\"id\": 3, \"texts\": [\"c\", \"d\"]}\n{\"id\": 4, \"error\": \"empty input\"}\n",
    );
    assert_eq!(data::load_predictions(&jsonl).unwrap(), ["a", "b", "c", ""]);
    let bad = write(
        dir.path(),
        "bad.jsonl",
        "{\"text\": \"a\"}\n{\"other\": 1}\n",
    );
    let err = data::load_predictions(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2:"), "{err}");
}

// ------------------------------------------------------- --predictions scoring

/// Runs `eval --predictions` and returns (metrics.json, stdout).
fn score_predictions(
    task: &str,
    data: &[&str],
    predictions: &Path,
    extra: &[&str],
) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["eval", "--task", task];
    args.extend_from_slice(data);
    args.extend_from_slice(&["--predictions", s(predictions), "--out", s(dir.path())]);
    args.extend_from_slice(extra);
    let stdout = ok(&encdec(&args, None));
    (read_json(&dir.path().join("metrics.json")), stdout)
}

fn plain_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn jsonl_field(path: &Path, key: &str) -> Vec<String> {
    read_jsonl(path)
        .iter()
        .map(|v| v[key].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn split_scores_sari_and_bleu_on_joined_sentences() {
    let data = eval_data("wikisplit.tsv");
    let preds_path = eval_data("wikisplit.predictions.txt");
    let (metrics, stdout) = score_predictions("split", &["--data", s(&data)], &preds_path, &[]);
    let rows = tsv_columns(&data);
    let sources: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
    let refs: Vec<Vec<String>> = rows
        .iter()
        .map(|r| vec![r[1].replace(" <::::> ", " ")])
        .collect();
    let preds: Vec<String> = plain_lines(&preds_path)
        .iter()
        .map(|p| p.replace(" <::::> ", " "))
        .collect();
    assert_eq!(preds[2], "");
    let m = &metrics["metrics"];
    assert_eq!(m["task"], "split");
    assert_eq!(m["examples"], 5);
    assert_eq!(
        m["sari"],
        as_json(&corpus_sari(&sources, &preds, &refs).unwrap())
    );
    let bleu = corpus_bleu(&preds, &refs).unwrap();
    assert_eq!(m["bleu"], as_json(&bleu));
    assert_eq!(
        m["exact_match"],
        as_json(&exact_match(&preds, &refs).unwrap())
    );
    assert!(m.get("rouge").is_none());
    assert_eq!(metrics["format"], "tsv");
    assert!(
        stdout.contains("SARI") && stdout.contains(&bleu.format()),
        "{stdout}"
    );
    assert!(stdout.contains(&bleu.signature), "{stdout}");
    // The first prediction is the reference itself.
    assert!(bleu.score > 10.0 && bleu.score < 100.0, "{}", bleu.score);
}

#[test]
fn translate_scores_bleu_with_signature_on_parallel_files() {
    let en = eval_data("newstest2014.en");
    let de = eval_data("newstest2014.de");
    let preds_path = eval_data("newstest2014.predictions.jsonl");
    let (metrics, stdout) = score_predictions(
        "translate",
        &["--data", s(&en), "--data-ref", s(&de)],
        &preds_path,
        &[],
    );
    let refs: Vec<Vec<String>> = plain_lines(&de).into_iter().map(|r| vec![r]).collect();
    let preds = jsonl_field(&preds_path, "text");
    let bleu = corpus_bleu(&preds, &refs).unwrap();
    assert_eq!(metrics["metrics"]["bleu"], as_json(&bleu));
    assert_eq!(
        metrics["metrics"]["bleu"]["signature"],
        "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    );
    assert_eq!(metrics["format"], "parallel");
    assert!(stdout.contains(&bleu.format()), "{stdout}");

    // --limit applies to data and predictions alike.
    let (metrics, _) = score_predictions(
        "translate",
        &["--data", s(&en), "--data-ref", s(&de)],
        &preds_path,
        &["--limit", "2"],
    );
    let bleu2 = corpus_bleu(&preds[..2], &refs[..2]).unwrap();
    assert_eq!(metrics["metrics"]["bleu"], as_json(&bleu2));
    assert_eq!(metrics["metrics"]["examples"], 2);
}

#[test]
fn fuse_scores_sari_and_exact_match() {
    let data = eval_data("discofuse.tsv");
    let preds_path = eval_data("discofuse.predictions.txt");
    let (metrics, stdout) = score_predictions("fuse", &["--data", s(&data)], &preds_path, &[]);
    let ds = load(&data, None).unwrap();
    let preds = plain_lines(&preds_path);
    let m = &metrics["metrics"];
    assert_eq!(
        m["sari"],
        as_json(&corpus_sari(&ds.sources(), &preds, &ds.references()).unwrap())
    );
    assert_eq!(m["exact_match"], as_json(&100.0));
    assert_eq!(
        as_json(&exact_match(&preds, &ds.references()).unwrap()),
        m["exact_match"]
    );
    assert!(m.get("bleu").is_none());
    assert!(
        stdout.contains("Exact match") && stdout.contains("100.00"),
        "{stdout}"
    );
}

fn expected_rouge(preds: &[String], refs: &[Vec<String>], stemmer: bool) -> Value {
    let scorer = RougeScorer::new(&RougeType::DEFAULT, stemmer);
    let mut agg = BootstrapAggregator::new(42);
    for (p, r) in preds.iter().zip(refs) {
        agg.add_scores(&scorer.score_multi(r, p));
    }
    let map: BTreeMap<String, _> = agg
        .aggregate()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    as_json(&map)
}

#[test]
fn summarize_scores_rouge_with_bootstrap_and_optional_stemming() {
    let data = eval_data("xsum.jsonl");
    let preds_path = eval_data("xsum.predictions.jsonl");
    let ds = load(&data, None).unwrap();
    let preds = jsonl_field(&preds_path, "prediction");
    for stemmer in [false, true] {
        let extra: &[&str] = if stemmer { &["--stemmer"] } else { &[] };
        let (metrics, stdout) =
            score_predictions("summarize", &["--data", s(&data)], &preds_path, extra);
        let rouge = &metrics["metrics"]["rouge"];
        assert_eq!(rouge["use_stemmer"], stemmer);
        assert_eq!(
            rouge["scores"],
            expected_rouge(&preds, &ds.references(), stemmer)
        );
        for label in ["ROUGE-1", "ROUGE-2", "ROUGE-L ", "ROUGE-Lsum"] {
            assert!(stdout.contains(label), "{stdout}");
        }
    }
    // Stemming changes the numbers ("computers" vs "computer", ...).
    let plain = expected_rouge(&preds, &ds.references(), false);
    let stemmed = expected_rouge(&preds, &ds.references(), true);
    assert_ne!(plain, stemmed);
}

#[test]
fn misaligned_predictions_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let preds = write(dir.path(), "p.txt", "one\ntwo\n");
    let out = encdec(
        &[
            "eval",
            "--task",
            "split",
            "--data",
            s(&eval_data("wikisplit.tsv")),
            "--predictions",
            s(&preds),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 predictions") && err.contains("5 examples"),
        "{err}"
    );

    // Without --predictions a model and --out are required.
    let out = encdec(
        &[
            "eval",
            "--task",
            "split",
            "--data",
            s(&eval_data("wikisplit.tsv")),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--model") || err.contains("--out"), "{err}");
}

// ------------------------------------------------------------------ end to end

const GEN_FLAGS: [&str; 8] = [
    "--num-beams",
    "2",
    "--max-length",
    "12",
    "--no-repeat-ngram-size",
    "2",
    "--batch-size",
    "3",
];

/// Runs `eval` with a model, checks predictions.jsonl against the data and
/// `encdec generate`'s texts for the same inputs and flags, and checks that
/// rescoring the written predictions (and generate's own output) with
/// `--predictions` reproduces metrics.json's metrics. Returns metrics.json.
fn check_end_to_end(model: &str, task: &str, data: &Path, extra: &[&str]) -> Value {
    let model = fixtures().join("models").join(model);
    let out = tempfile::tempdir().unwrap();
    let mut args = vec![
        "eval",
        "--model",
        s(&model),
        "--task",
        task,
        "--data",
        s(data),
        "--out",
        s(out.path()),
    ];
    args.extend_from_slice(&GEN_FLAGS);
    args.extend_from_slice(extra);
    let stdout = ok(&encdec(&args, None));
    let ds = load(data, None).unwrap();
    let n = ds.examples.len();
    assert!(
        stdout.contains(&format!("task: {task}, {n} examples")),
        "{stdout}"
    );
    assert!(stdout.contains("metrics.json"), "{stdout}");

    // predictions.jsonl: the data's ids, sources and references, and generate's texts.
    let lines = read_jsonl(&out.path().join("predictions.jsonl"));
    assert_eq!(lines.len(), n);
    let stdin: String = ds
        .examples
        .iter()
        .map(|e| format!("{}\n", json!({"id": e.id, "text": e.source})))
        .collect();
    let mut gen_args = vec!["generate", "--model", s(&model)];
    gen_args.extend_from_slice(&GEN_FLAGS);
    let generated = ok(&encdec(&gen_args, Some(&stdin)));
    let generated_path = out.path().join("generated.jsonl");
    std::fs::write(&generated_path, &generated).unwrap();
    let generated: Vec<Value> = read_jsonl(&generated_path);
    assert_eq!(generated.len(), n);
    for ((line, ex), gen) in lines.iter().zip(&ds.examples).zip(&generated) {
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{line}");
        assert_eq!(line["id"], ex.id);
        assert_eq!(line["source"], ex.source.as_str());
        assert_eq!(line["references"], json!(ex.references));
        assert!(gen["texts"][0].is_string(), "{gen}");
        assert_eq!(line["prediction"], gen["texts"][0], "{}", ex.id);
    }
    assert!(lines.iter().any(|l| l["prediction"] != ""));

    let metrics = read_json(&out.path().join("metrics.json"));
    let g = &metrics["generation"];
    assert_eq!(g["failed"], 0);
    assert_eq!(g["batch_size"], 3);
    assert_eq!(g["config"]["num_beams"], 2);
    assert_eq!(g["config"]["max_length"], 12);
    assert_eq!(g["config"]["no_repeat_ngram_size"], 2);
    assert_eq!(metrics["metrics"]["examples"], n);
    assert_eq!(metrics["metrics"]["task"], task);

    for preds in [out.path().join("predictions.jsonl"), generated_path] {
        let (rescored, _) = score_predictions(task, &["--data", s(data)], &preds, extra);
        assert_eq!(
            rescored["metrics"],
            metrics["metrics"],
            "{}",
            preds.display()
        );
    }
    metrics
}

#[test]
fn end_to_end_summarize_on_a_fixture_model() {
    let m = check_end_to_end(
        "bert2bert",
        "summarize",
        &eval_data("xsum.jsonl"),
        &["--stemmer"],
    );
    let rouge = &m["metrics"]["rouge"];
    assert_eq!(rouge["use_stemmer"], true);
    for kind in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
        assert!(rouge["scores"][kind]["mid"]["fmeasure"].is_f64(), "{rouge}");
    }
}

#[test]
fn end_to_end_split_on_a_fixture_model() {
    // Random weights give nonsense, but SARI still rewards the deletions:
    // the rescoring comparison is not just zeros against zeros.
    let m = check_end_to_end("robertashare", "split", &eval_data("wikisplit.tsv"), &[]);
    assert!(m["metrics"]["sari"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["metrics"]["bleu"]["signature"].is_string());
}

#[test]
fn end_to_end_inputs_that_fail_are_recorded_and_scored_empty() {
    // BertGeneration adds no special tokens: a blank source line has no input.
    let dir = tempfile::tempdir().unwrap();
    let en = write(dir.path(), "src.en", "Hello world.\n\nGood morning.\n");
    let de = write(dir.path(), "ref.de", "Hallo Welt.\nLeer.\nGuten Morgen.\n");
    let out = dir.path().join("out");
    let stdout = ok(&encdec(
        &[
            "eval",
            "--model",
            s(&fixtures().join("models/bertgeneration2bertgeneration")),
            "--task",
            "translate",
            "--data",
            s(&en),
            "--data-ref",
            s(&de),
            "--max-new-tokens",
            "3",
            "--out",
            s(&out),
            "--no-progress",
        ],
        None,
    ));
    assert!(stdout.contains("failed inputs: 1"), "{stdout}");
    let lines = read_jsonl(&out.join("predictions.jsonl"));
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["prediction"], "");
    assert!(lines[1]["error"].is_string());
    assert!(lines[0].get("error").is_none() && lines[2].get("error").is_none());
    let metrics = read_json(&out.join("metrics.json"));
    assert_eq!(metrics["generation"]["failed"], 1);
    let preds: Vec<String> = lines
        .iter()
        .map(|l| l["prediction"].as_str().unwrap().to_string())
        .collect();
    let refs = vec![
        vec!["Hallo Welt.".to_string()],
        vec!["Leer.".to_string()],
        vec!["Guten Morgen.".to_string()],
    ];
    assert_eq!(
        metrics["metrics"]["bleu"],
        as_json(&corpus_bleu(&preds, &refs).unwrap())
    );
    let (rescored, _) = score_predictions(
        "translate",
        &["--data", s(&en), "--data-ref", s(&de)],
        &out.join("predictions.jsonl"),
        &[],
    );
    assert_eq!(rescored["metrics"], metrics["metrics"]);
}
