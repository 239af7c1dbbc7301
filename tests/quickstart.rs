//! The quickstart (`recipes/quickstart.toml`, unchanged) shows what the README promises: the training loss falls,
//! the kept adapter is a later epoch than the first, the two learning rates end apart on the shared test set, and
//! on the natively written test set the native run ends lowest.
//! About a minute on 2 cores.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

mod common;
use common::{repo, json};

/// Mean training loss of each epoch, in order.
fn epoch_losses(run: &Path) -> Vec<f64> {
    let mut by_epoch: Vec<(u64, f64, usize)> = Vec::new();
    for line in std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines() {
        let l: Value = serde_json::from_str(line).unwrap();
        if l["kind"] != "train" {
            continue;
        }
        let (epoch, loss) = (l["epoch"].as_u64().unwrap(), l["loss"].as_f64().unwrap());
        match by_epoch.last_mut() {
            Some((e, sum, n)) if *e == epoch => {
                *sum += loss;
                *n += 1;
            }
            _ => by_epoch.push((epoch, loss, 1)),
        }
    }
    by_epoch.into_iter().map(|(_, sum, n)| sum / n as f64).collect()
}

#[test]
fn the_quickstart_shows_learning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qs");
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["run", repo().join("recipes/quickstart.toml").to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--quiet"])
        .output()
        .expect("trainer runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let conditions = ["es-native", "es-translated", "es-round-trip"];
    let run = |c: &str, lr: &str| out.join(format!("{c}-lr{lr}"));
    let summary = |c: &str, lr: &str| json(&run(c, lr).join("run.json"));
    let set_loss = |c: &str, lr: &str, set: &str| summary(c, lr)["sets"][set]["loss"].as_f64().unwrap();
    let test_loss = |c: &str, lr: &str| set_loss(c, lr, "es-test");
    let native_test_loss = |c: &str, lr: &str| set_loss(c, lr, "es-test-native");
    let heldout_loss = |c: &str, lr: &str| summary(c, lr)["heldout"]["loss"].as_f64().unwrap();
    let mut seen = String::new();
    for c in conditions {
        for lr in ["1e-2", "1e-3"] {
            let s = summary(c, lr);
            assert_eq!(s["status"], "ok", "{c}-lr{lr}: {s}");
            seen += &format!(
                "{c}-lr{lr}: mean train loss per epoch {:.3?}, best epoch {}, held-out {:.3}, es-test {:.3}, es-test-native {:.3}\n",
                epoch_losses(&run(c, lr)),
                s["best"]["epoch"],
                heldout_loss(c, lr),
                test_loss(c, lr),
                native_test_loss(c, lr)
            );
        }
    }
    for c in conditions {
        // At lr 1e-2 the training loss falls: the last epoch's mean well below the first's.
        let l = epoch_losses(&run(c, "1e-2"));
        assert_eq!(l.len(), 3, "{seen}");
        assert!(l[2] < l[0] - MIN_TRAIN_DROP, "{c}-lr1e-2: the training loss does not fall by {MIN_TRAIN_DROP}\n{seen}");
        // The held-out loss still improves after the first epoch: the adapter kept is a later one.
        let best = summary(c, "1e-2")["best"]["epoch"].as_u64().unwrap();
        assert!(best > 1, "{c}-lr1e-2 keeps epoch {best}\n{seen}");
        // The learning rate matters: lr 1e-2 ends clearly lower than 1e-3 on the shared test set.
        assert!(test_loss(c, "1e-2") < test_loss(c, "1e-3") - MIN_LR_GAP, "{c}: lr 1e-2 vs 1e-3 on es-test\n{seen}");
    }
    // The origins: on the test set written natively (local topics, native register, as the study's native
    // benchmarks) the native run ends lowest, clearly below the run on data translated from English. (Their own
    // held-out shares are different texts, not a comparison; on es-test, generic topics in the register of
    // machine translation, the three end within a few hundredths, and no order is asserted.)
    let native = native_test_loss("es-native", "1e-2");
    assert!(native < native_test_loss("es-round-trip", "1e-2"), "native vs round-trip on es-test-native\n{seen}");
    assert!(native < native_test_loss("es-translated", "1e-2") - MIN_ORIGIN_GAP, "native vs translated on es-test-native\n{seen}");
    eprintln!("{seen}");
}

/// Margins (in nats of mean loss per target token) the README's quickstart paragraph promises.
const MIN_TRAIN_DROP: f64 = 0.2;
const MIN_LR_GAP: f64 = 0.1;
/// Native vs translated on es-test-native at lr 1e-2, in nats: 0.048 at the recipe's seed (42); 0.033 and 0.053 at
/// seeds 7 and 11.
const MIN_ORIGIN_GAP: f64 = 0.02;
