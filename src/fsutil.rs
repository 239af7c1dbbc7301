//! Writing files so that readers never see a half-written one: everything goes to a hidden temporary name beside
//! its target and is renamed over it when complete; a failed write removes its temporary file and names the target.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path)?;
    finish(&tmp, path, std::fs::write(&tmp, bytes))
}

/// Writes a safetensors file atomically, with the permissions any other file gets (the safetensors crate writes
/// through a private 0600 temporary file).
pub fn write_safetensors<'a, V: safetensors::View + 'a>(path: &Path, tensors: impl IntoIterator<Item = (&'a str, V)>, metadata: HashMap<String, String>) -> Result<()> {
    let tmp = temp_path(path)?;
    let written = safetensors::serialize_to_file(tensors, Some(metadata), &tmp).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(io) => io,
        other => std::io::Error::other(other.to_string()),
    });
    let written = written.and_then(|()| reset_permissions(&tmp));
    finish(&tmp, path, written)
}

/// Renames a written temporary file into place, or removes it when writing failed: no partial file stays behind.
fn finish(tmp: &Path, path: &Path, written: std::io::Result<()>) -> Result<()> {
    let done = written.with_context(|| format!("cannot write {}", path.display())).and_then(|()| {
        std::fs::rename(tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    done
}

/// The hidden temporary name `path` is written under before its rename. The process id keeps concurrent writers
/// (shards of one sweep writing its report) off each other's file.
pub fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?.to_string_lossy();
    Ok(path.with_file_name(format!(".{name}.{}.tmp", std::process::id())))
}

/// Removes temporary files that an interrupted writer left in `dir` (ours, `.<name>.<pid>.tmp`, and the
/// safetensors crate's `.tmpXXXXXX`). Only for folders no other process writes to (a locked run folder).
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with('.') && name.ends_with(".tmp");
        let safetensors_crate = name.starts_with(".tmp") && name.len() == 10;
        if (ours || safetensors_crate) && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).with_context(|| format!("cannot remove the stale temporary file {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Gives `path` 0666 less the process's umask: what `std::fs::write` would have given it.
fn reset_permissions(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // /proc/self/status states the umask without changing it (calling umask(2) to read it would race with
        // other threads creating files).
        let umask = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string())))
            .and_then(|v| u32::from_str_radix(&v, 8).ok())
            .unwrap_or(0o022);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666 & !umask))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn safetensors_get_the_default_permissions_and_failed_writes_leave_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.json");
        write_atomic(&plain, b"{}").unwrap();
        let st = dir.path().join("a.safetensors");
        let t = candle_core::Tensor::zeros((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        write_safetensors(&st, [("t", &t)], HashMap::from([("format".to_string(), "pt".to_string())])).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&st), mode(&plain), "safetensors files get what other files get");
        // A target that cannot be renamed into (a folder in its place): an error naming it, no temporary left.
        let blocked = dir.path().join("blocked.safetensors");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let e = format!("{:#}", write_safetensors(&blocked, [("t", &t)], HashMap::new()).unwrap_err());
        assert!(e.contains("blocked.safetensors"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().ends_with(".tmp")).collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
