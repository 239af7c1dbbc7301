//! LoRA fine-tuning of Llama-2, Gemma and Qwen (1.5/2) checkpoints with an explicit, frozen-weight-free backward.

pub mod checkpoint;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod eval;
pub mod fsutil;
pub mod generate;
pub mod hub;
pub mod jsonutil;
pub mod lora;
pub mod memory;
pub mod merge;
pub mod model;
pub mod names;
pub mod ops;
pub mod optim;
pub mod recipe;
pub mod runtime;
pub mod session;
pub mod stats;
pub mod sweep;
pub mod tokenizer;
pub mod train;

#[doc(hidden)]
pub mod testing;

/// The Candle release the trainer is built and checked against (recorded in every run's config.json).
pub const CANDLE_VERSION: &str = "0.11.1";
