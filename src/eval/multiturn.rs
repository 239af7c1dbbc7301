//! MT-Bench-style questions (FastChat's `question.jsonl`: `question_id`, `category`, `turns`, optional
//! `reference`) answered turn by turn: the prompt of turn k is the conversation so far — the questions and the
//! model's own earlier answers, exactly as generated — rendered by the chat template with its generation prompt.

use crate::data::pipeline::PromptTemplate;
use crate::data::record::{AlpacaFields, Conversation, Role, Turn};
use crate::data::template::Template;
use crate::generate::{generate_batched, turn_end, GenOptions};
use crate::lora::Adapter;
use crate::session::Session;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// One question of a question file.
#[derive(Debug, Clone, Serialize)]
pub struct Question {
    /// As the file has it (MT-Bench: a number); [`Question::key`] matches it across files.
    pub question_id: Value,
    pub category: String,
    pub turns: Vec<String>,
    /// Reference answers, one per turn, when the file carries them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Vec<String>>,
    /// The question's language, when the file gives one (`language`): the report's per-language scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// A question id as text: `101` and `"101"` are the same question in a question, answer or reference file.
pub fn id_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Question {
    pub fn key(&self) -> String {
        id_key(&self.question_id)
    }
}

/// A list of strings under `field`, or an error naming it.
pub fn string_list(row: &Value, field: &str) -> Result<Vec<String>> {
    let list = row.get(field).with_context(|| format!("`{field}` is missing"))?.as_array().with_context(|| format!("`{field}` must be a list of strings"))?;
    let out: Vec<String> = list.iter().map(|t| t.as_str().map(str::to_string)).collect::<Option<_>>().with_context(|| format!("`{field}` must be a list of strings"))?;
    anyhow::ensure!(!out.is_empty(), "`{field}` is empty");
    Ok(out)
}

/// Reads JSON lines, calling `parse` on each non-blank one; errors name the file and line.
pub fn read_jsonl<T>(path: &Path, mut parse: impl FnMut(&Value) -> Result<T>) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), n + 1);
        let row: Value = crate::jsonutil::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        out.push(parse(&row).with_context(at)?);
    }
    anyhow::ensure!(!out.is_empty(), "{} holds no rows", path.display());
    Ok(out)
}

/// Reads a question file. MT-Bench's judge prompts cover one or two turns, so longer questions are an error.
pub fn read_questions(path: &Path) -> Result<Vec<Question>> {
    let qs = read_jsonl(path, |row| {
        let question_id = match row.get("question_id") {
            Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
            Some(_) => bail!("`question_id` must be a number or a string"),
            None => bail!("`question_id` is missing"),
        };
        let category = match row.get("category") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => bail!("`category` must be a string"),
        };
        let turns = string_list(row, "turns")?;
        anyhow::ensure!(turns.len() <= 2, "`turns` has {} questions; MT-Bench's judge prompts cover one or two", turns.len());
        let reference = match row.get("reference") {
            None | Some(Value::Null) => None,
            // MT-Bench-X writes `"reference": []` on every question without one.
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(_) => Some(string_list(row, "reference")?),
        };
        let language = match row.get("language") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => bail!("`language` must be a string"),
        };
        Ok(Question { question_id, category, turns, reference, language })
    })?;
    let mut seen = std::collections::HashSet::new();
    for q in &qs {
        anyhow::ensure!(seen.insert(q.key()), "{}: question_id {} appears twice", path.display(), q.key());
    }
    Ok(qs)
}

/// A question with the model's answers: one line of the answers file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Answered {
    pub question_id: Value,
    pub category: String,
    /// The questions.
    pub turns: Vec<String>,
    /// The text the model was given for each turn (template applied).
    pub prompts: Vec<String>,
    pub answers: Vec<String>,
    /// Per turn: "eos", "stop" or "length".
    pub finish: Vec<String>,
    pub new_tokens: Vec<usize>,
}

/// The token ids of the prompt for the question's next turn, given the answers so far.
fn prompt_ids(session: &Session, template: &PromptTemplate, q: &Question, answers: &[String]) -> Result<(String, Vec<u32>)> {
    let tok = &session.text.tokenizer;
    match template {
        PromptTemplate::Alpaca => {
            anyhow::ensure!(answers.is_empty(), "the alpaca template has no second turn; answer two-turn questions with a chat template (--template model, llama2-chat, gemma or chatml)");
            let (text, _) = Template::Alpaca.render(&AlpacaFields { instruction: q.turns[0].clone(), input: String::new() }, "");
            let ids = tok.encode(&text, true)?;
            Ok((text, ids))
        }
        PromptTemplate::Chat(t) => {
            let mut conv = Conversation { turns: Vec::new() };
            for (k, a) in answers.iter().enumerate() {
                conv.turns.push(Turn { role: Role::User, content: q.turns[k].clone() });
                conv.turns.push(Turn { role: Role::Assistant, content: a.clone() });
            }
            conv.turns.push(Turn { role: Role::User, content: q.turns[answers.len()].clone() });
            // The chat template writes BOS itself, as transformers' apply_chat_template does.
            let text = t.render(&conv, conv.turns.len(), true)?;
            let ids = tok.encode(&text, false)?;
            Ok((text, ids))
        }
    }
}

