//! ARC (allenai/ai2_arc, lm-eval's arc_easy / arc_challenge): "Question: {{question}}\nAnswer:", each choice's text
//! as a continuation, the answer the position of `answerKey` among `choices.label` (letters in most rows, 1–4 in
//! some). No description.

use super::Row;
use crate::eval::mc::McDoc;
use anyhow::Result;

pub(super) fn doc(row: &Row) -> Result<McDoc> {
    let question = row.text("question")?;
    let choices = row.texts("choices.text")?;
    let labels = row.texts("choices.label")?;
    if labels.len() != choices.len() {
        return Err(row.bad("choices.label", &format!("has {} labels for {} choices", labels.len(), choices.len())));
    }
    let key = row.text("answer")?;
    let answer = labels.iter().position(|l| *l == key).ok_or_else(|| row.bad("answer", &format!("`{key}` is not one of the labels {}", labels.join(", "))))?;
    Ok(McDoc { text: format!("Question: {question}\nAnswer:"), choices, answer, subject: row.subject(), ..Default::default() })
}
