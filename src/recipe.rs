//! The recipe file (TOML): what to train, on what, with which settings. Unknown keys are errors, and every
//! error names the recipe file (and, for syntax and type errors, the line).

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub output_dir: PathBuf,
    #[serde(default)]
    pub seed: u64,
    pub model: ModelSection,
    #[serde(default)]
    pub lora: LoraSection,
    pub train: TrainSection,
    #[serde(default)]
    pub template: TemplateSection,
    #[serde(default)]
    pub sources: Vec<SourceSection>,
    /// Experimental conditions; without any, all sources form one condition named after the recipe.
    #[serde(default)]
    pub conditions: Vec<ConditionSection>,
    #[serde(default)]
    pub eval: EvalSection,
    /// Where source paths resolve (relative to the recipe's folder); default: the recipe's folder.
    pub data_root: Option<PathBuf>,
    /// "error" (default): a bad record stops the run naming file, line and field; "skip": skip and report.
    #[serde(default = "error_policy")]
    pub on_bad_record: String,
    /// The folder of the recipe file: relative model and data paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

fn error_policy() -> String {
    "error".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Share of each condition held out (seeded, stratified by language) and never trained on.
    #[serde(default)]
    pub heldout_fraction: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSection {
    pub name: String,
    pub sources: Vec<EntrySection>,
    /// "concat" (default), "parallel" or "sampled" (over sources aligned by record id).
    #[serde(default = "concat")]
    pub compose: String,
    pub size: Option<usize>,
    pub match_size_of: Option<String>,
    /// Expands the condition once per language, substituting `{lang}` in its name and source names.
    pub languages: Option<Vec<String>>,
}

fn concat() -> String {
    "concat".into()
}

/// A source in a condition: its name, or a table with how much of it to take.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EntrySection {
    Name(String),
    Sized(SizedEntry),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizedEntry {
    pub source: String,
    pub count: Option<usize>,
    pub fraction: Option<f64>,
    pub weight: Option<f64>,
    pub prune: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A model directory or a hub id in the local Hugging Face cache.
    pub path: String,
    /// "auto" (f32 on CPU, bf16 on CUDA), "f32" or "bf16".
    #[serde(default = "auto")]
    pub dtype: String,
    /// "cpu" or "cuda" (or "cuda:N").
    #[serde(default = "cpu")]
    pub device: String,
}

fn auto() -> String {
    "auto".into()
}
fn cpu() -> String {
    "cpu".into()
}

/// Defaults are the studies' setting: rank 8, alpha 16, dropout 0.05 on q/k/v.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    pub r: Option<usize>,
    pub alpha: Option<f64>,
    pub dropout: Option<f64>,
    pub targets: Option<Vec<String>>,
    pub rslora: Option<bool>,
    /// A PEFT adapter directory to start from; its adapter_config.json fixes r, alpha and targets.
    pub init_adapter: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LrList {
    One(f64),
    Many(Vec<f64>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// One run per learning rate.
    pub lr: LrList,
    pub max_steps: Option<usize>,
    pub epochs: Option<usize>,
    /// Sequences per optimizer step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Sequences per forward/backward; defaults to `batch_size` (no accumulation).
    pub micro_batch_size: Option<usize>,
    #[serde(default = "default_seq")]
    pub max_seq_len: usize,
    #[serde(default = "default_scheduler")]
    pub scheduler: String,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "yes")]
    pub shuffle: bool,
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Pack several examples into each sequence of up to max_seq_len tokens (attention and positions restart
    /// at every example). batch_size then counts packed sequences.
    #[serde(default)]
    pub packing: bool,
    /// Batch sequences of similar length together (less padding).
    #[serde(default)]
    pub group_by_length: bool,
    /// dtype of the exported adapter tensors: "f32" (default) or the training dtype ("bf16").
    #[serde(default = "f32_name")]
    pub save_dtype: String,
}

fn default_batch() -> usize {
    8
}
fn default_seq() -> usize {
    512
}
fn default_scheduler() -> String {
    "linear".into()
}
fn default_clip() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn f32_name() -> String {
    "f32".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSection {
    #[serde(default = "alpaca")]
    pub name: String,
    #[serde(default = "response")]
    pub train_on: String,
}

impl Default for TemplateSection {
    fn default() -> Self {
        Self { name: alpaca(), train_on: response() }
    }
}

fn alpaca() -> String {
    "alpaca".into()
}
fn response() -> String {
    "response".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    pub name: String,
    pub path: PathBuf,
    #[serde(default = "alpaca")]
    pub format: String,
    pub language: Option<String>,
    /// native, translated, round-trip, or any label.
    pub origin: Option<String>,
    /// The translation engine, for translated data (e.g. "google", "cohere").
    pub engine: Option<String>,
    /// Field-name overrides: `fields = { instruction = "prompt" }`.
    #[serde(default)]
    pub fields: crate::data::format::FieldMap,
    /// Expands the source once per language, substituting `{lang}` in its name and path.
    pub languages: Option<Vec<String>>,
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read recipe {}", path.display()))?;
        let mut recipe: Recipe = toml::from_str(&text).map_err(|e| anyhow::anyhow!("recipe {}: {e}", path.display()))?;
        recipe.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        recipe.validate().with_context(|| format!("recipe {}", path.display()))?;
        Ok(recipe)
    }

    pub fn lrs(&self) -> Vec<f64> {
        match &self.train.lr {
            LrList::One(x) => vec![*x],
            LrList::Many(v) => v.clone(),
        }
    }

    /// Resolves a path written in the recipe against the recipe's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn validate(&self) -> Result<()> {
        let t = &self.train;
        let lrs = self.lrs();
        if lrs.is_empty() {
            bail!("[train] lr: give at least one learning rate");
        }
        if let Some(bad) = lrs.iter().find(|&&x| !(x > 0.0 && x.is_finite())) {
            bail!("[train] lr: {bad} is not a positive learning rate");
        }
        match (t.max_steps, t.epochs) {
            (Some(_), Some(_)) => bail!("[train]: give max_steps or epochs, not both"),
            (None, None) => bail!("[train]: give max_steps or epochs"),
            (Some(0), _) | (_, Some(0)) => bail!("[train]: max_steps / epochs must be at least 1"),
            _ => {}
        }
        if t.batch_size == 0 {
            bail!("[train] batch_size must be at least 1");
        }
        let micro = t.micro_batch_size.unwrap_or(t.batch_size);
        if micro == 0 || !t.batch_size.is_multiple_of(micro) {
            bail!("[train] batch_size ({}) must be a multiple of micro_batch_size ({micro})", t.batch_size);
        }
        if t.max_seq_len < 2 {
            bail!("[train] max_seq_len must be at least 2");
        }
        crate::optim::Schedule::parse(&t.scheduler).context("[train] scheduler")?;
        if !["f32", "bf16"].contains(&t.save_dtype.as_str()) {
            bail!("[train] save_dtype must be \"f32\" or \"bf16\"");
        }
        if let Some(p) = self.lora.dropout {
            if !(0.0..1.0).contains(&p) {
                bail!("[lora] dropout must be in [0, 1)");
            }
        }
        const TEMPLATES: [&str; 5] = ["alpaca", "llama2-chat", "gemma", "chatml", "model"];
        if !TEMPLATES.contains(&self.template.name.as_str()) {
            bail!("[template] name `{}` is not one of {}", self.template.name, TEMPLATES.join(", "));
        }
        crate::data::TrainOn::parse(&self.template.train_on).context("[template] train_on")?;
        if self.sources.is_empty() {
            bail!("no [[sources]]: name at least one data file");
        }
        for s in &self.sources {
            let format = crate::data::format::Format::parse(&s.format).with_context(|| format!("[[sources]] `{}`", s.name))?;
            crate::data::format::validate_fields(format, &s.fields).with_context(|| format!("[[sources]] `{}`: fields", s.name))?;
        }
        if !["error", "skip"].contains(&self.on_bad_record.as_str()) {
            bail!("on_bad_record must be \"error\" or \"skip\"");
        }
        if !(0.0..1.0).contains(&self.eval.heldout_fraction) {
            bail!("[eval] heldout_fraction must be in [0, 1)");
        }
        // Expanding checks names, {lang} placeholders and references between conditions and sources.
        crate::data::pipeline::expand(self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Recipe> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, text).unwrap();
        Recipe::load(&p)
    }

    const OK: &str = r#"
name = "t"
output_dir = "out"
[model]
path = "m"
[train]
lr = [1e-4, 1e-6]
max_steps = 3
[[sources]]
name = "en"
path = "en.json"
"#;

    #[test]
    fn minimal_recipe_loads_with_defaults() {
        let r = load(OK).unwrap();
        assert_eq!(r.lrs(), vec![1e-4, 1e-6]);
        assert_eq!(r.train.batch_size, 8);
        assert_eq!(r.template.name, "alpaca");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let e = load(&OK.replace("max_steps = 3", "max_steps = 3\nlearning_rate = 1")).unwrap_err().to_string();
        assert!(e.contains("r.toml") && e.contains("learning_rate") && e.contains("line 9"), "{e}");
    }

    #[test]
    fn conditions_must_name_defined_sources_and_placeholders() {
        let e = format!("{:#}", load(&OK.replace("path = \"en.json\"", "path = \"en.json\"\nlanguages = [\"es\"]")).unwrap_err());
        assert!(e.contains("`en` has languages but no {lang}"), "{e}");
        let e = format!("{:#}", load(&format!("{OK}[[conditions]]\nname = \"c\"\nsources = [\"fr\"]\n")).unwrap_err());
        assert!(e.contains("names source `fr`"), "{e}");
        let e = format!("{:#}", load(&format!("{OK}[[conditions]]\nname = \"c\"\nsources = [{{ source = \"en\", count = 3, fraction = 0.5 }}]\n")).unwrap_err());
        assert!(e.contains("at most one of count, fraction, weight"), "{e}");
    }

    #[test]
    fn inconsistent_batching_is_refused() {
        let e = format!("{:#}", load(&OK.replace("max_steps = 3", "max_steps = 3\nbatch_size = 8\nmicro_batch_size = 3")).unwrap_err());
        assert!(e.contains("multiple of micro_batch_size"), "{e}");
        let e = format!("{:#}", load(&OK.replace("max_steps = 3", "epochs = 1\nmax_steps = 3")).unwrap_err());
        assert!(e.contains("not both"), "{e}");
    }
}
