//! Offline judging: a checkpoint the trainer loads itself answers the judge prompts, greedily, through its chat
//! template (the system and user messages of FastChat's prompts as two turns).

use crate::data::chat::ChatTemplate;
use crate::data::record::{Conversation, Role, Turn};
use crate::generate::{generate, GenOptions};
use crate::session::Session;
use anyhow::{Context, Result};
use std::sync::Mutex;

pub struct LocalJudge {
    session: Session,
    template: ChatTemplate,
    /// The checkpoint as named on the command line or in the recipe (the cache key's judge model).
    pub name: String,
    max_new_tokens: usize,
    /// One judgment at a time: the model already uses every core for one.
    busy: Mutex<()>,
}

impl LocalJudge {
    /// `template`: the judge's chat template ("model" for its own, or a built-in one).
    pub fn open(model: &str, template: &str, max_new_tokens: usize, dtype: candle_core::DType, device: &candle_core::Device) -> Result<Self> {
        let session = Session::open(model, None, dtype, device).with_context(|| format!("judge model {model}"))?;
        let template = ChatTemplate::from_name(template, &session.text.tokenizer).with_context(|| format!("judge model {model}: template"))?;
        Ok(Self { session, template, name: model.to_string(), max_new_tokens, busy: Mutex::new(()) })
    }

    /// The judge's greedy answer to a system and a user message.
    pub fn complete(&self, system: &str, user: &str) -> Result<String> {
        let _one = self.busy.lock().map_err(|_| anyhow::anyhow!("an earlier judgment panicked"))?;
        let conv = Conversation { turns: vec![Turn { role: Role::System, content: system.to_string() }, Turn { role: Role::User, content: user.to_string() }] };
        let text = self.template.render(&conv, 2, true).with_context(|| format!("judge model {}", self.name))?;
        // The chat template writes BOS itself.
        let ids = self.session.text.tokenizer.encode(&text, false)?;
        let opts = GenOptions { max_new_tokens: self.max_new_tokens, temperature: 0.0, top_p: 1.0, stop: Vec::new(), seed: 0 };
        let out = generate(&self.session.model, None, &self.session.text.tokenizer, &[ids], &[self.session.text.eos_id], self.session.text.pad_id, &opts)?;
        Ok(out.into_iter().next().map(|g| g.text).unwrap_or_default())
    }
}
