//! Mixes: the training set of one experimental condition, built from named sources — whole, sized by count,
//! fraction or weight, matched to another source's size, pruned, and composed over aligned multilingual
//! sources (concatenated, parallel, or sampled one language per aligned id) — plus the seeded held-out split.
//!
//! Every random choice draws from a ChaCha8 stream keyed by the recipe seed and a stable hash of what is being
//! chosen (condition, source), so a plan is reproducible and one condition's draws never shift another's.

use super::record::Record;
use anyhow::{bail, Context, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How much of a source an entry takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    All,
    Count(usize),
    Fraction(f64),
    /// A share of the condition's `size` (or `match_size_of`), relative to the other entries' weights.
    Weight(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub source: String,
    pub size: Size,
    /// Drop this fraction of the source first (seeded): an opt-in pruning (UltraLink's release is pruned already).
    pub prune: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compose {
    /// The entries one after the other.
    Concat,
    /// Every aligned id in every entry's language (ids present in all entries).
    Parallel,
    /// For each aligned id, exactly one entry picked at random: the size of one language, no semantic overlap.
    Sampled,
}

impl Compose {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "concat" => Compose::Concat,
            "parallel" => Compose::Parallel,
            "sampled" => Compose::Sampled,
            other => bail!("compose must be \"concat\", \"parallel\" or \"sampled\", not `{other}`"),
        })
    }

    fn aligned(self) -> bool {
        self != Compose::Concat
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub name: String,
    pub entries: Vec<Entry>,
    pub compose: Compose,
    /// Total size: the number of examples (concat) or of aligned ids (parallel / sampled).
    pub size: Option<usize>,
    /// Like `size`, taken from the number of records of that source.
    pub match_size_of: Option<String>,
}

/// FNV-1a: a hash that stays the same across Rust versions and machines (std's does not promise that).
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn rng(seed: u64, parts: &[&str]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ stable_hash(parts))
}

/// `n` of `items`, drawn without replacement, in their original order.
fn sample<T: Clone>(items: &[T], n: usize, rng: &mut ChaCha8Rng) -> Vec<T> {
    if n >= items.len() {
        return items.to_vec();
    }
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.shuffle(rng);
    let mut keep = idx[..n].to_vec();
    keep.sort_unstable();
    keep.into_iter().map(|i| items[i].clone()).collect()
}

/// Splits `total` over `shares` proportionally, by largest remainder, so the parts add up exactly.
fn apportion(total: usize, shares: &[f64]) -> Vec<usize> {
    let sum: f64 = shares.iter().sum();
    let exact: Vec<f64> = shares.iter().map(|s| total as f64 * s / sum).collect();
    let mut parts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    let missing = total - parts.iter().sum::<usize>();
    for &i in order.iter().take(missing) {
        parts[i] += 1;
    }
    parts
}

fn fraction_count(n: usize, f: f64) -> usize {
    (n as f64 * f).round() as usize
}

/// Builds the records of `cond` from `sources` (records per source name).
pub fn build(cond: &Condition, sources: &HashMap<String, Vec<Record>>, seed: u64) -> Result<Vec<Record>> {
    let ctx = || format!("condition `{}`", cond.name);
    let lookup = |name: &str| -> Result<&Vec<Record>> {
        sources.get(name).with_context(|| format!("{}: no source named `{name}`", ctx()))
    };
    if cond.entries.is_empty() {
        bail!("{}: no sources", ctx());
    }
    // Pruning first: it defines what the rest of the condition can draw from.
    let mut pools = Vec::new();
    for e in &cond.entries {
        let records = lookup(&e.source)?;
        let pool = match e.prune {
            Some(p) if !(0.0..1.0).contains(&p) => bail!("{}: prune for `{}` must be in [0, 1)", ctx(), e.source),
            Some(p) => {
                let keep = records.len() - fraction_count(records.len(), p);
                sample(records, keep, &mut rng(seed, &["prune", &cond.name, &e.source]))
            }
            None => records.clone(),
        };
        pools.push(pool);
    }
    let total = match (&cond.size, &cond.match_size_of) {
        (Some(_), Some(_)) => bail!("{}: give size or match_size_of, not both", ctx()),
        (Some(n), None) => Some(*n),
        (None, Some(name)) => Some(lookup(name)?.len()),
        (None, None) => None,
    };
    let records = if cond.compose.aligned() {
        build_aligned(cond, pools, total, seed)?
    } else {
        build_concat(cond, pools, total, seed)?
    };
    if records.is_empty() {
        bail!("{}: the mix is empty", ctx());
    }
    Ok(records)
}

