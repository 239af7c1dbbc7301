//! Record formats: how a JSON object (a line, an array element or a parquet row) becomes a [`Conversation`].
//! Field names can be overridden per source (`fields = { instruction = "prompt" }`). Problems are reported as
//! [`FieldError`]s naming the field; the caller adds the file and line.

use super::reader::kind;
use super::record::{Conversation, Role, Turn};
use anyhow::{bail, Result};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Alpaca,
    Aya,
    Dolly,
    ShareGpt,
    Messages,
    UltraLink,
    Lima,
}

const NAMES: [(&str, Format); 7] = [
    ("alpaca", Format::Alpaca),
    ("aya", Format::Aya),
    ("dolly", Format::Dolly),
    ("sharegpt", Format::ShareGpt),
    ("messages", Format::Messages),
    ("ultralink", Format::UltraLink),
    ("lima", Format::Lima),
];

impl Format {
    pub fn parse(name: &str) -> Result<Self> {
        match NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, f)) => Ok(*f),
            None => bail!("unknown format `{name}` (one of {})", NAMES.map(|(n, _)| n).join(", ")),
        }
    }

    /// The format's logical fields and their default keys in the file.
    fn fields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Format::Alpaca => &[("instruction", "instruction"), ("input", "input"), ("output", "output"), ("id", "id")],
            Format::Aya => &[("inputs", "inputs"), ("targets", "targets"), ("language", "language_code"), ("id", "id")],
            Format::Dolly => &[("instruction", "instruction"), ("context", "context"), ("response", "response"), ("id", "id")],
            Format::ShareGpt => &[("conversations", "conversations"), ("from", "from"), ("value", "value"), ("id", "id")],
            Format::Messages => &[("messages", "messages"), ("role", "role"), ("content", "content"), ("id", "id")],
            Format::UltraLink => &[("data", "data"), ("language", "language"), ("id", "id")],
            Format::Lima => &[("conversations", "conversations"), ("id", "id")],
        }
    }
}

/// Logical field → key in the file.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct FieldMap(pub BTreeMap<String, String>);

