//! Parity with transformers on the portable kernels: the same fixtures and checks as
//! `tests/parity.rs`, with `ENCDEC_KERNELS=portable` forcing the fallback that CPUs
//! without AVX2 (and non-x86 builds) run.
//!
//! The kernel set is chosen once per process, so this file is its own test binary with a
//! single test, which sets the variable before anything chooses.

mod common;

use common::*;
use encdec::model::{kernel_choice, KernelSet, KERNELS_ENV};

#[test]
fn portable_kernels_match_transformers() {
    // Sound: this binary's only test, and no other thread of it reads the environment.
    std::env::set_var(KERNELS_ENV, "portable");
    assert_eq!(kernel_choice().kernels, KernelSet::Portable);
    for model in MODELS {
        check_against_fixtures(model, &model_dir(model), None);
    }

    // The CLI reports the forced set with --timings.
    let out = run_encdec(
        &[
            "generate",
            "--model",
            model_dir("bert2bert").to_str().unwrap(),
            "--max-new-tokens",
            "2",
            "--timings",
        ],
        "{\"text\": \"Hello world.\"}\n",
    );
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let load: serde_json::Value = serde_json::from_str(stderr.lines().next().unwrap()).unwrap();
    assert_eq!(load["cpu_kernels"]["kernels"], "portable", "{stderr}");
    assert_eq!(load["cpu_kernels"]["requested"], "portable", "{stderr}");
}
