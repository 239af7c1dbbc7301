//! Log-likelihoods of multiple-choice continuations with each context computed once for all its choices.
//!
//! lm-eval's HF model scores a choice as the sum of log-probabilities of its continuation tokens after the context
//! tokens (`_encode_pair` splits them; [`super::mc::encode_pair`] does it the same way), the whole cut from the left
//! to `max_length + 1` tokens. The context's tokens do not depend on the choice, so every choice whose kept context
//! is the same shares one prefix run: the context goes through the decoder once into a key/value cache, the last
//! context token's logits score every choice's first token, and the choices' remaining tokens run together against
//! copies of that cache. Only left truncation makes kept contexts differ (a longer continuation pushes more context
//! out); such a choice gets a prefix run of its own, and [`Sharing::unshared`] counts it.
//!
//! [`loglikelihoods_separately`] scores one whole sequence per choice through the training forward: the oracle of
//! the shared path.

use crate::data::batch::{Batch, Example};
use crate::lora::Adapter;
use crate::model::{KvCache, Model};
use crate::ops::cross_entropy::row_nll;
use anyhow::{bail, Result};
use candle_core::Tensor;

/// One choice as [`super::mc::encode_pair`] splits it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceTokens {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// How much of the context work was shared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sharing {
    pub choices: usize,
    /// Prefix runs: one per item, plus one per choice that could not share its item's.
    pub prefix_runs: usize,
    /// Choices scored with a prefix run of their own because left truncation kept less of their context.
    pub unshared: usize,
}

/// Where lm-eval's left truncation starts in `context ++ continuation` (it keeps the last `max_length + 1` tokens
/// and feeds all but the last). Errors when the continuation alone does not fit: then no logit scores its first
/// token.
fn kept_from(c: &ChoiceTokens, max_length: usize) -> Result<usize> {
    if c.context.is_empty() {
        bail!("an empty context (no text and no BOS token) leaves no logit to score the continuation's first token");
    }
    if c.continuation.len() > max_length {
        bail!("a continuation of {} tokens does not fit in the model's {max_length} positions", c.continuation.len());
    }
    Ok((c.context.len() + c.continuation.len()).saturating_sub(max_length + 1))
}

/// Choices of one item that share a kept context.
struct Group {
    prefix: Vec<u32>,
    /// (flat choice index, continuation tokens)
    members: Vec<(usize, Vec<u32>)>,
}

/// Every choice's log-likelihood, `[item][choice]`, each context run once for all the choices that keep it whole.
/// `batch_size` prefix runs go through the decoder together, sorted by length so that little of a batch is padding.
pub fn loglikelihoods_shared(model: &Model, adapter: Option<&Adapter>, items: &[Vec<ChoiceTokens>], max_length: usize, batch_size: usize, mut done: impl FnMut(usize)) -> Result<(Vec<Vec<f64>>, Sharing)> {
    let mut groups: Vec<Group> = Vec::new();
    let mut sharing = Sharing::default();
    let mut flat = 0;
    for choices in items {
        let first = groups.len();
        for c in choices {
            let from = kept_from(c, max_length)?;
            let prefix = &c.context[from.min(c.context.len())..];
            match groups[first..].iter_mut().find(|g| g.prefix == prefix) {
                Some(g) => g.members.push((flat, c.continuation.clone())),
                None => groups.push(Group { prefix: prefix.to_vec(), members: vec![(flat, c.continuation.clone())] }),
            }
            flat += 1;
        }
        let largest = groups[first..].iter().map(|g| g.members.len()).max().unwrap_or(0);
        sharing.unshared += choices.len() - largest;
    }
    sharing.choices = flat;
    sharing.prefix_runs = groups.len();
    let mut order: Vec<usize> = (0..groups.len()).collect();
    // Longest first, as lm-eval orders its requests: a batch that does not fit in memory fails at once.
    order.sort_by_key(|&g| std::cmp::Reverse(groups[g].prefix.len()));
    let mut nll = vec![0f64; flat];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&Group> = chunk.iter().map(|&g| &groups[g]).collect();
        score_groups(model, adapter, &batch, &mut nll)?;
        done(chunk.len());
    }
    let mut out = Vec::with_capacity(items.len());
    let mut k = 0;
    for choices in items {
        out.push(nll[k..k + choices.len()].iter().map(|x| -x).collect());
        k += choices.len();
    }
    Ok((out, sharing))
}

