//! From a recipe to the tokenized training and held-out sets of each condition: expand `{lang}` placeholders,
//! read each used source once (streamed, bad records handled by policy), build every condition's mix, split off
//! its held-out share, and tokenize with the recipe's template in parallel.

use super::batch::Example;
use super::chat::ChatTemplate;
use super::devset::{self, DevSpec};
use super::filter::{Dropped, Filter};
use super::format::{self, FieldMap, Format};
use super::mix::{self, Compose, Condition, Entry, Size};
use super::record::{AlpacaFields, Provenance, Record, Role};
use super::template::Template;
use super::{reader, tokenize_pair, TrainOn};
use crate::recipe::{EntrySection, Recipe};
use crate::tokenizer::TextTokenizer;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A source after `{lang}` expansion, its path resolved against the data root.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub name: String,
    pub path: PathBuf,
    pub format: Format,
    pub fields: FieldMap,
    pub language: Option<String>,
    pub origin: Option<String>,
    pub engine: Option<String>,
    /// Language codes by id token, for files that mix languages without a language field (Aya's `all` files:
    /// `aya_spa_12` → `spa` → "es").
    pub id_languages: BTreeMap<String, String>,
    /// Cleaning rules and id normalisation.
    pub filter: Filter,
}

/// The language `id_languages` gives a record id: the first `_`-separated part of the id that it maps.
fn language_from_id(id: &str, map: &BTreeMap<String, String>) -> Option<String> {
    id.split('_').find_map(|part| map.get(part).cloned())
}

#[derive(Debug, Clone)]
pub struct Expanded {
    pub sources: Vec<SourceSpec>,
    pub conditions: Vec<Condition>,
    /// For each condition (same order): the `[eval] sets` or dev sets whose loss `keep = "best"` selects on,
    /// after `{lang}` expansion; empty: the held-out share (or, without one, the first set).
    pub select_on: Vec<Vec<String>>,
    /// `[[dev_sets]]`, expanded.
    pub dev_sets: Vec<DevSpec>,
}

/// The languages a `{lang}` source or condition expands to; `[None]` when it does not expand.
fn language_variants<'a>(section: &str, name: &str, languages: &'a Option<Vec<String>>) -> Result<Vec<Option<&'a String>>> {
    match languages {
        Some(_) if !name.contains("{lang}") => bail!("{section} `{name}` has languages but no {{lang}} in its name"),
        Some(l) => Ok(l.iter().map(Some).collect()),
        None => Ok(vec![None]),
    }
}

fn substitute(text: &str, lang: &str) -> String {
    text.replace("{lang}", lang)
}

