//! `encdec warmstart --encoder SRC --decoder SRC [--tie-encoder-decoder] [--seed N] --out DIR`:
//! compose an `EncoderDecoderModel` directory the way transformers'
//! `from_encoder_decoder_pretrained` does, and print the paper's parameter bookkeeping.
//!
//! SRC is a standalone checkpoint directory (BertModel / BertForMaskedLM /
//! BertForPreTraining, RobertaModel / RobertaForMaskedLM, BertGeneration, GPT2Model /
//! GPT2LMHeadModel), a hub model id (fetched into the cache like `encdec download`), or
//! `random:FAMILY[:SIZE]` with FAMILY bert | roberta | bert-generation | gpt2 and SIZE
//! tiny | base | large (the paper's Rnd baselines).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::hub::{resolve_model_dir, HubOptions};
use crate::warmstart::{self, DtypeChoice, Options, Side, SourceSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// The checkpoints' dtype (f32 when everything is random).
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Encoder source: checkpoint directory, hub id, or random:FAMILY[:SIZE]
    /// (bert | roberta | bert-generation; tiny | base | large).
    #[arg(long, value_name = "SRC")]
    pub encoder: String,

    /// Decoder source: checkpoint directory, hub id, or random:FAMILY[:SIZE]
    /// (bert | roberta | bert-generation | gpt2; tiny | base | large).
    #[arg(long, value_name = "SRC")]
    pub decoder: String,

    /// Share the encoder's embeddings and layers with the decoder ("BERTShare",
    /// "RoBERTaShare"); written in transformers 4.x's layout (stored once, under
    /// `decoder.<base>.*`).
    #[arg(long)]
    pub tie_encoder_decoder: bool,

    /// Seed of the random initialisation (cross-attention, missing heads, random sides).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Output directory.
    #[arg(long, value_name = "DIR", required_unless_present = "dry_run")]
    pub out: Option<PathBuf>,

    /// Storage dtype of the weights.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    pub dtype: DtypeArg,

    /// Tokenizer directory for the encoder (default: the encoder checkpoint's; a random
    /// side borrows the other side's, a random BERT falls back to bert-base-uncased's).
    #[arg(long, value_name = "DIR")]
    pub encoder_tokenizer: Option<PathBuf>,

    /// Tokenizer directory for the decoder (same defaults).
    #[arg(long, value_name = "DIR")]
    pub decoder_tokenizer: Option<PathBuf>,

    /// Print the parameter table and the config without writing anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Overwrite a model already in --out.
    #[arg(long)]
    pub force: bool,
}

/// A checkpoint source given as a hub id is fetched first; `random:` and directories
/// pass through.
fn resolve(src: &str) -> anyhow::Result<SourceSpec> {
    let spec: SourceSpec = src.parse()?;
    Ok(match spec {
        SourceSpec::Checkpoint(p) if !p.exists() => {
            let dir = resolve_model_dir(
                src,
                &HubOptions {
                    revision: None,
                    progress: true,
                },
            )
            .with_context(|| format!("resolving `{src}`"))?;
            SourceSpec::Checkpoint(dir)
        }
        other => other,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut opts = Options::new(resolve(&args.encoder)?, resolve(&args.decoder)?);
    opts.tie_encoder_decoder = args.tie_encoder_decoder;
    opts.seed = args.seed;
    opts.dtype = match args.dtype {
        DtypeArg::Auto => DtypeChoice::Auto,
        DtypeArg::F32 => DtypeChoice::F32,
        DtypeArg::F16 => DtypeChoice::F16,
        DtypeArg::Bf16 => DtypeChoice::Bf16,
    };
    opts.encoder_tokenizer = args.encoder_tokenizer;
    opts.decoder_tokenizer = args.decoder_tokenizer;

    let comp = warmstart::compose(&opts)?;
    println!("{}", comp.table);
    let (enc_tok, dec_tok) = comp.tokenizer_sources();
    let none = || "none".to_string();
    println!(
        "\ntokenizers: encoder {}; decoder {}{}",
        enc_tok.unwrap_or_else(none),
        dec_tok.unwrap_or_else(none),
        if comp.separate_decoder_tokenizer() {
            " (written to decoder_tokenizer/)"
        } else {
            ""
        }
    );
    let c = &comp.config;
    println!(
        "special ids: decoder_start_token_id {}, eos_token_id {}, pad_token_id {}; dtype {}{}",
        c["decoder_start_token_id"],
        c["eos_token_id"],
        c["pad_token_id"],
        c["dtype"].as_str().unwrap_or("?"),
        if opts.tie_encoder_decoder {
            "; tie_encoder_decoder"
        } else {
            ""
        }
    );
    for (side, names) in &comp.unused {
        let side = if *side == Side::Encoder {
            "encoder"
        } else {
            "decoder"
        };
        let shown: Vec<&str> = names.iter().take(6).map(String::as_str).collect();
        println!(
            "not used from the {side} checkpoint: {} tensors ({}{})",
            names.len(),
            shown.join(", "),
            if names.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    for note in &comp.notes {
        println!("note: {note}");
    }

    if args.dry_run {
        println!("\n{}", serde_json::to_string_pretty(&comp.config)?);
        return Ok(());
    }
    let out = args.out.expect("clap requires --out without --dry-run");
    let files = comp.write(&out, opts.seed, args.force)?;
    println!(
        "\nwrote {} ({} files, {} tensors) in {:.1}s",
        out.display(),
        files.len(),
        comp.specs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
