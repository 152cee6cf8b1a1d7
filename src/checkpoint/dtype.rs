//! dtype names: what users write (`--dtype`, `dtype = "..."` in TOML) and what
//! transformers writes in `config.json` (`"dtype": "float16"`).

use anyhow::{bail, Result};
use candle_core::DType;

/// A run dtype: `f32`, `f16` or `bf16` (also transformers' `float32`, `float16`,
/// `bfloat16`).
pub fn parse(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => bail!("unsupported dtype `{other}` (use f32, f16 or bf16)"),
    })
}

/// transformers' name of a storage dtype (`torch_dtype` / `dtype` in `config.json`).
pub fn torch_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_transformers_names_parse_alike() {
        for (a, b) in [("f32", "float32"), ("f16", "float16"), ("bf16", "bfloat16")] {
            assert_eq!(parse(a).unwrap(), parse(b).unwrap());
            assert_eq!(torch_name(parse(a).unwrap()), b);
        }
        let err = parse("int8").unwrap_err().to_string();
        assert!(err.contains("int8") && err.contains("bf16"), "{err}");
    }
}