/// Expands sources and conditions; checks names are unique and every reference resolves. `data_root` overrides
/// the recipe's own (CLI `--data-root`).
pub fn expand_with_root(recipe: &Recipe, data_root: Option<&Path>) -> Result<Expanded> {
    let root = match data_root {
        Some(r) => r.to_path_buf(),
        None => recipe.data_root.as_ref().map(|r| recipe.resolve(r)).unwrap_or_else(|| recipe.base_dir.clone()),
    };
    let mut sources = Vec::new();
    for s in &recipe.sources {
        let format = Format::parse(&s.format).with_context(|| format!("[[sources]] `{}`", s.name))?;
        let filter = Filter::from_section(s)?;
        for lang in language_variants("[[sources]]", &s.name, &s.languages)? {
            let sub = |t: &str| lang.map_or(t.to_string(), |l| substitute(t, l));
            sources.push(SourceSpec {
                name: sub(&s.name),
                path: root.join(sub(&s.path.to_string_lossy())),
                format,
                fields: s.fields.clone(),
                language: s.language.as_deref().map(sub).or_else(|| lang.cloned()),
                origin: s.origin.clone(),
                engine: s.engine.clone(),
                id_languages: s.id_languages.clone(),
                filter: filter.clone(),
            });
        }
    }
    let mut seen = BTreeSet::new();
    for s in &sources {
        if !seen.insert(s.name.as_str()) {
            bail!("[[sources]] name `{}` is used twice", s.name);
        }
    }
    // The language each condition was expanded for, if any: `{lang}` in select_on becomes it.
    let mut condition_langs: Vec<Option<String>> = Vec::new();
    let conditions = if recipe.conditions.is_empty() {
        condition_langs.push(None);
        vec![Condition {
            name: recipe.name.clone(),
            entries: sources.iter().map(|s| Entry { source: s.name.clone(), size: Size::All, prune: None }).collect(),
            compose: Compose::Concat,
            size: None,
            match_size_of: None,
        }]
    } else {
        let mut out = Vec::new();
        for c in &recipe.conditions {
            let compose = Compose::parse(&c.compose).with_context(|| format!("[[conditions]] `{}`", c.name))?;
            for lang in language_variants("[[conditions]]", &c.name, &c.languages)? {
                let sub = |t: &str| lang.map_or(t.to_string(), |l| substitute(t, l));
                let entries = c.sources.iter().map(|e| entry(e, &sub)).collect::<Result<Vec<_>>>().with_context(|| format!("[[conditions]] `{}`", c.name))?;
                out.push(Condition { name: sub(&c.name), entries, compose, size: c.size, match_size_of: c.match_size_of.as_deref().map(sub) });
                condition_langs.push(lang.cloned());
            }
        }
        out
    };
    let mut seen = BTreeSet::new();
    for c in &conditions {
        if !seen.insert(c.name.as_str()) {
            bail!("[[conditions]] name `{}` is used twice", c.name);
        }
        let known = |n: &str| sources.iter().any(|s| s.name == n);
        for n in c.entries.iter().map(|e| e.source.as_str()).chain(c.match_size_of.as_deref()) {
            if !known(n) {
                bail!("[[conditions]] `{}` names source `{n}`, which no [[sources]] defines", c.name);
            }
        }
    }
    let mut dev_sets = Vec::new();
    for d in &recipe.dev_sets {
        let fraction = d.fraction_of(&recipe.eval)?;
        for lang in language_variants("[[dev_sets]]", &d.name, &d.languages)? {
            let sub = |t: &str| lang.map_or(t.to_string(), |l| substitute(t, l));
            let spec = DevSpec { name: sub(&d.name), source: sub(&d.source), fraction };
            if !sources.iter().any(|s| s.name == spec.source) {
                bail!("[[dev_sets]] `{}` is drawn from source `{}`, which no [[sources]] defines", spec.name, spec.source);
            }
            // Sets are named like sources ([eval] sets lists sources): one name, one set.
            if sources.iter().any(|s| s.name == spec.name) || dev_sets.iter().any(|o: &DevSpec| o.name == spec.name) {
                bail!("[[dev_sets]] name `{}` is already a source or dev set name; give the dev set its own", spec.name);
            }
            dev_sets.push(spec);
        }
    }
    let mut select_on = Vec::new();
    for (c, lang) in conditions.iter().zip(&condition_langs) {
        let mut names = Vec::new();
        for pattern in &recipe.eval.select_on {
            let name = match lang {
                Some(l) => substitute(pattern, l),
                None if pattern.contains("{lang}") => bail!("[eval] select_on `{pattern}`: condition `{}` has no language to put for {{lang}} (it is not expanded with languages)", c.name),
                None => pattern.clone(),
            };
            if !recipe.eval.sets.contains(&name) && !dev_sets.iter().any(|d| d.name == name) {
                let known: Vec<&str> = recipe.eval.sets.iter().map(String::as_str).chain(dev_sets.iter().map(|d| d.name.as_str())).collect();
                bail!("[eval] select_on: `{name}` (for condition `{}`) is not one of [eval] sets or [[dev_sets]] ({})", c.name, if known.is_empty() { "none".to_string() } else { known.join(", ") });
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
        select_on.push(names);
    }
    Ok(Expanded { sources, conditions, select_on, dev_sets })
}

/// [`expand_with_root`] with the recipe's own data root.
pub fn expand(recipe: &Recipe) -> Result<Expanded> {
    expand_with_root(recipe, None)
}

fn entry(e: &EntrySection, sub: &dyn Fn(&str) -> String) -> Result<Entry> {
    Ok(match e {
        EntrySection::Name(n) => Entry { source: sub(n), size: Size::All, prune: None },
        EntrySection::Sized(s) => {
            let size = match (s.count, s.fraction, s.weight) {
                (None, None, None) => Size::All,
                (Some(n), None, None) => Size::Count(n),
                (None, Some(f), None) => Size::Fraction(f),
                (None, None, Some(w)) if w > 0.0 => Size::Weight(w),
                (None, None, Some(_)) => bail!("source `{}`: weight must be positive", s.source),
                _ => bail!("source `{}`: give at most one of count, fraction, weight", s.source),
            };
            Entry { source: sub(&s.source), size, prune: s.prune }
        }
    })
}

/// Bad records skipped under `on_bad_record = "skip"`.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct BadRecords {
    pub count: usize,
    /// The first few, with where and what.
    pub first: Vec<String>,
}

impl BadRecords {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < 5 {
            self.first.push(what);
        }
    }
}

