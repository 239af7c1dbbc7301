//! Generative benchmarks in their Hugging Face layouts, prompted, generated and scored as lm-evaluation-harness
//! 0.4.13's tasks do: `xquad` (xquad_<lang>), `tydiqa` (tydiqa_goldp_<lang>), `mgsm_direct` (mgsm_direct_<lang>)
//! and `mgsm_native_cot` (mgsm_native_cot_<lang>; `mgsm` names it too, as issue 12's command line does: MGSM with
//! the train split's worked answers as exemplars). Each task's prompt words, target, delimiters, stop strings and
//! filters are copied from its YAML; few-shot examples are drawn as lm-eval draws them (CPython's
//! `random.Random(1234).sample` over the task's few-shot split, one generator per language, items in file order).

use super::prompt::{example_turn, render, Message, PromptTemplate};
use super::pyrandom::PyRandom;
use super::qa_metrics::{exact_match_ignoring_case_and_punct, py_strip, regex_filter, squad_exact, squad_f1, tydiqa_scores, FLEXIBLE_EXTRACT};
use crate::data::reader;
use crate::lora::Adapter;
use crate::model::Model;
use crate::tokenizer::TextTokenizer;
use anyhow::{bail, Context, Result};
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QaFormat {
    Xquad,
    Tydiqa,
    MgsmDirect,
    MgsmNativeCot,
}

/// lm-eval's few-shot seed (`simple_evaluate(fewshot_random_seed=1234)`).
const FEWSHOT_SEED: u64 = 1234;
/// lm-eval's HF backend default `max_gen_toks` (none of these tasks sets its own).
pub const LM_EVAL_MAX_GEN_TOKS: usize = 256;

/// xquad_<lang>'s doc_to_text: (context, question, answer) labels.
const XQUAD: [(&str, [&str; 3]); 12] = [
    ("ar", ["سيا", "سؤال", "إجابة"]),
    ("de", ["Kontext", "Frage", "Antwort"]),
    ("el", ["Συμφραζόμενα", "Ερώτηση", "Απάντηση"]),
    ("en", ["Context", "Question", "Answer"]),
    ("es", ["Contexto", "Pregunta", "Respuesta"]),
    ("hi", ["प्रसंग", "सवाल", "उत्तर"]),
    ("ro", ["Context", "Întrebare", "Răspuns"]),
    ("ru", ["Контекст", "Вопрос", "Ответ"]),
    ("th", ["บริบท", "คำถาม", "คำตอบ"]),
    ("tr", ["Bağlam", "Soru", "Cevap"]),
    ("vi", ["Bối cảnh", "Câu hỏi", "Trả lời"]),
    ("zh", ["语境", "问题", "回答"]),
];

/// tydiqa_goldp_<lang>'s labels and the id prefix lm-eval's process_docs keeps.
const TYDIQA: [(&str, &str, [&str; 3]); 9] = [
    ("ar", "arabic", ["السياق", "السؤال", "الإجابة"]),
    ("bn", "bengali", ["প্রসঙ্গ", "প্রশ্ন", "উত্তর"]),
    ("en", "english", ["Context", "Question", "Answer"]),
    ("fi", "finnish", ["Konteksti", "Kysymys", "Vastaus"]),
    ("id", "indonesian", ["Konteks", "Pertanyaan", "Jawaban"]),
    ("ko", "korean", ["맥락", "질문", "답변"]),
    ("ru", "russian", ["Контекст", "Вопрос", "Ответ"]),
    ("sw", "swahili", ["Muktadha", "Swali", "Jibu"]),
    ("te", "telugu", ["సందర్భం", "ప్రశ్న", "సమాధానం"]),
];

/// mgsm per language (lm_eval/tasks/mgsm/utils.py): the question prefix of test items (also the stop string), the
/// chain-of-thought answer cue, the direct answer cue, the characters of a worked answer's own cue that the CoT
/// target drops (`answer[N:]`), and the strict-match pattern.
struct Mgsm {
    lang: &'static str,
    question: &'static str,
    cot_cue: &'static str,
    direct_cue: &'static str,
    cue_chars: usize,
    strict: &'static str,
}

