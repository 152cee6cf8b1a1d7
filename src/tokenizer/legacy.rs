//! Tokenizers rebuilt from the *legacy* (slow-tokenizer) files of a model directory.
//!
//! Many hub checkpoints (the `google/*` encoder-decoder ones in particular) ship only
//! `vocab.txt`, `vocab.json` + `merges.txt` or `spiece.model`, without a `tokenizer.json`.
//! This module builds the same `tokenizers::Tokenizer` that transformers'
//! `convert_slow_tokenizer` produces for them:
//!
//! * `vocab.txt` → BERT WordPiece (`BertConverter`),
//! * `vocab.json` + `merges.txt` → byte-level BPE, RoBERTa (`RobertaConverter`) or GPT-2
//!   (`GPT2Converter`),
//! * `spiece.model` → sentencepiece Unigram (`SpmConverter`, used by BertGeneration).
//!
//! The sentencepiece `ModelProto` is decoded by a small hand-written protobuf reader.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::checkpoint::special_tokens::{self, token_content};
use serde_json::{Map, Value};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::models::unigram::Unigram;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{BertNormalizer, Precompiled, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{
    AddedToken, Model, NormalizerWrapper, PreTokenizerWrapper, Tokenizer, TokenizerImpl,
};

use super::settings::{config_tokenizer_class, TokenizerSettings};

type Impl = TokenizerImpl<
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Builds the tokenizer from legacy files in `dir` (no tokenizer.json involved).
/// Ok(None) when the directory holds none of the legacy files.
pub fn from_legacy_files(dir: &Path) -> Result<Option<Tokenizer>> {
    from_legacy_files_with(dir, &TokenizerSettings::default())
}

/// [`from_legacy_files`] with `settings` applied the way transformers applies the same
/// keyword arguments to `from_pretrained`: they win over the tokenizer files.
pub fn from_legacy_files_with(
    dir: &Path,
    settings: &TokenizerSettings,
) -> Result<Option<Tokenizer>> {
    let cfg = TokConfig::load(dir, settings)?;
    let built = if dir.join("vocab.txt").is_file() {
        build_wordpiece(dir, &cfg)?
    } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
        build_byte_level_bpe(dir, &cfg)?
    } else if dir.join("spiece.model").is_file() {
        build_sentencepiece(dir, &cfg)?
    } else {
        return Ok(None);
    };
    let mut tok: Impl = built.tokenizer;
    register_added_tokens(&mut tok, dir, &cfg, built.base_vocab_size, built.added)?;
    if let Some((cls, sep)) = built.bert_template {
        tok.with_post_processor(Some(bert_template(&tok, &cls, &sep)?));
    }
    Ok(Some(Tokenizer::from(tok)))
}

struct Built {
    tokenizer: Impl,
    /// Size of the model's own vocabulary (ids below it belong to the model).
    base_vocab_size: usize,
    /// Tokens the converter itself registers, in order.
    added: Vec<AddedToken>,
    /// `(cls, sep)` of a BERT template to set once the added tokens have their ids: a
    /// `vocab.txt` without `[CLS]`/`[SEP]` (google/bert2bert_L-24_wmt_*) gets them as
    /// added tokens after the vocabulary, as transformers does.
    bert_template: Option<(String, String)>,
}

// ---------------------------------------------------------------------------
// Configuration (tokenizer_config.json + special_tokens_map.json)
// ---------------------------------------------------------------------------

const SPECIAL_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// BertTokenizer's default for each of [`SPECIAL_KEYS`]: no bos/eos unless configured
/// (the WMT cards' `bos_token="<s>", eos_token="</s>"`).
const BERT_SPECIAL_DEFAULTS: [Option<&str>; 7] = [
    None,
    None,
    Some("[UNK]"),
    Some("[SEP]"),
    Some("[PAD]"),
    Some("[CLS]"),
    Some("[MASK]"),
];

struct TokConfig {
    map: Map<String, Value>,
}

