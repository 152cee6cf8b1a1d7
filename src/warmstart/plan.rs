//! Every parameter of the composed `EncoderDecoderModel`, computed from the two
//! sub-configs alone: its name and shape as transformers stores it, the component it
//! belongs to, where a standalone checkpoint keeps it, and how transformers initialises
//! it when no checkpoint has it.
//!
//! The names are those of `EncoderDecoderModel.state_dict()` as transformers saves it:
//! encoder = `AutoModel` (`BertModel` with pooler, `RobertaModel` with pooler,
//! `BertGenerationEncoder`), decoder = `AutoModelForCausalLM` with cross-attention
//! (`BertLMHeadModel`, `RobertaForCausalLM`, `BertGenerationDecoder`, `GPT2LMHeadModel`),
//! tied LM-head projections left out (they are the word embeddings), `enc_to_dec_proj`
//! when the widths differ. With `tie_encoder_decoder` the encoder's embeddings and layers
//! *are* the decoder's (transformers 4.x ties `encoder.X` to `decoder.<base>.X`, the
//! decoder's values win) and are stored once, under `decoder.<base>.*`.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::source::{base_prefix, SourceName};
use crate::checkpoint::config::{Family, StackConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Encoder,
    Decoder,
}

/// Rows of the bookkeeping table, in print order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    EncoderEmbeddings,
    EncoderSelfAttention,
    EncoderFeedForward,
    EncoderPooler,
    EncToDecProj,
    DecoderEmbeddings,
    DecoderSelfAttention,
    DecoderCrossAttention,
    DecoderFeedForward,
    DecoderFinalNorm,
    DecoderLmHead,
}

impl Component {
    pub const ALL: [Component; 11] = [
        Component::EncoderEmbeddings,
        Component::EncoderSelfAttention,
        Component::EncoderFeedForward,
        Component::EncoderPooler,
        Component::EncToDecProj,
        Component::DecoderEmbeddings,
        Component::DecoderSelfAttention,
        Component::DecoderCrossAttention,
        Component::DecoderFeedForward,
        Component::DecoderFinalNorm,
        Component::DecoderLmHead,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Component::EncoderEmbeddings => "encoder embeddings",
            Component::EncoderSelfAttention => "encoder self-attention",
            Component::EncoderFeedForward => "encoder feed-forward",
            Component::EncoderPooler => "encoder pooler",
            Component::EncToDecProj => "enc_to_dec_proj",
            Component::DecoderEmbeddings => "decoder embeddings",
            Component::DecoderSelfAttention => "decoder self-attention",
            Component::DecoderCrossAttention => "decoder cross-attention",
            Component::DecoderFeedForward => "decoder feed-forward",
            Component::DecoderFinalNorm => "decoder final LayerNorm",
            Component::DecoderLmHead => "decoder LM head",
        }
    }
}

/// transformers' `_init_weights` for a parameter nobody provides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// `normal_(0, std)`; an embedding's `padding_idx` row is then zeroed.
    Normal {
        std: f32,
        zero_row: Option<usize>,
    },
    Zeros,
    Ones,
    /// PyTorch's default `nn.Linear` init, U(-bound, bound) with bound = 1/sqrt(fan_in):
    /// `enc_to_dec_proj` is created by `EncoderDecoderModel.__init__` and no
    /// `_init_weights` covers it.
    Uniform {
        bound: f32,
    },
}

#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Name in the composed checkpoint.
    pub name: String,
    pub shape: Vec<usize>,
    pub component: Component,
    pub init: Init,
    /// Which side's checkpoint may hold it, and under which name.
    pub source: Option<(Side, SourceName)>,
    /// Shared by encoder and decoder (`tie_encoder_decoder`).
    pub shared: bool,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What a parameter of the composed model was filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Encoder,
    Decoder,
    Random,
}

/// The initializer range and tying flag of a sub-config (transformers' defaults when unset).
fn init_range(raw: &Value) -> f32 {
    raw.get("initializer_range")
        .and_then(Value::as_f64)
        .unwrap_or(0.02) as f32
}