const MGSM: [Mgsm; 11] = [
    Mgsm { lang: "bn", question: "প্রশ্ন:", cot_cue: "ধাপে ধাপে উত্তর:", direct_cue: "Answer:", cue_chars: 17, strict: r"The answer is (\-?[0-9\.\,]+)" },
    Mgsm { lang: "de", question: "Frage:", cot_cue: "Schritt-für-Schritt-Antwort:", direct_cue: "Antwort:", cue_chars: 29, strict: r"Die Antwort lautet (\-?[0-9\.\,]+)" },
    Mgsm { lang: "en", question: "Question:", cot_cue: "Step-by-Step Answer:", direct_cue: "Answer:", cue_chars: 21, strict: r"The answer is (\-?[0-9\.\,]+)" },
    Mgsm { lang: "es", question: "Pregunta:", cot_cue: "Respuesta paso a paso:", direct_cue: "Respuesta:", cue_chars: 23, strict: r"La respuesta es (\-?[0-9\.\,]+)" },
    Mgsm { lang: "fr", question: "Question :", cot_cue: "Réponse étape par étape :", direct_cue: "Réponse :", cue_chars: 26, strict: r"La réponse est (\-?[0-9\.\,]+)" },
    Mgsm { lang: "ja", question: "問題：", cot_cue: "ステップごとの答え:", direct_cue: "Answer:", cue_chars: 11, strict: r"答えは(\-?[0-9\.\,]+)です。" },
    Mgsm { lang: "ru", question: "Задача:", cot_cue: "Пошаговоерешение:", direct_cue: "Answer:", cue_chars: 18, strict: r"Ответ — (\-?[0-9\.\,]+)" },
    Mgsm { lang: "sw", question: "Swali:", cot_cue: "Jibu la Hatua kwa Hatua:", direct_cue: "Answer:", cue_chars: 25, strict: r"Jibu ni (\-?[0-9\.\,]+)" },
    Mgsm { lang: "te", question: "ప్రశ్న:", cot_cue: "దశలవారీగా సమాధానం:", direct_cue: "Answer:", cue_chars: 19, strict: r"సమాధానం (\-?[0-9\.\,]+)" },
    Mgsm { lang: "th", question: "โจทย์:", cot_cue: "คำตอบทีละขั้นตอน:", direct_cue: "Answer:", cue_chars: 18, strict: r"คำตอบคือ (\-?[0-9\.\,]+)" },
    Mgsm { lang: "zh", question: "问题：", cot_cue: "逐步解答:", direct_cue: "Answer:", cue_chars: 6, strict: r"答案是 (\-?[0-9\.\,]+)。" },
];

/// One item of a generative benchmark.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchItem {
    pub id: Option<String>,
    /// The language code whose lm-eval task scores the item (en, es, zh, …).
    pub language: String,
    pub context: String,
    pub question: String,
    /// Reference answers (xquad, tydiqa) or the answer number as text (mgsm).
    pub answers: Vec<String>,
    /// mgsm: the worked answer (train split; null in the test split).
    pub worked: Option<String>,
}

impl QaFormat {
    /// The format named `name`, or None for the generic `{question, answer}` format.
    pub fn parse(name: &str) -> Result<Option<Self>> {
        Ok(Some(match name {
            "generic" => return Ok(None),
            "xquad" => QaFormat::Xquad,
            "tydiqa" => QaFormat::Tydiqa,
            "mgsm_direct" => QaFormat::MgsmDirect,
            // The benchmark's own name: its worked answers as exemplars, which only the chain-of-thought task uses.
            "mgsm" | "mgsm_native_cot" => QaFormat::MgsmNativeCot,
            other => bail!("unknown qa format `{other}` (known: {})", crate::recipe::QA_FORMATS.join(", ")),
        }))
    }

