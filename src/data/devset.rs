//! Shared dev sets (`[[dev_sets]]`): the text `keep = "best"` selects every condition of a language on.
//!
//! A dev set is the part of one source (a language's native data) whose ids come first in the held-out order of
//! the data seed — exactly the ids a condition over that source alone holds out ([`mix::split_heldout`]). Every
//! condition then holds out each record that carries one of those ids, whatever its source or language: a
//! round-trip translation of a dev record (its id after `id_strip`), or in a parallel mix the same instruction in
//! another language. No condition trains on a dev record or on a translation of one, and held-out shares keep
//! their size wherever the keyed split already holds those ids out (the native condition and its round trips).

use super::mix;
use super::record::Record;
use anyhow::{bail, Result};
use std::collections::BTreeSet;

/// A dev set after `{lang}` expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct DevSpec {
    pub name: String,
    /// The source it is drawn from.
    pub source: String,
    /// The share of the source's records, per language.
    pub fraction: f64,
}

/// The records of `source` (the dev set's source, read and cleaned) that form the dev set, in file order.
pub fn draw(spec: &DevSpec, source: &[Record], seed: u64) -> Result<Vec<Record>> {
    if let Some(r) = source.iter().find(|r| r.provenance.source_id.is_none()) {
        bail!("[[dev_sets]] `{}`: {} has no id; a dev set is kept out of every condition's training by record id (give the source's records ids, or id_from = \"index\")", spec.name, r.location);
    }
    // Keyed by id, the split ignores the name: the same ids as a condition over this source alone holds out.
    let (_, held) = mix::split_heldout(source.to_vec(), spec.fraction, seed, &spec.name, false)?;
    if held.is_empty() {
        bail!("[[dev_sets]] `{}`: fraction {} of the {} records of `{}` is no record; raise fraction", spec.name, spec.fraction, source.len(), spec.source);
    }
    Ok(held)
}

/// The ids of the dev sets' records: what no condition may train on.
pub fn ids<'a>(sets: impl IntoIterator<Item = &'a [Record]>) -> BTreeSet<String> {
    sets.into_iter().flatten().filter_map(|r| r.provenance.source_id.clone()).collect()
}

/// Moves every training record whose id is one of `ids` to the held-out side, keeping both sides' order.
pub fn hold_out(train: Vec<Record>, mut heldout: Vec<Record>, ids: &BTreeSet<String>) -> (Vec<Record>, Vec<Record>) {
    if ids.is_empty() {
        return (train, heldout);
    }
    let (moved, train): (Vec<Record>, Vec<Record>) = train.into_iter().partition(|r| is_dev(r, ids));
    heldout.extend(moved);
    (train, heldout)
}

/// Whether a record carries a dev set's id.
pub fn is_dev(r: &Record, ids: &BTreeSet<String>) -> bool {
    r.provenance.source_id.as_ref().is_some_and(|id| ids.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::record::{Conversation, Location, Provenance, Role, Turn};

    fn rec(source: &str, lang: &str, id: Option<&str>) -> Record {
        Record {
            conversation: Conversation { turns: vec![Turn { role: Role::User, content: format!("q {id:?}") }, Turn { role: Role::Assistant, content: "a".into() }] },
            alpaca: None,
            provenance: Provenance { source: source.into(), language: Some(lang.into()), origin: None, engine: None, source_id: id.map(String::from) },
            location: Location { file: format!("{source}.json").into(), line: Some(1), row: None },
        }
    }

    fn pool(source: &str, lang: &str, ids: std::ops::Range<usize>) -> Vec<Record> {
        ids.map(|i| rec(source, lang, Some(&format!("aya_spa_{i}")))).collect()
    }

    fn id_set(records: &[Record]) -> BTreeSet<String> {
        records.iter().map(|r| r.provenance.source_id.clone().unwrap()).collect()
    }

    #[test]
    fn a_dev_set_is_what_its_source_holds_out_and_no_condition_trains_on_it() {
        let native = pool("es-native", "es", 0..400);
        let spec = DevSpec { name: "es-dev".into(), source: "es-native".into(), fraction: 0.05 };
        let dev = draw(&spec, &native, 1).unwrap();
        assert_eq!(dev.len(), 20);
        let held_by_native = mix::split_heldout(native.clone(), 0.05, 1, "es-native", false).unwrap().1;
        assert_eq!(id_set(&dev), id_set(&held_by_native), "the native condition's own held-out ids");
        assert_ne!(id_set(&draw(&spec, &native, 2).unwrap()), id_set(&dev), "another data seed, other ids");
        let ids = ids([dev.as_slice()]);
        // A round trip that lost records to cleaning, split with a larger share: the keyed split alone would
        // train on some dev ids; hold_out moves every one of them to the held-out side.
        let round_trip: Vec<Record> = pool("es-rt", "es", 0..400).into_iter().filter(|r| r.provenance.source_id.as_deref() != Some("aya_spa_3")).collect();
        let (train, held) = mix::split_heldout(round_trip, 0.01, 1, "es-rt", false).unwrap();
        assert!(train.iter().any(|r| is_dev(r, &ids)), "the keyed split at 1% leaves dev ids in training");
        let (n_train, n_held) = (train.len(), held.len());
        let (train, held) = hold_out(train, held, &ids);
        assert!(train.iter().all(|r| !is_dev(r, &ids)));
        assert_eq!(train.len() + held.len(), n_train + n_held);
        assert!(held.len() > n_held);
        // Other ids (translations of English records) are untouched.
        let other: Vec<Record> = (0..50).map(|i| rec("es-google", "es", Some(&format!("aya_eng_{i}")))).collect();
        let (train, held) = hold_out(other.clone(), Vec::new(), &ids);
        assert_eq!((train.len(), held.len()), (50, 0));
    }

    #[test]
    fn a_dev_set_needs_ids_and_at_least_one_record() {
        let spec = DevSpec { name: "es-dev".into(), source: "es-native".into(), fraction: 0.05 };
        let mut native = pool("es-native", "es", 0..40);
        native[7].provenance.source_id = None;
        let e = draw(&spec, &native, 1).unwrap_err().to_string();
        assert!(e.contains("`es-dev`") && e.contains("es-native.json") && e.contains("has no id"), "{e}");
        let e = draw(&spec, &pool("es-native", "es", 0..5), 1).unwrap_err().to_string();
        assert!(e.contains("is no record"), "{e}");
    }
}