fn build_concat(cond: &Condition, pools: Vec<Vec<Record>>, total: Option<usize>, seed: u64) -> Result<Vec<Record>> {
    let weighted = cond.entries.iter().any(|e| matches!(e.size, Size::Weight(_)));
    if weighted && !cond.entries.iter().all(|e| matches!(e.size, Size::Weight(_))) {
        bail!("condition `{}`: weights cannot be mixed with counts or fractions", cond.name);
    }
    // What each entry takes before any overall size applies.
    let mut wanted: Vec<usize> = Vec::new();
    for (e, pool) in cond.entries.iter().zip(&pools) {
        wanted.push(match e.size {
            Size::All | Size::Weight(_) => pool.len(),
            Size::Count(n) if n > pool.len() => {
                bail!("condition `{}`: count {n} for `{}`, which has only {} records", cond.name, e.source, pool.len())
            }
            Size::Count(n) => n,
            Size::Fraction(f) if !(0.0..=1.0).contains(&f) => bail!("condition `{}`: fraction for `{}` must be in [0, 1]", cond.name, e.source),
            Size::Fraction(f) => fraction_count(pool.len(), f),
        });
    }
    if let Some(total) = total {
        let shares: Vec<f64> = if weighted {
            cond.entries.iter().map(|e| if let Size::Weight(w) = e.size { w } else { 0.0 }).collect()
        } else {
            wanted.iter().map(|&n| n as f64).collect()
        };
        let parts = apportion(total, &shares);
        for ((e, pool), (w, part)) in cond.entries.iter().zip(&pools).zip(wanted.iter_mut().zip(parts)) {
            if part > pool.len() {
                bail!("condition `{}`: needs {part} records of `{}`, which has only {}", cond.name, e.source, pool.len());
            }
            *w = part;
        }
    } else if weighted {
        bail!("condition `{}`: weights need a size or match_size_of", cond.name);
    }
    let mut out = Vec::new();
    for ((e, pool), n) in cond.entries.iter().zip(pools).zip(wanted) {
        out.extend(sample(&pool, n, &mut rng(seed, &["take", &cond.name, &e.source])));
    }
    Ok(out)
}

