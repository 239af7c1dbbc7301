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
    /// The checkpoint as named on the command line or in the recipe (the summary's judge model).
    pub name: String,
    /// The cache key's judge: see [`checkpoint_identity`].
    pub identity: String,
    max_new_tokens: usize,
    /// One judgment at a time: the model already uses every core for one.
    busy: Mutex<()>,
}

/// A checkpoint's identity for the judge cache: its folder (resolved) and, per file the judge reads (weights,
/// config, tokenizer and its chat template, generation defaults), the file it resolves to (in the Hugging Face cache
/// a blob named by its content hash), its size and modification time. Another checkpoint in the same folder, a
/// merge written over it, a new chat template or a copy elsewhere is another judge; hashing every byte of a 7B
/// model would cost more than a judgment. A change that keeps size and time to the nanosecond goes unseen.
pub fn checkpoint_identity(files: &crate::checkpoint::ModelFiles) -> Result<String> {
    let dir = files.dir.canonicalize().with_context(|| format!("cannot resolve {}", files.dir.display()))?;
    let mut out = dir.display().to_string();
    let read = [Some(&files.config), Some(&files.tokenizer), files.tokenizer_config.as_ref(), files.generation_config.as_ref()];
    for w in files.weights.iter().chain(read.into_iter().flatten()) {
        let real = w.canonicalize().with_context(|| format!("cannot resolve {}", w.display()))?;
        let meta = real.metadata().with_context(|| format!("cannot read {}", real.display()))?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        out.push_str(&format!("\n{} {} {}", real.display(), meta.len(), modified));
    }
    Ok(out)
}

impl LocalJudge {
    /// `template`: the judge's chat template ("model" for its own, or a built-in one).
    pub fn open(model: &str, template: &str, max_new_tokens: usize, dtype: candle_core::DType, device: &candle_core::Device) -> Result<Self> {
        let session = Session::open(model, None, dtype, device).with_context(|| format!("judge model {model}"))?;
        let chat = ChatTemplate::from_name(template, &session.text.tokenizer).with_context(|| format!("judge model {model}: template"))?;
        let identity = format!("local {}\ntemplate {template}\nmax_tokens {max_new_tokens}", checkpoint_identity(&session.text.files).with_context(|| format!("judge model {model}"))?);
        Ok(Self { session, template: chat, name: model.to_string(), identity, max_new_tokens, busy: Mutex::new(()) })
    }

    /// The judge's greedy answer to a system and a user message.
    pub fn complete(&self, system: &str, user: &str) -> Result<String> {
        let _one = self.busy.lock().map_err(|_| anyhow::anyhow!("an earlier judgment panicked"))?;
        let conv = Conversation { turns: vec![Turn { role: Role::System, content: system.to_string() }, Turn { role: Role::User, content: user.to_string() }] };
        let text = self.template.render(&conv, 2, true).with_context(|| format!("judge model {}", self.name))?;
        // The chat template writes BOS itself.
        let ids = self.session.text.tokenizer.encode(&text, false)?;
        // The judgment ends at the judge's end of turn as well as at its end-of-sequence ids.
        let (end_ids, stop) = crate::generate::turn_end(&self.template, &self.session.text.tokenizer);
        let eos: Vec<u32> = self.session.text.eos_ids.iter().chain(&end_ids).copied().collect();
        let opts = GenOptions { max_new_tokens: self.max_new_tokens, temperature: 0.0, top_p: 1.0, stop, seed: 0 };
        let out = generate(&self.session.model, None, &self.session.text.tokenizer, &[ids], &eos, self.session.text.pad_id, &opts)?;
        Ok(out.into_iter().next().map(|g| g.text).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::ModelFiles;
    use std::path::Path;

    fn files(dir: &Path) -> ModelFiles {
        for f in ["config.json", "tokenizer.json"].map(|f| dir.join(f)).iter().filter(|p| !p.exists()) {
            std::fs::write(f, "{}").unwrap();
        }
        crate::checkpoint::locate(dir.to_str().unwrap(), None).unwrap()
    }

    #[test]
    fn another_folder_or_other_weights_is_another_judge() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(a.path().join("model.safetensors"), b"weights one").unwrap();
        std::fs::write(b.path().join("model.safetensors"), b"weights one").unwrap();
        let first = checkpoint_identity(&files(a.path())).unwrap();
        assert_eq!(first, checkpoint_identity(&files(a.path())).unwrap(), "the same checkpoint is the same judge");
        assert_ne!(first, checkpoint_identity(&files(b.path())).unwrap(), "a copy elsewhere is another judge");
        // New weights written in place (a merge over the old folder): another judge.
        std::fs::write(a.path().join("model.safetensors"), b"weights number two").unwrap();
        let second = checkpoint_identity(&files(a.path())).unwrap();
        assert_ne!(first, second);
        // So is another tokenizer (its chat template renders the judge's prompt).
        let mut with_template = files(a.path());
        std::fs::write(a.path().join("tokenizer_config.json"), "{\"chat_template\": \"x\"}").unwrap();
        with_template.tokenizer_config = Some(a.path().join("tokenizer_config.json"));
        assert_ne!(second, checkpoint_identity(&with_template).unwrap());
        // A symlink (the Hugging Face cache's snapshots) is identified by the blob it points to.
        #[cfg(unix)]
        {
            let c = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(a.path().join("model.safetensors"), c.path().join("model.safetensors")).unwrap();
            assert!(checkpoint_identity(&files(c.path())).unwrap().contains(&a.path().canonicalize().unwrap().join("model.safetensors").display().to_string()));
        }
    }
}