/// One batch of prefix runs: adds each member's continuation NLL into `nll` at its flat index.
fn score_groups(model: &Model, adapter: Option<&Adapter>, groups: &[&Group], nll: &mut [f64]) -> Result<()> {
    let t = groups.iter().map(|g| g.prefix.len()).max().unwrap_or(0);
    // Left padding: every row's last slot is its last context token, whose logits score the first continuation
    // token. Padding keys are masked and positions count real tokens only (see Model::decode).
    let ids: Vec<Vec<u32>> = groups.iter().map(|g| std::iter::repeat_n(0, t - g.prefix.len()).chain(g.prefix.iter().copied()).collect()).collect();
    let valid: Vec<Vec<bool>> = groups.iter().map(|g| (0..t).map(|i| i >= t - g.prefix.len()).collect()).collect();
    let mut cache = KvCache::new(model, groups.len());
    let h = model.decode_hidden(&ids, &valid, &mut cache, adapter)?;
    let members: Vec<(usize, usize, &[u32])> = groups.iter().enumerate().flat_map(|(row, g)| g.members.iter().map(move |(i, c)| (row, *i, c.as_slice()))).collect();
    let last: Vec<u32> = members.iter().map(|&(row, _, _)| (row * t + t - 1) as u32).collect();
    let h_last = h.index_select(&Tensor::from_vec(last, members.len(), h.device())?, 0)?;
    let first: Vec<Option<u32>> = members.iter().map(|&(_, _, c)| Some(c[0])).collect();
    for (&(_, i, _), x) in members.iter().zip(row_nll(&h_last, model.head(), &first, model.cfg.final_softcap)?) {
        nll[i] += x as f64;
    }
    // The rest of each continuation: all but its last token run after a copy of its prefix's cache, right-padded
    // (padding comes after every real token of a row, so no real query sees it).
    let longer: Vec<&(usize, usize, &[u32])> = members.iter().filter(|m| m.2.len() > 1).collect();
    if longer.is_empty() {
        return Ok(());
    }
    let rows: Vec<usize> = longer.iter().map(|m| m.0).collect();
    let mut cont_cache = cache.select_rows(&rows)?;
    drop(cache);
    let tc = longer.iter().map(|m| m.2.len() - 1).max().unwrap_or(0);
    let ids: Vec<Vec<u32>> = longer.iter().map(|m| (0..tc).map(|j| m.2.get(j).copied().filter(|_| j + 1 < m.2.len()).unwrap_or(0)).collect()).collect();
    let valid: Vec<Vec<bool>> = longer.iter().map(|m| (0..tc).map(|j| j + 1 < m.2.len()).collect()).collect();
    let targets: Vec<Option<u32>> = longer.iter().flat_map(|m| (0..tc).map(|j| m.2.get(j + 1).copied())).collect();
    let h = model.decode_hidden(&ids, &valid, &mut cont_cache, adapter)?;
    let rest = row_nll(&h, model.head(), &targets, model.cfg.final_softcap)?;
    for (m, row) in longer.iter().zip(rest.chunks(tc)) {
        nll[m.1] += row.iter().map(|&x| x as f64).sum::<f64>();
    }
    Ok(())
}

