//! One `[[evals]]` entry of a recipe (or `trainer eval`'s command line): what to score and how. A plain schema:
//! reading and scoring the data is `crate::eval`'s job.

use anyhow::Result;
use serde::Serialize;

/// An evaluation as the command line or a recipe's `[[evals]]` describes it.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSection {
    /// Its name in run.json and the report (recipes only).
    #[serde(default)]
    pub name: String,
    /// "loss" (held-out loss and perplexity per language), "mc" (multiple choice) or "qa" (generative QA).
    pub task: String,
    pub path: std::path::PathBuf,
    /// mc / qa: the items k-shot prompts take their examples from.
    pub dev: Option<std::path::PathBuf>,
    #[serde(default)]
    pub shots: usize,
    /// mc: "continuation" or "letters".
    #[serde(default = "continuation")]
    pub style: String,
    /// qa: answer length limit.
    #[serde(default = "sixty_four")]
    pub max_new_tokens: usize,
    /// loss: the file's format and template, and its language when the records carry none.
    #[serde(default = "alpaca")]
    pub format: String,
    #[serde(default = "alpaca")]
    pub template: String,
    pub language: Option<String>,
    #[serde(default = "five_twelve")]
    pub max_seq_len: usize,
    #[serde(default = "eight")]
    pub batch_size: usize,
    /// The benchmark's own origin, for the report's ΔS analysis: "native" (written in the language) or
    /// "translated" (translated from another); unset: unlabelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_type: Option<String>,
    /// "structured" (answers scored by choice: mc) or "generative" (free text: qa); default: from the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
}

fn continuation() -> String {
    "continuation".into()
}
fn sixty_four() -> usize {
    64
}
fn alpaca() -> String {
    "alpaca".into()
}
fn five_twelve() -> usize {
    512
}
fn eight() -> usize {
    8
}

impl BenchmarkSection {
    #[allow(clippy::too_many_arguments)]
    pub fn parse(task: &str, data: &std::path::Path, dev: Option<&std::path::Path>, shots: usize, style: &str, max_new_tokens: usize, format: &str, template: &str, language: Option<&str>, max_seq_len: usize, batch_size: usize) -> Result<Self> {
        let spec = BenchmarkSection {
            name: String::new(),
            task: task.into(),
            path: data.into(),
            dev: dev.map(Into::into),
            shots,
            style: style.into(),
            max_new_tokens,
            format: format.into(),
            template: template.into(),
            language: language.map(str::to_string),
            max_seq_len,
            batch_size,
            origin_type: None,
            form: None,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Checks the settings without reading data.
    pub fn check(&self) -> Result<()> {
        match self.task.as_str() {
            "loss" | "mc" | "qa" => {}
            other => anyhow::bail!("task must be loss, mc or qa, not `{other}`"),
        }
        if !["continuation", "letters"].contains(&self.style.as_str()) {
            anyhow::bail!("style must be continuation or letters, not `{}`", self.style);
        }
        if self.task != "loss" && self.shots > 0 && self.dev.is_none() {
            anyhow::bail!("{}-shot prompts need a dev file", self.shots);
        }
        if let Some(o) = &self.origin_type {
            anyhow::ensure!(["native", "translated"].contains(&o.as_str()), "origin_type must be native or translated, not `{o}`");
        }
        if let Some(f) = &self.form {
            anyhow::ensure!(["structured", "generative"].contains(&f.as_str()), "form must be structured or generative, not `{f}`");
        }
        crate::data::format::Format::parse(&self.format)?;
        anyhow::ensure!(self.batch_size > 0 && self.max_seq_len > 1 && self.max_new_tokens > 0, "batch_size, max_seq_len and max_new_tokens must be positive");
        Ok(())
    }

    /// The benchmark's form: as set, else structured for mc, generative for qa, none for loss.
    pub fn form(&self) -> Option<String> {
        self.form.clone().or_else(|| match self.task.as_str() {
            "mc" => Some("structured".into()),
            "qa" => Some("generative".into()),
            _ => None,
        })
    }

    /// What the report needs to know of the benchmark, stored under `spec` in its run.json result.
    pub fn about(&self) -> serde_json::Value {
        serde_json::json!({ "task": self.task, "language": self.language, "origin_type": self.origin_type, "form": self.form() })
    }
}