pub fn tie_word_embeddings(raw: &Value) -> bool {
    raw.get("tie_word_embeddings")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

struct Builder<'a> {
    out: &'a mut Vec<ParamSpec>,
    side: Side,
    /// Prefix of base-model parameters in the composed checkpoint (`encoder.`,
    /// `decoder.bert.`, `decoder.transformer.`).
    base_out: String,
    std: f32,
    shared: bool,
}

impl Builder<'_> {
    fn base(&mut self, rel: String, shape: Vec<usize>, component: Component, init: Init) {
        self.out.push(ParamSpec {
            name: format!("{}{rel}", self.base_out),
            shape,
            component,
            init,
            source: Some((self.side, SourceName::Base(rel))),
            shared: self.shared
                && !matches!(
                    component,
                    Component::DecoderCrossAttention | Component::EncoderPooler
                ),
        });
    }

    fn normal(&self) -> Init {
        Init::Normal {
            std: self.std,
            zero_row: None,
        }
    }

    /// `nn.Linear(inp, out)`: weight `[out, inp]`.
    fn linear(&mut self, rel: &str, out: usize, inp: usize, c: Component) {
        let n = self.normal();
        self.base(format!("{rel}.weight"), vec![out, inp], c, n);
        self.base(format!("{rel}.bias"), vec![out], c, Init::Zeros);
    }

    /// GPT-2 `Conv1D(out, inp)`: weight `[inp, out]`.
    fn conv1d(&mut self, rel: &str, inp: usize, out: usize, c: Component, std: f32) {
        let init = Init::Normal {
            std,
            zero_row: None,
        };
        self.base(format!("{rel}.weight"), vec![inp, out], c, init);
        self.base(format!("{rel}.bias"), vec![out], c, Init::Zeros);
    }

    fn layer_norm(&mut self, rel: &str, d: usize, c: Component) {
        self.base(format!("{rel}.weight"), vec![d], c, Init::Ones);
        self.base(format!("{rel}.bias"), vec![d], c, Init::Zeros);
    }

    fn embedding(&mut self, rel: &str, rows: usize, d: usize, pad: Option<u32>, c: Component) {
        let zero_row = pad.map(|p| p as usize).filter(|&p| p < rows);
        let init = Init::Normal {
            std: self.std,
            zero_row,
        };
        self.base(format!("{rel}.weight"), vec![rows, d], c, init);
    }

    /// A head parameter (`decoder.cls.predictions.*`, `decoder.lm_head.*`), stored in a
    /// checkpoint under `names` (first match wins).
    fn head(&mut self, names: &[&str], shape: Vec<usize>, init: Init) {
        self.out.push(ParamSpec {
            name: format!("decoder.{}", names[0]),
            shape,
            component: Component::DecoderLmHead,
            init,
            source: Some((
                Side::Decoder,
                SourceName::Head(names.iter().map(|s| s.to_string()).collect()),
            )),
            shared: false,
        });
    }
}

/// Embeddings and layers of a BERT-like stack (`BertModel`, `RobertaModel`,
/// `BertGenerationEncoder` and their decoder twins), names relative to the base model.
fn bert_stack(b: &mut Builder, cfg: &StackConfig, cross: bool) {
    let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (emb, attn, ffn) = match b.side {
        Side::Encoder => (
            Component::EncoderEmbeddings,
            Component::EncoderSelfAttention,
            Component::EncoderFeedForward,
        ),
        Side::Decoder => (
            Component::DecoderEmbeddings,
            Component::DecoderSelfAttention,
            Component::DecoderFeedForward,
        ),
    };
    // padding_idx: word embeddings of all three; RoBERTa's position embeddings too.
    b.embedding(
        "embeddings.word_embeddings",
        cfg.vocab_size,
        d,
        cfg.pad_token_id,
        emb,
    );
    let pos_pad = (cfg.family == Family::Roberta)
        .then_some(cfg.pad_token_id)
        .flatten();
    b.embedding(
        "embeddings.position_embeddings",
        cfg.max_positions,
        d,
        pos_pad,
        emb,
    );
    if cfg.type_vocab_size > 0 {
        b.embedding(
            "embeddings.token_type_embeddings",
            cfg.type_vocab_size,
            d,
            None,
            emb,
        );
    }
    b.layer_norm("embeddings.LayerNorm", d, emb);
    for l in 0..cfg.num_layers {
        let p = format!("encoder.layer.{l}");
        let attention = |b: &mut Builder, name: &str, c: Component| {
            for proj in ["query", "key", "value"] {
                b.linear(&format!("{p}.{name}.self.{proj}"), d, d, c);
            }
            b.linear(&format!("{p}.{name}.output.dense"), d, d, c);
            b.layer_norm(&format!("{p}.{name}.output.LayerNorm"), d, c);
        };
        attention(b, "attention", attn);
        if cross {
            attention(b, "crossattention", Component::DecoderCrossAttention);
        }
        b.linear(&format!("{p}.intermediate.dense"), i, d, ffn);
        b.linear(&format!("{p}.output.dense"), d, i, ffn);
        b.layer_norm(&format!("{p}.output.LayerNorm"), d, ffn);
    }
}

