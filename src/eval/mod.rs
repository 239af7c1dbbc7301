//! Evaluation: held-out loss and perplexity, and benchmarks in the conventions of lm-evaluation-harness
//! (multiple-choice log-likelihood scoring, generative QA with exact match / F1 / MGSM's final number), the
//! generative benchmarks in their released layouts ([`qa_formats`]), and the template prompts are wrapped in
//! ([`prompt`]).
//!
//! The recipe's `[[evals]]` entries ([`crate::recipe::BenchmarkSection`]) say what to score; this folder reads the
//! items ([`items`]), builds prompts and scores them ([`mc`], [`qa`], [`metrics`], [`loss`]), and runs a benchmark
//! for a model and adapter ([`task`]); a path may name a folder or glob of files read as one benchmark ([`files`]). MT-Bench-style questions are answered turn by turn ([`multiturn`]) and
//! graded by an LLM judge ([`judge`]). The recipe does not import this folder.

pub mod files;
pub mod items;
pub mod judge;
pub mod loss;
pub mod mc;
pub mod mc_formats;
pub mod mc_score;
pub mod metrics;
pub mod prompt;
mod pyrandom;
pub mod multiturn;
pub mod qa;
pub mod qa_formats;
pub mod qa_metrics;
pub mod task;

pub use loss::{evaluate, evaluate_by_language, nan_if_null, EvalResult, HeldoutResult};
pub use task::{run_benchmark, summary_line, Task};

/// A progress bar on stderr (drawn only on a terminal).
pub(crate) fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} eta {eta}").expect("valid template"));
    bar.set_prefix(what.to_string());
    bar
}
