//! encdec: inference for warm-started encoder-decoder models
//! (Hugging Face `EncoderDecoderModel` with BERT / RoBERTa / BertGeneration / GPT-2 halves).
//!
//! The engine is a library so that the CLI, the HTTP server, the benchmarks and the
//! tests all call the same code path:
//! `checkpoint` (config + weights on disk) → `model` (the transformer math) →
//! `generation` (greedy / beam search exactly like transformers) → `engine` (load once,
//! generate many batches from worker threads).

// Every `unsafe` operation sits in its own block with a `// SAFETY:` comment saying
// why it holds, also inside `unsafe fn`s (whose `# Safety` sections state the contract).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::missing_safety_doc)]

pub mod allocator;
pub mod checkpoint;
pub mod cli;
pub mod engine;
pub mod eval;
pub mod generation;
pub mod hub;
pub mod model;
pub mod server;
pub mod task;
pub mod tokenizer;
pub mod train;
pub mod warmstart;
