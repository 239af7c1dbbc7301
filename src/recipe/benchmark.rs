//! One `[[evals]]` entry of a recipe (or `trainer eval`'s command line): what to score and how. A plain schema:
//! reading and scoring the data is `crate::eval`'s job.

use anyhow::{Context, Result};
use serde::Serialize;

/// An evaluation as the command line or a recipe's `[[evals]]` describes it.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSection {
    /// Its name in run.json and the report (recipes only).
    #[serde(default)]
    pub name: String,
    /// "loss" (held-out loss and perplexity per language), "mc" (multiple choice), "qa" (generative QA) or "judge"
    /// (MT-Bench-style questions answered turn by turn and graded by an LLM judge).
    pub task: String,
    pub path: std::path::PathBuf,
    /// mc / qa: the items k-shot prompts take their examples from.
    pub dev: Option<std::path::PathBuf>,
    #[serde(default)]
    pub shots: usize,
    /// mc: "continuation" or "letters".
    #[serde(default = "continuation")]
    pub style: String,
    /// qa: answer length limit; default 64 for the generic format, 256 (lm-eval's `max_gen_toks`) for the
    /// benchmark formats.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// The file's format: loss → a training-data format (default alpaca); mc → one of [`MC_FORMATS`], qa → one of
    /// [`QA_FORMATS`] (default generic).
    #[serde(default)]
    pub format: Option<String>,
    /// loss: the training template (default alpaca). mc / qa: the template the prompt is wrapped in, one of
    /// [`PROMPT_TEMPLATES`] (default none: lm-eval's plain prompt for base models).
    #[serde(default)]
    pub template: Option<String>,
    /// Renamed columns of a benchmark format: logical field → the file's (dotted) column path.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
    /// The file's language when the records carry none.
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
    /// Score only the runs whose training data includes `language` (and runs with no labelled language): a study
    /// that tunes a model per language scores each on its own language's benchmarks, not every language's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_language_runs: bool,
    /// judge: who grades the answers and how (`judge = { url = …, model = … }` or an `[evals.judge]` table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSection>,
}

/// The LLM judge of a `task = "judge"` benchmark (`trainer eval --task judge`'s --judge-* options).
#[derive(Debug, Clone, serde::Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JudgeSection {
    /// An OpenAI-compatible endpoint: its base URL (…/v1) or its /chat/completions URL; with `model`, the judge
    /// model's name there.
    pub url: Option<String>,
    pub model: Option<String>,
    /// Instead of an endpoint: a checkpoint (folder or hub id in the local cache) the trainer loads to judge
    /// offline, and its chat template ("model": its own).
    pub local: Option<String>,
    #[serde(default = "model_template")]
    pub template: String,
    /// "single" (1–10 ratings, MT-Bench) or "pairwise" (against `baseline`, both orders; win rate).
    #[serde(default = "single")]
    pub mode: String,
    /// Reference answers by question id (default: the questions' own `reference`); resolved like `path`.
    pub reference: Option<std::path::PathBuf>,
    /// pairwise: the baseline's answers; resolved like `path`.
    pub baseline: Option<std::path::PathBuf>,
    /// The environment variable holding the API key: its name, never the key.
    #[serde(default = "openai_api_key")]
    pub api_key_env: String,
    /// Requests in flight at once.
    #[serde(default = "four")]
    pub concurrency: usize,
    /// Seconds per request before it is retried.
    #[serde(default = "two_minutes")]
    pub timeout: f64,
    /// Attempts after the first on HTTP 429/5xx, timeouts and broken answers (exponential backoff).
    #[serde(default = "five")]
    pub retries: usize,
    /// The judge's answer length limit (FastChat: 2048).
    #[serde(default = "max_tokens")]
    pub max_tokens: usize,
    /// Where judgments are cached (relative to the working directory, like output_dir); default
    /// ~/.cache/trainer/judge.
    pub cache: Option<std::path::PathBuf>,
}

fn model_template() -> String {
    "model".into()
}
fn single() -> String {
    "single".into()
}
fn openai_api_key() -> String {
    "OPENAI_API_KEY".into()
}
fn four() -> usize {
    4
}
fn two_minutes() -> f64 {
    120.0
}
fn five() -> usize {
    5
}
fn max_tokens() -> usize {
    2048
}

