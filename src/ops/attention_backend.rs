//! Which implementation runs attention on CUDA: cuDNN's fused SDPA (src/cuda/cudnn_sdpa.rs) or our own kernels.
//!
//! Everything here is plain Rust so that the CPU tests cover the decision: the version policy, the cases cuDNN
//! is given, and the reasons for falling back. The CUDA side only asks these functions and logs the answer.

use std::fmt;

/// The environment variable that picks the attention implementation on CUDA (see [`Request`]).
pub const ENV: &str = "TRAINER_ATTENTION";

/// cuDNN 9.15.1 fixed fused attention for sequence lengths that are not a multiple of 128 (the lengths a
/// right-padded batch has); earlier releases are not used.
pub const MIN_CUDNN: CudnnVersion = CudnnVersion { major: 9, minor: 15, patch: 1 };

/// The CUDA major version the trainer's CUDA build uses (shared/cuda/toolchain.sh): a cuDNN built for another
/// CUDA major would bring a second CUDA runtime into the process.
pub const CUDA_MAJOR: usize = 13;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CudnnVersion {
    pub major: usize,
    pub minor: usize,
    pub patch: usize,
}

impl CudnnVersion {
    /// Decodes `cudnnGetVersion()`: `major·10000 + minor·100 + patch` since cuDNN 9, `major·1000 + minor·100 +
    /// patch` before.
    pub fn from_raw(v: usize) -> Self {
        if v >= 90_000 {
            Self { major: v / 10_000, minor: v / 100 % 100, patch: v % 100 }
        } else {
            Self { major: v / 1000, minor: v / 100 % 10, patch: v % 100 }
        }
    }
}

impl fmt::Display for CudnnVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What `TRAINER_ATTENTION` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// cuDNN where it loads, is recent enough and supports the case; our kernels otherwise.
    Auto,
    /// Our kernels always: the default until a GPU session has checked the cuDNN path against the CPU reference
    /// (`tests/cuda_kernels.rs::cudnn_attention_matches_reference`), so no training run takes an unverified path
    /// unasked; also the comparison in benchmarks.
    Kernels,
    /// cuDNN, or an error where it does not load or refuses a case it is given (a benchmark or test of the cuDNN
    /// path must not measure our kernels unnoticed); cases it is never given (f32, packed rows) still fall back.
    Cudnn,
}

impl Request {
    /// Parses the variable's value (unset or empty: [`Request::Kernels`]).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            Some("auto") => Ok(Self::Auto),
            None | Some("") | Some("kernels") => Ok(Self::Kernels),
            Some("cudnn") => Ok(Self::Cudnn),
            Some(other) => Err(format!("{ENV}={other:?}: expected auto, kernels or cudnn")),
        }
    }

    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var(ENV).ok().as_deref())
    }
}

/// What trying to load cuDNN gave: the versions it reports, or why it could not be loaded.
pub type Loaded = Result<(usize, usize), String>;

/// Whether the loaded cuDNN may serve attention: its version if so, else the reason (for the log line).
/// `shim`: whether the C++ shim was compiled in, and if not, why (the build's own words).
/// `load`: only called when it would be used, so `kernels` never touches the library.
pub fn library_verdict(request: Request, shim: Result<(), &str>, load: impl FnOnce() -> Loaded) -> Result<CudnnVersion, String> {
    if request == Request::Kernels {
        return Err(format!("{ENV}=kernels (the default until a GPU has checked cuDNN; {ENV}=auto tries it)"));
    }
    shim.map_err(|why| format!("the cuDNN shim was not compiled in ({why}; see scripts/cudnn-toolchain.sh)"))?;
    let (raw, cudart) = load()?;
    let version = CudnnVersion::from_raw(raw);
    if version < MIN_CUDNN {
        return Err(format!("cuDNN {version} is older than {MIN_CUDNN}, the first release with correct fused attention at every sequence length"));
    }
    let cuda_major = cudart / 1000;
    if cuda_major != CUDA_MAJOR {
        return Err(format!("cuDNN {version} is built for CUDA {cuda_major} (runtime {cudart}); the trainer uses CUDA {CUDA_MAJOR}"));
    }
    Ok(version)
}

/// One attention call, as far as the choice depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub bf16: bool,
    pub head_dim: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    /// Every data pointer 16-byte aligned (cuDNN's requirement for its vector loads).
    pub aligned: bool,
}

/// cuDNN's fused attention handles head dims up to 256 (256 only on Hopper and newer; the plan build reports
/// an older GPU, and the caller falls back then).
pub const MAX_HEAD_DIM: usize = 256;