/// `GPT2LMHeadModel.transformer` with cross-attention, names relative to `transformer.`.
fn gpt2_stack(b: &mut Builder, cfg: &StackConfig) {
    let (d, inner) = (cfg.hidden_size, cfg.intermediate_size);
    // GPT-2's scaled init of residual projections: std / sqrt(2 * n_layer), applied to
    // every `c_proj.weight` (self-attention, cross-attention and MLP).
    let scaled = b.std / ((2 * cfg.num_layers) as f32).sqrt();
    let std = b.std;
    b.embedding("wte", cfg.vocab_size, d, None, Component::DecoderEmbeddings);
    b.embedding(
        "wpe",
        cfg.max_positions,
        d,
        None,
        Component::DecoderEmbeddings,
    );
    for l in 0..cfg.num_layers {
        let p = format!("h.{l}");
        let (sa, ca, ff) = (
            Component::DecoderSelfAttention,
            Component::DecoderCrossAttention,
            Component::DecoderFeedForward,
        );
        b.layer_norm(&format!("{p}.ln_1"), d, sa);
        b.conv1d(&format!("{p}.attn.c_attn"), d, 3 * d, sa, std);
        b.conv1d(&format!("{p}.attn.c_proj"), d, d, sa, scaled);
        b.layer_norm(&format!("{p}.ln_cross_attn"), d, ca);
        b.conv1d(&format!("{p}.crossattention.c_attn"), d, 2 * d, ca, std);
        b.conv1d(&format!("{p}.crossattention.q_attn"), d, d, ca, std);
        b.conv1d(&format!("{p}.crossattention.c_proj"), d, d, ca, scaled);
        b.layer_norm(&format!("{p}.ln_2"), d, ff);
        b.conv1d(&format!("{p}.mlp.c_fc"), d, inner, ff, std);
        b.conv1d(&format!("{p}.mlp.c_proj"), inner, d, ff, scaled);
    }
    b.layer_norm("ln_f", d, Component::DecoderFinalNorm);
}

