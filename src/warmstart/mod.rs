//! `encdec warmstart`: compose an `EncoderDecoderModel` directory from standalone
//! checkpoints (or random ones), the way transformers'
//! `EncoderDecoderModel.from_encoder_decoder_pretrained(enc, dec, tie_encoder_decoder=...)`
//! followed by `save_pretrained` does, with the special ids users then set.
//!
//! * [`plan`] lists every parameter of the composed model from the two sub-configs
//!   (names, shapes, component, where a standalone checkpoint keeps it, how transformers
//!   initialises it otherwise) — so the bookkeeping table needs no weights;
//! * [`source`] opens the standalone checkpoints (BERT / RoBERTa / BertGeneration / GPT-2,
//!   base-model or head-model layout, safetensors or `.bin`) and the `random:` presets;
//! * [`tokenizer`] picks each side's tokenizer and the special ids;
//! * [`init`] draws the seeded random tensors.
//!
//! Copied tensors are written byte for byte (unless `--dtype` asks for a conversion).

pub mod init;
pub mod plan;
pub mod source;
pub mod tokenizer;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::checkpoint::config::{EncoderDecoderConfig, Family, StackConfig};
pub use plan::{Component, Counts, Origin, ParamSpec, ParamTable, Side};
use source::{is_buffer_or_alias, preset_config, Checkpoint};
pub use source::{Size, SourceSpec};
use tokenizer::{family_specials, has_tokenizer_files, TokInfo, TokSource};

/// Storage dtype of the composed weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeChoice {
    /// The checkpoints' dtype when they agree (copies stay bit-identical), else f32;
    /// f32 when everything is random.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub encoder: SourceSpec,
    pub decoder: SourceSpec,
    pub tie_encoder_decoder: bool,
    pub seed: u64,
    pub dtype: DtypeChoice,
    /// Tokenizer directory for the encoder side (default: the encoder checkpoint's; a
    /// random side borrows the other side's).
    pub encoder_tokenizer: Option<PathBuf>,
    pub decoder_tokenizer: Option<PathBuf>,
}

impl Options {
    pub fn new(encoder: SourceSpec, decoder: SourceSpec) -> Self {
        Self {
            encoder,
            decoder,
            tie_encoder_decoder: false,
            seed: 0,
            dtype: DtypeChoice::Auto,
            encoder_tokenizer: None,
            decoder_tokenizer: None,
        }
    }
}

enum Src {
    Ckpt(Box<Checkpoint>),
    Random { family: Family, size: Size },
}

impl Src {
    fn open(spec: &SourceSpec) -> Result<Self> {
        Ok(match spec {
            SourceSpec::Checkpoint(dir) => Src::Ckpt(Box::new(Checkpoint::open(dir)?)),
            SourceSpec::Random { family, size } => Src::Random {
                family: *family,
                size: *size,
            },
        })
    }

    fn family(&self) -> Family {
        match self {
            Src::Ckpt(c) => c.family,
            Src::Random { family, .. } => *family,
        }
    }

    fn ckpt(&self) -> Option<&Checkpoint> {
        match self {
            Src::Ckpt(c) => Some(c),
            Src::Random { .. } => None,
        }
    }

    fn label(&self) -> String {
        match self {
            Src::Ckpt(c) => format!("{} ({})", c.dir.display(), c.layout()),
            Src::Random { family, size } => SourceSpec::Random {
                family: *family,
                size: *size,
            }
            .to_string(),
        }
    }
}

/// Everything decided before any tensor is materialised.
pub struct Composition {
    enc: Src,
    dec: Src,
    enc_tok: Option<TokInfo>,
    dec_tok: Option<TokInfo>,
    /// The composed `config.json`.
    pub config: Value,
    pub generation_config: Value,
    pub specs: Vec<ParamSpec>,
    /// Per spec: where its values come from, and the stored name when copied.
    pub origins: Vec<Origin>,
    stored: Vec<Option<String>>,
    pub table: ParamTable,
    /// Per checkpoint side: tensors it has that the composed model does not use.
    pub unused: Vec<(Side, Vec<String>)>,
    pub notes: Vec<String>,
    pub dtype: DType,
}

/// A side's own tokenizer: given explicitly, or its checkpoint's.
fn own_tokenizer(explicit: &Option<PathBuf>, src: &Src) -> Result<Option<TokSource>> {
    if let Some(d) = explicit {
        if !has_tokenizer_files(d) {
            bail!(
                "no tokenizer in {} (looked for tokenizer.json, vocab.txt, vocab.json + merges.txt, spiece.model)",
                d.display()
            );
        }
        return Ok(Some(TokSource::Dir(d.clone())));
    }
    Ok(match src {
        Src::Ckpt(c) if has_tokenizer_files(&c.dir) => Some(TokSource::Dir(c.dir.clone())),
        _ => None,
    })
}