impl TokConfig {
    fn load(dir: &Path, settings: &TokenizerSettings) -> Result<Self> {
        // special_tokens_map.json overrides the special tokens of tokenizer_config.json,
        // as in transformers' `from_pretrained`.
        let mut map = special_tokens::merged(dir)?;
        // AutoTokenizer falls back to config.json's `tokenizer_class`.
        if !map.contains_key("tokenizer_class") {
            if let Some(class) = config_tokenizer_class(dir)? {
                map.insert("tokenizer_class".into(), Value::String(class));
            }
        }
        // `from_pretrained(..., eos_token="</s>", do_lower_case=False)` win over the files.
        for (key, token) in settings.special_tokens() {
            map.insert(key.into(), Value::String(token.into()));
        }
        if let Some(lower) = settings.do_lower_case {
            map.insert("do_lower_case".into(), Value::Bool(lower));
        }
        Ok(Self { map })
    }

    fn bool_or(&self, key: &str, default: bool) -> bool {
        self.map
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    /// `Some(b)` when the key holds a boolean, `None` when absent or null.
    fn opt_bool(&self, key: &str) -> Option<bool> {
        self.map.get(key).and_then(Value::as_bool)
    }

    fn str_opt(&self, key: &str) -> Option<&str> {
        self.map.get(key).and_then(Value::as_str)
    }

    /// A special token's content: `None` if the key is present but null, `default` if absent.
    fn special(&self, key: &str, default: Option<&str>) -> Option<String> {
        match self.map.get(key) {
            None => default.map(str::to_owned),
            Some(v) => token_content(v),
        }
    }

    /// Contents of all named special tokens plus `additional_special_tokens`.
    fn all_special_contents(&self) -> Vec<String> {
        let mut out: Vec<String> = SPECIAL_KEYS
            .iter()
            .filter_map(|k| self.map.get(*k).and_then(token_content))
            .collect();
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            if let Some(Value::Array(a)) = self.map.get(key) {
                out.extend(a.iter().filter_map(token_content));
            }
        }
        out
    }
}

fn special_token(content: &str) -> AddedToken {
    AddedToken::from(content, true).normalized(false)
}

// ---------------------------------------------------------------------------
// BERT WordPiece (vocab.txt)
// ---------------------------------------------------------------------------

fn build_wordpiece(dir: &Path, cfg: &TokConfig) -> Result<Built> {
    let path = dir.join("vocab.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // transformers' `load_vocab`: one token per line, id = line index, later duplicates win.
    let mut vocab = Vocab::new();
    let mut lines = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let token = line.strip_suffix('\n').unwrap_or(line);
        vocab.insert(token.to_owned(), i as u32);
        lines = i + 1;
    }
    if vocab.is_empty() {
        bail!("{} is empty", path.display());
    }

    let defaults = BERT_SPECIAL_DEFAULTS;
    let special = |key: &str| {
        let at = SPECIAL_KEYS
            .iter()
            .position(|k| *k == key)
            .expect("known key");
        cfg.special(key, defaults[at])
    };
    let unk = special("unk_token").unwrap_or("[UNK]".into());
    let cls = special("cls_token").unwrap_or("[CLS]".into());
    let sep = special("sep_token").unwrap_or("[SEP]".into());

    let model = WordPiece::builder()
        .vocab(vocab.clone())
        .unk_token(unk.clone())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(|e| anyhow!("building WordPiece: {e}"))?;

    let lowercase = cfg.bool_or("do_lower_case", default_do_lower_case(cfg));
    let normalizer = BertNormalizer::new(
        true,
        cfg.bool_or("tokenize_chinese_chars", true),
        cfg.opt_bool("strip_accents"),
        lowercase,
    );

    let mut tok: Impl = TokenizerImpl::new(ModelWrapper::from(model));
    tok.with_normalizer(Some(NormalizerWrapper::from(normalizer)))
        .map_err(|e| anyhow!("normalizer: {e}"))?
        .with_pre_tokenizer(Some(PreTokenizerWrapper::from(BertPreTokenizer)))
        .with_decoder(Some(DecoderWrapper::from(WordPieceDecoder::new(
            "##".into(),
            true,
        ))));

    // transformers adds the named special tokens in this order (bos, eos, unk, sep, pad,
    // cls, mask); those missing from vocab.txt get the next ids in that order.
    let added: Vec<String> = SPECIAL_KEYS.iter().filter_map(|k| special(k)).collect();
    let added = sorted_by_vocab_id(added, &vocab);
    Ok(Built {
        tokenizer: tok,
        base_vocab_size: lines,
        added,
        bert_template: Some((cls, sep)),
    })
}

