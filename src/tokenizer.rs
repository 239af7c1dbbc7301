//! The model's tokenizer: `tokenizer.json` plus the special tokens that transformers registers from
//! `tokenizer_config.json` (`added_tokens_decoder`) and the chat template, if any.

use crate::checkpoint::ModelFiles;
use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use std::path::Path;
use tokenizers::{AddedToken, Tokenizer};

/// Byte ranges `(start, end)` of tokens in the encoded text.
pub type Offsets = Vec<(usize, usize)>;

pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub chat_template: Option<String>,
}

/// `bos_token` & co. are either a plain string or an AddedToken object with `content`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

/// Legacy SentencePiece conversions (Llama-2's tokenizer.json) prepend "▁" with a normalizer and match their
/// special tokens on normalized text, so "</s><s>" does not split into two specials and the space before "</s>"
/// is swallowed. transformers 5 loads such files as Metaspace(prepend_scheme = "first") with non-normalized
/// special tokens; do the same, so that ids match transformers.
fn modernize_sentencepiece(json: &mut Value) {
    let prepends = json["normalizer"]["type"] == "Sequence"
        && json["normalizer"]["normalizers"].as_array().is_some_and(|n| {
            n.len() == 2 && n[0]["type"] == "Prepend" && n[0]["prepend"] == "▁" && n[1]["type"] == "Replace" && n[1]["content"] == "▁"
        });
    if !prepends || !json["pre_tokenizer"].is_null() {
        return;
    }
    json["normalizer"] = Value::Null;
    json["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false});
    if let Some(tokens) = json["added_tokens"].as_array_mut() {
        for t in tokens.iter_mut().filter(|t| t["special"] == true) {
            t["normalized"] = Value::Bool(false);
        }
    }
}

impl TextTokenizer {
    pub fn load(files: &ModelFiles) -> Result<Self> {
        Self::from_files(&files.tokenizer, files.tokenizer_config.as_deref())
    }

    pub fn from_files(tokenizer_json: &Path, tokenizer_config: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(tokenizer_json).with_context(|| format!("cannot read tokenizer {}", tokenizer_json.display()))?;
        let mut json: Value = crate::jsonutil::from_str(&text).with_context(|| format!("{} is not valid JSON", tokenizer_json.display()))?;
        modernize_sentencepiece(&mut json);
        let mut inner: Tokenizer = serde_json::from_value(json).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", tokenizer_json.display()))?;
        let (mut bos_token, mut eos_token, mut chat_template) = (None, None, None);
        if let Some(path) = tokenizer_config {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let cfg: Value =
                crate::jsonutil::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
            // transformers registers every `added_tokens_decoder` entry as an added token; some tokenizer.json
            // files (gemma's <start_of_turn>/<end_of_turn>) only have them as plain vocab entries, which the
            // tokenizers crate would split into pieces.
            if let Some(decoder) = cfg.get("added_tokens_decoder").and_then(|d| d.as_object()) {
                let known = inner.get_added_tokens_decoder();
                let (mut specials, mut plain) = (Vec::new(), Vec::new());
                for (id, spec) in decoder {
                    let Some(content) = spec.get("content").and_then(|c| c.as_str()) else { continue };
                    let id: u32 = id.parse().with_context(|| format!("{}: added_tokens_decoder key `{id}` is not an id", path.display()))?;
                    if known.get(&id).is_some_and(|t| t.content == content) {
                        continue;
                    }
                    let flag = |k: &str| spec.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                    let target = if flag("special") { &mut specials } else { &mut plain };
                    target.push(
                        AddedToken::from(content.to_string(), flag("special"))
                            .normalized(spec.get("normalized").and_then(|v| v.as_bool()).unwrap_or(!flag("special")))
                            .lstrip(flag("lstrip"))
                            .rstrip(flag("rstrip"))
                            .single_word(flag("single_word")),
                    );
                }
                inner.add_special_tokens(specials).map_err(|e| anyhow!("{}: cannot register added tokens: {e}", path.display()))?;
                inner.add_tokens(plain).map_err(|e| anyhow!("{}: cannot register added tokens: {e}", path.display()))?;
            }
            bos_token = token_string(cfg.get("bos_token"));
            eos_token = token_string(cfg.get("eos_token"));
            chat_template = cfg.get("chat_template").and_then(|c| c.as_str()).map(str::to_string);
        }
        Ok(Self { inner, bos_token, eos_token, chat_template })
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (BOS where it adds one).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids and byte offsets `(start, end)` of `text`, without special tokens added (chat templates write their own).
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenization failed: {e}"))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Text of `ids`, special tokens left out (transformers' `decode(..., skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("decoding failed: {e}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(family: &str, config: &str) -> Option<TextTokenizer> {
        let dir = crate::testing::shared(&format!("tokenizers/{family}"))?;
        Some(TextTokenizer::from_files(&dir.join("tokenizer.json"), Some(&dir.join(config))).unwrap())
    }

    // Expected ids are the ones HF tokenizers (Python) gives, recorded in shared/tokenizers/SOURCES.md.
    #[test]
    fn llama2_adds_bos() {
        let Some(t) = shared("llama2", "tokenizer_config.json") else { return };
        assert_eq!(t.encode("Hello world, this is a test.", true).unwrap(), [1, 15043, 3186, 29892, 445, 338, 263, 1243, 29889]);
        assert_eq!(t.bos_token.as_deref(), Some("<s>"));
    }

    #[test]
    fn gemma_turn_markers_are_single_tokens() {
        let Some(t) = shared("gemma", "tokenizer_config.json") else { return };
        let ids = t.encode("<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n", false).unwrap();
        assert_eq!(ids, [2, 106, 1645, 108, 4521, 235341, 107, 108, 106, 2516, 108]);
        assert_eq!(t.encode("Hello world, this is a test.", true).unwrap(), [2, 4521, 2134, 235269, 736, 603, 476, 2121, 235265]);
        assert!(t.chat_template.is_some());
    }

    #[test]
    fn qwen_adds_nothing_and_keeps_chatml_specials() {
        let Some(t) = shared("qwen1.5", "tokenizer_config.json") else { return };
        assert_eq!(t.encode("Hello world, this is a test.", true).unwrap(), [9707, 1879, 11, 419, 374, 264, 1273, 13]);
        assert_eq!(t.encode("<|im_start|>user<|im_end|>", true).unwrap()[0], 151644);
        assert_eq!(t.eos_token.as_deref(), Some("<|im_end|>"));
    }
}
