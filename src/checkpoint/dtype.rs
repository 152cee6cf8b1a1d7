//! dtype names: what users write (`--dtype`, `dtype = "..."` in TOML) and what
//! transformers writes in `config.json` (`"dtype": "float16"`).

use anyhow::{bail, Result};
use candle_core::{DType, Device};

use crate::model::WeightFormat;

/// What `--dtype` asks for: how weights are stored and, per device, what the arithmetic
/// runs in.
///
/// On the CPU, `bf16` and `int8` store the linear layers' weights in that format and
/// widen them to f32 in registers: activations, sums and everything outside the linear
/// layers stay f32. On CUDA, `f16` and `bf16` run candle's half-precision ops; `int8` is
/// CPU-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunDtype {
    F32,
    F16,
    Bf16,
    Int8,
}

impl RunDtype {
    /// The name users write (`f32`, `f16`, `bf16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            RunDtype::F32 => "f32",
            RunDtype::F16 => "f16",
            RunDtype::Bf16 => "bf16",
            RunDtype::Int8 => "int8",
        }
    }

    /// The dtype of activations (and of every weight outside the packed linear
    /// layers) on `device`.
    pub fn activations(self, device: &Device) -> Result<DType> {
        Ok(match (self, device.is_cpu()) {
            (RunDtype::F32, _) | (RunDtype::Bf16 | RunDtype::Int8, true) => DType::F32,
            (RunDtype::F16, _) => DType::F16,
            (RunDtype::Bf16, false) => DType::BF16,
            (RunDtype::Int8, false) => {
                bail!("dtype int8 runs on the CPU only (use bf16 or f16 on {device:?})")
            }
        })
    }

    /// How the packed (CPU) linear layers store their weights.
    pub fn weight_format(self) -> WeightFormat {
        match self {
            RunDtype::Bf16 => WeightFormat::Bf16,
            RunDtype::Int8 => WeightFormat::Int8,
            RunDtype::F32 | RunDtype::F16 => WeightFormat::F32,
        }
    }
}

impl std::fmt::Display for RunDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A run dtype: `f32`, `f16`, `bf16` or `int8` (also transformers' `float32`,
/// `float16`, `bfloat16`).
pub fn parse(name: &str) -> Result<RunDtype> {
    Ok(match name {
        "f32" | "float32" => RunDtype::F32,
        "f16" | "float16" => RunDtype::F16,
        "bf16" | "bfloat16" => RunDtype::Bf16,
        "int8" => RunDtype::Int8,
        other => bail!("unsupported dtype `{other}` (use f32, f16, bf16 or int8)"),
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
            assert_eq!(parse(a).unwrap().name(), a);
        }
        assert_eq!(parse("int8").unwrap(), RunDtype::Int8);
        let err = parse("int4").unwrap_err().to_string();
        assert!(err.contains("int4") && err.contains("int8"), "{err}");
    }

    #[test]
    fn cpu_runs_bf16_and_int8_weights_with_f32_activations() {
        let cpu = Device::Cpu;
        for (d, act, fmt) in [
            (RunDtype::F32, DType::F32, WeightFormat::F32),
            (RunDtype::Bf16, DType::F32, WeightFormat::Bf16),
            (RunDtype::Int8, DType::F32, WeightFormat::Int8),
            (RunDtype::F16, DType::F16, WeightFormat::F32),
        ] {
            assert_eq!(d.activations(&cpu).unwrap(), act);
            assert_eq!(d.weight_format(), fmt);
        }
    }
}