/// WordPiece lower-casing when the tokenizer files don't say: the transformers classes
/// reading a `vocab.txt` (BertTokenizer, DistilBert, Electra, ...) default to true, except
/// the cased-only ones listed here.
fn default_do_lower_case(cfg: &TokConfig) -> bool {
    const CASED_CLASSES: [&str; 1] = ["BertJapaneseTokenizer"];
    !cfg.str_opt("tokenizer_class")
        .is_some_and(|c| CASED_CLASSES.contains(&c.trim_end_matches("Fast")))
}

/// BERT's `[CLS] $A [SEP]` / `[CLS] $A [SEP] $B [SEP]` template, with the ids the tokens
/// have in `tok` (vocabulary or added tokens).
fn bert_template(tok: &Impl, cls: &str, sep: &str) -> Result<PostProcessorWrapper> {
    let id_of = |t: &str| -> Result<u32> {
        tok.token_to_id(t)
            .ok_or_else(|| anyhow!("special token {t:?} is neither in vocab.txt nor added"))
    };
    let post = TemplateProcessing::builder()
        .try_single(format!("{cls}:0 $A:0 {sep}:0"))
        .map_err(|e| anyhow!("template: {e}"))?
        .try_pair(format!("{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1"))
        .map_err(|e| anyhow!("template: {e}"))?
        .special_tokens(vec![
            (cls.to_string(), id_of(cls)?),
            (sep.to_string(), id_of(sep)?),
        ])
        .build()
        .map_err(|e| anyhow!("template: {e}"))?;
    Ok(PostProcessorWrapper::from(post))
}

/// Special tokens in the order of their vocabulary id (unknown ones last), deduplicated.
fn sorted_by_vocab_id(mut contents: Vec<String>, vocab: &Vocab) -> Vec<AddedToken> {
    contents.sort_by_key(|c| vocab.get(c).copied().unwrap_or(u32::MAX));
    let mut seen = std::collections::HashSet::new();
    contents
        .into_iter()
        .filter(|c| !c.is_empty() && seen.insert(c.clone()))
        .map(|c| special_token(&c))
        .collect()
}

// ---------------------------------------------------------------------------
// Byte-level BPE (vocab.json + merges.txt): RoBERTa or GPT-2
// ---------------------------------------------------------------------------

fn build_byte_level_bpe(dir: &Path, cfg: &TokConfig) -> Result<Built> {
    let vpath = dir.join("vocab.json");
    let vtext =
        std::fs::read_to_string(&vpath).with_context(|| format!("reading {}", vpath.display()))?;
    let vjson: Map<String, Value> =
        serde_json::from_str(&vtext).with_context(|| format!("parsing {}", vpath.display()))?;
    let mut vocab = Vocab::new();
    for (tok, id) in vjson {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| anyhow!("{}: bad id for {tok:?}", vpath.display()))?;
        vocab.insert(tok, id);
    }
    let base_vocab_size = vocab.values().copied().max().map_or(0, |m| m as usize + 1);

    let mpath = dir.join("merges.txt");
    let mtext =
        std::fs::read_to_string(&mpath).with_context(|| format!("reading {}", mpath.display()))?;
    let mut merges: Merges = Vec::new();
    for (i, line) in mtext.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_owned(), b.to_owned())),
            _ => bail!("{}:{}: bad merge line {line:?}", mpath.display(), i + 1),
        }
    }

    let class = cfg.str_opt("tokenizer_class").unwrap_or("");
    let is_roberta = if class.contains("Roberta") {
        true
    } else if class.contains("GPT2") {
        false
    } else {
        vocab.contains_key("<s>") && vocab.contains_key("</s>")
    };
    let add_prefix_space = cfg.bool_or("add_prefix_space", false);

    let model = BPE::builder()
        .vocab_and_merges(vocab.clone(), merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .byte_fallback(false)
        .ignore_merges(false)
        .build()
        .map_err(|e| anyhow!("building BPE: {e}"))?;

    let (defaults, post): ([Option<&str>; 7], PostProcessorWrapper) = if is_roberta {
        let d = [
            Some("<s>"),
            Some("</s>"),
            Some("<unk>"),
            Some("</s>"),
            Some("<pad>"),
            Some("<s>"),
            Some("<mask>"),
        ];
        let sep = cfg.special("sep_token", d[3]).unwrap_or("</s>".into());
        let cls = cfg.special("cls_token", d[5]).unwrap_or("<s>".into());
        let sep_id = *vocab
            .get(&sep)
            .ok_or_else(|| anyhow!("sep token {sep:?} not in vocab.json"))?;
        let cls_id = *vocab
            .get(&cls)
            .ok_or_else(|| anyhow!("cls token {cls:?} not in vocab.json"))?;
        let post = RobertaProcessing::new((sep, sep_id), (cls, cls_id))
            .trim_offsets(true)
            .add_prefix_space(add_prefix_space);
        (d, PostProcessorWrapper::from(post))
    } else {
        let e = Some("<|endoftext|>");
        let d = [e, e, e, None, None, None, None];
        (d, gpt2_post_processor(cfg, &vocab)?)
    };
    let specials: Vec<String> = SPECIAL_KEYS
        .iter()
        .zip(defaults)
        .filter_map(|(k, d)| cfg.special(k, d))
        .collect();

    let mut tok: Impl = TokenizerImpl::new(ModelWrapper::from(model));
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::from(ByteLevel::new(
        add_prefix_space,
        true,
        true,
    ))))
    .with_post_processor(Some(post))
    .with_decoder(Some(DecoderWrapper::from(ByteLevel::default())));

    Ok(Built {
        tokenizer: tok,
        base_vocab_size,
        added: sorted_by_vocab_id(specials, &vocab),
        bert_template: None,
    })
}