/// Whether cuDNN is given this case (the plan build may still refuse it; see the caller).
pub fn case_verdict(c: &Case) -> Result<(), String> {
    if !c.bf16 {
        return Err("cuDNN's fused attention is bf16/fp16 only (this run is f32)".into());
    }
    if c.head_dim % 8 != 0 || c.head_dim > MAX_HEAD_DIM {
        return Err(format!("head_dim {} (cuDNN: a multiple of 8, at most {MAX_HEAD_DIM})", c.head_dim));
    }
    if c.kv_heads == 0 || c.q_heads % c.kv_heads != 0 {
        return Err(format!("{} query heads over {} key/value heads", c.q_heads, c.kv_heads));
    }
    if !c.aligned {
        return Err("a q/k/v pointer is not 16-byte aligned".into());
    }
    Ok(())
}

/// cuDNN's view of a batch's key mask: `None` when no row has padding, else each row's valid length (keys
/// `0..len` visible, the rest padding). Packed rows and masks that are not a prefix of valid keys are not
/// expressed this way (our kernels take them); neither is an empty row, whose fully masked softmax cuDNN and
/// the reference define differently.
pub fn key_lengths(key_valid: &[Vec<bool>], packed: bool) -> Result<Option<Vec<u32>>, String> {
    if packed {
        return Err("packed sequences (cuDNN's ragged layout is not used yet)".into());
    }
    let t = key_valid.first().map_or(0, Vec::len);
    let mut lens = Vec::with_capacity(key_valid.len());
    for (b, row) in key_valid.iter().enumerate() {
        let len = row.iter().take_while(|&&v| v).count();
        if row[len..].iter().any(|&v| v) {
            return Err(format!("row {b}'s padding is not all at its end"));
        }
        if len == 0 {
            return Err(format!("row {b} has no valid token"));
        }
        lens.push(len as u32);
    }
    Ok(if lens.iter().all(|&l| l as usize == t) { None } else { Some(lens) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(raw: usize, cudart: usize) -> impl FnOnce() -> Loaded {
        move || Ok((raw, cudart))
    }

    #[test]
    fn versions_decode_both_numbering_schemes() {
        assert_eq!(CudnnVersion::from_raw(91501), CudnnVersion { major: 9, minor: 15, patch: 1 });
        assert_eq!(CudnnVersion::from_raw(92801).to_string(), "9.28.1");
        assert_eq!(CudnnVersion::from_raw(90100).to_string(), "9.1.0");
        assert_eq!(CudnnVersion::from_raw(8907).to_string(), "8.9.7");
    }

    #[test]
    fn the_minimum_is_9_15_1() {
        assert_eq!(library_verdict(Request::Auto, Ok(()), loaded(91501, 13000)), Ok(MIN_CUDNN));
        assert!(library_verdict(Request::Auto, Ok(()), loaded(92801, 13050)).is_ok());
        let old = library_verdict(Request::Auto, Ok(()), loaded(91500, 13000)).unwrap_err();
        assert!(old.contains("9.15.0 is older than 9.15.1"), "{old}");
        assert!(library_verdict(Request::Auto, Ok(()), loaded(91409, 13000)).is_err());
        assert!(library_verdict(Request::Auto, Ok(()), loaded(8907, 13000)).is_err());
    }

    #[test]
    fn a_cudnn_for_another_cuda_major_is_refused() {
        let e = library_verdict(Request::Auto, Ok(()), loaded(91600, 12090)).unwrap_err();
        assert!(e.contains("CUDA 12"), "{e}");
    }

    #[test]
    fn kernels_never_loads_the_library() {
        let e = library_verdict(Request::Kernels, Ok(()), || panic!("loaded although kernels were asked for")).unwrap_err();
        assert!(e.starts_with("TRAINER_ATTENTION=kernels"), "{e}");
    }

    #[test]
    fn a_missing_shim_or_library_is_the_reason() {
        let e = library_verdict(Request::Auto, Err("CUDNN_FRONTEND_INCLUDE is not set"), || panic!("no shim to load with")).unwrap_err();
        assert!(e.contains("not compiled in (CUDNN_FRONTEND_INCLUDE is not set"), "{e}");
        let e = library_verdict(Request::Auto, Ok(()), || Err("could not load libcudnn.so.9: not found".into())).unwrap_err();
        assert_eq!(e, "could not load libcudnn.so.9: not found");
    }

    #[test]
    fn the_request_parses_and_names_a_wrong_value() {
        assert_eq!(Request::parse(None), Ok(Request::Kernels), "cuDNN is opt-in until a GPU has checked it");
        assert_eq!(Request::parse(Some("")), Ok(Request::Kernels));
        assert_eq!(Request::parse(Some("auto")), Ok(Request::Auto));
        assert_eq!(Request::parse(Some("kernels")), Ok(Request::Kernels));
        assert_eq!(Request::parse(Some(" cudnn ")), Ok(Request::Cudnn));
        let e = Request::parse(Some("flash")).unwrap_err();
        assert!(e.contains("TRAINER_ATTENTION=\"flash\"") && e.contains("auto, kernels or cudnn"), "{e}");
    }

    fn case(bf16: bool, head_dim: usize, q_heads: usize, kv_heads: usize) -> Case {
        Case { bf16, head_dim, q_heads, kv_heads, aligned: true }
    }

    #[test]
    fn cases_cudnn_is_given() {
        // Llama-2-7B, Gemma-2B (MQA, head_dim 256), Qwen GQA.
        assert!(case_verdict(&case(true, 128, 32, 32)).is_ok());
        assert!(case_verdict(&case(true, 256, 8, 1)).is_ok());
        assert!(case_verdict(&case(true, 64, 14, 2)).is_ok());
        assert!(case_verdict(&case(false, 128, 32, 32)).unwrap_err().contains("f32"));
        assert!(case_verdict(&case(true, 80, 32, 32)).is_ok());
        assert!(case_verdict(&case(true, 20, 4, 4)).unwrap_err().contains("head_dim 20"));
        assert!(case_verdict(&case(true, 512, 4, 4)).unwrap_err().contains("head_dim 512"));
        assert!(case_verdict(&case(true, 64, 6, 4)).unwrap_err().contains("6 query heads over 4"));
        assert!(case_verdict(&Case { aligned: false, ..case(true, 64, 4, 4) }).unwrap_err().contains("aligned"));
    }

    fn row(len: usize, t: usize) -> Vec<bool> {
        (0..t).map(|i| i < len).collect()
    }

    #[test]
    fn right_padding_becomes_lengths() {
        assert_eq!(key_lengths(&[row(5, 5), row(5, 5)], false), Ok(None));
        assert_eq!(key_lengths(&[row(5, 5), row(3, 5)], false), Ok(Some(vec![5, 3])));
        assert_eq!(key_lengths(&[row(1, 4)], false), Ok(Some(vec![1])));
    }

    #[test]
    fn other_masks_stay_with_our_kernels() {
        assert!(key_lengths(&[row(5, 5)], true).unwrap_err().contains("packed"));
        let left_padded = vec![false, true, true];
        assert!(key_lengths(&[row(3, 3), left_padded], false).unwrap_err().contains("row 1's padding"));
        assert!(key_lengths(&[row(0, 3)], false).unwrap_err().contains("row 0 has no valid token"));
    }

    #[test]
    fn the_mask_hands_cudnn_its_lengths() {
        use crate::ops::attention::AttnMask;
        let dev = candle_core::Device::Cpu;
        let padded = AttnMask::new(&[row(4, 4), row(2, 4)], None, &dev);
        assert_eq!(padded.key_lengths(), Ok(Some(&[4u32, 2][..])));
        let (q, kv) = padded.length_tensors().unwrap();
        assert_eq!((q.to_vec1::<u32>().unwrap(), kv.to_vec1::<u32>().unwrap()), (vec![4, 4], vec![4, 2]));
        let full = AttnMask::new(&[row(4, 4)], None, &dev);
        assert_eq!(full.key_lengths(), Ok(None));
        assert!(full.length_tensors().is_err());
        let packed = AttnMask::new(&[row(4, 4)], Some(&[vec![0, 0, 1, 1]]), &dev);
        assert!(packed.key_lengths().unwrap_err().contains("packed"));
    }

    /// What cuDNN is asked to compute — top-left causal, every query (seq_len_q = T), keys below the row's
    /// length (seq_len_kv) — is the reference's dense mask entry for entry, padding query rows included.
    #[test]
    fn cudnn_padding_semantics_equal_the_dense_mask() {
        let t = 7;
        let rows = vec![row(7, t), row(3, t), row(1, t)];
        let lens = key_lengths(&rows, false).unwrap().unwrap();
        let dense = crate::ops::attention::mask(&rows, None, None, &candle_core::Device::Cpu).unwrap();
        let dense = dense.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (b, &len) in lens.iter().enumerate() {
            for i in 0..t {
                for j in 0..t {
                    let cudnn_visible = j <= i && j < len as usize;
                    assert_eq!(dense[(b * t + i) * t + j] == 0.0, cudnn_visible, "row {b} query {i} key {j}");
                }
            }
        }
    }
}