/// All parameters of the composed model, in a stable order.
pub fn plan(
    enc: &StackConfig,
    enc_raw: &Value,
    dec: &StackConfig,
    dec_raw: &Value,
    tie_encoder_decoder: bool,
) -> Vec<ParamSpec> {
    let mut specs = Vec::new();

    // Encoder: AutoModel → BertModel / RobertaModel (with pooler) / BertGenerationEncoder.
    // Tied: its embeddings and layers are the decoder's, only the pooler is its own.
    {
        let mut b = Builder {
            out: &mut specs,
            side: Side::Encoder,
            base_out: "encoder.".into(),
            std: init_range(enc_raw),
            shared: false,
        };
        if !tie_encoder_decoder {
            bert_stack(&mut b, enc, false);
        }
        if matches!(enc.family, Family::Bert | Family::Roberta) {
            let d = enc.hidden_size;
            b.linear("pooler.dense", d, d, Component::EncoderPooler);
        }
    }

    if enc.hidden_size != dec.hidden_size {
        let bound = 1.0 / (enc.hidden_size as f32).sqrt();
        for (name, shape) in [
            (
                "enc_to_dec_proj.weight",
                vec![dec.hidden_size, enc.hidden_size],
            ),
            ("enc_to_dec_proj.bias", vec![dec.hidden_size]),
        ] {
            specs.push(ParamSpec {
                name: name.into(),
                shape,
                component: Component::EncToDecProj,
                init: Init::Uniform { bound },
                source: None,
                shared: false,
            });
        }
    }

    // Decoder: AutoModelForCausalLM with is_decoder + add_cross_attention.
    let std = init_range(dec_raw);
    let mut b = Builder {
        out: &mut specs,
        side: Side::Decoder,
        base_out: format!("decoder.{}.", base_prefix(dec.family)),
        std,
        shared: tie_encoder_decoder,
    };
    let (d, v) = (dec.hidden_size, dec.vocab_size);
    let untied = !tie_word_embeddings(dec_raw);
    let normal = Init::Normal {
        std,
        zero_row: None,
    };
    match dec.family {
        Family::Gpt2 => {
            gpt2_stack(&mut b, dec);
            if untied {
                b.head(&["lm_head.weight"], vec![v, d], normal);
            }
        }
        Family::Bert => {
            bert_stack(&mut b, dec, true);
            let t = "cls.predictions.transform";
            b.head(&[&format!("{t}.dense.weight")], vec![d, d], normal);
            b.head(&[&format!("{t}.dense.bias")], vec![d], Init::Zeros);
            b.head(&[&format!("{t}.LayerNorm.weight")], vec![d], Init::Ones);
            b.head(&[&format!("{t}.LayerNorm.bias")], vec![d], Init::Zeros);
            b.head(
                &["cls.predictions.bias", "cls.predictions.decoder.bias"],
                vec![v],
                Init::Zeros,
            );
            if untied {
                b.head(&["cls.predictions.decoder.weight"], vec![v, d], normal);
            }
        }
        Family::Roberta => {
            bert_stack(&mut b, dec, true);
            b.head(&["lm_head.dense.weight"], vec![d, d], normal);
            b.head(&["lm_head.dense.bias"], vec![d], Init::Zeros);
            b.head(&["lm_head.layer_norm.weight"], vec![d], Init::Ones);
            b.head(&["lm_head.layer_norm.bias"], vec![d], Init::Zeros);
            b.head(
                &["lm_head.bias", "lm_head.decoder.bias"],
                vec![v],
                Init::Zeros,
            );
            if untied {
                b.head(&["lm_head.decoder.weight"], vec![v, d], normal);
            }
        }
        Family::BertGeneration => {
            bert_stack(&mut b, dec, true);
            b.head(
                &["lm_head.bias", "lm_head.decoder.bias"],
                vec![v],
                Init::Zeros,
            );
            if untied {
                b.head(&["lm_head.decoder.weight"], vec![v, d], normal);
            }
        }
    }
    specs
}

/// One row of the bookkeeping table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub params: usize,
    pub from_encoder: usize,
    pub from_decoder: usize,
    pub random: usize,
}

impl Counts {
    fn add(&mut self, n: usize, origin: Origin) {
        self.params += n;
        match origin {
            Origin::Encoder => self.from_encoder += n,
            Origin::Decoder => self.from_decoder += n,
            Origin::Random => self.random += n,
        }
    }
}

/// The paper's bookkeeping: parameters per component, where they came from.
#[derive(Debug, Clone)]
pub struct ParamTable {
    pub rows: BTreeMap<Component, Counts>,
    /// Components whose parameters encoder and decoder share.
    pub shared: Vec<Component>,
    pub decoder_layers: usize,
    pub encoder_label: String,
    pub decoder_label: String,
}