/// GPT-2 adds no tokens unless `add_bos_token` / `add_eos_token` ask for them; transformers
/// writes this as a `TemplateProcessing` (`$A` / `$A $B:1`).
fn gpt2_post_processor(cfg: &TokConfig, vocab: &Vocab) -> Result<PostProcessorWrapper> {
    let bos = cfg
        .special("bos_token", Some("<|endoftext|>"))
        .filter(|_| cfg.bool_or("add_bos_token", false));
    let eos = cfg
        .special("eos_token", Some("<|endoftext|>"))
        .filter(|_| cfg.bool_or("add_eos_token", false));
    let side = |seq: &str, type_id: u8| {
        let mut parts = Vec::new();
        if let Some(b) = &bos {
            parts.push(format!("{b}:{type_id}"));
        }
        parts.push(format!("${seq}:{type_id}"));
        if let Some(e) = &eos {
            parts.push(format!("{e}:{type_id}"));
        }
        parts.join(" ")
    };
    let single = side("A", 0);
    let pair = format!("{single} {}", side("B", 1));
    let mut specials: Vec<(String, u32)> = Vec::new();
    for t in bos.iter().chain(eos.iter()) {
        if specials.iter().any(|(s, _)| s == t) {
            continue;
        }
        let id = *vocab
            .get(t)
            .ok_or_else(|| anyhow!("special token {t:?} not in vocab.json"))?;
        specials.push((t.clone(), id));
    }
    let post = TemplateProcessing::builder()
        .try_single(single)
        .map_err(|e| anyhow!("template: {e}"))?
        .try_pair(pair)
        .map_err(|e| anyhow!("template: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| anyhow!("template: {e}"))?;
    Ok(PostProcessorWrapper::from(post))
}

// ---------------------------------------------------------------------------
// SentencePiece Unigram (spiece.model)
// ---------------------------------------------------------------------------

fn build_sentencepiece(dir: &Path, cfg: &TokConfig) -> Result<Built> {
    let path = dir.join("spiece.model");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let proto = spm::parse_model(&bytes).with_context(|| format!("parsing {}", path.display()))?;

    if proto.model_type != 1 {
        bail!(
            "{}: sentencepiece model type {} is not supported (only unigram)",
            path.display(),
            proto.model_type
        );
    }
    if proto.pieces.is_empty() {
        bail!("{}: no pieces", path.display());
    }
    let vocab: Vec<(String, f64)> = proto
        .pieces
        .iter()
        .map(|p| (p.piece.clone(), p.score as f64))
        .collect();
    let unk_id = usize::try_from(proto.unk_id).ok();
    let model =
        Unigram::from(vocab, unk_id, false).map_err(|e| anyhow!("building Unigram: {e}"))?;

    // SpmConverter.normalizer
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if !proto.precompiled_charsmap.is_empty() {
        let pc = Precompiled::from(&proto.precompiled_charsmap)
            .map_err(|e| anyhow!("precompiled_charsmap: {e}"))?;
        norms.push(NormalizerWrapper::from(pc));
    }
    norms.push(NormalizerWrapper::from(Strip::new(false, true)));
    norms.push(NormalizerWrapper::from(
        Replace::new(ReplacePattern::Regex(" {2,}".into()), "\u{2581}")
            .map_err(|e| anyhow!("replace normalizer: {e}"))?,
    ));

    // transformers' `_get_prepend_scheme`; the slow tokenizer's `add_prefix_space`
    // defaults to True (fall back to the model's own add_dummy_prefix when unset).
    let add_prefix_space = cfg
        .opt_bool("add_prefix_space")
        .unwrap_or(proto.add_dummy_prefix);
    let scheme = if !add_prefix_space {
        PrependScheme::Never
    } else if cfg.opt_bool("legacy") == Some(false) {
        PrependScheme::First
    } else {
        PrependScheme::Always
    };
    let metaspace = Metaspace::new('\u{2581}', scheme, true);

    let mut tok: Impl = TokenizerImpl::new(ModelWrapper::from(model));
    tok.with_normalizer(Some(NormalizerWrapper::from(Sequence::new(norms))))
        .map_err(|e| anyhow!("normalizer: {e}"))?
        .with_pre_tokenizer(Some(PreTokenizerWrapper::from(metaspace.clone())))
        .with_decoder(Some(DecoderWrapper::from(metaspace)));

    // Control pieces are special added tokens, user-defined ones plain added tokens.
    let mut added: Vec<AddedToken> = proto
        .pieces
        .iter()
        .filter(|p| p.kind == 3 || p.kind == 4)
        .map(|p| AddedToken::from(p.piece.clone(), p.kind == 3).normalized(false))
        .collect();
    // Named special tokens (files, settings, BertGenerationTokenizer's defaults) that are
    // not pieces get ids after them, as transformers adds them. (Pieces keep their kind:
    // registering a normal piece such as `<unk>` would change encode/decode.)
    for content in sentencepiece_specials(cfg) {
        let known = proto.pieces.iter().any(|p| p.piece == content);
        if !content.is_empty() && !known && !added.iter().any(|t| t.content == content) {
            added.push(special_token(&content));
        }
    }
    Ok(Built {
        tokenizer: tok,
        base_vocab_size: proto.pieces.len(),
        added,
        bert_template: None,
    })
}

/// BertGenerationTokenizer's named special tokens, with the files' and settings' values.
fn sentencepiece_specials(cfg: &TokConfig) -> Vec<String> {
    let defaults = [
        Some("<s>"),
        Some("</s>"),
        Some("<unk>"),
        Some("<::::>"),
        Some("<pad>"),
        None,
        None,
    ];
    SPECIAL_KEYS
        .iter()
        .zip(defaults)
        .filter_map(|(k, d)| cfg.special(k, d))
        .collect()
}

/// The named special tokens transformers' tokenizer for the legacy files in `dir` has
/// (`all_special_tokens` less `additional_special_tokens`), class defaults included:
/// decoding skips them all, including those that are ordinary vocabulary entries
/// (a sentencepiece `<unk>`).
pub fn named_special_tokens(dir: &Path, settings: &TokenizerSettings) -> Result<Vec<String>> {
    let cfg = TokConfig::load(dir, settings)?;
    Ok(if dir.join("vocab.txt").is_file() {
        let defaults = BERT_SPECIAL_DEFAULTS;
        SPECIAL_KEYS
            .iter()
            .zip(defaults)
            .filter_map(|(k, d)| cfg.special(k, d))
            .collect()
    } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
        // The tokens the BPE builder registers are special already.
        Vec::new()
    } else if dir.join("spiece.model").is_file() {
        sentencepiece_specials(&cfg)
    } else {
        Vec::new()
    })
}

// ---------------------------------------------------------------------------
// Added tokens from added_tokens.json / tokenizer_config.json
// ---------------------------------------------------------------------------

fn register_added_tokens(
    tok: &mut Impl,
    dir: &Path,
    cfg: &TokConfig,
    base_vocab_size: usize,
    converter_tokens: Vec<AddedToken>,
) -> Result<()> {
    // The converter's own tokens come first, in their order; extra ones are keyed by the
    // id they are meant to get.
    let mut order: Vec<String> = Vec::new();
    let mut tokens: HashMap<String, (Option<u32>, AddedToken)> = HashMap::new();
    for t in converter_tokens {
        order.push(t.content.clone());
        tokens.insert(t.content.clone(), (None, t));
    }

    let specials = cfg.all_special_contents();
    let model = tok.get_model();
    let in_model = |content: &str| model.token_to_id(content).is_some();

    let mut extra: Vec<(u32, AddedToken)> = Vec::new();
    // added_tokens.json: {content: id}
    if let Some(map) = special_tokens::read_object(&dir.join("added_tokens.json"))? {
        for (content, id) in map {
            let Some(id) = id.as_u64().and_then(|i| u32::try_from(i).ok()) else {
                bail!("added_tokens.json: bad id for {content:?}");
            };
            let special = specials.contains(&content);
            extra.push((id, AddedToken::from(content, special)));
        }
    }
    // tokenizer_config.json added_tokens_decoder: {id: {content, lstrip, ...}}
    if let Some(Value::Object(dec)) = cfg.map.get("added_tokens_decoder") {
        for (id, v) in dec {
            let id: u32 = id
                .parse()
                .with_context(|| format!("added_tokens_decoder: bad id {id:?}"))?;
            let Some(content) = v.get("content").and_then(Value::as_str) else {
                continue;
            };
            let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
            let special = flag("special", false);
            let t = AddedToken::from(content, special)
                .single_word(flag("single_word", false))
                .lstrip(flag("lstrip", false))
                .rstrip(flag("rstrip", false))
                .normalized(flag("normalized", !special));
            extra.push((id, t));
        }
    }

    // additional_special_tokens: special added tokens wherever their id ends up.
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        if let Some(Value::Array(a)) = cfg.map.get(key) {
            for content in a.iter().filter_map(token_content) {
                if !content.is_empty() && !tokens.contains_key(&content) {
                    order.push(content.clone());
                    tokens.insert(content.clone(), (None, special_token(&content)));
                }
            }
        }
    }

    for (id, t) in extra {
        if let Some(entry) = tokens.get_mut(&t.content) {
            // A token registered above: take the id and flags written in the config.
            entry.0 = entry.0.or(Some(id));
            entry.1 = t;
            continue;
        }
        // A token that is part of the model's own vocabulary is not an added token
        // (e.g. sentencepiece `<unk>`): registering it would change encode/decode.
        if (id as usize) < base_vocab_size && in_model(&t.content) {
            continue;
        }
        order.push(t.content.clone());
        tokens.insert(t.content.clone(), (Some(id), t));
    }

    // New tokens get consecutive ids after the vocabulary, so add them in id order.
    let (mut known, mut new): (Vec<_>, Vec<_>) = order
        .into_iter()
        .map(|c| tokens.remove(&c).expect("token registered above"))
        .partition(|(id, t)| id.is_none() || in_model(&t.content));
    new.sort_by_key(|(id, _)| *id);
    known.extend(new);

    let list: Vec<AddedToken> = known.iter().map(|(_, t)| t.clone()).collect();
    tok.add_tokens(list)
        .map_err(|e| anyhow!("adding special tokens: {e}"))?;
    for (want, t) in &known {
        if let Some(want) = want {
            let got = tok.token_to_id(&t.content);
            if got != Some(*want) {
                tracing::warn!(
                    token = %t.content,
                    expected = want,
                    got = ?got,
                    "added token did not get the id written in the tokenizer files"
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Minimal sentencepiece ModelProto reader
// ---------------------------------------------------------------------------

mod spm {
    use anyhow::{bail, Result};

    pub struct Piece {
        pub piece: String,
        pub score: f32,
        /// 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        pub kind: u64,
    }

    pub struct ModelProto {
        pub pieces: Vec<Piece>,
        /// trainer_spec.model_type: 1 unigram, 2 bpe, 3 word, 4 char.
        pub model_type: u64,
        pub unk_id: i64,
        pub precompiled_charsmap: Vec<u8>,
        pub add_dummy_prefix: bool,
    }

    enum Field<'a> {
        Varint(u64),
        Fixed64,
        Bytes(&'a [u8]),
        Fixed32(u32),
    }

    struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn new(buf: &'a [u8]) -> Self {
            Self { buf, pos: 0 }
        }

        fn varint(&mut self) -> Result<u64> {
            let mut out = 0u64;
            for shift in (0..64).step_by(7) {
                let Some(&b) = self.buf.get(self.pos) else {
                    bail!("truncated varint");
                };
                self.pos += 1;
                out |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(out);
                }
            }
            bail!("varint too long")
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8]> {
            let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
            let Some(end) = end else {
                bail!("truncated field");
            };
            let s = &self.buf[self.pos..end];
            self.pos = end;
            Ok(s)
        }

        /// Next (field number, value), or None at the end of the message.
        fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
            if self.pos >= self.buf.len() {
                return Ok(None);
            }
            let key = self.varint()?;
            let field = key >> 3;
            let value = match key & 7 {
                0 => Field::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Field::Fixed64
                }
                2 => {
                    let n = usize::try_from(self.varint()?)?;
                    Field::Bytes(self.take(n)?)
                }
                5 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into()?)),
                w => bail!("unsupported protobuf wire type {w} (field {field})"),
            };
            Ok(Some((field, value)))
        }
    }

    pub fn parse_model(buf: &[u8]) -> Result<ModelProto> {
        let mut m = ModelProto {
            pieces: Vec::new(),
            model_type: 1,
            unk_id: 0,
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
        };
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (1, Field::Bytes(b)) => m.pieces.push(parse_piece(b)?),
                (2, Field::Bytes(b)) => parse_trainer_spec(b, &mut m)?,
                (3, Field::Bytes(b)) => parse_normalizer_spec(b, &mut m)?,
                (1..=3, _) => bail!("unexpected wire type for ModelProto field {field}"),
                _ => {}
            }
        }
        Ok(m)
    }

    fn parse_piece(buf: &[u8]) -> Result<Piece> {
        let mut p = Piece {
            piece: String::new(),
            score: 0.0,
            kind: 1,
        };
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (1, Field::Bytes(b)) => p.piece = String::from_utf8(b.to_vec())?,
                (2, Field::Fixed32(v)) => p.score = f32::from_bits(v),
                (3, Field::Varint(v)) => p.kind = v,
                (1..=3, _) => bail!("unexpected wire type for SentencePiece field {field}"),
                _ => {}
            }
        }
        Ok(p)
    }

    fn parse_trainer_spec(buf: &[u8], m: &mut ModelProto) -> Result<()> {
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (3, Field::Varint(v)) => m.model_type = v,
                // int32: negative values are sign-extended to 64 bits on the wire.
                (40, Field::Varint(v)) => m.unk_id = v as i64,
                (3 | 40, _) => bail!("unexpected wire type for TrainerSpec field {field}"),
                _ => {}
            }
        }
        Ok(())
    }

    fn parse_normalizer_spec(buf: &[u8], m: &mut ModelProto) -> Result<()> {
        let mut r = Reader::new(buf);
        while let Some((field, value)) = r.next()? {
            match (field, value) {
                (2, Field::Bytes(b)) => m.precompiled_charsmap = b.to_vec(),
                (3, Field::Varint(v)) => m.add_dummy_prefix = v != 0,
                (2 | 3, _) => bail!("unexpected wire type for NormalizerSpec field {field}"),
                _ => {}
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_minimal_model() {
            // pieces { piece: "a" score: 1.5 type: 3 } trainer_spec { unk_id: 0 }
            let mut piece = vec![0x0a, 0x01, b'a', 0x15];
            piece.extend(1.5f32.to_le_bytes());
            piece.extend([0x18, 0x03]);
            let mut buf = vec![0x0a, piece.len() as u8];
            buf.extend(&piece);
            buf.extend([0x12, 0x03, 0xc0, 0x02, 0x00]); // field 40 varint 0
            let m = parse_model(&buf).unwrap();
            assert_eq!(m.pieces.len(), 1);
            assert_eq!(m.pieces[0].piece, "a");
            assert_eq!(m.pieces[0].score, 1.5);
            assert_eq!(m.pieces[0].kind, 3);
            assert_eq!(m.unk_id, 0);
            assert!(m.add_dummy_prefix);
        }

        #[test]
        fn rejects_truncated() {
            assert!(parse_model(&[0x0a, 0x05, b'a']).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dir_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        assert!(from_legacy_files(dir.path()).unwrap().is_none());
    }
}