/// Reads one source. With `skip`, records that fail to parse are counted in `bad` instead of stopping; records
/// the source's cleaning rules drop are counted in `dropped`.
pub fn read_source(spec: &SourceSpec, skip: bool, bad: &mut BadRecords, dropped: &mut Dropped) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (index, item) in reader::open(&spec.path).with_context(|| format!("[[sources]] `{}`", spec.name))?.enumerate() {
        let parsed = item.and_then(|raw| {
            let p = format::parse(spec.format, &spec.fields, &raw.value).map_err(|e| anyhow::anyhow!("{}: {e}", raw.location))?;
            Ok((raw.location, p))
        });
        let (location, p) = match parsed {
            Ok(x) => x,
            Err(e) if skip => {
                bad.add(format!("{e:#}"));
                continue;
            }
            Err(e) => return Err(e.context(format!("[[sources]] `{}` (set on_bad_record = \"skip\" to skip bad records)", spec.name))),
        };
        out.push(Record {
            conversation: p.conversation,
            alpaca: p.alpaca.map(|(instruction, input)| AlpacaFields { instruction, input }),
            provenance: Provenance {
                source: spec.name.clone(),
                language: spec.language.clone().or(p.language).or_else(|| p.id.as_deref().and_then(|id| language_from_id(id, &spec.id_languages))),
                origin: spec.origin.clone(),
                engine: spec.engine.clone(),
                source_id: if spec.filter.id_from_index { Some(spec.filter.id(index.to_string())) } else { p.id.map(|id| spec.filter.id(id)) },
            },
            location,
        });
    }
    let read = out.len();
    let out = spec.filter.apply(&spec.name, out, dropped);
    if out.is_empty() && read > 0 {
        bail!("[[sources]] `{}`: its cleaning rules (drop_if, min_chars, max_chars, dedup) drop all {read} records of {}", spec.name, spec.path.display());
    }
    if out.is_empty() {
        bail!("[[sources]] `{}`: {} has no usable records", spec.name, spec.path.display());
    }
    Ok(out)
}

/// Reads one whole data file outside a recipe (`eval`, `generate`): every record must be good.
pub fn read_file(path: &Path, format: Format, language: Option<String>) -> Result<Vec<Record>> {
    let spec = SourceSpec {
        name: path.display().to_string(),
        path: path.to_path_buf(),
        format,
        fields: FieldMap::default(),
        language,
        origin: None,
        engine: None,
        id_languages: BTreeMap::new(),
        filter: Filter::default(),
    };
    read_source(&spec, false, &mut BadRecords::default(), &mut Dropped::new())
}

/// How records become token sequences.
pub enum PromptTemplate {
    Alpaca,
    Chat(Box<ChatTemplate>),
}

impl PromptTemplate {
    pub fn from_name(name: &str, tokenizer: &TextTokenizer) -> Result<Self> {
        match name {
            "alpaca" => Ok(PromptTemplate::Alpaca),
            other => Ok(PromptTemplate::Chat(Box::new(ChatTemplate::from_name(other, tokenizer)?))),
        }
    }
}

pub struct Encoder<'a> {
    pub tokenizer: &'a TextTokenizer,
    pub template: PromptTemplate,
    pub eos_id: u32,
    pub vocab_size: usize,
    pub max_seq_len: usize,
    pub train_on: TrainOn,
}

