//! Cleaning a source (`drop_if`, `min_chars`, `max_chars`, `dedup`) and normalising its record ids (`id_strip`).
//! The same rules can be given to every origin of a study, so native and translated data are cleaned alike; what
//! each rule drops is counted per source and shown by `trainer plan`, run.json and the report.

use super::record::Record;
use crate::recipe::SourceSection;
use anyhow::{bail, Context, Result};
use regex::Regex;
use std::collections::{BTreeMap, HashSet};

/// Records dropped by cleaning: source → rule → count. Every rule a source states is listed, with 0 when it
/// dropped nothing. Rules: `drop_if: <pattern>`, `min_chars`, `max_chars`, `dedup`.
pub type Dropped = BTreeMap<String, BTreeMap<String, usize>>;

/// A source's cleaning rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub drop_if: Vec<(String, Regex)>,
    pub min_chars: Option<usize>,
    pub max_chars: Option<usize>,
    pub dedup: bool,
    pub id_strip: Option<Regex>,
    /// `id_from = "index"`: ids are the records' positions in the file.
    pub id_from_index: bool,
}

fn compile(source: &str, key: &str, pattern: &str) -> Result<Regex> {
    Regex::new(pattern).with_context(|| format!("[[sources]] `{source}`: {key} pattern `{pattern}` is not a valid regular expression"))
}

impl Filter {
    /// Compiles a `[[sources]]` table's rules; an invalid pattern is an error naming the source and the pattern.
    pub fn from_section(s: &SourceSection) -> Result<Self> {
        let drop_if = s.drop_if.iter().map(|p| Ok((p.clone(), compile(&s.name, "drop_if", p)?))).collect::<Result<Vec<_>>>()?;
        let id_strip = s.id_strip.as_deref().map(|p| compile(&s.name, "id_strip", p)).transpose()?;
        if let (Some(lo), Some(hi)) = (s.min_chars, s.max_chars) {
            if lo > hi {
                bail!("[[sources]] `{}`: min_chars {lo} is more than max_chars {hi}", s.name);
            }
        }
        Ok(Filter { drop_if, min_chars: s.min_chars, max_chars: s.max_chars, dedup: s.dedup, id_strip, id_from_index: s.id_from == crate::recipe::IdFrom::Index })
    }

    /// Whether any record can be dropped.
    pub fn cleans(&self) -> bool {
        !self.drop_if.is_empty() || self.min_chars.is_some() || self.max_chars.is_some() || self.dedup
    }

    /// The rule names this filter counts, in the order they are tried.
    fn rules(&self) -> Vec<String> {
        let mut out: Vec<String> = self.drop_if.iter().map(|(p, _)| format!("drop_if: {p}")).collect();
        out.extend(self.min_chars.map(|_| "min_chars".to_string()));
        out.extend(self.max_chars.map(|_| "max_chars".to_string()));
        if self.dedup {
            out.push("dedup".into());
        }
        out
    }

    /// The record id with every `id_strip` match removed.
    pub fn id(&self, id: String) -> String {
        match &self.id_strip {
            Some(re) => re.replace_all(&id, "").into_owned(),
            None => id,
        }
    }

    /// Keeps the records no rule drops, in order. Each dropped record counts for the first rule that drops it
    /// (drop_if patterns in order, then min_chars, max_chars, dedup), under `dropped[source]`.
    pub fn apply(&self, source: &str, records: Vec<Record>, dropped: &mut Dropped) -> Vec<Record> {
        if !self.cleans() {
            return records;
        }
        let counts = dropped.entry(source.to_string()).or_default();
        for rule in self.rules() {
            counts.entry(rule).or_insert(0);
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let texts = texts(&r);
            let response_chars = r.conversation.turns.last().map_or(0, |t| t.content.chars().count());
            let rule = if let Some((p, _)) = self.drop_if.iter().find(|(_, re)| texts.iter().any(|t| re.is_match(t))) {
                Some(format!("drop_if: {p}"))
            } else if self.min_chars.is_some_and(|n| response_chars < n) {
                Some("min_chars".into())
            } else if self.max_chars.is_some_and(|n| response_chars > n) {
                Some("max_chars".into())
            } else if self.dedup && !seen.insert(dedup_key(&r)) {
                Some("dedup".into())
            } else {
                None
            };
            match rule {
                Some(rule) => *counts.entry(rule).or_insert(0) += 1,
                None => out.push(r),
            }
        }
        out
    }
}

/// The texts `drop_if` is matched against: the alpaca instruction and input, and every turn (for single-turn
/// records the user turn and the response).
fn texts(r: &Record) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    if let Some(a) = &r.alpaca {
        out.push(&a.instruction);
        out.push(&a.input);
    }
    out.extend(r.conversation.turns.iter().map(|t| t.content.as_str()));
    out
}

