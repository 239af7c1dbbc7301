//! The Hugging Face cache layout, as huggingface_hub writes it and transformers and hf-hub read it:
//! `<cache>/models--org--name/{blobs/<etag>, snapshots/<commit>/<file> → ../../blobs/<etag>, refs/<revision>}`,
//! with download locks under `<cache>/.locks/models--org--name/<etag>.lock`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One model repo's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    cache: PathBuf,
    folder: String,
}

/// A 40-digit lowercase hex string: what the Hub calls a commit. A revision of this form names a snapshot directly
/// (huggingface_hub writes no ref for it).
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A revision (branch, tag, commit, `refs/pr/N`) becomes a path under refs/ and part of a URL: no empty, `.` or
/// `..` components, no backslashes, whitespace or control characters.
pub fn check_revision(revision: &str) -> Result<()> {
    let bad_component = revision.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if revision.is_empty() || bad_component || revision.chars().any(|c| c == '\\' || c.is_whitespace() || c.is_control()) {
        bail!("revision `{revision}` is not a branch, tag or commit name");
    }
    Ok(())
}

impl RepoCache {
    pub fn new(cache: &Path, repo_id: &str) -> Self {
        Self { cache: cache.to_path_buf(), folder: format!("models--{}", repo_id.replace('/', "--")) }
    }

    pub fn root(&self) -> PathBuf {
        self.cache.join(&self.folder)
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root().join("blobs").join(etag)
    }

    /// Where a partial download of `etag` is kept between attempts (huggingface_hub's name, so either tool resumes
    /// the other's).
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root().join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn lock(&self, etag: &str) -> PathBuf {
        self.cache.join(".locks").join(&self.folder).join(format!("{etag}.lock"))
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root().join("snapshots").join(commit)
    }

    fn ref_path(&self, revision: &str) -> PathBuf {
        self.root().join("refs").join(revision)
    }

    /// The commit `revision` names in the cache: refs/<revision>, or the revision itself when it is a commit
    /// whose snapshot is there. `None` when the cache does not know it.
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if let Ok(text) = std::fs::read_to_string(self.ref_path(revision)) {
            // The Hub writes 40-digit hashes; anything that is one plain folder name is taken, as huggingface_hub
            // takes it.
            let commit = text.trim();
            if !commit.is_empty() && commit.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Some(commit.to_string());
            }
        }
        (is_commit_hash(revision) && self.snapshot(revision).is_dir()).then(|| revision.to_string())
    }

    /// Records that `revision` (a branch or tag) points at `commit`. A commit revision needs no ref.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.ref_path(revision);
        let parent = path.parent().context("a ref has a parent folder")?;
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        crate::fsutil::write_atomic(&path, commit.as_bytes())
    }

    /// Puts `file` into the snapshot of `commit` as a relative link to its blob (a copy where links are not
    /// available), replacing the entry atomically so no reader sees a missing or half-made file.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let dir = self.snapshot(commit);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(file);
        let tmp = crate::fsutil::temp_path(&path)?;
        let _ = std::fs::remove_file(&tmp);
        #[cfg(unix)]
        let made = std::os::unix::fs::symlink(Path::new("../../blobs").join(etag), &tmp);
        #[cfg(not(unix))]
        let made = std::fs::copy(self.blob(etag), &tmp).map(|_| ());
        made.with_context(|| format!("cannot create {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_and_refs() {
        for bad in ["", "..", "a/../b", "/main", "main/", "a b", "a\\b", "x\n"] {
            assert!(check_revision(bad).is_err(), "{bad:?}");
        }
        for good in ["main", "v1.0", "refs/pr/3", "0123456789abcdef0123456789abcdef01234567"] {
            check_revision(good).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoCache::new(dir.path(), "org/name");
        assert_eq!(repo.root(), dir.path().join("models--org--name"));
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(repo.commit_for("main"), None);
        assert_eq!(repo.commit_for(commit), None, "a commit is known only once its snapshot is there");
        std::fs::create_dir_all(repo.blob("x").parent().unwrap()).unwrap();
        std::fs::write(repo.blob("abc"), b"{}").unwrap();
        let linked = repo.link(commit, "config.json", "abc").unwrap();
        assert_eq!(std::fs::read(&linked).unwrap(), b"{}");
        assert_eq!(repo.commit_for(commit).as_deref(), Some(commit));
        repo.write_ref("refs/pr/1", commit).unwrap();
        assert_eq!(repo.commit_for("refs/pr/1").as_deref(), Some(commit));
        assert!(!repo.root().join("refs").join(commit).exists(), "no ref for a commit revision");
        repo.write_ref(commit, commit).unwrap();
        assert!(!repo.root().join("refs").join(commit).exists());
    }
}