    /// The logical fields and their default (dotted) column paths in the Hugging Face release.
    fn fields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            QaFormat::Xquad | QaFormat::Tydiqa => &[("id", "id"), ("context", "context"), ("question", "question"), ("answers", "answers.text")],
            QaFormat::MgsmDirect | QaFormat::MgsmNativeCot => &[("question", "question"), ("answer", "answer"), ("answer_number", "answer_number")],
        }
    }

    fn languages(self) -> Vec<&'static str> {
        match self {
            QaFormat::Xquad => XQUAD.iter().map(|x| x.0).collect(),
            QaFormat::Tydiqa => TYDIQA.iter().map(|x| x.0).collect(),
            _ => MGSM.iter().map(|m| m.lang).collect(),
        }
    }

    fn mgsm(lang: &str) -> &'static Mgsm {
        MGSM.iter().find(|m| m.lang == lang).expect("languages are checked when items are read")
    }

    /// The task's `doc_to_text`.
    pub fn doc_to_text(self, it: &BenchItem) -> String {
        let labels = |l: &[&str; 3]| format!("{}: {}\n\n{}: {}\n\n{}:", l[0], it.context, l[1], it.question, l[2]);
        match self {
            QaFormat::Xquad => labels(&XQUAD.iter().find(|x| x.0 == it.language).expect("checked").1),
            QaFormat::Tydiqa => labels(&TYDIQA.iter().find(|x| x.0 == it.language).expect("checked").2),
            QaFormat::MgsmDirect | QaFormat::MgsmNativeCot => {
                let m = Self::mgsm(&it.language);
                let cue = if self == QaFormat::MgsmDirect { m.direct_cue } else { m.cot_cue };
                // Train questions carry their own prefix; test questions (no worked answer) get it here.
                match it.worked {
                    Some(_) => format!("{}\n{cue}", it.question),
                    None => format!("{} {}\n{cue}", m.question, it.question),
                }
            }
        }
    }

    /// The task's `doc_to_target` (what a few-shot example answers).
    pub fn doc_to_target(self, it: &BenchItem) -> String {
        match (self, &it.worked) {
            (QaFormat::MgsmNativeCot, Some(w)) => w.chars().skip(Self::mgsm(&it.language).cue_chars).collect(),
            _ => it.answers[0].clone(),
        }
    }

    fn target_delimiter(self) -> &'static str {
        if self == QaFormat::MgsmDirect { "" } else { " " }
    }

    /// The task's `until`, before lm-eval appends the tokenizer's EOS string.
    pub fn until(self, lang: &str) -> Vec<String> {
        match self {
            QaFormat::Xquad | QaFormat::Tydiqa => vec!["\n".into()],
            _ => vec![Self::mgsm(lang).question.into(), "</s>".into(), "<|im_end|>".into()],
        }
    }

    /// Names of the task's filters, in lm-eval's order (the first is the headline `exact_match`).
    pub fn filters(self) -> &'static [&'static str] {
        match self {
            QaFormat::Xquad | QaFormat::Tydiqa => &[],
            QaFormat::MgsmDirect => &["remove_whitespace", "flexible-extract"],
            QaFormat::MgsmNativeCot => &["strict-match", "flexible-extract"],
        }
    }

    /// The generation after each of the task's filters (mgsm only).
    pub fn filtered(self, generation: &str, lang: &str) -> Vec<String> {
        match self {
            QaFormat::Xquad | QaFormat::Tydiqa => Vec::new(),
            QaFormat::MgsmDirect => vec![py_strip(generation).to_string(), regex_filter(generation, &FLEXIBLE_EXTRACT, -1)],
            QaFormat::MgsmNativeCot => {
                let strict = Regex::new(Self::mgsm(lang).strict).expect("patterns are lm-eval's");
                vec![regex_filter(generation, &strict, 0), regex_filter(generation, &FLEXIBLE_EXTRACT, -1)]
            }
        }
    }

    /// (exact_match, f1) of one generation: f1 for xquad and tydiqa; for mgsm one exact match per filter.
    pub fn score(self, it: &BenchItem, generation: &str) -> (Vec<f64>, Option<f64>) {
        match self {
            QaFormat::Xquad => (vec![squad_exact(&it.answers[0], generation)], Some(squad_f1(&it.answers[0], generation))),
            QaFormat::Tydiqa => {
                let (em, f1) = tydiqa_scores(generation, &it.answers, &it.language);
                (vec![em], Some(f1))
            }
            _ => (self.filtered(generation, &it.language).iter().map(|f| exact_match_ignoring_case_and_punct(f, &it.answers[0])).collect(), None),
        }
    }
}

