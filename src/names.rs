//! Names that become file or folder names (recipe, models, conditions, sources, sets, evaluations, runs): each must
//! be one safe path component, so that nothing a recipe says can write outside the output folder, and names that
//! differ only by case must not collide on case-insensitive file systems (macOS, Windows).

use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// The longest name most file systems take (bytes), less room for suffixes such as `-lr1e-4-seed3.svg`.
const MAX_LEN: usize = 200;

/// Checks that `name` can be used as one path component. `what` says where the name came from, e.g.
/// "[[conditions]] name".
pub fn check_component(name: &str, what: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name == "." || name == ".." || name.split(['/', '\\']).any(|p| p == "..") {
        Some("is a parent or current folder reference".to_string())
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator".to_string())
    } else if name.starts_with('.') {
        Some("starts with a dot (a hidden file name)".to_string())
    } else if let Some(c) = name.chars().find(|c| c.is_control()) {
        Some(format!("contains the control character {:?}", c))
    } else if name.len() > MAX_LEN {
        Some(format!("is {} bytes long (at most {MAX_LEN})", name.len()))
    } else {
        None
    };
    match problem {
        Some(p) => bail!("{what} `{}` {p}: it names a folder or file, so it must be a plain name like `es-native`", name.escape_debug()),
        None => Ok(()),
    }
}

/// Checks a set of names that share one folder: each a safe component, none equal to another ignoring case.
pub fn check_distinct<'a>(names: impl IntoIterator<Item = &'a str>, what: &str) -> Result<()> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for name in names {
        check_component(name, what)?;
        if let Some(other) = seen.insert(name.to_lowercase(), name) {
            if other == name {
                bail!("{what} `{name}` is used twice");
            }
            bail!("{what}s `{other}` and `{name}` differ only by case: they would share one folder on case-insensitive file systems");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_like_names_are_refused() {
        for bad in ["", ".", "..", "../../escaped", "a/b", "a\\b", ".hidden", "tab\there", "new\nline", &"x".repeat(201)] {
            let e = check_component(bad, "[[conditions]] name").unwrap_err().to_string();
            assert!(e.starts_with("[[conditions]] name `"), "{e}");
        }
        for ok in ["es-native", "zh_translated.v2", "ru-round-trip", "español", "中文"] {
            check_component(ok, "name").unwrap();
        }
    }

    #[test]
    fn duplicates_and_case_collisions_are_refused() {
        let e = check_distinct(["es", "ES"], "run name").unwrap_err().to_string();
        assert!(e.contains("`es` and `ES` differ only by case"), "{e}");
        let e = check_distinct(["es", "es"], "run name").unwrap_err().to_string();
        assert!(e.contains("`es` is used twice"), "{e}");
        check_distinct(["es", "ru"], "run name").unwrap();
    }
}
