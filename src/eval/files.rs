//! The files an `[[evals]]` path (or `--data`, `--dev`) names. A benchmark released as one file per subject —
//! CMMLU's 67 `test/<subject>.csv`, C-Eval's 52 `<subject>/val-….parquet` — is one benchmark: a folder or a glob
//! pattern reads all its files, in name order, as one set of items whose subject each file's name gives. The
//! overall accuracy is then lm-eval's group score (subjects weighted by their size), per subject beside it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The data file types `crate::data::reader::open` reads, by name ending.
const DATA_FILES: [&str; 6] = [".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet", ".csv"];

/// Whether `path` is a glob pattern (`*`, `?` or `[`) rather than one name.
pub fn is_pattern(path: &Path) -> bool {
    path.to_string_lossy().contains(['*', '?', '['])
}

/// `path` itself for a file; for a folder, the data files directly in it; for a glob pattern, the files it matches;
/// sorted by name. A folder or pattern without data files is an error naming it.
pub fn expand(path: &Path) -> Result<Vec<PathBuf>> {
    let data_file = |p: &Path| p.is_file() && p.file_name().map(|n| n.to_string_lossy().to_lowercase()).is_some_and(|n| DATA_FILES.iter().any(|e| n.ends_with(e)));
    let mut files: Vec<PathBuf> = if is_pattern(path) {
        let pattern = path.to_str().with_context(|| format!("{}: a glob pattern must be UTF-8", path.display()))?;
        let matches = glob::glob(pattern).with_context(|| format!("{}: not a glob pattern", path.display()))?;
        let mut files = Vec::new();
        for m in matches {
            let m = m.with_context(|| format!("{}: cannot read a matching path", path.display()))?;
            if data_file(&m) {
                files.push(m);
            }
        }
        if files.is_empty() {
            bail!("{}: no data file ({}) matches", path.display(), DATA_FILES.join(", "));
        }
        files
    } else if path.is_dir() {
        let entries = std::fs::read_dir(path).with_context(|| format!("cannot read folder {}", path.display()))?;
        let files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| data_file(p)).collect();
        if files.is_empty() {
            bail!("folder {} holds no data file ({})", path.display(), DATA_FILES.join(", "));
        }
        files
    } else if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    } else {
        bail!("no file {}", path.display());
    };
    files.sort();
    Ok(files)
}

/// Every item of the files `path` names ([`expand`]), in file order, each file read by `read`.
pub fn read_all<T>(path: &Path, mut read: impl FnMut(&Path) -> Result<Vec<T>>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for file in expand(path)? {
        out.extend(read(&file)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_patterns_name_their_data_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in ["test/b.csv", "test/a.csv", "test/notes.txt", "ceval/x/val-0.parquet", "ceval/x/dev-0.parquet", "ceval/w/val-0.parquet"] {
            std::fs::create_dir_all(d.join(p).parent().unwrap()).unwrap();
            std::fs::write(d.join(p), "").unwrap();
        }
        assert_eq!(expand(&d.join("test")).unwrap(), vec![d.join("test/a.csv"), d.join("test/b.csv")]);
        assert_eq!(expand(&d.join("test/*.csv")).unwrap(), vec![d.join("test/a.csv"), d.join("test/b.csv")]);
        assert_eq!(expand(&d.join("ceval/*/val-*.parquet")).unwrap(), vec![d.join("ceval/w/val-0.parquet"), d.join("ceval/x/val-0.parquet")]);
        assert_eq!(expand(&d.join("test/a.csv")).unwrap(), vec![d.join("test/a.csv")]);
        let e = format!("{:#}", expand(&d.join("test/*.parquet")).unwrap_err());
        assert!(e.contains("test/*.parquet: no data file"), "{e}");
        let e = format!("{:#}", expand(&d.join("ceval")).unwrap_err());
        assert!(e.contains("holds no data file"), "{e}");
        assert!(format!("{:#}", expand(&d.join("nope.csv")).unwrap_err()).contains("no file"));
        let order = read_all(&d.join("test"), |p| Ok(vec![p.file_name().unwrap().to_string_lossy().to_string()])).unwrap();
        assert_eq!(order, ["a.csv", "b.csv"]);
    }
}
