//! With `--features cuda`, compiles kernels/*.cu to PTX with nvcc; src/cuda embeds the PTX in the binary and
//! loads it through Candle's CUDA device. Without the feature this does nothing, so CPU builds need no CUDA.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 7] = ["rmsnorm", "rope", "activation", "cross_entropy", "dropout", "attention", "attention_rows"];

fn main() {
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