impl Encoder<'_> {
    pub fn encode(&self, r: &Record) -> Result<Example> {
        let example = match &self.template {
            PromptTemplate::Alpaca => {
                let output = r.conversation.turns.last().map_or("", |t| t.content.as_str());
                let (prompt, response) = Template::Alpaca.render(&alpaca_fields(r)?, output);
                tokenize_pair(self.tokenizer, &prompt, &response, self.eos_id, self.max_seq_len, self.train_on)?
            }
            PromptTemplate::Chat(t) => {
                let (mut ids, mut is_target) = t.encode(&r.conversation, self.tokenizer)?;
                if self.train_on == TrainOn::All {
                    is_target.iter_mut().for_each(|x| *x = true);
                }
                let truncated = ids.len() > self.max_seq_len;
                ids.truncate(self.max_seq_len);
                is_target.truncate(self.max_seq_len);
                Example::new(ids, is_target, truncated)
            }
        };
        if let Some(&bad) = example.ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            bail!("token id {bad} is outside the model's vocabulary ({} entries); is tokenizer.json from this checkpoint?", self.vocab_size);
        }
        Ok(example)
    }

    /// The prompt of a record for generation: everything before the answer (the alpaca prompt, or the
    /// conversation up to its last user turn with the template's generation prompt).
    pub fn prompt_ids(&self, r: &Record) -> Result<Vec<u32>> {
        match &self.template {
            PromptTemplate::Alpaca => {
                let (prompt, _) = Template::Alpaca.render(&alpaca_fields(r)?, "");
                self.tokenizer.encode(&prompt, true)
            }
            PromptTemplate::Chat(t) => {
                let turns = &r.conversation.turns;
                let n = if turns.last().is_some_and(|t| t.role == Role::Assistant) { turns.len() - 1 } else { turns.len() };
                self.tokenizer.encode(&t.render(&r.conversation, n, true)?, false)
            }
        }
    }

    /// Tokenizes in parallel on all cores; errors name the record.
    pub fn encode_all(&self, records: &[Record]) -> Result<Vec<Example>> {
        // Collect every result first, so the error reported is always the first bad record in file order.
        let results: Vec<Result<Example>> = records.par_iter().map(|r| self.encode(r).with_context(|| r.location.to_string())).collect();
        results.into_iter().collect()
    }
}

/// A single-turn record's instruction and input, for the alpaca template.
fn alpaca_fields(r: &Record) -> Result<AlpacaFields> {
    if let Some(f) = &r.alpaca {
        return Ok(f.clone());
    }
    match r.conversation.turns.as_slice() {
        [u, a] if u.role == Role::User && a.role == Role::Assistant => Ok(AlpacaFields { instruction: u.content.clone(), input: String::new() }),
        turns => bail!("the alpaca template renders single-turn records; this one has {} turns (use a chat template)", turns.len()),
    }
}

/// One condition, ready to train on.
pub struct ConditionData {
    pub name: String,
    pub train: Vec<Example>,
    pub heldout: Vec<Example>,
    /// Training examples per language ("" = unlabelled).
    pub languages: BTreeMap<String, usize>,
    /// The language of each held-out example ("" = unlabelled), for per-language held-out loss.
    pub heldout_languages: Vec<String>,
    /// Where the training data comes from: its distinct origins (with engine), e.g. "translated (google)".
    pub origins: Vec<String>,
    /// The `[eval] sets` `keep = "best"` selects on (token-weighted mean loss over them); empty: the held-out
    /// share, or without one the first set.
    pub select_on: Vec<String>,
    /// Held-out examples that carry a dev set's id (held out of training for the dev sets).
    pub dev_heldout: usize,
}

impl ConditionData {
    pub fn truncated(&self) -> usize {
        self.train.iter().chain(&self.heldout).filter(|e| e.truncated).count()
    }
}

/// "native", "translated (google)", "round-trip (cohere)"; "unlabelled" when the source names no origin.
fn origin_label(p: &Provenance) -> String {
    match (&p.origin, &p.engine) {
        (Some(o), Some(e)) => format!("{o} ({e})"),
        (Some(o), None) => o.clone(),
        (None, Some(e)) => format!("unlabelled ({e})"),
        (None, None) => "unlabelled".into(),
    }
}

/// The recipe's checks that need its sources expanded (the schema's own are [`Recipe::validate`]): cleaning rules,
/// names, `{lang}` placeholders and references between conditions and sources after expansion, and the shared
/// evaluation sets. Reads no data.
pub fn check_recipe(recipe: &Recipe) -> Result<()> {
    for s in &recipe.sources {
        Filter::from_section(s)?;
    }
    let expanded = expand(recipe)?;
    // Sources (and so sets) and conditions, after {lang} expansion: condition names become run folders.
    crate::names::check_distinct(expanded.sources.iter().map(|s| s.name.as_str()), "[[sources]] name")?;
    crate::names::check_distinct(expanded.conditions.iter().map(|c| c.name.as_str()), if recipe.conditions.is_empty() { "name" } else { "[[conditions]] name" })?;
    check_eval_sets(recipe, &expanded)?;
    Ok(())
}

/// The sources `[eval] sets` names; each must be defined and trained on by no condition.
pub fn check_eval_sets<'a>(recipe: &Recipe, expanded: &'a Expanded) -> Result<Vec<&'a SourceSpec>> {
    let mut out = Vec::new();
    for name in &recipe.eval.sets {
        let spec = expanded.sources.iter().find(|s| &s.name == name).with_context(|| format!("[eval] sets: `{name}` is not a [[sources]] name"))?;
        if let Some(c) = expanded.conditions.iter().find(|c| c.entries.iter().any(|e| &e.source == name)) {
            bail!("[eval] sets: `{name}` is trained on by condition `{}`; an evaluation set must stay unseen", c.name);
        }
        out.push(spec);
    }
    Ok(out)
}

