//! Weight files of a checkpoint (safetensors, sharded safetensors, or a PyTorch `.bin`)
//! behind one name lookup that knows transformers' aliases: tied encoder/decoder
//! tensors stored once, and pre-2019 LayerNorm `gamma`/`beta` names.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};

/// Where the tensors physically come from.
enum Files {
    Safetensors(SafetensorsFiles),
    Pickle(candle_core::pickle::PthTensors),
}

/// One tensor's place in a safetensors file.
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// safetensors files read tensor by tensor with positioned reads. Unlike a memory map,
/// pages of the file don't stay resident next to the loaded copy, so peak memory while
/// loading is the weights plus one tensor, not twice the weights.
struct SafetensorsFiles {
    files: Vec<File>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsFiles {
    fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let file_len = file.metadata()?.len();
            let mut len = [0u8; 8];
            file.read_exact_at(&mut len, 0)
                .with_context(|| format!("{} is not a safetensors file", path.display()))?;
            let header_len = u64::from_le_bytes(len);
            if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
                bail!("{} has a corrupt safetensors header", path.display());
            }
            let mut header = vec![0u8; header_len as usize];
            file.read_exact_at(&mut header, 8)?;
            let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
                .with_context(|| format!("parsing the safetensors header of {}", path.display()))?;
            let data_start = 8 + header_len;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let entry = parse_entry(&info, index, data_start)
                    .with_context(|| format!("tensor `{name}` in {}", path.display()))?;
                if entry.end > file_len {
                    bail!("{} is truncated (tensor `{name}`)", path.display());
                }
                entries.insert(name, entry);
            }
            files.push(file);
        }
        Ok(Self { files, entries })
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .with_context(|| format!("tensor `{name}` vanished"))?;
        let mut bytes = vec![0u8; (e.end - e.start) as usize];
        self.files[e.file].read_exact_at(&mut bytes, e.start)?;
        Ok(Tensor::from_raw_buffer(
            &bytes,
            e.dtype,
            &e.shape,
            &Device::Cpu,
        )?)
    }
}

fn parse_entry(info: &serde_json::Value, file: usize, data_start: u64) -> Result<Entry> {
    let dtype = match info["dtype"].as_str().context("no dtype")? {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "U32" => DType::U32,
        "U8" | "BOOL" => DType::U8,
        other => bail!("unsupported dtype {other}"),
    };
    let shape: Vec<usize> = info["shape"]
        .as_array()
        .context("no shape")?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<_>>()
        .context("bad shape")?;
    let offsets = info["data_offsets"].as_array().context("no data_offsets")?;
    let (start, end) = match offsets.as_slice() {
        [a, b] => (
            a.as_u64().context("bad offset")?,
            b.as_u64().context("bad offset")?,
        ),
        _ => bail!("bad data_offsets"),
    };
    let expected = shape.iter().product::<usize>() * dtype.size_in_bytes();
    if end < start || (end - start) as usize != expected {
        bail!("data_offsets don't match shape {shape:?} and dtype {dtype:?}");
    }
    Ok(Entry {
        file,
        dtype,
        shape,
        start: data_start + start,
        end: data_start + end,
    })
}

/// Weights of one checkpoint, looked up by transformers' parameter names.
pub struct WeightStore {
    files: Files,
    names: HashSet<String>,
    /// `Some(base)` when `tie_encoder_decoder` is set: `encoder.X` may live at `decoder.{base}.X`.
    tied_decoder_base: Option<&'static str>,
    pub files_used: Vec<PathBuf>,
}

/// The weight files of `dir`, in transformers' order of preference.
pub fn find_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no `weight_map`", index.display()))?;
        let mut shards: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect();
        shards.sort();
        shards.dedup();
        if let Some(missing) = shards.iter().find(|p| !p.is_file()) {
            bail!("shard {} named in the index is missing", missing.display());
        }
        return Ok(shards);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(vec![bin]);
    }
    bail!(
        "no weights in {} (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)",
        dir.display()
    )
}

impl WeightStore {
    pub fn open(dir: &Path, tied_decoder_base: Option<&'static str>) -> Result<Self> {
        let paths = find_weight_files(dir)?;
        let is_pickle = paths[0].extension().is_some_and(|e| e == "bin");
        let (files, names) = if is_pickle {
            let pth = candle_core::pickle::PthTensors::new(&paths[0], None)
                .with_context(|| format!("reading PyTorch weights {}", paths[0].display()))?;
            let names = pth.tensor_infos().keys().cloned().collect();
            (Files::Pickle(pth), names)
        } else {
            let st = SafetensorsFiles::open(&paths)?;
            let names = st.entries.keys().cloned().collect();
            (Files::Safetensors(st), names)
        };
        Ok(Self {
            files,
            names,
            tied_decoder_base,
            files_used: paths,
        })
    }

    /// Every name under which `name` may be stored, most specific first.
    fn candidates(&self, name: &str) -> Vec<String> {
        let mut out = vec![name.to_string()];
        if let Some(base) = self.tied_decoder_base {
            let dec_prefix = format!("decoder.{base}.");
            if let Some(rest) = name.strip_prefix("encoder.") {
                out.push(format!("{dec_prefix}{rest}"));
            } else if let Some(rest) = name.strip_prefix(&dec_prefix) {
                if !rest.contains("crossattention") {
                    out.push(format!("encoder.{rest}"));
                }
            }
        }
        let legacy: Vec<String> = out
            .iter()
            .filter_map(|n| {
                if let Some(stem) = n.strip_suffix("LayerNorm.weight") {
                    Some(format!("{stem}LayerNorm.gamma"))
                } else {
                    n.strip_suffix("LayerNorm.bias")
                        .map(|stem| format!("{stem}LayerNorm.beta"))
                }
            })
            .collect();
        out.extend(legacy);
        out
    }

    fn resolve(&self, name: &str) -> Option<String> {
        self.candidates(name)
            .into_iter()
            .find(|c| self.names.contains(c))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    fn load_raw(&self, stored: &str) -> candle_core::Result<Tensor> {
        match &self.files {
            Files::Safetensors(st) => st
                .load(stored)
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}"))),
            Files::Pickle(pth) => pth
                .get(stored)?
                .ok_or_else(|| candle_core::Error::Msg(format!("tensor `{stored}` vanished"))),
        }
    }

    /// The tensor called `name`, checked against `shape` and converted to `dtype` on `device`.
    pub fn load(&self, name: &str, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let stored = self.resolve(name).with_context(|| {
            format!(
                "checkpoint is missing tensor `{name}` (looked for: {})",
                self.candidates(name).join(", ")
            )
        })?;
        let t = self
            .load_raw(&stored)
            .with_context(|| format!("loading tensor `{stored}`"))?;
        if t.shape() != shape {
            bail!(
                "tensor `{stored}` has shape {:?}, the config implies {:?}",
                t.dims(),
                shape.dims()
            );
        }
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
}

/// Lets candle-nn's `VarBuilder` (and so `linear`, `layer_norm`, `embedding`) read from
/// the store with our aliasing and error messages.
impl candle_nn::var_builder::SimpleBackend for WeightStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, &s, dtype, dev)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let stored = self.resolve(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("checkpoint is missing tensor `{name}`"))
        })?;
        self.load_raw(&stored)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}