impl JudgeSection {
    /// Checks the settings without reading files or asking anyone.
    pub fn check(&self) -> Result<()> {
        match (&self.url, &self.local) {
            (Some(url), None) => {
                anyhow::ensure!(url.starts_with("http://") || url.starts_with("https://"), "judge url `{url}` must start with http:// or https://");
                anyhow::ensure!(self.model.as_ref().is_some_and(|m| !m.trim().is_empty()), "the judge model at {url} is not named (judge model / --judge-model)");
            }
            (None, Some(_)) => anyhow::ensure!(self.model.is_none(), "judge model names a model at an endpoint; a local judge is named by `local` alone"),
            _ => anyhow::bail!("name one judge: an endpoint (judge url and model / --judge-url and --judge-model) or a local checkpoint (judge local / --judge-local)"),
        }
        match self.mode.as_str() {
            "single" => {}
            "pairwise" => anyhow::ensure!(self.baseline.is_some(), "pairwise judging needs the baseline's answers (judge baseline / --baseline)"),
            other => anyhow::bail!("judge mode must be single or pairwise, not `{other}`"),
        }
        anyhow::ensure!(self.concurrency > 0, "judge concurrency must be at least 1");
        anyhow::ensure!(self.timeout > 0.0 && self.timeout.is_finite(), "the judge timeout must be a positive number of seconds");
        anyhow::ensure!(self.max_tokens > 0, "the judge's max_tokens must be at least 1");
        anyhow::ensure!(!self.api_key_env.is_empty() && !self.api_key_env.contains(char::is_whitespace), "api_key_env must name an environment variable");
        Ok(())
    }
}


fn continuation() -> String {
    "continuation".into()
}
/// `--format` of `--task qa`: our `{question, answer}` files, and benchmarks in their Hugging Face layouts scored
/// as lm-evaluation-harness's tasks of the same name.
/// `mgsm` is `mgsm_native_cot` (lm-eval's task whose exemplars are the train split's worked answers).
pub const QA_FORMATS: [&str; 6] = ["generic", "xquad", "tydiqa", "mgsm", "mgsm_direct", "mgsm_native_cot"];
/// `--template` of mc / qa tasks.
pub const PROMPT_TEMPLATES: [&str; 6] = ["none", "alpaca", "chatml", "gemma", "llama2-chat", "model"];

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

fn five_twelve() -> usize {
    512
}
fn eight() -> usize {
    8
}

