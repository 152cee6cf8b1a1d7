//! Weight files of a checkpoint (safetensors, sharded safetensors, or a PyTorch `.bin` in
//! the zip or the legacy pre-1.6 format) as one name -> tensor map ([`WeightFiles`]), and
//! behind it the lookup that knows transformers' aliases ([`WeightStore`]): tied
//! encoder/decoder tensors stored once, and pre-2019 LayerNorm `gamma`/`beta` names.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};

use super::legacy_pth::{self, LegacyPth};
use super::safetensors_files::SafetensorsFiles;

/// Where the tensors physically come from.
enum Files {
    Safetensors(SafetensorsFiles),
    /// `torch.save`'s zip format (torch >= 1.6).
    ZipPickle(candle_core::pickle::PthTensors),
    /// `torch.save(..., _use_new_zipfile_serialization=False)`.
    LegacyPickle(LegacyPth),
}

/// dtype and shape of a stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// The tensors of a checkpoint's weight files, by stored name, exactly as stored.
pub struct WeightFiles {
    files: Files,
    tensors: BTreeMap<String, TensorMeta>,
    paths: Vec<PathBuf>,
}

/// The two PyTorch formats, told apart by their first bytes.
fn open_pytorch(path: &Path) -> Result<Files> {
    let mut head = [0u8; 16];
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = file.read_at(&mut head, 0)?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        let pth = candle_core::pickle::PthTensors::new(path, None)
            .with_context(|| format!("reading PyTorch weights {}", path.display()))?;
        Ok(Files::ZipPickle(pth))
    } else if legacy_pth::is_legacy(head) {
        Ok(Files::LegacyPickle(LegacyPth::open(path)?))
    } else {
        bail!(
            "{} is not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file)",
            path.display()
        )
    }
}

impl WeightFiles {
    /// The weights of checkpoint directory `dir` (see [`find_weight_files`]).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        Self::open(find_weight_files(dir)?)
    }

    /// safetensors files (all shards), or one PyTorch `.bin`.
    pub fn open(paths: Vec<PathBuf>) -> Result<Self> {
        let first = paths.first().context("no weight files")?;
        let is_pickle = first.extension().is_some_and(|e| e == "bin");
        let mut tensors = BTreeMap::new();
        let files = if is_pickle {
            let files = open_pytorch(first)?;
            match &files {
                Files::ZipPickle(pth) => {
                    for (name, info) in pth.tensor_infos() {
                        let shape = info.layout.shape().dims().to_vec();
                        tensors.insert(
                            name.clone(),
                            TensorMeta {
                                dtype: info.dtype,
                                shape,
                            },
                        );
                    }
                }
                Files::LegacyPickle(pth) => {
                    for (name, t) in pth.tensors() {
                        let meta = TensorMeta {
                            dtype: t.dtype,
                            shape: t.shape.clone(),
                        };
                        tensors.insert(name.clone(), meta);
                    }
                }
                Files::Safetensors(_) => unreachable!("open_pytorch opens PyTorch files"),
            }
            files
        } else {
            let st = SafetensorsFiles::open(&paths)?;
            for (name, e) in &st.entries {
                let meta = TensorMeta {
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                };
                tensors.insert(name.clone(), meta);
            }
            Files::Safetensors(st)
        };
        Ok(Self {
            files,
            tensors,
            paths,
        })
    }

    /// Every stored tensor's dtype and shape, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorMeta> {
        &self.tensors
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The files read.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The tensor stored as `name`, on the CPU, in its stored dtype.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        match &self.files {
            Files::Safetensors(st) => st.load(name),
            Files::ZipPickle(pth) => pth
                .get(name)?
                .with_context(|| format!("tensor `{name}` vanished")),
            Files::LegacyPickle(pth) => pth.load(name),
        }
    }
}

/// Weights of one checkpoint, looked up by transformers' parameter names.
pub struct WeightStore {
    files: WeightFiles,
    /// `Some(base)` when `tie_encoder_decoder` is set: `encoder.X` may live at `decoder.{base}.X`.
    tied_decoder_base: Option<&'static str>,
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
        Ok(Self {
            files: WeightFiles::open_dir(dir)?,
            tied_decoder_base,
        })
    }

    /// The files the weights come from.
    pub fn files_used(&self) -> &[PathBuf] {
        self.files.paths()
    }

    /// The stored tensors, by stored name.
    pub fn files(&self) -> &WeightFiles {
        &self.files
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

    /// The stored name `name` is read from (tied and legacy aliases followed).
    pub fn resolve(&self, name: &str) -> Option<String> {
        self.candidates(name)
            .into_iter()
            .find(|c| self.files.contains(c))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    fn load_raw(&self, stored: &str) -> candle_core::Result<Tensor> {
        self.files
            .load(stored)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
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
