//! The trainable parameters of a checkpoint: one [`Var`] per stored tensor the model
//! reads, tied tensors sharing one, and the write-back that saves them under the names
//! (and so in the layout) they were loaded from.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};

use crate::checkpoint::weights::WeightStore;

/// A parameter as the optimiser sees it.
#[derive(Clone)]
pub struct Param {
    /// transformers' parameter name (the decoder-side name for tensors a tied model shares).
    pub name: String,
    pub var: Var,
    /// AdamW decays it (not biases, not LayerNorm parameters, as the Trainer does).
    pub decays: bool,
}

/// Every parameter read so far, by canonical name.
pub struct Params {
    store: WeightStore,
    device: Device,
    /// `Some(base)` for `tie_encoder_decoder`: `encoder.X` is `decoder.{base}.X`.
    tied_base: Option<&'static str>,
    vars: Mutex<BTreeMap<String, Var>>,
    /// Stored tensor name → canonical name of the parameter saved there.
    saved_as: Mutex<BTreeMap<String, String>>,
}

/// transformers does not decay biases nor any LayerNorm parameter.
fn decays(name: &str) -> bool {
    let module = name.rsplit('.').nth(1).unwrap_or("");
    let norm =
        module.contains("LayerNorm") || module.contains("layer_norm") || module.starts_with("ln_");
    !(name.ends_with("bias") || norm)
}

impl Params {
    /// The weights of checkpoint `dir`, read lazily as the model asks for them.
    pub fn open(dir: &Path, tied_base: Option<&'static str>, device: &Device) -> Result<Self> {
        Ok(Self {
            store: WeightStore::open(dir, tied_base)?,
            device: device.clone(),
            tied_base,
            vars: Mutex::new(BTreeMap::new()),
            saved_as: Mutex::new(BTreeMap::new()),
        })
    }

    /// One name for every tensor a tied model shares: the decoder's.
    fn canonical(&self, name: &str) -> String {
        match (self.tied_base, name.strip_prefix("encoder.")) {
            (Some(base), Some(rest)) => format!("decoder.{base}.{rest}"),
            _ => name.to_string(),
        }
    }

    /// Every stored name that holds the parameter `canonical` (one, or both halves of a
    /// tied tensor when a file stores it twice).
    fn stored_names(&self, canonical: &str) -> Vec<String> {
        let mut names = vec![canonical.to_string()];
        if let Some(base) = self.tied_base {
            if let Some(rest) = canonical.strip_prefix(&format!("decoder.{base}.")) {
                names.push(format!("encoder.{rest}"));
            }
        }
        names.retain(|n| self.store.files().contains(n));
        if names.is_empty() {
            // Legacy names (`gamma`/`beta`) and other aliases the store resolves.
            names.extend(self.store.resolve(canonical));
        }
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.canonical(name))
    }

    /// The parameter `name` of shape `shape`: loaded (as f32) on first use, the same
    /// variable afterwards and for every name tied to it.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        let shape = shape.into();
        let key = self.canonical(name);
        let mut vars = self.vars.lock().expect("params lock");
        if let Some(v) = vars.get(&key) {
            if v.shape() != &shape {
                bail!(
                    "parameter `{name}` has shape {:?}, expected {shape:?}",
                    v.dims()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let t = self
            .store
            .load(&key, &shape, DType::F32, &self.device)
            .with_context(|| format!("loading parameter `{name}`"))?;
        let var = Var::from_tensor(&t)?;
        let mut saved_as = self.saved_as.lock().expect("params lock");
        for stored in self.stored_names(&key) {
            saved_as.insert(stored, key.clone());
        }
        vars.insert(key, var.clone());
        Ok(var.as_tensor().clone())
    }

    /// Saves parameter `name` also under the stored tensor `stored` (a tied LM head a
    /// file stores next to the embeddings it is tied to).
    pub fn also_saved_as(&self, stored: &str, name: &str) {
        if self.store.files().contains(stored) {
            let key = self.canonical(name);
            self.saved_as
                .lock()
                .expect("params lock")
                .insert(stored.to_string(), key);
        }
    }

    /// All parameters, in name order.
    pub fn all(&self) -> Vec<Param> {
        self.vars
            .lock()
            .expect("params lock")
            .iter()
            .map(|(name, var)| Param {
                name: name.clone(),
                var: var.clone(),
                decays: decays(name),
            })
            .collect()
    }

    /// Number of trainable scalars.
    pub fn count(&self) -> usize {
        self.all().iter().map(|p| p.var.elem_count()).sum()
    }

    /// Overwrites the parameters with the tensors of `file` (a resumed checkpoint's
    /// `model.safetensors`, same stored names).
    pub fn restore(&self, file: &Path) -> Result<()> {
        let saved = candle_core::safetensors::load(file, &self.device)
            .with_context(|| format!("reading {}", file.display()))?;
        let vars = self.vars.lock().expect("params lock");
        let saved_as = self.saved_as.lock().expect("params lock");
        for (stored, key) in saved_as.iter() {
            let t = saved
                .get(stored)
                .with_context(|| format!("{} lacks `{stored}`", file.display()))?;
            vars[key].set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// Every tensor of the source checkpoint, trained ones replaced by their current
    /// value (f32), under their stored names; tensors the model never read (pooler,
    /// buffers) unchanged.
    pub fn tensors_to_save(&self) -> Result<HashMap<String, Tensor>> {
        let vars = self.vars.lock().expect("params lock");
        let saved_as = self.saved_as.lock().expect("params lock");
        let mut out = HashMap::new();
        for stored in self.store.files().tensors().keys() {
            let t = match saved_as.get(stored) {
                Some(key) => vars[key].as_tensor().detach(),
                None => self.store.files().load(stored)?,
            };
            out.insert(stored.clone(), t.to_device(&Device::Cpu)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::decays;

    #[test]
    fn no_decay_on_biases_and_layer_norms() {
        for name in [
            "encoder.encoder.layer.0.attention.output.LayerNorm.weight",
            "decoder.roberta.lm_head.layer_norm.weight",
            "decoder.transformer.h.0.ln_cross_attn.weight",
            "decoder.transformer.ln_f.weight",
            "decoder.cls.predictions.bias",
            "decoder.transformer.h.1.attn.c_attn.bias",
        ] {
            assert!(!decays(name), "{name}");
        }
        for name in [
            "encoder.embeddings.word_embeddings.weight",
            "decoder.transformer.h.0.attn.c_attn.weight",
            "decoder.bert.encoder.layer.1.crossattention.self.key.weight",
        ] {
            assert!(decays(name), "{name}");
        }
    }
}