impl BenchmarkSection {
    #[allow(clippy::too_many_arguments)]
    pub fn parse(task: &str, data: &std::path::Path, dev: Option<&std::path::Path>, shots: usize, style: &str, max_new_tokens: Option<usize>, format: Option<&str>, template: Option<&str>, fields: std::collections::BTreeMap<String, String>, language: Option<&str>, max_seq_len: usize, batch_size: usize) -> Result<Self> {
        let spec = BenchmarkSection {
            name: String::new(),
            task: task.into(),
            path: data.into(),
            dev: dev.map(Into::into),
            shots,
            style: style.into(),
            max_new_tokens,
            format: format.map(Into::into),
            template: template.map(Into::into),
            fields,
            language: language.map(str::to_string),
            max_seq_len,
            batch_size,
            origin_type: None,
            form: None,
            only_language_runs: false,
            judge: None,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Checks the settings without reading data.
    pub fn check(&self) -> Result<()> {
        match self.task.as_str() {
            "loss" | "mc" | "qa" | "judge" => {}
            other => anyhow::bail!("task must be loss, mc, qa or judge, not `{other}`"),
        }
        match (&self.judge, self.task == "judge") {
            (Some(j), true) => j.check().context("judge")?,
            (None, true) => anyhow::bail!("task = \"judge\" needs its judge: judge = {{ url = \"https://…/v1\", model = \"…\" }} (or local = \"CHECKPOINT\")"),
            (Some(_), false) => anyhow::bail!("a judge table only applies to task = \"judge\", not `{}`", self.task),
            (None, false) => {}
        }
        if !["continuation", "letters"].contains(&self.style.as_str()) {
            anyhow::bail!("style must be continuation or letters, not `{}`", self.style);
        }
        // MMMLU has no dev split: lm-eval takes its examples from the scored file itself.
        if self.task != "loss" && self.shots > 0 && self.dev.is_none() && self.format_name() != "mmmlu" {
            anyhow::bail!("{}-shot prompts need a dev file", self.shots);
        }
        if let Some(o) = &self.origin_type {
            anyhow::ensure!(["native", "translated"].contains(&o.as_str()), "origin_type must be native or translated, not `{o}`");
        }
        anyhow::ensure!(!self.only_language_runs || self.language.is_some(), "only_language_runs needs the entry's language (language = \"es\")");
        if let Some(f) = &self.form {
            anyhow::ensure!(["structured", "generative"].contains(&f.as_str()), "form must be structured or generative, not `{f}`");
        }
        match self.task.as_str() {
            "loss" => {
                crate::data::format::Format::parse(self.format_name())?;
                anyhow::ensure!(self.fields.is_empty(), "fields renames a benchmark format's columns; loss files take theirs from the data format");
            }
            "judge" => anyhow::ensure!(self.format.is_none() && self.fields.is_empty(), "judge questions are read in MT-Bench's layout: no format or fields"),
            "qa" => anyhow::ensure!(QA_FORMATS.contains(&self.format_name()), "unknown qa format `{}` (known: {})", self.format_name(), QA_FORMATS.join(", ")),
            _ => {
                let Some(columns) = mc_format_columns(self.format_name()) else {
                    anyhow::bail!("unknown multiple-choice format `{}` (known: {})", self.format_name(), MC_FORMATS.join(", "));
                };
                for key in self.fields.keys() {
                    if !columns.iter().any(|(k, _)| k == key) {
                        let names: Vec<&str> = columns.iter().map(|(k, _)| *k).collect();
                        anyhow::bail!("fields: format `{}` has no field `{key}` (its fields: {})", self.format_name(), names.join(", "));
                    }
                }
            }
        }
        if self.task != "loss" && !PROMPT_TEMPLATES.contains(&self.template_name()) {
            anyhow::bail!("unknown template `{}` for task {} (known: {})", self.template_name(), self.task, PROMPT_TEMPLATES.join(", "));
        }
        anyhow::ensure!(self.batch_size > 0 && self.max_seq_len > 1 && self.max_new_tokens != Some(0), "batch_size, max_seq_len and max_new_tokens must be positive");
        Ok(())
    }

    /// The format as set, else the task's default: alpaca for loss, generic for mc and qa.
    pub fn format_name(&self) -> &str {
        self.format.as_deref().unwrap_or(if self.task == "loss" { "alpaca" } else { "generic" })
    }

    /// The template as set, else the task's default: alpaca for loss (the training template), none for mc and qa
    /// (lm-eval's plain prompt), the model's chat template for judge.
    pub fn template_name(&self) -> &str {
        self.template.as_deref().unwrap_or(match self.task.as_str() {
            "loss" => "alpaca",
            // Two-turn questions need a chat template: the model's own.
            "judge" => "model",
            _ => "none",
        })
    }

    /// The answer length limit as set, else 64 for the generic qa format, lm-eval's 256 for benchmark formats and
    /// FastChat's 1024 for judged answers.
    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens.unwrap_or(match (self.task.as_str(), self.format_name()) {
            // FastChat's gen_model_answer answers MT-Bench with up to 1024 new tokens.
            ("judge", _) => 1024,
            (_, "generic") => 64,
            _ => 256,
        })
    }

    /// The benchmark's form: as set, else structured for mc, generative for qa and judge, none for loss.
    pub fn form(&self) -> Option<String> {
        self.form.clone().or_else(|| match self.task.as_str() {
            "mc" => Some("structured".into()),
            "qa" | "judge" => Some("generative".into()),
            _ => None,
        })
    }

    /// Whether a run trained on `languages` is scored on this benchmark (see `only_language_runs`).
    pub fn scores_run_of(&self, languages: &[String]) -> bool {
        match (&self.language, self.only_language_runs) {
            (Some(l), true) => languages.is_empty() || languages.contains(l),
            _ => true,
        }
    }

    /// What the report needs to know of the benchmark, stored under `spec` in its run.json result.
    pub fn about(&self) -> serde_json::Value {
        serde_json::json!({ "task": self.task, "language": self.language, "origin_type": self.origin_type, "form": self.form() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(extra: &str, task: &str) -> Result<BenchmarkSection> {
        let s: BenchmarkSection = toml::from_str(&format!("task = \"{task}\"\npath = \"x.jsonl\"\n{extra}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        s.check()?;
        Ok(s)
    }

    #[test]
    fn format_template_and_length_defaults_depend_on_the_task() {
        let loss = section("", "loss").unwrap();
        assert_eq!((loss.format_name(), loss.template_name()), ("alpaca", "alpaca"));
        let qa = section("", "qa").unwrap();
        assert_eq!((qa.format_name(), qa.template_name(), qa.max_new_tokens()), ("generic", "none", 64));
        let mgsm = section("format = \"mgsm_native_cot\"\ntemplate = \"chatml\"\nfields = { question = \"q\" }", "qa").unwrap();
        assert_eq!((mgsm.template_name(), mgsm.max_new_tokens(), mgsm.fields["question"].as_str()), ("chatml", 256, "q"));
        assert_eq!(section("format = \"mgsm\"", "qa").unwrap().max_new_tokens(), 256, "mgsm is a benchmark format");
        let e = section("format = \"alpaca\"", "qa").unwrap_err().to_string();
        assert!(e.contains("unknown qa format `alpaca` (known: generic, xquad, tydiqa, mgsm, mgsm_direct, mgsm_native_cot)"), "{e}");
        assert!(section("fields = { a = \"b\" }", "loss").is_err());
        assert!(section("template = \"model\"", "mc").is_ok());
    }

    #[test]
    fn a_language_benchmark_may_score_only_that_languages_runs() {
        let langs = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let zh = section("language = \"zh\"\nonly_language_runs = true", "mc").unwrap();
        assert!(zh.scores_run_of(&langs(&["zh"])) && zh.scores_run_of(&langs(&["es", "zh"])) && zh.scores_run_of(&[]));
        assert!(!zh.scores_run_of(&langs(&["es"])));
        assert!(section("language = \"zh\"", "mc").unwrap().scores_run_of(&langs(&["es"])), "every run by default");
        assert!(section("only_language_runs = true", "mc").unwrap_err().to_string().contains("needs the entry's language"));
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
        assert_eq!(entry("").unwrap().format_name(), "generic");
        let loss: BenchmarkSection = toml::from_str("task = \"loss\"\npath = \"x.jsonl\"").unwrap();
        assert_eq!(loss.format_name(), "alpaca");
        assert_eq!(entry("format = \"cmmlu\"\nfields = { question = \"Frage\" }").unwrap().fields["question"], "Frage");
        let err = entry("format = \"cmmluu\"").unwrap_err().to_string();
        assert!(err.contains("unknown multiple-choice format `cmmluu`") && err.contains("generic, cmmlu, ceval"), "{err}");
        let err = entry("format = \"arc\"\nfields = { Question = \"q\" }").unwrap_err().to_string();
        assert!(err.contains("no field `Question`") && err.contains("choices.text"), "{err}");
        assert!(entry("format = \"mmmlu\"\nshots = 5").is_ok(), "MMMLU's examples come from the scored file");
        assert!(entry("format = \"mmlu\"\nshots = 5").unwrap_err().to_string().contains("need a dev file"));
    }
}

#[cfg(test)]
mod judge_tests {
    use super::*;

    fn section(toml_text: &str) -> Result<BenchmarkSection> {
        let s: BenchmarkSection = toml::from_str(toml_text)?;
        s.check()?;
        Ok(s)
    }

    #[test]
    fn a_judge_benchmark_with_its_table() {
        let s = section("task = \"judge\"\npath = \"q.jsonl\"\n[judge]\nurl = \"https://api.openai.com/v1\"\nmodel = \"gpt-4\"\nmode = \"pairwise\"\nbaseline = \"a.jsonl\"\napi_key_env = \"MY_KEY\"").unwrap();
        let j = s.judge.as_ref().unwrap();
        assert_eq!((j.mode.as_str(), j.api_key_env.as_str(), j.concurrency, j.max_tokens, j.template.as_str()), ("pairwise", "MY_KEY", 4, 2048, "model"));
        assert_eq!(s.form().as_deref(), Some("generative"));
    }

    #[test]
    fn judge_mistakes_are_named() {
        let err = |t: &str| format!("{:#}", section(t).unwrap_err());
        assert!(err("task = \"judge\"\npath = \"q\"").contains("needs its judge"));
        assert!(err("task = \"qa\"\npath = \"q\"\njudge = { url = \"http://x\", model = \"m\" }").contains("only applies to task = \"judge\""));
        assert!(err("task = \"judge\"\npath = \"q\"\njudge = { url = \"http://x\" }").contains("not named"));
        assert!(err("task = \"judge\"\npath = \"q\"\njudge = { url = \"x\", model = \"m\" }").contains("http://"));
        assert!(err("task = \"judge\"\npath = \"q\"\njudge = { url = \"http://x\", model = \"m\", mode = \"pairwise\" }").contains("baseline"));
        assert!(err("task = \"judge\"\npath = \"q\"\njudge = { url = \"http://x\", model = \"m\", local = \"ckpt\" }").contains("name one judge"));
        assert!(err("task = \"judge\"\npath = \"q\"\njudge = { url = \"http://x\", model = \"m\", api_key = \"sk-1\" }").contains("unknown field `api_key`"));
    }
}