/// A shared evaluation set: a source read whole and evaluated for every run.
pub struct EvalSet {
    pub name: String,
    pub examples: Vec<Example>,
    /// The language of each example ("" = unlabelled).
    pub languages: Vec<String>,
    /// For a dev set: the source it is drawn from, and its records' ids (held out of every condition).
    pub dev: Option<(String, Vec<String>)>,
}

/// Reads and tokenizes `[eval] sets`. A set must be a defined source that no condition trains on.
pub fn load_eval_sets(recipe: &Recipe, expanded: &Expanded, encoder: &Encoder, bad: &mut BadRecords, dropped: &mut Dropped) -> Result<Vec<EvalSet>> {
    let skip = recipe.on_bad_record == "skip";
    let mut out = Vec::new();
    for spec in check_eval_sets(recipe, expanded)? {
        let name = &spec.name;
        let records = read_source(spec, skip, bad, dropped)?;
        out.push(EvalSet {
            name: name.clone(),
            examples: encoder.encode_all(&records).with_context(|| format!("[eval] set `{name}`"))?,
            languages: records.iter().map(|r| r.provenance.language.clone().unwrap_or_default()).collect(),
            dev: None,
        });
    }
    Ok(out)
}

/// Each condition's records before tokenizing: its name, training records and held-out records.
pub type Mix = (String, Vec<Record>, Vec<Record>);

/// The records of every condition and dev set, before tokenizing.
pub struct Mixes {
    /// Per condition, in the order of `expanded.conditions`.
    pub conditions: Vec<Mix>,
    /// Per dev set, in the order of `expanded.dev_sets`: its records.
    pub dev_sets: Vec<Vec<Record>>,
    /// The ids of the dev sets' records, which every condition holds out.
    pub dev_ids: BTreeSet<String>,
    pub bad: BadRecords,
    pub dropped: Dropped,
}

/// Reads every used source once and builds each dev set and each condition's training and held-out records;
/// with the bad records skipped and the records cleaning dropped.
pub fn mixes(recipe: &Recipe, expanded: &Expanded) -> Result<Mixes> {
    let used: BTreeSet<&str> = expanded
        .conditions
        .iter()
        .flat_map(|c| c.entries.iter().map(|e| e.source.as_str()).chain(c.match_size_of.as_deref()))
        .chain(expanded.dev_sets.iter().map(|d| d.source.as_str()))
        .collect();
    let skip = recipe.on_bad_record == "skip";
    let mut bad = BadRecords::default();
    let mut dropped = Dropped::new();
    let mut records: HashMap<String, Vec<Record>> = HashMap::new();
    for spec in expanded.sources.iter().filter(|s| used.contains(s.name.as_str())) {
        records.insert(spec.name.clone(), read_source(spec, skip, &mut bad, &mut dropped)?);
    }
    let dev_sets = expanded.dev_sets.iter().map(|d| devset::draw(d, &records[&d.source], recipe.seed)).collect::<Result<Vec<_>>>()?;
    let dev_ids = devset::ids(dev_sets.iter().map(Vec::as_slice));
    let mut out = Vec::new();
    for cond in &expanded.conditions {
        let mix = mix::build(cond, &records, recipe.seed)?;
        let (train, heldout) = mix::split_heldout(mix, recipe.eval.heldout_fraction, recipe.seed, &cond.name, cond.compose != Compose::Concat)?;
        let (train, heldout) = devset::hold_out(train, heldout, &dev_ids);
        out.push((cond.name.clone(), train, heldout));
    }
    Ok(Mixes { conditions: out, dev_sets, dev_ids, bad, dropped })
}