/// The value at a dotted path (`answers.text`).
fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads a benchmark file (JSON, JSONL or parquet as downloaded). `fields` renames columns (logical name → dotted
/// path); `language` is the items' language (xquad and mgsm files are one language each); TyDi QA's ids start with
/// the language's name, and there `language` keeps only that language's rows.
pub fn read_bench(path: &Path, format: QaFormat, fields: &BTreeMap<String, String>, language: Option<&str>) -> Result<Vec<BenchItem>> {
    for k in fields.keys() {
        if !format.fields().iter().any(|(f, _)| f == k) {
            bail!("{}: unknown field `{k}` for this format (fields: {})", path.display(), format.fields().iter().map(|f| f.0).collect::<Vec<_>>().join(", "));
        }
    }
    let col = |name: &str| -> String { fields.get(name).cloned().unwrap_or_else(|| format.fields().iter().find(|f| f.0 == name).expect("known field").1.to_string()) };
    let mut out = Vec::new();
    for raw in reader::open(path)? {
        let raw = raw?;
        let (v, loc) = (&raw.value, &raw.location);
        let string = |name: &str| -> Result<String> {
            let c = col(name);
            match at_path(v, &c) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => bail!("{loc}: column `{c}` must be a string, found {other}"),
                None => bail!("{loc}: missing column `{c}`"),
            }
        };
        let id = at_path(v, &col_or(fields, "id")).and_then(text_of);
        let mut it = BenchItem { id, ..Default::default() };
        match format {
            QaFormat::Xquad | QaFormat::Tydiqa => {
                it.context = string("context")?;
                it.question = string("question")?;
                let c = col("answers");
                it.answers = match at_path(v, &c) {
                    Some(Value::Array(a)) if !a.is_empty() => a.iter().map(|x| text_of(x).with_context(|| format!("{loc}: column `{c}` must hold strings"))).collect::<Result<_>>()?,
                    _ => bail!("{loc}: column `{c}` must be a non-empty list of answer strings"),
                };
            }
            QaFormat::MgsmDirect | QaFormat::MgsmNativeCot => {
                it.question = string("question")?;
                let c = col("answer_number");
                it.answers = vec![match at_path(v, &c) {
                    Some(Value::Number(n)) => n.to_string(),
                    _ => bail!("{loc}: column `{c}` must be a number"),
                }];
                let c = col("answer");
                it.worked = match at_path(v, &c) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Null) | None => None,
                    Some(other) => bail!("{loc}: column `{c}` must be a string or null, found {other}"),
                };
            }
        }
        it.language = match (format, language) {
            (QaFormat::Tydiqa, _) => {
                let id = it.id.as_deref().with_context(|| format!("{loc}: TyDi QA rows need an `{}` starting with the language (english-…)", col_or(fields, "id")))?;
                let name = id.split('-').next().unwrap_or_default();
                TYDIQA.iter().find(|t| t.1 == name).map(|t| t.0.to_string()).with_context(|| {
                    format!("{loc}: id `{id}`: lm-eval has no tydiqa_goldp task for `{name}` (languages: {})", TYDIQA.iter().map(|t| t.1).collect::<Vec<_>>().join(", "))
                })?
            }
            (_, Some(l)) => l.to_string(),
            (_, None) => bail!("{loc}: the file's language is not known: set `language` (e.g. --language es)"),
        };
        if !format.languages().contains(&it.language.as_str()) {
            bail!("{loc}: lm-eval has no task of this format in language `{}` (languages: {})", it.language, format.languages().join(", "));
        }
        // A TyDi QA file holds every language; `language` picks one, as lm-eval's tydiqa_goldp_<lang> does.
        if format != QaFormat::Tydiqa || language.is_none_or(|l| l == it.language) {
            out.push(it);
        }
    }
    if out.is_empty() {
        bail!("{}: no items{}", path.display(), language.map(|l| format!(" in language `{l}`")).unwrap_or_default());
    }
    Ok(out)
}

fn col_or(fields: &BTreeMap<String, String>, name: &str) -> String {
    fields.get(name).cloned().unwrap_or_else(|| name.to_string())
}