fn build_aligned(cond: &Condition, pools: Vec<Vec<Record>>, total: Option<usize>, seed: u64) -> Result<Vec<Record>> {
    if cond.entries.iter().any(|e| e.size != Size::All) {
        bail!("condition `{}`: compose = parallel/sampled sizes the mix by aligned ids: use size or match_size_of, not per-source sizes", cond.name);
    }
    // Each pool indexed by its records' source ids; ids must be present and unique to align.
    let mut by_id: Vec<BTreeMap<String, Record>> = Vec::new();
    for (e, pool) in cond.entries.iter().zip(pools) {
        let mut map = BTreeMap::new();
        for r in pool {
            let id = r.provenance.source_id.clone().with_context(|| format!("condition `{}`: {} has no id, which compose = parallel/sampled needs to align languages", cond.name, r.location))?;
            if map.insert(id.clone(), r).is_some() {
                bail!("condition `{}`: id `{id}` appears twice in source `{}`", cond.name, e.source);
            }
        }
        by_id.push(map);
    }
    let shared: BTreeSet<&String> = by_id[0].keys().filter(|id| by_id.iter().all(|m| m.contains_key(*id))).collect();
    let mut ids: Vec<&String> = shared.into_iter().collect();
    if let Some(n) = total {
        if n > ids.len() {
            bail!("condition `{}`: wants {n} aligned ids, the sources share only {}", cond.name, ids.len());
        }
        // The n ids first in an order of the data seed and the id alone, not of the condition: every sized
        // composition over the same ids (monolingual, parallel, sampled; a dataset's small variant) trains on
        // the same instructions, as a paper's fixed subset does.
        let mut ranked: Vec<(u64, &String)> = ids.iter().map(|id| (rank(seed, "subset", id), *id)).collect();
        ranked.sort_unstable();
        let keep: BTreeSet<&String> = ranked.into_iter().take(n).map(|(_, id)| id).collect();
        ids.retain(|id| keep.contains(id));
    }
    let mut out = Vec::new();
    let mut pick = rng(seed, &["sampled", &cond.name]);
    for id in ids {
        match cond.compose {
            Compose::Parallel => out.extend(by_id.iter().map(|m| m[id].clone())),
            Compose::Sampled => out.push(by_id.choose(&mut pick).expect("entries checked non-empty")[id].clone()),
            Compose::Concat => unreachable!("aligned compositions only"),
        }
    }
    Ok(out)
}

/// Where an id falls in the held-out order of data seed `seed`: a function of the seed and the id alone (not
/// of the condition or the other records), so conditions built from sources sharing ids order them alike.
fn id_rank(seed: u64, id: &str) -> u64 {
    rank(seed, "heldout", id)
}

/// A seeded position of `id` in an order named by `tag` (orders of different tags are independent).
fn rank(seed: u64, tag: &str, id: &str) -> u64 {
    // SplitMix64's finaliser over the FNV hash: ids differing in their last digit land far apart.
    let mut z = seed ^ stable_hash(&[tag, id]);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `n` of `ids` first in the held-out order of `seed` (ties, i.e. repeated ids, by id and position).
fn first_by_rank<'a>(ids: impl Iterator<Item = (usize, &'a str)>, n: usize, seed: u64) -> Vec<usize> {
    let mut ranked: Vec<(u64, &str, usize)> = ids.map(|(i, id)| (id_rank(seed, id), id, i)).collect();
    ranked.sort_unstable();
    ranked.into_iter().take(n).map(|(_, _, i)| i).collect()
}