/// [`mixes`], tokenized: each condition's train and held-out sets, and the dev sets.
pub fn load(recipe: &Recipe, expanded: &Expanded, encoder: &Encoder) -> Result<(Vec<ConditionData>, Vec<EvalSet>, BadRecords, Dropped)> {
    let Mixes { conditions, dev_sets, dev_ids, bad, dropped } = mixes(recipe, expanded)?;
    let mut sets = Vec::new();
    for (spec, records) in expanded.dev_sets.iter().zip(dev_sets) {
        sets.push(EvalSet {
            name: spec.name.clone(),
            examples: encoder.encode_all(&records).with_context(|| format!("[[dev_sets]] `{}`", spec.name))?,
            languages: records.iter().map(|r| r.provenance.language.clone().unwrap_or_default()).collect(),
            dev: Some((spec.source.clone(), records.iter().filter_map(|r| r.provenance.source_id.clone()).collect())),
        });
    }
    let mut out = Vec::new();
    for ((name, train, heldout), select_on) in conditions.into_iter().zip(&expanded.select_on) {
        let mut languages = BTreeMap::new();
        let mut origins = BTreeSet::new();
        for r in &train {
            *languages.entry(r.provenance.language.clone().unwrap_or_default()).or_insert(0) += 1;
            origins.insert(origin_label(&r.provenance));
        }
        out.push(ConditionData {
            train: encoder.encode_all(&train).with_context(|| format!("condition `{name}`"))?,
            heldout: encoder.encode_all(&heldout).with_context(|| format!("condition `{name}`"))?,
            languages,
            heldout_languages: heldout.iter().map(|r| r.provenance.language.clone().unwrap_or_default()).collect(),
            origins: origins.into_iter().collect(),
            select_on: select_on.clone(),
            dev_heldout: heldout.iter().filter(|r| devset::is_dev(r, &dev_ids)).count(),
            name,
        });
    }
    Ok((out, sets, bad, dropped))
}

#[cfg(test)]
mod tests {
    /// Loads a recipe and runs the checks `plan` and `run` make before reading data.
    fn load_checked(text: &str) -> Result<Recipe> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, text).unwrap();
        let recipe = Recipe::load(&p)?;
        check_recipe(&recipe)?;
        Ok(recipe)
    }

    use crate::recipe::tests::OK as RECIPE;

    #[test]
    fn conditions_must_name_defined_sources_and_placeholders() {
        let e = format!("{:#}", load_checked(&RECIPE.replace("path = \"en.json\"", "path = \"en.json\"\nlanguages = [\"es\"]")).unwrap_err());
        assert!(e.contains("`en` has languages but no {lang}"), "{e}");
        let e = format!("{:#}", load_checked(&format!("{RECIPE}[[conditions]]\nname = \"c\"\nsources = [\"fr\"]\n")).unwrap_err());
        assert!(e.contains("names source `fr`"), "{e}");
        let e = format!("{:#}", load_checked(&format!("{RECIPE}[[conditions]]\nname = \"c\"\nsources = [{{ source = \"en\", count = 3, fraction = 0.5 }}]\n")).unwrap_err());
        assert!(e.contains("at most one of count, fraction, weight"), "{e}");
    }

    use super::*;

    fn spec(path: &Path, id_from: &str) -> SourceSpec {
        let section: crate::recipe::SourceSection = toml::from_str(&format!("name = \"s\"\npath = \"x\"\nformat = \"lima\"\nid_from = \"{id_from}\"")).unwrap();
        SourceSpec {
            name: "s".into(),
            path: path.to_path_buf(),
            format: Format::Lima,
            fields: FieldMap::default(),
            language: Some("de".into()),
            origin: None,
            engine: None,
            id_languages: BTreeMap::new(),
            filter: Filter::from_section(&section).unwrap(),
        }
    }

    #[test]
    fn id_from_index_gives_records_their_position_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("de.jsonl");
        // No ids; the second line is bad (skipped) and still counts, so later records keep their positions.
        std::fs::write(&path, "{\"conversations\": [\"a?\", \"a.\"]}\n{\"conversations\": 3}\n{\"conversations\": [\"c?\", \"c.\"], \"id\": \"x\"}\n").unwrap();
        let mut bad = BadRecords::default();
        let ids = |s: &SourceSpec, bad: &mut BadRecords| read_source(s, true, bad, &mut Dropped::new()).unwrap().into_iter().map(|r| r.provenance.source_id).collect::<Vec<_>>();
        assert_eq!(ids(&spec(&path, "index"), &mut bad), [Some("0".to_string()), Some("2".to_string())], "the file's own id is replaced too");
        assert_eq!(bad.count, 1);
        assert_eq!(ids(&spec(&path, "field"), &mut bad), [None, Some("x".to_string())], "the default: the id field, none without one");
        let e = toml::from_str::<crate::recipe::SourceSection>("name = \"s\"\npath = \"x\"\nid_from = \"line\"").unwrap_err().to_string();
        assert!(e.contains("unknown variant `line`"), "{e}");
    }
}
