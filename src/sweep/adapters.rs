//! The adapters of a sweep's output folder, for `trainer eval --runs`.

use crate::lora::Adapter;
use anyhow::Result;

/// The adapters of a sweep's finished runs, and the runs that were skipped with why (failed, unfinished, an
/// unreadable run.json or adapter).
pub struct SweepAdapters {
    pub adapters: Vec<(String, Adapter)>,
    pub skipped: std::collections::BTreeMap<String, String>,
}

/// Every run folder of a sweep's output folder: the adapter of each finished run, and what was skipped.
pub fn sweep_adapters(dir: &std::path::Path, cfg: &crate::config::ModelConfig, device: &candle_core::Device) -> Result<SweepAdapters> {
    use anyhow::Context;
    let mut out = SweepAdapters { adapters: Vec::new(), skipped: Default::default() };
    let mut folders: Vec<std::path::PathBuf> = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    folders.sort();
    for folder in folders {
        let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let summary = folder.join("run.json");
        if !summary.is_file() {
            // Run folders always hold config.json from their start; other folders (plots/) are not runs.
            if folder.join("config.json").is_file() {
                out.skipped.insert(name, "unfinished: no run.json yet".into());
            }
            continue;
        }
        let read = std::fs::read_to_string(&summary).map_err(anyhow::Error::from).and_then(|t| Ok(serde_json::from_str::<super::run::RunSummary>(&t)?));
        let why = match read {
            Err(e) => format!("unreadable {}: {e:#}", summary.display()),
            Ok(r) if r.status != "ok" => format!("{}: {}", r.status, r.error.as_deref().unwrap_or("no error recorded")),
            Ok(_) => match Adapter::load_peft(&folder.join("adapter"), cfg, device) {
                Ok(a) => {
                    out.adapters.push((name, a));
                    continue;
                }
                Err(e) => format!("{e:#}"),
            },
        };
        out.skipped.insert(name, why);
    }
    anyhow::ensure!(!out.adapters.is_empty(), "{} holds no finished runs{}", dir.display(), out.skipped.iter().map(|(r, why)| format!("\n  skipped {r}: {why}")).collect::<String>());
    Ok(out)
}
