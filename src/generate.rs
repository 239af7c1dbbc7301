//! `trainer generate`: greedy or sampled decoding (temperature, top-p) with a key/value cache, batched over
//! prompts of different lengths (left padding), stopping at EOS, a stop string or `max_new_tokens`.

use crate::lora::Adapter;
use crate::model::{KvCache, Model};
use crate::tokenizer::TextTokenizer;
use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches top_p (1 = all).
    pub top_p: f64,
    /// Generation stops when the decoded text contains one of these; the answer ends before it.
    pub stop: Vec<String>,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub text: String,
    /// "eos", "stop" or "length".
    pub finish: String,
}

/// The next token from f32 logits of one row.
fn pick(logits: &[f32], opts: &GenOptions, rng: &mut ChaCha8Rng) -> u32 {
    if opts.temperature <= 0.0 {
        // First maximum, as torch.argmax.
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &x)| (i, ((x as f64 - max) / opts.temperature).exp())).collect();
    let sum: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= sum);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    // Keep the smallest prefix reaching top_p (at least one token).
    let mut cum = 0.0;
    let mut keep = 0;
    for p in &probs {
        keep += 1;
        cum += p.1;
        if cum >= opts.top_p {
            break;
        }
    }
    let kept = &probs[..keep];
    let total: f64 = kept.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * total;
    for &(i, p) in kept {
        if r < p {
            return i as u32;
        }
        r -= p;
    }
    kept[keep - 1].0 as u32
}

/// Generates a continuation of every prompt (token ids, BOS included if the template adds one).
pub fn generate(model: &Model, adapter: Option<&Adapter>, tokenizer: &TextTokenizer, prompts: &[Vec<u32>], eos: &[u32], pad_id: u32, opts: &GenOptions) -> Result<Vec<Generated>> {
    ensure!(prompts.iter().all(|p| !p.is_empty()), "an empty prompt");
    let b = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b);
    let mut valid = Vec::with_capacity(b);
    for p in prompts {
        let pad = longest - p.len();
        ids.push(std::iter::repeat_n(pad_id, pad).chain(p.iter().copied()).collect::<Vec<_>>());
        valid.push(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, p.len())).collect::<Vec<_>>());
    }
    let mut cache = KvCache::new(model, b);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut out: Vec<Generated> = vec![Generated { tokens: Vec::new(), text: String::new(), finish: String::new() }; b];
    let mut logits = model.decode(&ids, &valid, &mut cache, adapter)?;
    for _ in 0..opts.max_new_tokens {
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut next = Vec::with_capacity(b);
        for (row, g) in out.iter_mut().enumerate() {
            if !g.finish.is_empty() {
                next.push(pad_id);
                continue;
            }
            let tok = pick(&rows[row], opts, &mut rng);
            next.push(tok);
            if eos.contains(&tok) {
                g.finish = "eos".into();
                continue;
            }
            g.tokens.push(tok);
            g.text = tokenizer.decode(&g.tokens)?;
            if let Some(at) = opts.stop.iter().filter_map(|s| g.text.find(s.as_str())).min() {
                g.text.truncate(at);
                g.finish = "stop".into();
            }
        }
        if out.iter().all(|g| !g.finish.is_empty()) {
            break;
        }
        let step_ids: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        // Finished rows keep running on padding (their results are already fixed); it costs little and keeps the
        // batch rectangular.
        let step_valid: Vec<Vec<bool>> = out.iter().map(|g| vec![g.finish.is_empty()]).collect();
        logits = model.decode(&step_ids, &step_valid, &mut cache, adapter)?;
    }
    for g in &mut out {
        if g.finish.is_empty() {
            g.finish = "length".into();
        }
    }
    Ok(out)
}