pub fn validate_fields(format: Format, fields: &FieldMap) -> Result<()> {
    for k in fields.0.keys() {
        if !format.fields().iter().any(|(name, _)| name == k) {
            bail!("`{k}` is not a field of this format (its fields: {})", format.fields().iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

pub struct Parsed {
    pub conversation: Conversation,
    pub id: Option<String>,
    pub language: Option<String>,
    /// (instruction, input) of single-turn formats, kept apart for the alpaca template.
    pub alpaca: Option<(String, String)>,
}

struct Fields<'a> {
    obj: &'a serde_json::Map<String, Value>,
    format: Format,
    map: &'a FieldMap,
}

fn err(field: &str, problem: impl Into<String>) -> FieldError {
    FieldError { field: field.to_string(), problem: problem.into() }
}

impl Fields<'_> {
    fn key(&self, logical: &str) -> String {
        self.map.0.get(logical).cloned().unwrap_or_else(|| {
            self.format.fields().iter().find(|(n, _)| *n == logical).map(|(_, k)| k.to_string()).unwrap_or_else(|| logical.to_string())
        })
    }

    fn get(&self, logical: &str) -> Option<(&Value, String)> {
        let key = self.key(logical);
        self.obj.get(&key).filter(|v| !v.is_null()).map(|v| (v, key))
    }

    fn text(&self, logical: &str) -> Result<String, FieldError> {
        let key = self.key(logical);
        match self.get(logical) {
            Some((Value::String(s), _)) => Ok(s.clone()),
            Some((other, _)) => Err(err(&key, format!("must be a string, found {}", kind(other)))),
            None => Err(err(&key, "is missing")),
        }
    }

    fn optional_text(&self, logical: &str) -> Result<String, FieldError> {
        match self.get(logical) {
            None => Ok(String::new()),
            Some(_) => self.text(logical),
        }
    }

    /// Ids may be strings or numbers.
    fn id(&self) -> Option<String> {
        match self.get("id")?.0 {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    fn list(&self, logical: &str) -> Result<(&Vec<Value>, String), FieldError> {
        let key = self.key(logical);
        match self.get(logical) {
            Some((Value::Array(a), _)) if a.is_empty() => Err(err(&key, "is an empty list")),
            Some((Value::Array(a), _)) => Ok((a, key)),
            Some((other, _)) => Err(err(&key, format!("must be a list, found {}", kind(other)))),
            None => Err(err(&key, "is missing")),
        }
    }
}

fn single_turn(user: String, input: String, response: String, user_field: &str, response_field: &str) -> Result<Parsed, FieldError> {
    if user.trim().is_empty() {
        return Err(err(user_field, "is empty"));
    }
    if response.trim().is_empty() {
        return Err(err(response_field, "empty response"));
    }
    let content = if input.is_empty() { user.clone() } else { format!("{user}\n\n{input}") };
    Ok(Parsed {
        conversation: Conversation { turns: vec![Turn { role: Role::User, content }, Turn { role: Role::Assistant, content: response }] },
        id: None,
        language: None,
        alpaca: Some((user, input)),
    })
}

/// Checks the turn order: optional leading system turn, then user/assistant alternating, ending with assistant.
fn checked(turns: Vec<Turn>, field: &str) -> Result<Conversation, FieldError> {
    for (i, t) in turns.iter().enumerate() {
        if t.content.trim().is_empty() {
            let what = if t.role == Role::Assistant { "empty response".to_string() } else { format!("turn {i} is empty") };
            return Err(err(field, what));
        }
        if t.role == Role::System && i > 0 {
            return Err(err(field, format!("turn {i}: a system turn may only come first")));
        }
        if i > 0 && turns[i - 1].role == t.role {
            return Err(err(field, format!("turns {} and {i} have the same role", i - 1)));
        }
    }
    match turns.iter().rev().find(|t| t.role != Role::System) {
        Some(t) if t.role == Role::Assistant => {}
        _ => return Err(err(field, "the conversation does not end with an assistant turn")),
    }
    if turns.iter().find(|t| t.role != Role::System).map(|t| t.role) != Some(Role::User) {
        return Err(err(field, "the conversation does not start with a user turn"));
    }
    Ok(Conversation { turns })
}

fn role(name: &str) -> Option<Role> {
    match name {
        "human" | "user" => Some(Role::User),
        "gpt" | "assistant" | "chatgpt" | "bing" | "bard" | "model" => Some(Role::Assistant),
        "system" => Some(Role::System),
        _ => None,
    }
}

/// A list of `{role_key: .., content_key: ..}` objects.
fn role_turns(f: &Fields, list: &str, role_field: &str, content_field: &str) -> Result<Conversation, FieldError> {
    let (items, key) = f.list(list)?;
    let (rk, ck) = (f.key(role_field), f.key(content_field));
    let mut turns = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let obj = item.as_object().ok_or_else(|| err(&at, format!("must be an object, found {}", kind(item))))?;
        let r = match obj.get(&rk) {
            Some(Value::String(s)) => role(s).ok_or_else(|| err(&format!("{at}.{rk}"), format!("unknown role `{s}`")))?,
            Some(other) => return Err(err(&format!("{at}.{rk}"), format!("must be a string, found {}", kind(other)))),
            None => return Err(err(&format!("{at}.{rk}"), "is missing")),
        };
        let content = match obj.get(&ck) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(err(&format!("{at}.{ck}"), format!("must be a string, found {}", kind(other)))),
            None => return Err(err(&format!("{at}.{ck}"), "is missing")),
        };
        turns.push(Turn { role: r, content });
    }
    checked(turns, &key)
}

/// A flat list of strings alternating user, assistant, ...
fn alternating(f: &Fields, list: &str) -> Result<Conversation, FieldError> {
    let (items, key) = f.list(list)?;
    if items.len() % 2 != 0 {
        return Err(err(&key, format!("has {} entries; user/assistant pairs need an even number", items.len())));
    }
    let mut turns = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let content = item.as_str().ok_or_else(|| err(&format!("{key}[{i}]"), format!("must be a string, found {}", kind(item))))?;
        turns.push(Turn { role: if i % 2 == 0 { Role::User } else { Role::Assistant }, content: content.to_string() });
    }
    checked(turns, &key)
}

pub fn parse(format: Format, fields: &FieldMap, value: &Value) -> Result<Parsed, FieldError> {
    let obj = value.as_object().ok_or_else(|| err("(record)", format!("must be an object, found {}", kind(value))))?;
    let f = Fields { obj, format, map: fields };
    let mut parsed = match format {
        Format::Alpaca => single_turn(f.text("instruction")?, f.optional_text("input")?, f.text("output")?, &f.key("instruction"), &f.key("output"))?,
        Format::Aya => single_turn(f.text("inputs")?, String::new(), f.text("targets")?, &f.key("inputs"), &f.key("targets"))?,
        Format::Dolly => single_turn(f.text("instruction")?, f.optional_text("context")?, f.text("response")?, &f.key("instruction"), &f.key("response"))?,
        Format::ShareGpt => Parsed { conversation: role_turns(&f, "conversations", "from", "value")?, id: None, language: None, alpaca: None },
        Format::Messages => Parsed { conversation: role_turns(&f, "messages", "role", "content")?, id: None, language: None, alpaca: None },
        Format::UltraLink | Format::Lima => {
            let list = if format == Format::Lima { "conversations" } else { "data" };
            Parsed { conversation: alternating(&f, list)?, id: None, language: None, alpaca: None }
        }
    };
    parsed.id = f.id();
    parsed.language = match format {
        // Aya files name it language_code; some copies say language.
        Format::Aya => f.get("language").or_else(|| obj.get("language").map(|v| (v, String::new()))).and_then(|(v, _)| v.as_str().map(str::to_string)),
        Format::UltraLink => f.get("language").and_then(|(v, _)| v.as_str().map(str::to_string)),
        _ => None,
    };
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(format: &str, v: Value) -> Parsed {
        parse(Format::parse(format).unwrap(), &FieldMap::default(), &v).unwrap()
    }

    fn bad(format: &str, v: Value) -> String {
        parse(Format::parse(format).unwrap(), &FieldMap::default(), &v).err().expect("an error").to_string()
    }

    fn roles(p: &Parsed) -> Vec<Role> {
        p.conversation.turns.iter().map(|t| t.role).collect()
    }

    #[test]
    fn single_turn_formats() {
        let a = ok("alpaca", json!({"instruction": "Traduce", "input": "hello", "output": "hola", "id": 7}));
        assert_eq!(a.conversation.turns[0].content, "Traduce\n\nhello");
        assert_eq!(a.alpaca, Some(("Traduce".into(), "hello".into())));
        assert_eq!(a.id.as_deref(), Some("7"));
        let a = ok("alpaca", json!({"instruction": "Di hola", "input": null, "output": "hola"}));
        assert_eq!(a.conversation.turns[0].content, "Di hola");
        let y = ok("aya", json!({"inputs": "¿Qué?", "targets": "Nada", "language_code": "spa"}));
        assert_eq!((roles(&y), y.language.as_deref()), (vec![Role::User, Role::Assistant], Some("spa")));
        let d = ok("dolly", json!({"instruction": "Resume", "context": "texto", "response": "corto"}));
        assert_eq!(d.alpaca, Some(("Resume".into(), "texto".into())));
    }

    #[test]
    fn multi_turn_formats() {
        let s = ok("sharegpt", json!({"conversations": [{"from": "system", "value": "Sé breve."}, {"from": "human", "value": "Hola"}, {"from": "gpt", "value": "Hola."}, {"from": "human", "value": "¿Y?"}, {"from": "gpt", "value": "Nada."}]}));
        assert_eq!(roles(&s), [Role::System, Role::User, Role::Assistant, Role::User, Role::Assistant]);
        let m = ok("messages", json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}));
        assert_eq!(m.conversation.turns[1].content, "b");
        let u = ok("ultralink", json!({"data": ["q1", "a1", "q2", "a2"], "language": "zh"}));
        assert_eq!((u.conversation.turns.len(), u.language.as_deref()), (4, Some("zh")));
        let l = ok("lima", json!({"conversations": ["q", "a"]}));
        assert_eq!(roles(&l), [Role::User, Role::Assistant]);
    }

    #[test]
    fn fields_can_be_renamed() {
        let map = FieldMap([("instruction".to_string(), "prompt".to_string()), ("output".to_string(), "answer".to_string())].into());
        let p = parse(Format::Alpaca, &map, &json!({"prompt": "p", "answer": "a"})).unwrap();
        assert_eq!(p.conversation.turns[1].content, "a");
        assert!(validate_fields(Format::Alpaca, &map).is_ok());
        let wrong = FieldMap([("question".to_string(), "q".to_string())].into());
        assert!(validate_fields(Format::Alpaca, &wrong).unwrap_err().to_string().contains("instruction, input, output, id"));
        let e = parse(Format::Alpaca, &map, &json!({"instruction": "p", "answer": "a"})).err().unwrap().to_string();
        assert!(e.contains("`prompt`: is missing"), "{e}");
    }

    #[test]
    fn bad_records_name_the_field() {
        assert!(bad("alpaca", json!({"instruction": "a"})).contains("`output`: is missing"));
        assert!(bad("alpaca", json!({"instruction": "a", "output": 3})).contains("`output`: must be a string, found a number"));
        assert!(bad("alpaca", json!({"instruction": "a", "output": " "})).contains("empty response"));
        assert!(bad("alpaca", json!({"instruction": "", "output": "b"})).contains("`instruction`: is empty"));
        assert!(bad("aya", json!({"inputs": ["x"], "targets": "b"})).contains("found an array"));
        assert!(bad("sharegpt", json!({"conversations": []})).contains("empty list"));
        assert!(bad("sharegpt", json!({"conversations": [{"from": "human", "value": "a"}]})).contains("does not end with an assistant"));
        assert!(bad("sharegpt", json!({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]})).contains("same role"));
        assert!(bad("sharegpt", json!({"conversations": [{"from": "robot", "value": "a"}]})).contains("unknown role `robot`"));
        assert!(bad("messages", json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]})).contains("only come first"));
        assert!(bad("messages", json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": false}]})).contains("messages[1].content"));
        assert!(bad("ultralink", json!({"data": ["a", "b", "c"]})).contains("even number"));
        assert!(bad("lima", json!({"conversations": ["a", ""]})).contains("empty response"));
        assert!(bad("lima", json!("text")).contains("must be an object"));
    }

    #[test]
    fn unknown_format_lists_the_known_ones() {
        assert!(Format::parse("csv").unwrap_err().to_string().contains("alpaca, aya, dolly, sharegpt, messages, ultralink, lima"));
    }
}