fn set(o: &mut Value, key: &str, v: Value) {
    o.as_object_mut()
        .expect("configs are JSON objects")
        .insert(key.to_string(), v);
}

fn id_field(v: &Value, key: &str) -> Option<u32> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64().map(|x| x as u32),
        Value::Array(a) => a.first()?.as_u64().map(|x| x as u32),
        _ => None,
    }
}

/// A side's sub-config: the checkpoint's `config.json` (or the preset), with the
/// decoder flags `from_encoder_decoder_pretrained` sets; a random side takes its
/// vocabulary and special ids from its tokenizer.
fn sub_config(src: &Src, tok: Option<&TokInfo>, is_decoder: bool) -> Result<Value> {
    let mut v = match src {
        Src::Ckpt(c) => c.config.clone(),
        Src::Random { family, size } => preset_config(*family, *size),
    };
    if !v.is_object() {
        bail!("config.json is not a JSON object");
    }
    v.as_object_mut().unwrap().remove("transformers_version");
    if let (Src::Random { family, .. }, Some(t)) = (src, tok) {
        let vocab = t.vocab_size;
        set(&mut v, "vocab_size", json!(vocab));
        let fits = |id: Option<u32>| id.filter(|&i| (i as usize) < vocab);
        let pad = t
            .special("pad_token")
            .or(fits(id_field(&v, "pad_token_id")));
        set(&mut v, "pad_token_id", json!(pad));
        if *family != Family::Bert {
            let bos = t
                .special("bos_token")
                .or_else(|| t.special("cls_token"))
                .or(fits(id_field(&v, "bos_token_id")));
            let eos = t
                .special("eos_token")
                .or_else(|| t.special("sep_token"))
                .or(fits(id_field(&v, "eos_token_id")));
            set(&mut v, "bos_token_id", json!(bos));
            set(&mut v, "eos_token_id", json!(eos));
        }
    }
    set(&mut v, "is_decoder", json!(is_decoder));
    set(&mut v, "add_cross_attention", json!(is_decoder));
    Ok(v)
}

fn check_tie(e: &StackConfig, d: &StackConfig) -> Result<()> {
    let shape = |c: &StackConfig| {
        (
            c.family,
            c.vocab_size,
            c.hidden_size,
            c.num_layers,
            c.num_heads,
            c.intermediate_size,
            c.max_positions,
            c.type_vocab_size,
        )
    };
    if shape(e) != shape(d) {
        bail!(
            "--tie-encoder-decoder needs two stacks of the same family and shape; got encoder {} \
             ({} layers, hidden {}, vocab {}) and decoder {} ({} layers, hidden {}, vocab {})",
            e.family.model_type(),
            e.num_layers,
            e.hidden_size,
            e.vocab_size,
            d.family.model_type(),
            d.num_layers,
            d.hidden_size,
            d.vocab_size
        );
    }
    Ok(())
}