impl ParamTable {
    pub fn new(
        specs: &[ParamSpec],
        origins: &[Origin],
        decoder_layers: usize,
        encoder_label: String,
        decoder_label: String,
    ) -> Self {
        let mut rows: BTreeMap<Component, Counts> = BTreeMap::new();
        let mut shared = Vec::new();
        for (s, &o) in specs.iter().zip(origins) {
            rows.entry(s.component).or_default().add(s.numel(), o);
            if s.shared && !shared.contains(&s.component) {
                shared.push(s.component);
            }
        }
        Self {
            rows,
            shared,
            decoder_layers,
            encoder_label,
            decoder_label,
        }
    }

    pub fn row(&self, c: Component) -> Counts {
        self.rows.get(&c).copied().unwrap_or_default()
    }

    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for r in self.rows.values() {
            t.params += r.params;
            t.from_encoder += r.from_encoder;
            t.from_decoder += r.from_decoder;
            t.random += r.random;
        }
        t
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn millions(n: usize) -> String {
    format!("{:.1}M", n as f64 / 1e6)
}

impl fmt::Display for ParamTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "encoder checkpoint: {}", self.encoder_label)?;
        writeln!(f, "decoder checkpoint: {}", self.decoder_label)?;
        let w = 44;
        writeln!(
            f,
            "{:<w$} {:>13} {:>13} {:>13} {:>13}",
            "component", "parameters", "from encoder", "from decoder", "random init"
        )?;
        writeln!(f, "{}", "-".repeat(w + 4 * 14))?;
        for (c, r) in &self.rows {
            let mut label = c.label().to_string();
            if *c == Component::DecoderCrossAttention {
                label = format!("{label} ({} new blocks)", self.decoder_layers);
            }
            if self.shared.contains(c) {
                label.push_str(" [shared w/ encoder]");
            }
            writeln!(
                f,
                "{label:<w$} {:>13} {:>13} {:>13} {:>13}",
                thousands(r.params),
                thousands(r.from_encoder),
                thousands(r.from_decoder),
                thousands(r.random)
            )?;
        }
        writeln!(f, "{}", "-".repeat(w + 4 * 14))?;
        let t = self.total();
        writeln!(
            f,
            "{:<w$} {:>13} {:>13} {:>13} {:>13}",
            "total",
            thousands(t.params),
            thousands(t.from_encoder),
            thousands(t.from_decoder),
            thousands(t.random)
        )?;
        write!(
            f,
            "{:<w$} {:>13} {:>13} {:>13} {:>13}",
            "",
            millions(t.params),
            millions(t.from_encoder),
            millions(t.from_decoder),
            millions(t.random)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::config::EncoderDecoderConfig;
    use crate::warmstart::source::{preset_config, Size};
    use serde_json::json;

    /// The table for two configs, as if both checkpoints held every parameter of their
    /// pre-trained class (bert-base-uncased is a `BertForPreTraining`: pooler and MLM
    /// head present) but, being standalone, no cross-attention. `None`: random side.
    fn table(enc: Option<Value>, dec: Option<Value>, fam: Family, tie: bool) -> ParamTable {
        let e = enc
            .clone()
            .unwrap_or_else(|| preset_config(fam, Size::Base));
        let d = dec
            .clone()
            .unwrap_or_else(|| preset_config(fam, Size::Base));
        let cfg = EncoderDecoderConfig::from_json(
            json!({"encoder": e, "decoder": d, "tie_encoder_decoder": tie}),
        )
        .unwrap();
        let specs = plan(&cfg.encoder, &e, &cfg.decoder, &d, tie);
        let origins: Vec<Origin> = specs
            .iter()
            .map(|s| match &s.source {
                Some((side, name)) => {
                    let cross = matches!(name, SourceName::Base(n) if n.contains("crossattention")
                        || n.contains("ln_cross_attn"));
                    let present = !cross
                        && match side {
                            Side::Encoder => enc.is_some(),
                            Side::Decoder => dec.is_some(),
                        };
                    match (present, side) {
                        (false, _) => Origin::Random,
                        (true, Side::Encoder) => Origin::Encoder,
                        (true, Side::Decoder) => Origin::Decoder,
                    }
                }
                None => Origin::Random,
            })
            .collect();
        ParamTable::new(
            &specs,
            &origins,
            cfg.decoder.num_layers,
            "e".into(),
            "d".into(),
        )
    }

    #[test]
    fn bert_base_bert2bert_counts_from_configs_alone() {
        let bert = preset_config(Family::Bert, Size::Base);
        let t = table(Some(bert.clone()), Some(bert.clone()), Family::Bert, false);
        let total = t.total();
        // transformers: EncoderDecoderModel.from_encoder_decoder_pretrained(
        //   "bert-base-uncased", "bert-base-uncased").num_parameters() == 247,363,386
        assert_eq!(total.params, 247_363_386);
        // BertModel (with pooler) = 109,482,240, all from the encoder checkpoint.
        assert_eq!(total.from_encoder, 109_482_240);
        // 12 cross-attention blocks of 4 × (768² + 768) + 2 × 768 are new.
        assert_eq!(
            t.row(Component::DecoderCrossAttention).params,
            12 * 2_363_904
        );
        assert_eq!(total.random, 28_366_848);
        // Decoder: BERT without pooler + the MLM head transform and bias (output tied).
        assert_eq!(total.from_decoder, 109_514_298);
        assert_eq!(t.row(Component::DecoderLmHead).params, 622_650);
        assert_eq!(t.row(Component::EncoderEmbeddings).params, 23_837_184);
        assert_eq!(t.row(Component::EncoderPooler).params, 590_592);
        assert_eq!(
            t.row(Component::EncoderSelfAttention).params
                + t.row(Component::EncoderFeedForward).params,
            85_054_464
        );
        assert_eq!(t.row(Component::EncToDecProj).params, 0);
        let shown = t.to_string();
        assert!(shown.contains("247,363,386"), "{shown}");
        assert!(
            shown.contains("decoder cross-attention (12 new blocks)"),
            "{shown}"
        );

        // BERTShare: encoder embeddings and layers are the decoder's; the pooler is not.
        let share = table(Some(bert.clone()), Some(bert.clone()), Family::Bert, true);
        assert_eq!(share.total().params, 247_363_386 - 23_837_184 - 85_054_464);
        assert_eq!(share.total().from_encoder, 590_592);
        assert_eq!(share.total().random, 28_366_848);
        assert!(share.shared.contains(&Component::DecoderEmbeddings));

        // Rnd2Rnd: same model, everything random; BERT2Rnd: only the encoder taken.
        let rnd = table(None, None, Family::Bert, false);
        assert_eq!(rnd.total().params, 247_363_386);
        assert_eq!(rnd.total().random, 247_363_386);
        let bert2rnd = table(Some(bert), None, Family::Bert, false);
        assert_eq!(bert2rnd.total().from_encoder, 109_482_240);
        assert_eq!(bert2rnd.total().random, 247_363_386 - 109_482_240);
    }

    #[test]
    fn bert2gpt2_base_counts() {
        let bert = preset_config(Family::Bert, Size::Base);
        let gpt2 = preset_config(Family::Gpt2, Size::Base);
        let t = table(Some(bert), Some(gpt2), Family::Bert, false);
        // GPT-2 small: 124,439,808 parameters; + 12 cross-attention blocks of
        // ln_cross_attn (1,536) + c_attn (768×1536+1536) + q_attn + c_proj (768²+768 each).
        assert_eq!(t.total().from_decoder, 124_439_808);
        assert_eq!(t.total().random, 28_366_848);
        assert_eq!(t.total().params, 109_482_240 + 124_439_808 + 28_366_848);
    }

    #[test]
    fn widths_that_differ_get_a_projection() {
        let mut e = preset_config(Family::Roberta, Size::Tiny);
        e["hidden_size"] = json!(32);
        let mut d = preset_config(Family::Gpt2, Size::Tiny);
        d["n_embd"] = json!(48);
        let t = table(Some(e), Some(d), Family::Bert, false);
        assert_eq!(t.row(Component::EncToDecProj).params, 48 * 32 + 48);
        assert_eq!(t.row(Component::EncToDecProj).random, 48 * 32 + 48);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(247_363_386), "247,363,386");
    }
}
