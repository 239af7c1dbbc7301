//! With `--features cuda`, compiles kernels/*.cu to PTX with nvcc; src/cuda embeds the PTX in the binary and
//! loads it through Candle's CUDA device. Without the feature this does nothing, so CPU builds need no CUDA.
//!
//! With the feature and the cuDNN headers (scripts/cudnn-toolchain.sh exports CUDNN_FRONTEND_INCLUDE and
//! CUDNN_INCLUDE), it also compiles the cuDNN fused-attention shim kernels/cudnn_sdpa.cpp and sets the
//! `trainer_cudnn` cfg. Without the headers the build still succeeds; the binary then says at run time that the
//! cuDNN path was not compiled in and uses our own attention kernels.

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
    println!("cargo::rustc-check-cfg=cfg(trainer_cudnn)");
    for v in ["CUDNN_FRONTEND_INCLUDE", "CUDNN_INCLUDE", "CUDA_ROOT"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    cudnn_shim();
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

/// The three include folders the shim needs (frontend, cudnn.h, CUDA's runtime headers), or why not.
fn cudnn_includes() -> Result<[PathBuf; 3], String> {
    let dir = |var: &str, file: &str| -> Result<PathBuf, String> {
        let d = PathBuf::from(std::env::var_os(var).ok_or_else(|| format!("{var} is not set"))?);
        if d.join(file).is_file() {
            Ok(d)
        } else {
            Err(format!("{var}={} has no {file}", d.display()))
        }
    };
    let cuda = std::env::var_os("CUDA_ROOT").map_or_else(|| PathBuf::from("/usr/local/cuda/include"), |r| PathBuf::from(r).join("include"));
    if !cuda.join("cuda_runtime_api.h").is_file() {
        return Err(format!("{} has no cuda_runtime_api.h (set CUDA_ROOT)", cuda.display()));
    }
    Ok([dir("CUDNN_FRONTEND_INCLUDE", "cudnn_frontend.h")?, dir("CUDNN_INCLUDE", "cudnn.h")?, cuda])
}

/// Compiles kernels/cudnn_sdpa.cpp into a static library when the headers are there. Through the cc crate
/// (already built for other crates' build scripts): it archives the object, emits the link lines for it and
/// for the C++ standard library, and honours CXX/CXXFLAGS. cuDNN itself is not linked: the frontend's
/// dynamic-loading mode reaches libcudnn through dlopen at run time.
fn cudnn_shim() {
    let why_not = match cudnn_includes() {
        Ok(includes) => {
            cc::Build::new()
                .cpp(true)
                .std("c++17")
                .opt_level(2)
                .define("NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING", None)
                .includes(&includes)
                // The frontend's headers trip -Wall warnings of their own; ours would drown in them.
                .warnings(false)
                .file("kernels/cudnn_sdpa.cpp")
                .compile("trainer_cudnn_sdpa");
            println!("cargo:rustc-link-lib=dl");
            println!("cargo:rustc-cfg=trainer_cudnn");
            None
        }
        Err(e) => Some(e),
    };
    // Read by src/cuda/cudnn_sdpa.rs for its log line when the shim is absent.
    println!("cargo:rustc-env=TRAINER_CUDNN_SHIM={}", why_not.as_deref().unwrap_or("compiled"));
}