/// Decides everything (config, special ids, tokenizers, where each parameter comes
/// from) without materialising a tensor: the bookkeeping of a dry run.
pub fn compose(opts: &Options) -> Result<Composition> {
    let enc = Src::open(&opts.encoder).context("opening the encoder checkpoint")?;
    let dec = Src::open(&opts.decoder).context("opening the decoder checkpoint")?;
    if enc.family() == Family::Gpt2 {
        bail!(
            "GPT-2 can't be the encoder (it is decoder-only): use bert, roberta or bert-generation"
        );
    }
    let mut notes = Vec::new();

    // Tokenizers: each side's own; a random side borrows the other side's, else a random
    // BERT gets bert-base-uncased's vocabulary; a checkpoint without tokenizer files
    // borrows the other side's when the vocabulary sizes agree.
    let enc_own = own_tokenizer(&opts.encoder_tokenizer, &enc)?;
    let dec_own = own_tokenizer(&opts.decoder_tokenizer, &dec)?;
    let fallback = |src: &Src, other_own: &Option<TokSource>| -> Option<TokSource> {
        match src {
            Src::Random { family, .. } => other_own
                .clone()
                .or_else(|| (*family == Family::Bert).then_some(TokSource::BuiltinBertUncased)),
            Src::Ckpt(_) => other_own.clone(),
        }
    };
    let mut enc_src = enc_own.clone().or_else(|| fallback(&enc, &dec_own));
    let mut dec_src = dec_own.clone().or_else(|| fallback(&dec, &enc_own));
    if enc_src.is_none() && matches!(enc, Src::Random { .. }) {
        enc_src = dec_src.clone();
    }
    if dec_src.is_none() && matches!(dec, Src::Random { .. }) {
        dec_src = enc_src.clone();
    }
    let mut cache: HashMap<String, usize> = HashMap::new();
    let mut loaded: Vec<TokInfo> = Vec::new();
    let mut load = |s: &Option<TokSource>| -> Result<Option<usize>> {
        let Some(s) = s else { return Ok(None) };
        let key = s.to_string();
        if let Some(&i) = cache.get(&key) {
            return Ok(Some(i));
        }
        loaded.push(TokInfo::load(s.clone())?);
        cache.insert(key, loaded.len() - 1);
        Ok(Some(loaded.len() - 1))
    };
    let mut enc_i = load(&enc_src)?;
    let mut dec_i = load(&dec_src)?;
    // A checkpoint keeps its vocabulary: a borrowed tokenizer must match it.
    for (side, src, idx, own) in [
        ("encoder", &enc, &mut enc_i, &enc_own),
        ("decoder", &dec, &mut dec_i, &dec_own),
    ] {
        if let (Src::Ckpt(c), Some(i), None) = (src, *idx, own) {
            let want = c.config.get("vocab_size").and_then(Value::as_u64);
            if want != Some(loaded[i].vocab_size as u64) {
                notes.push(format!(
                    "{side} checkpoint has no tokenizer files and the other side's vocabulary \
                     ({} tokens) does not match its vocab_size; pass --{side}-tokenizer",
                    loaded[i].vocab_size
                ));
                *idx = None;
            }
        }
    }
    let enc_tok = enc_i.map(|i| &loaded[i]);
    let dec_tok = dec_i.map(|i| &loaded[i]);
    if enc_tok.is_none() && dec_tok.is_none() {
        notes.push(
            "no tokenizer for either side: the output has no tokenizer files, so encdec can't \
             serve it until you add some (--encoder-tokenizer / --decoder-tokenizer DIR)"
                .into(),
        );
    }

    let enc_cfg = sub_config(&enc, enc_tok, false)?;
    let dec_cfg = sub_config(&dec, dec_tok, true)?;
    for (side, c) in [("encoder", &enc_cfg), ("decoder", &dec_cfg)] {
        if let Some(p) = c.get("position_embedding_type").and_then(Value::as_str) {
            if p != "absolute" {
                bail!("{side}: position_embedding_type `{p}` is not supported (only absolute)");
            }
        }
    }
    if dec_cfg
        .get("cross_attention_hidden_size")
        .is_some_and(|v| !v.is_null())
    {
        bail!("decoder configs with `cross_attention_hidden_size` are not supported");
    }

    // Special ids, as users set them on a warm-started model (transformers leaves them
    // unset): from the decoder's tokenizer, else its config, else the family's usual ones.
    let (fam_start, fam_eos, _) = family_specials(dec.family());
    let (t_start, t_eos, t_pad) = dec_tok.map(TokInfo::decoder_specials).unwrap_or_default();
    let start = t_start
        .or(id_field(&dec_cfg, "bos_token_id"))
        .unwrap_or(fam_start);
    let eos = t_eos
        .or(id_field(&dec_cfg, "eos_token_id"))
        .unwrap_or(fam_eos);
    let pad = t_pad.or(id_field(&dec_cfg, "pad_token_id")).unwrap_or(eos);

    let mut config = json!({
        "architectures": ["EncoderDecoderModel"],
        "bos_token_id": start,
        "decoder": dec_cfg,
        "decoder_start_token_id": start,
        "encoder": enc_cfg,
        "eos_token_id": eos,
        "is_encoder_decoder": true,
        "model_type": "encoder-decoder",
        "pad_token_id": pad,
        "vocab_size": dec_cfg.get("vocab_size").cloned().unwrap_or(Value::Null),
    });
    if opts.tie_encoder_decoder {
        set(&mut config, "tie_encoder_decoder", json!(true));
    }
    let parsed = EncoderDecoderConfig::from_json(config.clone())
        .context("the composed config is not one encdec can serve")?;
    if opts.tie_encoder_decoder {
        check_tie(&parsed.encoder, &parsed.decoder)?;
    }
    let generation_config = json!({
        "bos_token_id": start,
        "decoder_start_token_id": start,
        "eos_token_id": eos,
        "pad_token_id": pad,
    });

    // Where every parameter comes from.
    let specs = plan::plan(
        &parsed.encoder,
        &config["encoder"],
        &parsed.decoder,
        &config["decoder"],
        opts.tie_encoder_decoder,
    );
    let mut origins = Vec::with_capacity(specs.len());
    let mut stored = Vec::with_capacity(specs.len());
    let mut used: [BTreeSet<String>; 2] = Default::default();
    for s in &specs {
        let found = s.source.as_ref().and_then(|(side, name)| {
            let src = match side {
                Side::Encoder => &enc,
                Side::Decoder => &dec,
            };
            src.ckpt().and_then(|c| c.find(name).map(|n| (*side, c, n)))
        });
        match found {
            Some((side, c, name)) => {
                let shape = &c.tensors()[&name].shape;
                if shape != &s.shape {
                    bail!(
                        "{} checkpoint tensor `{name}` has shape {shape:?}, but its config implies \
                         {:?} for `{}`",
                        if side == Side::Encoder { "encoder" } else { "decoder" },
                        s.shape,
                        s.name
                    );
                }
                used[side as usize].insert(name.clone());
                origins.push(match side {
                    Side::Encoder => Origin::Encoder,
                    Side::Decoder => Origin::Decoder,
                });
                stored.push(Some(name));
            }
            None => {
                origins.push(Origin::Random);
                stored.push(None);
            }
        }
    }
    let table = ParamTable::new(
        &specs,
        &origins,
        parsed.decoder.num_layers,
        enc.label(),
        dec.label(),
    );

    let mut unused = Vec::new();
    for (side, src) in [(Side::Encoder, &enc), (Side::Decoder, &dec)] {
        if let Some(c) = src.ckpt() {
            let names: Vec<String> = c
                .tensors()
                .keys()
                .filter(|n| !used[side as usize].contains(*n) && !is_buffer_or_alias(n))
                .cloned()
                .collect();
            if !names.is_empty() {
                unused.push((side, names));
            }
        }
    }
    // Components a checkpoint was expected to provide but did not.
    for (c, r) in &table.rows {
        let owner = match c {
            Component::EncoderEmbeddings
            | Component::EncoderSelfAttention
            | Component::EncoderFeedForward
            | Component::EncoderPooler => &enc,
            Component::DecoderCrossAttention | Component::EncToDecProj => continue,
            _ => &dec,
        };
        if r.random > 0 && owner.ckpt().is_some() {
            notes.push(format!(
                "{}: {} parameters are not in the checkpoint and were initialised randomly \
                 (as transformers does)",
                c.label(),
                plan::thousands(r.random)
            ));
        }
    }
    if opts.tie_encoder_decoder && enc.ckpt().is_some() && opts.encoder != opts.decoder {
        notes.push(
            "tie_encoder_decoder: the shared embeddings and layers take the decoder \
             checkpoint's values (transformers ties encoder.X to decoder.<base>.X)"
                .into(),
        );
    }

    // Output dtype.
    let mut copied: Vec<DType> = Vec::new();
    for d in stored.iter().zip(&specs).filter_map(|(n, s)| {
        let n = n.as_ref()?;
        let c = match s.source.as_ref()?.0 {
            Side::Encoder => enc.ckpt()?,
            Side::Decoder => dec.ckpt()?,
        };
        Some(c.tensors()[n].dtype)
    }) {
        if !copied.contains(&d) {
            copied.push(d);
        }
    }
    let dtype = match opts.dtype {
        DtypeChoice::F32 => DType::F32,
        DtypeChoice::F16 => DType::F16,
        DtypeChoice::Bf16 => DType::BF16,
        DtypeChoice::Auto => match copied.len() {
            0 => DType::F32,
            1 => {
                let d = copied[0];
                if d.is_float() {
                    d
                } else {
                    bail!("checkpoint weights are {d:?}, not floating point")
                }
            }
            _ => {
                notes.push(format!(
                    "the checkpoints store {copied:?}; everything is written as F32 (lossless)"
                ));
                DType::F32
            }
        },
    };
    let dtype_name = crate::checkpoint::dtype::torch_name(dtype);
    set(&mut config, "dtype", json!(dtype_name));

    let enc_tok = enc_i.map(|i| loaded[i].clone());
    let dec_tok = dec_i.map(|i| loaded[i].clone());
    Ok(Composition {
        enc,
        dec,
        enc_tok,
        dec_tok,
        config,
        generation_config,
        specs,
        origins,
        stored,
        table,
        unused,
        notes,
        dtype,
    })
}

