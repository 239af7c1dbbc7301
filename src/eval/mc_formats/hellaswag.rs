//! HellaSwag (Rowan/hellaswag, lm-eval's hellaswag): the context `activity_label: ctx_a Ctx_b` and each ending as a
//! continuation, both cleaned as lm-eval's `utils.preprocess` does (WikiHow's " [title]" and other bracketed
//! artefacts). No description.

use super::Row;
use crate::eval::mc::McDoc;
use anyhow::Result;
use serde_json::Value;

/// lm-eval's `preprocess`: strip, " [title]" → ". ", drop every `[…]` (shortest match, not across lines, as
/// `re.sub("\\[.*?\\]", "")`), then every double space → one (`str.replace`, one pass).
pub(crate) fn preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find(|c| c == ']' || c == '\n') {
            Some(close) if after.as_bytes()[close] == b']' => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize()`: the first character upper case, the rest lower case.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

pub(super) fn doc(row: &Row) -> Result<McDoc> {
    let ctx = format!("{} {}", row.text("ctx_a")?, capitalize(&row.text("ctx_b")?));
    let text = preprocess(&format!("{}: {ctx}", row.text("activity_label")?));
    let choices: Vec<String> = row.texts("endings")?.iter().map(|e| preprocess(e)).collect();
    let bad = || row.bad("answer", &format!("must be the index of the right ending, 0–{} (the test split's labels are not public)", choices.len() - 1));
    let answer = match row.value("answer")? {
        Value::Number(n) => n.as_u64().map(|a| a as usize),
        Value::String(s) => s.trim().parse::<usize>().ok(),
        _ => None,
    }
    .filter(|&a| a < choices.len())
    .ok_or_else(bad)?;
    Ok(McDoc { text, choices, answer, subject: row.subject(), ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_matches_lm_evals() {
        // Expected strings from lm_eval/tasks/hellaswag/utils.py's preprocess on the same inputs.
        assert_eq!(preprocess(" Making a cake: [title] Mix the flour. [step] Stir  well. "), "Making a cake:. Mix the flour. Stir well.");
        assert_eq!(preprocess("a [b\nc] d"), "a [b\nc] d");
        assert_eq!(preprocess("x [y] [z"), "x [z");
        assert_eq!(capitalize("tHE man"), "The man");
    }
}
