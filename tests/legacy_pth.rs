//! PyTorch's legacy (pre-1.6, non-zip) `torch.save` format: the fixtures were written by
//! torch itself (tests/fixtures/tools/make_legacy_pytorch_bin.py) and must load to
//! exactly the tensors of their safetensors copies.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use common::*;
use encdec::checkpoint::weights::WeightFiles;

fn values(t: &Tensor) -> Vec<u64> {
    // f64 holds every f32/f16/bf16 value and these small integers exactly.
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .into_iter()
        .map(f64::to_bits)
        .collect()
}

fn assert_same(a: &WeightFiles, b: &WeightFiles, name: &str) {
    let (ta, tb) = (a.load(name).unwrap(), b.load(name).unwrap());
    assert_eq!(ta.dtype(), tb.dtype(), "{name}");
    assert_eq!(ta.dims(), tb.dims(), "{name}");
    assert_eq!(values(&ta), values(&tb), "{name}");
}

#[test]
fn views_into_shared_storages_offsets_strides_and_dtypes_load_exactly() {
    let dir = fixtures().join("weights_legacy");
    let legacy = WeightFiles::open(vec![dir.join("views.bin")]).unwrap();
    let st = WeightFiles::open(vec![dir.join("views.safetensors")]).unwrap();
    assert_eq!(legacy.tensors(), st.tensors());
    for name in st.tensors().keys() {
        assert_same(&legacy, &st, name);
    }
    for (name, dtype) in [
        ("half", DType::F16),
        ("bf16", DType::BF16),
        ("ids", DType::I64),
        ("transposed", DType::F32),
    ] {
        assert_eq!(legacy.tensors()[name].dtype, dtype);
    }
}

fn legacy_model_dir() -> PathBuf {
    fixtures().join("models_extra/roberta2roberta_legacy_bin")
}

#[test]
fn a_legacy_checkpoint_holds_the_same_tensors_as_the_safetensors_one() {
    let legacy = WeightFiles::open_dir(&legacy_model_dir()).unwrap();
    assert!(legacy.paths()[0].ends_with("pytorch_model.bin"));
    let st = WeightFiles::open_dir(&model_dir("roberta2roberta")).unwrap();
    for name in st.tensors().keys() {
        assert_same(&legacy, &st, name);
    }
    // The tied head shares the word embeddings' storage; the buffers are int64.
    let head = legacy.load("decoder.lm_head.decoder.weight").unwrap();
    let emb = legacy
        .load("decoder.roberta.embeddings.word_embeddings.weight")
        .unwrap();
    assert_eq!(values(&head), values(&emb));
    let ids = legacy.load("encoder.embeddings.position_ids").unwrap();
    assert_eq!(ids.dtype(), DType::I64);
    assert_eq!(ids.dims(), [1, 514]);
    assert_eq!(ids.to_vec2::<i64>().unwrap()[0][513], 513);
}

#[test]
fn a_legacy_checkpoint_generates_like_transformers() {
    check_against_fixtures("roberta2roberta", &legacy_model_dir(), None);
}

#[test]
fn a_truncated_or_garbled_legacy_file_is_a_clear_error() {
    let bytes = std::fs::read(fixtures().join("weights_legacy/views.bin")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pytorch_model.bin");
    // Cut inside the pickles, inside the storage bytes, and right after the magic.
    for cut in [bytes.len() - 7, bytes.len() / 2, 20, 15] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = match WeightFiles::open(vec![path.clone()]) {
            Ok(_) => panic!("a file cut at {cut} bytes opened"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("legacy"), "cut at {cut}: {err}");
    }
    std::fs::write(&path, b"not a checkpoint at all").unwrap();
    let err = format!("{:#}", WeightFiles::open(vec![path]).err().unwrap());
    assert!(err.contains("not a PyTorch checkpoint"), "{err}");
}
