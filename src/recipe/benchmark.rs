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
    /// The file's layout. loss: a training-data format (default alpaca); mc: one of [`MC_FORMATS`] (default
    /// generic); qa: generic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// mc: columns of the file named otherwise than in the format's release, as {field = "column"}.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
    /// loss: the prompt template; and the file's language when the records carry none.
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

/// The multiple-choice formats (`task = "mc"`), the default first: our own `{question, choices, answer}`, then
/// benchmarks in the columns of their Hugging Face releases, scored as lm-evaluation-harness's task of each.
pub const MC_FORMATS: &[&str] = &["generic", "cmmlu", "ceval", "mmlu", "okapi", "mmmlu", "arc", "hellaswag"];

/// (field, column in the release) of each multiple-choice format: the keys `fields` may rename.
pub fn mc_format_columns(format: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match format {
        "generic" => &[("question", "question"), ("choices", "choices"), ("answer", "answer"), ("subject", "subject")],
        "cmmlu" => &[("question", "Question"), ("A", "A"), ("B", "B"), ("C", "C"), ("D", "D"), ("answer", "Answer"), ("subject", "subject")],
        "ceval" => &[("question", "question"), ("A", "A"), ("B", "B"), ("C", "C"), ("D", "D"), ("answer", "answer"), ("subject", "subject")],
        "mmlu" => &[("question", "question"), ("choices", "choices"), ("answer", "answer"), ("subject", "subject")],
        "okapi" => &[("question", "instruction"), ("A", "option_a"), ("B", "option_b"), ("C", "option_c"), ("D", "option_d"), ("answer", "answer"), ("subject", "subject")],
        "mmmlu" => &[("question", "Question"), ("A", "A"), ("B", "B"), ("C", "C"), ("D", "D"), ("answer", "Answer"), ("subject", "Subject")],
        "arc" => &[("question", "question"), ("choices.text", "choices.text"), ("choices.label", "choices.label"), ("answer", "answerKey"), ("subject", "subject")],
        "hellaswag" => &[("activity_label", "activity_label"), ("ctx_a", "ctx_a"), ("ctx_b", "ctx_b"), ("endings", "endings"), ("answer", "label"), ("subject", "subject")],
        _ => return None,
    })
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
    pub fn parse(task: &str, data: &std::path::Path, dev: Option<&std::path::Path>, shots: usize, style: &str, max_new_tokens: usize, format: Option<&str>, fields: std::collections::BTreeMap<String, String>, template: &str, language: Option<&str>, max_seq_len: usize, batch_size: usize) -> Result<Self> {
        let spec = BenchmarkSection {
            name: String::new(),
            task: task.into(),
            path: data.into(),
            dev: dev.map(Into::into),
            shots,
            style: style.into(),
            max_new_tokens,
            format: format.map(str::to_string),
            fields,
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
        // MMMLU has no dev split: lm-eval takes its examples from the scored file itself.
        if self.task != "loss" && self.shots > 0 && self.dev.is_none() && self.format() != "mmmlu" {
            anyhow::bail!("{}-shot prompts need a dev file", self.shots);
        }
        if let Some(o) = &self.origin_type {
            anyhow::ensure!(["native", "translated"].contains(&o.as_str()), "origin_type must be native or translated, not `{o}`");
        }
        if let Some(f) = &self.form {
            anyhow::ensure!(["structured", "generative"].contains(&f.as_str()), "form must be structured or generative, not `{f}`");
        }
        match self.task.as_str() {
            "loss" => {
                crate::data::format::Format::parse(self.format())?;
            }
            "mc" => {
                let Some(columns) = mc_format_columns(self.format()) else {
                    anyhow::bail!("unknown multiple-choice format `{}` (known: {})", self.format(), MC_FORMATS.join(", "));
                };
                for key in self.fields.keys() {
                    if !columns.iter().any(|(k, _)| k == key) {
                        let names: Vec<&str> = columns.iter().map(|(k, _)| *k).collect();
                        anyhow::bail!("fields: format `{}` has no field `{key}` (its fields: {})", self.format(), names.join(", "));
                    }
                }
            }
            _ => anyhow::ensure!(self.format() == "generic", "unknown qa format `{}` (known: generic)", self.format()),
        }
        anyhow::ensure!(self.task == "mc" || self.fields.is_empty(), "fields rename the columns of multiple-choice formats (task = \"mc\")");
        anyhow::ensure!(self.batch_size > 0 && self.max_seq_len > 1 && self.max_new_tokens > 0, "batch_size, max_seq_len and max_new_tokens must be positive");
        Ok(())
    }

    /// The file's format: as set, else alpaca for loss and generic for mc and qa.
    pub fn format(&self) -> &str {
        match &self.format {
            Some(f) => f,
            None if self.task == "loss" => "alpaca",
            None => "generic",
        }
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

#[cfg(test)]
mod format_tests {
    use super::*;

    fn entry(extra: &str) -> Result<BenchmarkSection> {
        let spec: BenchmarkSection = toml::from_str(&format!("task = \"mc\"\npath = \"x.jsonl\"\n{extra}"))?;
        spec.check()?;
        Ok(spec)
    }

    #[test]
    fn the_default_format_depends_on_the_task_and_fields_are_the_formats_own() {
        assert_eq!(entry("").unwrap().format(), "generic");
        let loss: BenchmarkSection = toml::from_str("task = \"loss\"\npath = \"x.jsonl\"").unwrap();
        assert_eq!(loss.format(), "alpaca");
        assert_eq!(entry("format = \"cmmlu\"\nfields = { question = \"Frage\" }").unwrap().fields["question"], "Frage");
        let err = entry("format = \"cmmluu\"").unwrap_err().to_string();
        assert!(err.contains("unknown multiple-choice format `cmmluu`") && err.contains("generic, cmmlu, ceval"), "{err}");
        let err = entry("format = \"arc\"\nfields = { Question = \"q\" }").unwrap_err().to_string();
        assert!(err.contains("no field `Question`") && err.contains("choices.text"), "{err}");
        assert!(entry("format = \"mmmlu\"\nshots = 5").is_ok(), "MMMLU's examples come from the scored file");
        assert!(entry("format = \"mmlu\"\nshots = 5").unwrap_err().to_string().contains("need a dev file"));
    }
}