/// What ends an answer given through a chat template besides the model's end-of-sequence ids: the template's
/// end-of-turn marker ([`ChatTemplate::end_of_turn`]) as a token id when the tokenizer has it as one token (decoding
/// skips special tokens, so only its id can be seen), else as a stop string.
pub fn turn_end(template: &crate::data::chat::ChatTemplate, tokenizer: &TextTokenizer) -> (Vec<u32>, Vec<String>) {
    match template.end_of_turn() {
        Some(marker) => match tokenizer.token_to_id(&marker) {
            Some(id) => (vec![id], Vec::new()),
            None => (Vec::new(), vec![marker]),
        },
        None => (Vec::new(), Vec::new()),
    }
}

/// Answers to many prompts, in their order: batches of similar prompt length (less padding), each batch drawing
/// from its own seeded stream so that results do not depend on what ran before. An answer ends at any of the
/// model's end-of-sequence ids or `end_ids` (a chat template's end of turn, [`turn_end`]). `done(n)` after each
/// batch.
pub fn generate_batched(session: &crate::session::Session, adapter: Option<&Adapter>, prompts: &[Vec<u32>], batch_size: usize, opts: &GenOptions, end_ids: &[u32], mut done: impl FnMut(usize)) -> Result<Vec<Generated>> {
    let mut eos = session.text.eos_ids.clone();
    eos.extend(end_ids.iter().filter(|id| !session.text.eos_ids.contains(id)));
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut answers: Vec<Option<Generated>> = vec![None; prompts.len()];
    for (k, chunk) in order.chunks(batch_size.max(1)).enumerate() {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let o = GenOptions { seed: opts.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), ..opts.clone() };
        for (&i, g) in chunk.iter().zip(generate(&session.model, adapter, &session.text.tokenizer, &batch, &eos, session.text.pad_id, &o)?) {
            answers[i] = Some(g);
        }
        done(chunk.len());
    }
    Ok(answers.into_iter().map(|g| g.expect("every prompt generated")).collect())
}

/// One line of `trainer generate`'s output.
#[derive(Debug, Serialize)]
struct AnswerLine<'a> {
    id: Option<&'a str>,
    location: String,
    prompt: String,
    /// The record's own answer (its last assistant turn), for an external judge or a metric.
    reference: Option<&'a str>,
    answer: &'a str,
    finish: &'a str,
    new_tokens: usize,
}

/// Generates an answer for every record of `data` and writes them as JSONL to `out` (through a temporary file).
pub fn generate_file(session: &crate::session::Session, adapter: Option<&Adapter>, data: &std::path::Path, format: crate::data::format::Format, template: &str, batch_size: usize, opts: &GenOptions, out: &std::path::Path) -> Result<usize> {
    use crate::data::record::Role;
    use anyhow::Context;
    use std::io::Write;
    let records = crate::data::pipeline::read_file(data, format, None)?;
    let encoder = session.text.encoder(template, usize::MAX, crate::data::TrainOn::Response)?;
    let prompts: Vec<Vec<u32>> = records.iter().map(|r| encoder.prompt_ids(r).with_context(|| r.location.to_string())).collect::<Result<_>>()?;
    let bar = indicatif::ProgressBar::new(records.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("generate [{bar:30}] {pos}/{len} {elapsed} eta {eta}").expect("valid template"));
    let tmp = crate::fsutil::temp_path(out)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?);
    let (end_ids, end_text) = match &encoder.template {
        crate::data::pipeline::PromptTemplate::Chat(t) => turn_end(t, &session.text.tokenizer),
        crate::data::pipeline::PromptTemplate::Alpaca => (Vec::new(), Vec::new()),
    };
    let opts = GenOptions { stop: opts.stop.iter().cloned().chain(end_text).collect(), ..opts.clone() };
    let answers = generate_batched(session, adapter, &prompts, batch_size, &opts, &end_ids, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    for ((r, p), g) in records.iter().zip(&prompts).zip(&answers) {
        let reference = r.conversation.turns.last().filter(|t| t.role == Role::Assistant).map(|t| t.content.as_str());
        let line = AnswerLine {
            id: r.provenance.source_id.as_deref(),
            location: r.location.to_string(),
            prompt: session.text.tokenizer.decode(p)?,
            reference,
            answer: &g.text,
            finish: &g.finish,
            new_tokens: g.tokens.len(),
        };
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(records.len())
}