impl Composition {
    /// Whether the decoder needs its own tokenizer (`decoder_tokenizer/`).
    pub fn separate_decoder_tokenizer(&self) -> bool {
        match (&self.enc_tok, &self.dec_tok) {
            (Some(e), Some(d)) => !e.same_vocab(d),
            _ => false,
        }
    }

    /// Where the tokenizers come from: (encoder, decoder).
    pub fn tokenizer_sources(&self) -> (Option<String>, Option<String>) {
        (
            self.enc_tok.as_ref().map(|t| t.source.to_string()),
            self.dec_tok.as_ref().map(|t| t.source.to_string()),
        )
    }

    /// Materialises every tensor: copies (converted only if the output dtype differs)
    /// and seeded random ones.
    pub fn tensors(&self, seed: u64) -> Result<Vec<(String, Tensor)>> {
        let dtype = self.dtype;
        self.specs
            .par_iter()
            .zip(self.origins.par_iter().zip(self.stored.par_iter()))
            .map(|(s, (origin, stored))| {
                let t = match (origin, stored) {
                    (Origin::Random, _) | (_, None) => {
                        let v = init::generate(s.init, &s.shape, init::tensor_seed(seed, &s.name));
                        Tensor::from_vec(v, s.shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?
                    }
                    (origin, Some(name)) => {
                        let src = if *origin == Origin::Encoder {
                            &self.enc
                        } else {
                            &self.dec
                        };
                        let c = src.ckpt().expect("copied tensors come from checkpoints");
                        let t = c.load(name).with_context(|| {
                            format!("loading `{name}` from {}", c.dir.display())
                        })?;
                        if t.dtype() == dtype {
                            t
                        } else {
                            t.to_dtype(dtype)?
                        }
                    }
                };
                Ok((s.name.clone(), t))
            })
            .collect()
    }

    /// Writes the composed model into `out` (which must not hold a model unless `force`).
    pub fn write(&self, out: &Path, seed: u64, force: bool) -> Result<Vec<PathBuf>> {
        for src in [&self.enc, &self.dec] {
            if let Some(c) = src.ckpt() {
                if out.canonicalize().ok() == c.dir.canonicalize().ok() {
                    bail!("--out {} is a source checkpoint directory", out.display());
                }
            }
        }
        if out.join("config.json").exists() || out.join("model.safetensors").exists() {
            if !force {
                bail!(
                    "{} already holds a model; pass --force to overwrite it",
                    out.display()
                );
            }
            let stale = out.join("decoder_tokenizer");
            if stale.is_dir() {
                std::fs::remove_dir_all(&stale)
                    .with_context(|| format!("removing {}", stale.display()))?;
            }
        }
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let mut written = Vec::new();

        for (name, v) in [
            ("config.json", &self.config),
            ("generation_config.json", &self.generation_config),
        ] {
            let path = out.join(name);
            std::fs::write(&path, serde_json::to_string_pretty(v)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }

        let tensors = self.tensors(seed)?;
        let weights = out.join("model.safetensors");
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(metadata),
            &weights,
        )
        .with_context(|| format!("writing {}", weights.display()))?;
        drop(tensors);
        // The safetensors writer creates a private file; give it the usual permissions.
        let perms = std::fs::metadata(out.join("config.json"))?.permissions();
        std::fs::set_permissions(&weights, perms)?;
        written.push(weights);

        // The encoder's tokenizer at the top (encdec and transformers users load it from
        // there); the decoder's in decoder_tokenizer/ when the vocabularies differ.
        let root = self.enc_tok.as_ref().or(self.dec_tok.as_ref());
        if let Some(t) = root {
            written.extend(t.write_to(out)?.into_iter().map(|f| out.join(f)));
        }
        if self.separate_decoder_tokenizer() {
            let dir = out.join("decoder_tokenizer");
            let t = self.dec_tok.as_ref().expect("separate implies present");
            written.extend(t.write_to(&dir)?.into_iter().map(|f| dir.join(f)));
        }
        Ok(written)
    }
}

/// What a warm start did, for printing.
pub struct Report {
    pub composition: Composition,
    pub files: Vec<PathBuf>,
}

impl Report {
    pub fn table(&self) -> &ParamTable {
        &self.composition.table
    }
}

/// Composes and writes the model into `out`.
pub fn warmstart(opts: &Options, out: &Path, force: bool) -> Result<Report> {
    let composition = compose(opts)?;
    let files = composition.write(out, opts.seed, force)?;
    Ok(Report { composition, files })
}
