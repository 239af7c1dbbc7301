//! With `--features cuda`, compiles kernels/*.cu to PTX with nvcc; src/cuda embeds the PTX in the binary and
//! loads it through Candle's CUDA device. Without the feature this does nothing, so CPU builds need no CUDA.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 7] = ["rmsnorm", "rope", "activation", "cross_entropy", "dropout", "attention", "attention_rows"];

/// The commit the binary was built from, recorded in every run's config.json ("unknown" outside a git checkout).
fn git_commit() -> String {
    // Rebuild when HEAD moves: .git/HEAD for branch switches, the branch's ref for new commits.
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Some(r) = head.strip_prefix("ref: ") {
            // A fresh clone keeps its refs in packed-refs; a file that does not exist would rerun every build.
            let loose = format!(".git/{}", r.trim());
            for f in [loose.as_str(), ".git/packed-refs"] {
                if std::path::Path::new(f).exists() {
                    println!("cargo:rerun-if-changed={f}");
                }
            }
        }
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo:rustc-env=TRAINER_GIT={}", git_commit());
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // PTX for compute_80 by default runs on Ampere and (JIT-compiled by the driver) on Hopper; the kernels use
    // no Hopper-only instruction. CUDA_COMPUTE_CAP=90 (set by shared/cuda/toolchain.sh) targets Hopper directly.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let nvcc = std::env::var_os("CUDA_ROOT")
        .map(|r| PathBuf::from(r).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    for k in KERNELS {
        let src = format!("kernels/{k}.cu");
        let ptx = out.join(format!("{k}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("--gpu-architecture=compute_{cap}"), &src, "-o"])
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| panic!("could not run nvcc ({}): {e}; source shared/cuda/toolchain.sh or put CUDA's bin on PATH", nvcc.display()));
        assert!(status.success(), "nvcc failed on {src}");
    }
}