/// Every item's prompt messages: k few-shot examples from `dev` (its items of the same language), drawn per language
/// as lm-eval draws them, then the item.
pub fn prompts(format: QaFormat, items: &[BenchItem], dev: &[BenchItem], shots: usize) -> Result<Vec<Vec<Message>>> {
    if shots > 0 && format == QaFormat::Xquad {
        bail!("xquad has no few-shot split in lm-eval (it draws from the evaluated split itself); score it 0-shot");
    }
    let mut rngs: BTreeMap<&str, PyRandom> = BTreeMap::new();
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let pool: Vec<&BenchItem> = dev.iter().filter(|d| d.language == it.language).collect();
        if shots > pool.len() {
            bail!("{shots}-shot prompts need {shots} dev items in language `{}`, the dev split has {}", it.language, pool.len());
        }
        let mut messages = Vec::new();
        if shots > 0 {
            let rng = rngs.entry(&it.language).or_insert_with(|| PyRandom::new(FEWSHOT_SEED));
            for i in rng.sample(pool.len(), shots) {
                let d = pool[i];
                messages.extend(example_turn(&format.doc_to_text(d), &format.doc_to_target(d), format.target_delimiter(), "\n\n"));
            }
        }
        messages.push(Message::user(format.doc_to_text(it), ""));
        out.push(messages);
    }
    Ok(out)
}

/// One scored item: what was asked, what came back, and its scores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemOutcome {
    pub prompt: String,
    pub generation: String,
    /// mgsm: the generation after each filter.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filtered: Vec<String>,
    /// One per filter for mgsm (the first is the headline), else one.
    pub exact_match: Vec<f64>,
    pub f1: Option<f64>,
}