/// The oracle of [`loglikelihoods_shared`]: each choice as its own (left-truncated) sequence through the training
/// forward, `batch_size` sequences at a time.
pub fn loglikelihoods_separately(model: &Model, adapter: Option<&Adapter>, items: &[Vec<ChoiceTokens>], max_length: usize, batch_size: usize) -> Result<Vec<Vec<f64>>> {
    let mut seqs = Vec::new();
    for c in items.iter().flatten() {
        let from = kept_from(c, max_length)?;
        let whole: Vec<u32> = c.context.iter().chain(&c.continuation).copied().collect();
        let ids = whole[from..].to_vec();
        let first_target = ids.len() - c.continuation.len();
        let is_target = (0..ids.len()).map(|k| k >= first_target).collect();
        seqs.push(Example::new(ids, is_target, from > 0));
    }
    let mut nll = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        nll.extend(model.example_nll(&Batch::pad(&refs, 0), adapter)?);
    }
    let mut out = Vec::with_capacity(items.len());
    let mut k = 0;
    for choices in items {
        out.push(nll[k..k + choices.len()].iter().map(|x| -x).collect());
        k += choices.len();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::mc::encode_pair;
    use crate::lora::Adapter;
    use crate::session::Session;
    use candle_core::{DType, Device};

    #[test]
    fn truncation_keeps_the_last_max_length_plus_one_tokens_as_lm_eval_does() {
        let c = ChoiceTokens { context: (0..10).collect(), continuation: vec![10, 11, 12] };
        // 13 tokens, 9 kept (the last one is only a target): the context loses its first 4.
        assert_eq!(kept_from(&c, 8).unwrap(), 4);
        assert_eq!(kept_from(&c, 12).unwrap(), 0);
        assert_eq!(kept_from(&c, 3).unwrap(), 9, "one context token is left to score the first continuation token");
        assert!(kept_from(&c, 2).unwrap_err().to_string().contains("3 tokens"));
        assert!(kept_from(&ChoiceTokens { context: vec![], continuation: vec![1] }, 8).is_err());
    }

    /// Items whose choices tokenize to different lengths, the last one with a context longer than `MAX_LENGTH`.
    fn items(tok: &crate::tokenizer::TextTokenizer) -> Vec<Vec<ChoiceTokens>> {
        let long = format!("{}Question: which one?\nAnswer:", "A long passage that goes on and on about rivers. ".repeat(12));
        let docs: [(&str, &[&str]); 4] = [
            ("Question: capital of France?\nAnswer:", &["Paris", "the city of Lyon in the south east", "Rome"]),
            ("Q: 2+2=\nA:", &["4", "five, or maybe four and a half"]),
            ("Which is a colour?\nA. red\nB. dog\nAnswer:", &["A", "B"]),
            (&long, &["the Nile", "a very long river that crosses many countries on its way", "Amazon"]),
        ];
        docs.iter()
            .map(|(ctx, choices)| {
                choices
                    .iter()
                    .map(|c| {
                        let (context, continuation) = encode_pair(tok, ctx, &format!(" {c}")).unwrap();
                        ChoiceTokens { context, continuation }
                    })
                    .collect()
            })
            .collect()
    }

    const MAX_LENGTH: usize = 48;

    /// The shared-prefix path runs the context through the KV-cache decoder (attention as Candle matmuls in f32)
    /// and the oracle runs each whole sequence through the training forward (the fused CPU attention), so the two
    /// differ only in f32 summation order: ~1e-6 per token log-probability, a few 1e-6 over a continuation of at
    /// most ~15 tokens. 1e-4 (lm-eval parity's bound) would hide a real error only far below any accuracy
    /// difference; 2e-5 still leaves room for order effects and catches a wrong position, mask or padding, which
    /// moves a log-likelihood by 1e-2 or more.
    const TOL: f64 = 2e-5;

    #[test]
    fn shared_prefix_loglikelihoods_equal_one_sequence_per_choice_in_every_family() {
        let root = crate::testing::fixtures_dir();
        let mut families = 0;
        for entry in std::fs::read_dir(root.join("models")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let s = Session::open(root.join("models").join(&name).to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
            let adapter = Adapter::load_peft(&root.join("adapters").join(&name), &s.model.cfg, &Device::Cpu).unwrap();
            let items = items(&s.text.tokenizer);
            let long = &items[3];
            assert!(long[0].context.len() > MAX_LENGTH, "{name}: the last context must be truncated");
            let lens: Vec<usize> = items[0].iter().map(|c| c.continuation.len()).collect();
            assert!(lens.iter().any(|&l| l != lens[0]), "{name}: choices of different token lengths");
            let want = loglikelihoods_separately(&s.model, Some(&adapter), &items, MAX_LENGTH, 1).unwrap();
            for batch_size in [1, 3] {
                let (got, sharing) = loglikelihoods_shared(&s.model, Some(&adapter), &items, MAX_LENGTH, batch_size, |_| ()).unwrap();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    for (c, (a, b)) in g.iter().zip(w).enumerate() {
                        assert!((a - b).abs() <= TOL, "{name} batch {batch_size} item {i} choice {c}: shared {a} vs separate {b}");
                    }
                }
                // A choice shares its item's prefix run exactly when it keeps as much context as the others.
                let (mut runs, mut unshared) = (0, 0);
                for choices in &items {
                    let mut from: Vec<usize> = choices.iter().map(|c| kept_from(c, MAX_LENGTH).unwrap()).collect();
                    from.sort();
                    from.dedup();
                    runs += from.len();
                    unshared += choices.len() - from.iter().map(|f| choices.iter().filter(|c| kept_from(c, MAX_LENGTH).unwrap() == *f).count()).max().unwrap();
                }
                assert_eq!(sharing, Sharing { choices: 10, prefix_runs: runs, unshared }, "{name}");
                assert!(sharing.unshared > 0 && runs < 10, "{name}: some choices share, the truncated ones cannot");
            }
            families += 1;
        }
        assert!(families >= 5, "llama, gemma, gemma-2, mistral, mixtral and qwen fixtures");
    }
}