/// Answers every question, turn by turn (all first turns in batches, then all second turns).
pub fn answer_questions(session: &Session, adapter: Option<&Adapter>, questions: &[Question], template: &str, batch_size: usize, opts: &GenOptions) -> Result<Vec<Answered>> {
    let template = PromptTemplate::from_name(template, &session.text.tokenizer).context("template")?;
    if matches!(template, PromptTemplate::Alpaca) {
        if let Some(q) = questions.iter().find(|q| q.turns.len() > 1) {
            bail!("question {} has two turns, and the alpaca template has no second turn; use a chat template (--template model, llama2-chat, gemma or chatml)", q.key());
        }
    }
    let mut out: Vec<Answered> = questions
        .iter()
        .map(|q| Answered { question_id: q.question_id.clone(), category: q.category.clone(), turns: q.turns.clone(), prompts: Vec::new(), answers: Vec::new(), finish: Vec::new(), new_tokens: Vec::new() })
        .collect();
    // A chat model ends its turn with the template's marker (<|im_end|>, <end_of_turn>, …), which need not be its
    // end-of-sequence token: without it the answer would run on into an invented next turn.
    let (end_ids, end_text) = match &template {
        PromptTemplate::Chat(t) => turn_end(t, &session.text.tokenizer),
        PromptTemplate::Alpaca => (Vec::new(), Vec::new()),
    };
    let opts = &GenOptions { stop: opts.stop.iter().cloned().chain(end_text).collect(), ..opts.clone() };
    let most = questions.iter().map(|q| q.turns.len()).max().unwrap_or(0);
    let bar = indicatif::ProgressBar::new(questions.iter().map(|q| q.turns.len() as u64).sum());
    bar.set_style(indicatif::ProgressStyle::with_template("answer [{bar:30}] {pos}/{len} {elapsed} eta {eta}").expect("valid template"));
    for turn in 0..most {
        let open: Vec<usize> = (0..questions.len()).filter(|&i| questions[i].turns.len() > turn).collect();
        let mut ids = Vec::with_capacity(open.len());
        for &i in &open {
            let (text, p) = prompt_ids(session, &template, &questions[i], &out[i].answers).with_context(|| format!("question {} turn {}", questions[i].key(), turn + 1))?;
            out[i].prompts.push(text);
            ids.push(p);
        }
        // Each turn samples from its own stream, so turn 2 does not depend on how many tokens turn 1 drew.
        let o = GenOptions { seed: opts.seed.wrapping_add(turn as u64), ..opts.clone() };
        let generated = generate_batched(session, adapter, &ids, batch_size, &o, &end_ids, |n| bar.inc(n as u64))?;
        for (&i, g) in open.iter().zip(generated) {
            out[i].answers.push(g.text);
            out[i].finish.push(g.finish);
            out[i].new_tokens.push(g.tokens.len());
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Writes answers as JSON lines (through a temporary file).
pub fn write_answers(path: &Path, answers: &[Answered]) -> Result<()> {
    let mut text = String::new();
    for a in answers {
        text.push_str(&serde_json::to_string(a)?);
        text.push('\n');
    }
    crate::fsutil::write_atomic(path, text.as_bytes())
}

/// Answers of another model (the pairwise baseline), by question: our answers file (`answers`) or FastChat's
/// model-answer layout (`choices[0].turns`).
pub fn read_answers(path: &Path) -> Result<std::collections::HashMap<String, Vec<String>>> {
    let rows = read_jsonl(path, |row| {
        let id = row.get("question_id").map(id_key).context("`question_id` is missing")?;
        let turns = if row.get("answers").is_some() {
            string_list(row, "answers")?
        } else {
            let choice = row.pointer("/choices/0").context("neither `answers` (trainer generate) nor `choices` (FastChat) is there")?;
            string_list(choice, "turns").context("choices[0]")?
        };
        Ok((id, turns))
    })?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn questions_in_mt_bench_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "q.jsonl", "{\"question_id\": 81, \"category\": \"writing\", \"turns\": [\"a\", \"b\"], \"reference\": []}\n\n{\"question_id\": \"x\", \"category\": \"math\", \"turns\": [\"c\"], \"reference\": [\"4\"]}\n");
        let qs = read_questions(&p).unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!((qs[0].key(), qs[0].turns.len(), qs[0].reference.is_none()), ("81".into(), 2, true));
        assert_eq!((qs[1].key(), qs[1].reference.clone()), ("x".into(), Some(vec!["4".into()])));
    }

    #[test]
    fn bad_question_files_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let err = |text: &str| format!("{:#}", read_questions(&write(dir.path(), "q.jsonl", text)).unwrap_err());
        let e = err("{\"question_id\": 1, \"turns\": [\"a\"]}\n{\"question_id\": 2, \"turns\": \"b\"}\n");
        assert!(e.contains("q.jsonl line 2") && e.contains("`turns` must be a list of strings"), "{e}");
        assert!(err("{\"turns\": [\"a\"]}").contains("`question_id` is missing"));
        assert!(err("{\"question_id\": 1, \"turns\": [\"a\", \"b\", \"c\"]}").contains("one or two"));
        assert!(err("{\"question_id\": 1, \"turns\": [\"a\"]}\n{\"question_id\": \"1\", \"turns\": [\"a\"]}").contains("appears twice"));
    }

    #[test]
    fn answers_in_our_layout_and_fastchats() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.jsonl", "{\"question_id\": 1, \"answers\": [\"x\", \"y\"]}\n{\"question_id\": 2, \"choices\": [{\"index\": 0, \"turns\": [\"z\"]}]}\n");
        let a = read_answers(&p).unwrap();
        assert_eq!(a["1"], ["x", "y"]);
        assert_eq!(a["2"], ["z"]);
    }
}