/// Generates greedy answers (the task's stop strings and the EOS string, at most `max_gen_toks` tokens, the prompt
/// cut from the left to fit as lm-eval cuts it) and scores them.
#[allow(clippy::too_many_arguments)]
pub fn run_bench(model: &Model, adapter: Option<&Adapter>, tok: &TextTokenizer, eos: u32, pad: u32, format: QaFormat, items: &[BenchItem], dev: &[BenchItem], shots: usize, template: &PromptTemplate, max_gen_toks: usize, batch_size: usize) -> Result<Vec<ItemOutcome>> {
    let texts: Vec<String> = prompts(format, items, dev, shots)?.iter().map(|m| render(m, template)).collect::<Result<_>>()?;
    let eos_text = tok.eos_token.clone();
    // lm-eval's HF model keeps the last `max_length - max_gen_toks` context tokens, `max_length` being the model's
    // max_position_embeddings (or its default 2048).
    let max_length = model.cfg.max_position_embeddings.unwrap_or(2048);
    if max_gen_toks >= max_length {
        bail!("max_new_tokens {max_gen_toks} leaves no room for the prompt in the model's {max_length} positions");
    }
    let max_ctx = max_length - max_gen_toks;
    let bar = super::progress(items.len(), "qa");
    let mut out = Vec::with_capacity(items.len());
    // Items of one language share stop strings; batches never mix them.
    let mut k = 0;
    while k < items.len() {
        let lang = &items[k].language;
        let end = (k..items.len()).take(batch_size.max(1)).take_while(|&j| &items[j].language == lang).last().expect("k < len") + 1;
        let mut stop = format.until(lang);
        if let Some(e) = &eos_text {
            if !e.is_empty() && !stop.contains(e) {
                stop.push(e.clone());
            }
        }
        let opts = crate::generate::GenOptions { max_new_tokens: max_gen_toks, temperature: 0.0, top_p: 1.0, stop, seed: 0 };
        let ids: Vec<Vec<u32>> = texts[k..end]
            .iter()
            .map(|t| super::prompt::encode(t, tok).map(|ids| ids[ids.len().saturating_sub(max_ctx)..].to_vec()))
            .collect::<Result<_>>()?;
        for (j, g) in crate::generate::generate(model, adapter, tok, &ids, &[eos], pad, &opts)?.into_iter().enumerate() {
            let it = &items[k + j];
            let (exact_match, f1) = format.score(it, &g.text);
            out.push(ItemOutcome { prompt: texts[k + j].clone(), filtered: format.filtered(&g.text, &it.language), generation: g.text, exact_match, f1 });
        }
        bar.inc((end - k) as u64);
        k = end;
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The summary lm-eval reports: `exact_match` (and `f1` for xquad/tydiqa) as fractions, `items`, and for mgsm each
/// filter's exact match under `filters`.
pub fn summary(format: QaFormat, outcomes: &[ItemOutcome]) -> Value {
    let n = outcomes.len().max(1) as f64;
    let mean = |f: &dyn Fn(&ItemOutcome) -> f64| outcomes.iter().map(f).sum::<f64>() / n;
    let mut r = serde_json::json!({ "exact_match": mean(&|o| o.exact_match[0]), "items": outcomes.len() });
    if matches!(format, QaFormat::Xquad | QaFormat::Tydiqa) {
        r["f1"] = mean(&|o| o.f1.unwrap_or(0.0)).into();
    }
    if !format.filters().is_empty() {
        let filters: serde_json::Map<String, Value> = format.filters().iter().enumerate().map(|(i, name)| (name.to_string(), mean(&|o| o.exact_match[i]).into())).collect();
        r["filters"] = filters.into();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mgsm_item(q: &str, worked: Option<&str>, n: &str, lang: &str) -> BenchItem {
        BenchItem { question: q.into(), worked: worked.map(str::to_string), answers: vec![n.into()], language: lang.into(), ..Default::default() }
    }

    #[test]
    fn mgsm_prompts_follow_the_task_yaml() {
        let train = mgsm_item("Pregunta: ¿2+3?", Some("Respuesta paso a paso: 2+3=5. La respuesta es 5."), "5", "es");
        let test = mgsm_item("¿4+4?", None, "8", "es");
        let cot = prompts(QaFormat::MgsmNativeCot, std::slice::from_ref(&test), std::slice::from_ref(&train), 1).unwrap();
        assert_eq!(render(&cot[0], &PromptTemplate::None).unwrap(), "Pregunta: ¿2+3?\nRespuesta paso a paso: 2+3=5. La respuesta es 5.\n\nPregunta: ¿4+4?\nRespuesta paso a paso:");
        let direct = prompts(QaFormat::MgsmDirect, std::slice::from_ref(&test), std::slice::from_ref(&train), 1).unwrap();
        assert_eq!(render(&direct[0], &PromptTemplate::None).unwrap(), "Pregunta: ¿2+3?\nRespuesta:5\n\nPregunta: ¿4+4?\nRespuesta:");
        assert!(prompts(QaFormat::MgsmDirect, std::slice::from_ref(&test), &[], 1).unwrap_err().to_string().contains("need 1 dev items"));
        assert_eq!(QaFormat::parse("mgsm").unwrap(), Some(QaFormat::MgsmNativeCot), "mgsm: the worked answers as exemplars");
        let zh = mgsm_item("一共几个？", None, "3", "zh");
        assert_eq!(QaFormat::MgsmNativeCot.doc_to_text(&zh), "问题： 一共几个？\n逐步解答:");
    }

    #[test]
    fn mgsm_scores_a_multi_paragraph_chain_of_thought() {
        let it = mgsm_item("q", None, "1250", "en");
        let cot = "First, 1,000 apples.\n\nThen 250 more arrive, so 1,000 + 250 = 1,250.\n\nThe answer is 1,250.";
        assert_eq!(QaFormat::MgsmNativeCot.filtered(cot, "en"), vec!["1,250.", "1,250."]);
        assert_eq!(QaFormat::MgsmNativeCot.score(&it, cot).0, vec![1.0, 1.0]);
        // Without the cue only the flexible filter finds it.
        assert_eq!(QaFormat::MgsmNativeCot.score(&it, "so 1,250 in all").0, vec![0.0, 1.0]);
        assert_eq!(QaFormat::MgsmDirect.score(&it, " 1250 ").0, vec![1.0, 1.0]);
        assert_eq!(QaFormat::MgsmDirect.score(&it, "1250 apples").0, vec![0.0, 1.0]);
    }

    #[test]
    fn xquad_and_tydiqa_prompts_and_languages() {
        let it = BenchItem { context: "C".into(), question: "Q".into(), answers: vec!["a".into()], language: "ru".into(), ..Default::default() };
        assert_eq!(QaFormat::Xquad.doc_to_text(&it), "Контекст: C\n\nВопрос: Q\n\nОтвет:");
        assert_eq!(QaFormat::Tydiqa.doc_to_text(&BenchItem { language: "sw".into(), ..it.clone() }), "Muktadha: C\n\nSwali: Q\n\nJibu:");
        assert!(prompts(QaFormat::Xquad, std::slice::from_ref(&it), std::slice::from_ref(&it), 1).is_err());
        assert_eq!(QaFormat::Xquad.score(&it, " A.").0, vec![1.0]);
    }
}