/// What makes two records exact duplicates: instruction, input and every turn with its role.
fn dedup_key(r: &Record) -> String {
    let mut key = String::new();
    if let Some(a) = &r.alpaca {
        key.push_str(&a.instruction);
        key.push('\u{0}');
        key.push_str(&a.input);
    }
    for t in &r.conversation.turns {
        key.push_str(&format!("\u{1}{:?}\u{0}", t.role));
        key.push_str(&t.content);
    }
    key
}

/// One line per source cleaning dropped records of ("cleaning dropped 3 record(s) of source `s`: 3 by
/// drop_if: …"), then one naming the cleaned sources it dropped nothing of.
pub fn describe(dropped: &Dropped) -> Vec<String> {
    let mut out = Vec::new();
    let mut clean = Vec::new();
    for (source, rules) in dropped {
        let total: usize = rules.values().sum();
        if total == 0 {
            clean.push(format!("`{source}`"));
            continue;
        }
        let parts: Vec<String> = rules.iter().filter(|(_, &n)| n > 0).map(|(rule, n)| format!("{n} by {rule}")).collect();
        out.push(format!("cleaning dropped {total} record(s) of source `{source}`: {}", parts.join(", ")));
    }
    if !clean.is_empty() {
        out.push(format!("cleaning dropped nothing of {}", clean.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::record::{AlpacaFields, Conversation, Location, Provenance, Role, Turn};

    fn rec(instruction: &str, output: &str) -> Record {
        Record {
            conversation: Conversation { turns: vec![Turn { role: Role::User, content: instruction.into() }, Turn { role: Role::Assistant, content: output.into() }] },
            alpaca: Some(AlpacaFields { instruction: instruction.into(), input: String::new() }),
            provenance: Provenance { source: "s".into(), language: None, origin: None, engine: None, source_id: None },
            location: Location { file: "s.json".into(), line: None, row: None },
        }
    }

    fn section(extra: &str) -> SourceSection {
        toml::from_str(&format!("name = \"s\"\npath = \"s.json\"\n{extra}")).unwrap()
    }

    #[test]
    fn rules_drop_and_count_per_rule() {
        let f = Filter::from_section(&section("drop_if = [\"^De acuerdo\\\\. Estoy aquí\", \"翻译\"]\nmin_chars = 2\nmax_chars = 10\ndedup = true")).unwrap();
        let records = vec![
            rec("q1", "fine"),
            rec("De acuerdo. Estoy aquí para ayudarte", "x y"), // instruction matches
            rec("q2", "请提供需要翻译的内容"),                       // response matches the second pattern
            rec("q3", "a"),                                     // too short
            rec("q4", "far too long for this"),                 // too long
            rec("q1", "fine"),                                  // duplicate of the first
            rec("q1", "fine!"),                                 // not a duplicate
        ];
        let mut dropped = Dropped::new();
        let kept = f.apply("s", records, &mut dropped);
        assert_eq!(kept.iter().map(|r| r.conversation.turns[1].content.as_str()).collect::<Vec<_>>(), ["fine", "fine!"]);
        let counts = &dropped["s"];
        assert_eq!(counts["drop_if: ^De acuerdo\\. Estoy aquí"], 1);
        assert_eq!(counts["drop_if: 翻译"], 1);
        assert_eq!((counts["min_chars"], counts["max_chars"], counts["dedup"]), (1, 1, 1));
        // A source without rules is not listed.
        let mut none = Dropped::new();
        assert_eq!(Filter::from_section(&section("")).unwrap().apply("t", vec![rec("a", "b")], &mut none).len(), 1);
        assert!(none.is_empty());
    }

    #[test]
    fn invalid_patterns_name_the_source_and_pattern() {
        let e = format!("{:#}", Filter::from_section(&section("drop_if = [\"ok\", \"(unclosed\"]")).unwrap_err());
        assert!(e.contains("`s`") && e.contains("`(unclosed`") && e.contains("drop_if"), "{e}");
        let e = format!("{:#}", Filter::from_section(&section("id_strip = \"[\"")).unwrap_err());
        assert!(e.contains("id_strip") && e.contains("`[`"), "{e}");
        let e = format!("{:#}", Filter::from_section(&section("min_chars = 5\nmax_chars = 4")).unwrap_err());
        assert!(e.contains("min_chars 5"), "{e}");
    }

    #[test]
    fn id_strip_aligns_round_trip_ids_with_native_ones() {
        let f = Filter::from_section(&section("id_strip = \"_(google|cohere)_translated_to_[a-z]+\"")).unwrap();
        assert_eq!(f.id("aya_spa_google_translated_to_eng_google_translated_to_spa_7".into()), "aya_spa_7");
        assert_eq!(f.id("aya_spa_7".into()), "aya_spa_7");
    }
}