/// Splits off `fraction` of `records` as held-out data (seeded, stratified by language). With `by_alignment`,
/// whole aligned ids go to one side, so no held-out meaning is trained on in another language.
///
/// Records that carry ids are held out by id: within each language, the round(fraction × n) records whose ids
/// come first in an order that depends only on the data seed and the id. Conditions over sources sharing ids
/// (a native file and its round-trip translations) therefore hold out exactly the same ids when they hold the
/// same ids, and an id held out by the larger of two nested id sets is held out by the smaller too whenever the
/// smaller's share reaches it. A language with a record without an id is split as before ids were used: a seeded
/// sample keyed by the condition's name.
pub fn split_heldout(records: Vec<Record>, fraction: f64, seed: u64, condition: &str, by_alignment: bool) -> Result<(Vec<Record>, Vec<Record>)> {
    if !(0.0..1.0).contains(&fraction) {
        bail!("heldout_fraction must be in [0, 1)");
    }
    if fraction == 0.0 {
        return Ok((records, Vec::new()));
    }
    // Group keys: the aligned id, or the language (None = unlabelled).
    let key = |r: &Record| -> String {
        if by_alignment {
            r.provenance.source_id.clone().unwrap_or_default()
        } else {
            r.provenance.language.clone().unwrap_or_default()
        }
    };
    let mut held_keys: BTreeSet<(String, usize)> = BTreeSet::new();
    if by_alignment {
        // Aligned mixes always carry ids (building them checks it).
        let ids: Vec<String> = records.iter().map(key).collect::<BTreeSet<_>>().into_iter().collect();
        let n = fraction_count(ids.len(), fraction);
        held_keys.extend(first_by_rank(ids.iter().map(String::as_str).enumerate(), n, seed).into_iter().map(|k| (ids[k].clone(), 0)));
    } else {
        let mut strata: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            strata.entry(key(r)).or_default().push(i);
        }
        for (lang, idx) in strata {
            let n = fraction_count(idx.len(), fraction);
            let ids: Option<Vec<(usize, &str)>> = idx.iter().map(|&i| records[i].provenance.source_id.as_deref().map(|id| (i, id))).collect();
            let held = match ids {
                Some(ids) => first_by_rank(ids.into_iter(), n, seed),
                None => sample(&idx, n, &mut rng(seed, &["heldout", condition, &lang])),
            };
            held_keys.extend(held.into_iter().map(|i| (String::new(), i)));
        }
    }
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, r) in records.into_iter().enumerate() {
        let is_held = if by_alignment { held_keys.contains(&(key(&r), 0)) } else { held_keys.contains(&(String::new(), i)) };
        if is_held { held.push(r) } else { train.push(r) }
    }
    Ok((train, held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::record::{Conversation, Location, Provenance, Role, Turn};

    fn rec(source: &str, lang: &str, id: &str) -> Record {
        Record {
            conversation: Conversation {
                turns: vec![Turn { role: Role::User, content: format!("q {id}") }, Turn { role: Role::Assistant, content: format!("a {id}") }],
            },
            alpaca: None,
            provenance: Provenance { source: source.into(), language: Some(lang.into()), origin: None, engine: None, source_id: Some(id.into()) },
            location: Location { file: format!("{source}.json").into(), line: None, row: None },
        }
    }

    fn pool(source: &str, lang: &str, ids: std::ops::Range<usize>) -> Vec<Record> {
        ids.map(|i| rec(source, lang, &format!("s{i:03}"))).collect()
    }

    fn sources() -> HashMap<String, Vec<Record>> {
        HashMap::from([
            ("es-native".to_string(), pool("es-native", "es", 0..40)),
            ("es-google".to_string(), pool("es-google", "es", 100..200)),
            ("es".to_string(), pool("es", "es", 0..10)),
            ("ru".to_string(), pool("ru", "ru", 0..8)),
            ("zh".to_string(), pool("zh", "zh", 2..12)),
        ])
    }

    fn cond(entries: Vec<Entry>) -> Condition {
        Condition { name: "c".into(), entries, compose: Compose::Concat, size: None, match_size_of: None }
    }

    fn entry(source: &str, size: Size) -> Entry {
        Entry { source: source.into(), size, prune: None }
    }

    fn ids(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| format!("{}:{}", r.provenance.source, r.provenance.source_id.as_deref().unwrap())).collect()
    }

    #[test]
    fn concat_sizes_by_count_fraction_and_all() {
        let s = sources();
        let c = cond(vec![entry("es-native", Size::All), entry("es-google", Size::Count(7)), entry("ru", Size::Fraction(0.5))]);
        let r = build(&c, &s, 1).unwrap();
        assert_eq!(r.len(), 40 + 7 + 4);
        assert_eq!(ids(&r), ids(&build(&c, &s, 1).unwrap()), "seeded");
        assert_ne!(ids(&r), ids(&build(&c, &s, 2).unwrap()));
        let too_many = cond(vec![entry("ru", Size::Count(9))]);
        assert!(build(&too_many, &s, 1).unwrap_err().to_string().contains("only 8"));
        assert!(build(&cond(vec![entry("nope", Size::All)]), &s, 1).unwrap_err().to_string().contains("`nope`"));
    }

    #[test]
    fn translated_set_matches_the_native_size() {
        let s = sources();
        let c = Condition { match_size_of: Some("es-native".into()), ..cond(vec![entry("es-google", Size::All)]) };
        let r = build(&c, &s, 3).unwrap();
        assert_eq!(r.len(), 40);
        assert!(r.iter().all(|x| x.provenance.source == "es-google"));
        let unique: BTreeSet<_> = ids(&r).into_iter().collect();
        assert_eq!(unique.len(), 40, "no record drawn twice");
    }

    #[test]
    fn weights_share_a_total_exactly() {
        let s = sources();
        let c = Condition { size: Some(41), ..cond(vec![entry("es-native", Size::Weight(3.0)), entry("es-google", Size::Weight(1.0))]) };
        let r = build(&c, &s, 4).unwrap();
        let native = r.iter().filter(|x| x.provenance.source == "es-native").count();
        assert_eq!((native, r.len() - native), (31, 10));
        let no_total = cond(vec![entry("es-native", Size::Weight(1.0))]);
        assert!(build(&no_total, &s, 1).unwrap_err().to_string().contains("need a size"));
    }

    #[test]
    fn pruning_drops_a_seeded_fraction() {
        let s = sources();
        let c = cond(vec![Entry { prune: Some(0.25), ..entry("es-native", Size::All) }]);
        assert_eq!(build(&c, &s, 5).unwrap().len(), 30);
    }

    #[test]
    fn parallel_keeps_every_language_of_shared_ids() {
        let s = sources();
        let c = Condition { compose: Compose::Parallel, ..cond(vec![entry("es", Size::All), entry("ru", Size::All), entry("zh", Size::All)]) };
        let r = build(&c, &s, 6).unwrap();
        // es 0..10 ∩ ru 0..8 ∩ zh 2..12 = 2..8: six ids, three languages each.
        assert_eq!(r.len(), 18);
        for id in 2..8 {
            let id = format!("s{id:03}");
            let langs: BTreeSet<_> = r.iter().filter(|x| x.provenance.source_id.as_deref() == Some(&id)).map(|x| x.provenance.language.clone().unwrap()).collect();
            assert_eq!(langs.len(), 3, "{id}");
        }
    }

    #[test]
    fn sampled_picks_one_language_per_aligned_id() {
        let s = sources();
        let c = Condition { compose: Compose::Sampled, ..cond(vec![entry("es", Size::All), entry("ru", Size::All), entry("zh", Size::All)]) };
        let r = build(&c, &s, 7).unwrap();
        assert_eq!(r.len(), 6, "the size of one language");
        let unique: BTreeSet<_> = r.iter().map(|x| x.provenance.source_id.clone()).collect();
        assert_eq!(unique.len(), 6, "no semantic overlap");
        let langs: BTreeSet<_> = r.iter().map(|x| x.provenance.language.clone()).collect();
        assert!(langs.len() > 1, "languages are mixed");
        assert_eq!(ids(&r), ids(&build(&c, &s, 7).unwrap()));
        let sized = Condition { size: Some(4), ..c.clone() };
        assert_eq!(build(&sized, &s, 7).unwrap().len(), 4);
        // A sized subset is the same ids whatever the condition's name and composition.
        let renamed = Condition { name: "other".into(), compose: Compose::Parallel, ..sized.clone() };
        let subset: BTreeSet<_> = build(&sized, &s, 7).unwrap().iter().map(|x| x.provenance.source_id.clone()).collect();
        let parallel: BTreeSet<_> = build(&renamed, &s, 7).unwrap().iter().map(|x| x.provenance.source_id.clone()).collect();
        assert_eq!(subset, parallel);
        let other_seed: BTreeSet<_> = (0..20).map(|k| build(&sized, &s, 100 + k).unwrap().iter().map(|x| x.provenance.source_id.clone()).collect::<Vec<_>>()).collect();
        assert!(other_seed.len() > 1, "the subset depends on the data seed");
        let mut no_id = s.clone();
        no_id.get_mut("ru").unwrap()[3].provenance.source_id = None;
        assert!(build(&c, &no_id, 7).unwrap_err().to_string().contains("ru.json"));
    }

    #[test]
    fn heldout_is_stratified_disjoint_and_seeded() {
        let mut records = pool("es", "es", 0..40);
        records.extend(pool("ru", "ru", 0..20));
        let (train, held) = split_heldout(records.clone(), 0.1, 9, "c", false).unwrap();
        assert_eq!(held.len(), 6);
        assert_eq!(held.iter().filter(|r| r.provenance.language.as_deref() == Some("ru")).count(), 2);
        assert_eq!(train.len() + held.len(), 60);
        let held_ids: BTreeSet<_> = ids(&held).into_iter().collect();
        assert!(ids(&train).iter().all(|i| !held_ids.contains(i)));
        assert_eq!(ids(&held), ids(&split_heldout(records.clone(), 0.1, 9, "c", false).unwrap().1));
        // Aligned: an id is held out in every language or in none.
        let (train, held) = split_heldout(records, 0.25, 9, "c", true).unwrap();
        let held_aligned: BTreeSet<_> = held.iter().map(|r| r.provenance.source_id.clone()).collect();
        assert!(train.iter().all(|r| !held_aligned.contains(&r.provenance.source_id)));
        assert_eq!(held_aligned.len(), 10);
    }

    #[test]
    fn aligned_sources_hold_out_the_same_ids_in_every_condition() {
        // A native source and its round-trip translation: same ids, other text and source.
        let native = pool("es-native", "es", 0..200);
        let mut round_trip = pool("es-rt", "es", 0..200);
        for r in &mut round_trip {
            r.conversation.turns[1].content.push_str(" (round trip)");
        }
        let held_ids = |records: Vec<Record>, condition: &str, seed: u64| -> BTreeSet<String> {
            split_heldout(records, 0.05, seed, condition, false).unwrap().1.iter().map(|r| r.provenance.source_id.clone().unwrap()).collect()
        };
        let a = held_ids(native.clone(), "es-native", 1);
        let b = held_ids(round_trip.clone(), "es-rt", 1);
        assert_eq!(a.len(), 10, "the exact fraction");
        assert_eq!(a, b, "conditions over aligned sources hold out the same ids");
        // The order of the records does not matter either, and another data seed holds out others.
        let mut shuffled = round_trip.clone();
        shuffled.reverse();
        assert_eq!(held_ids(shuffled, "x", 1), a);
        assert_ne!(held_ids(native.clone(), "es-native", 2), a);
        // Nested id sets: what the larger holds out and the smaller has, the smaller holds out too.
        let smaller: Vec<Record> = round_trip.iter().filter(|r| !a.contains(r.provenance.source_id.as_ref().unwrap()) || r.provenance.source_id.as_deref() != a.iter().next().map(String::as_str)).cloned().collect();
        let c = held_ids(smaller, "es-rt", 1);
        assert!(a.iter().skip(1).all(|id| c.contains(id)), "{a:?} {c:?}");
        // Without ids: seeded by the condition, as before.
        let mut no_ids = native.clone();
        no_ids.iter_mut().for_each(|r| r.provenance.source_id = None);
        let locations = |records: Vec<Record>, condition: &str| -> Vec<String> {
            split_heldout(records, 0.05, 1, condition, false).unwrap().1.iter().map(|r| r.conversation.turns[0].content.clone()).collect()
        };
        assert_ne!(locations(no_ids.clone(), "a"), locations(no_ids, "b"));
    }

    #[test]
    fn apportion_is_exact() {
        assert_eq!(apportion(10, &[1.0, 1.0, 1.0]), vec![4, 3, 3]);
        assert_eq!(apportion(7, &[0.0, 2.0]), vec![0, 7]);
    }
}
