//! cuDNN's fused attention (kernels/cudnn_sdpa.cpp, through the cuDNN frontend's SDPA graphs) on Candle's
//! stream, for the cases [`crate::ops::attention_backend`] allows; everything else, and every machine where
//! cuDNN does not load or is too old, keeps our kernels. The choice is made once per process and logged in
//! one line; a case cuDNN refuses is logged once per reason.
//!
//! Semantics match [`crate::ops::attention`]'s reference exactly, padded rows included: keys past a row's
//! valid length are hidden (cuDNN's padding mask with `seq_len_kv`), while every query position is computed
//! (`seq_len_q` = T), so a padding query sees the row's valid keys up to itself, as in the dense mask.

#[cfg(trainer_cudnn)]
use super::empty;
use super::{device, ptr};
use crate::ops::attention::AttnMask;
use crate::ops::attention_backend::{self as policy, Case, CudnnVersion, Request};
use candle_core::{bail, CudaDevice, DType, Result, Tensor};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// The decision made at the first attention call on CUDA: what was asked, and cuDNN's version or why not.
struct Library {
    request: Request,
    verdict: std::result::Result<CudnnVersion, String>,
}

static LIBRARY: OnceLock<std::result::Result<Library, String>> = OnceLock::new();
/// Fallback reasons already logged.
static LOGGED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

#[cfg(trainer_cudnn)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    /// kernels/cudnn_sdpa.cpp `TrainerSdpaShape`.
    #[repr(C)]
    pub struct Shape {
        pub b: i64,
        pub t: i64,
        pub hq: i64,
        pub hkv: i64,
        pub d: i64,
        pub q_stride: [i64; 4],
        pub k_stride: [i64; 4],
        pub v_stride: [i64; 4],
        pub o_stride: [i64; 4],
        pub causal: i32,
        pub padded: i32,
        pub scale: f32,
    }

    // Device addresses travel as u64 (CUdeviceptr) where the C side takes pointers: the same 64-bit integer
    // register class in the C ABI of x86_64 and aarch64.
    extern "C" {
        pub fn trainer_cudnn_last_error() -> *const c_char;
        pub fn trainer_cudnn_init(lib: *const c_char, version: *mut usize, cudart_version: *mut usize) -> c_int;
        pub fn trainer_cudnn_sdpa_workspace(s: *const Shape, backward: c_int, bytes: *mut i64) -> c_int;
        pub fn trainer_cudnn_sdpa_fwd(
            s: *const Shape,
            stream: *mut c_void,
            q: u64,
            k: u64,
            v: u64,
            seq_q: u64,
            seq_kv: u64,
            o: u64,
            stats: u64,
            workspace: u64,
        ) -> c_int;
        pub fn trainer_cudnn_sdpa_bwd(
            s: *const Shape,
            stream: *mut c_void,
            q: u64,
            k: u64,
            v: u64,
            o: u64,
            dout: u64,
            stats: u64,
            seq_q: u64,
            seq_kv: u64,
            dq: u64,
            dk: u64,
            dv: u64,
            workspace: u64,
        ) -> c_int;
    }

    pub fn last_error() -> String {
        // SAFETY: the shim returns a NUL-terminated thread-local string that lives until its next call here.
        unsafe { std::ffi::CStr::from_ptr(trainer_cudnn_last_error()) }.to_string_lossy().into_owned()
    }
}

/// Whether build.rs compiled the shim, and if not, its reason.
fn shim() -> std::result::Result<(), &'static str> {
    if cfg!(trainer_cudnn) {
        Ok(())
    } else {
        Err(env!("TRAINER_CUDNN_SHIM"))
    }
}

/// Loads libcudnn (`TRAINER_CUDNN_LIB` names a file, else the loader's search finds `libcudnn.so.9`) and
/// creates the handle on `dev`'s context.
#[cfg(trainer_cudnn)]
fn load(dev: &CudaDevice) -> policy::Loaded {
    dev.cuda_stream().context().bind_to_thread().map_err(|e| format!("binding the CUDA context: {e:?}"))?;
    let lib = std::env::var("TRAINER_CUDNN_LIB").ok().map(std::ffi::CString::new).transpose().map_err(|_| "TRAINER_CUDNN_LIB holds a NUL byte".to_string())?;
    let (mut version, mut cudart) = (0usize, 0usize);
    // SAFETY: the pointers are valid for the call; the shim copies nothing it keeps.
    let rc = unsafe { ffi::trainer_cudnn_init(lib.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()), &mut version, &mut cudart) };
    if rc != 0 {
        return Err(ffi::last_error());
    }
    Ok((version, cudart))
}

#[cfg(not(trainer_cudnn))]
fn load(_: &CudaDevice) -> policy::Loaded {
    unreachable!("library_verdict loads only when the shim is compiled in")
}

fn library(dev: &CudaDevice) -> Result<&'static Library> {
    let lib = LIBRARY.get_or_init(|| {
        let request = Request::from_env()?;
        let verdict = policy::library_verdict(request, shim(), || load(dev));
        match (&verdict, request) {
            (Ok(v), _) => eprintln!("attention: cuDNN {v} fused attention ({}=kernels for our kernels)", policy::ENV),
            (Err(why), Request::Kernels) => eprintln!("attention: our CUDA kernels ({why})"),
            (Err(why), _) => eprintln!("attention: our CUDA kernels; cuDNN not used: {why}"),
        }
        Ok(Library { request, verdict })
    });
    match lib {
        Ok(l) => Ok(l),
        Err(e) => bail!("{e}"),
    }
}

/// Logs a fallback reason the first time it occurs. A case cuDNN refused although it was given it (`refused`:
/// its plan did not build) is an error under `TRAINER_ATTENTION=cudnn`, so that a benchmark or test of the cuDNN
/// path cannot measure our kernels unnoticed; cases never given to cuDNN (f32, packed rows) are not.
fn fall_back(lib: &Library, why: String, refused: bool) -> Result<()> {
    if refused && lib.request == Request::Cudnn {
        bail!("{}=cudnn, but cuDNN cannot run this attention: {why}", policy::ENV);
    }
    let mut logged = LOGGED.get_or_init(Default::default).lock().expect("no panic while logging");
    if logged.insert(why.clone()) {
        eprintln!("attention: our CUDA kernels for this batch: {why}");
    }
    Ok(())
}

/// cuDNN's plan inputs for contiguous `[B, H, T, D]` tensors.
#[cfg(trainer_cudnn)]
fn shape(q: &Tensor, k: &Tensor, scale: f64, padded: bool) -> Result<ffi::Shape> {
    let (b, hq, t, d) = q.dims4()?;
    let hkv = k.dim(1)?;
    let strides = |h: usize| [(h * t * d) as i64, (t * d) as i64, d as i64, 1];
    Ok(ffi::Shape {
        b: b as i64,
        t: t as i64,
        hq: hq as i64,
        hkv: hkv as i64,
        d: d as i64,
        q_stride: strides(hq),
        k_stride: strides(hkv),
        v_stride: strides(hkv),
        o_stride: strides(hq),
        causal: 1,
        padded: padded as i32,
        scale: scale as f32,
    })
}

/// What one cuDNN call needs beyond the tensors: the plan's geometry and the workspace of both directions
/// (the forward builds the backward plan too, so that a shape cuDNN supports in one direction only stays with
/// our kernels in both).
#[cfg(trainer_cudnn)]
struct Prepared {
    shape: ffi::Shape,
    fwd_bytes: usize,
    bwd_bytes: usize,
}

/// `Some` when cuDNN serves this call; `None` (reason logged) when our kernels do.
fn prepare(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, scale: f64) -> Result<Option<Prepared>> {
    let lib = library(device(q)?)?;
    if let Err(why) = &lib.verdict {
        if lib.request == Request::Cudnn {
            bail!("{}=cudnn, but cuDNN cannot be used: {why}", policy::ENV);
        }
        return Ok(None);
    }
    let (_, hq, _, d) = q.dims4()?;
    let aligned = [q, k, v].iter().try_fold(true, |ok, t| Ok::<_, candle_core::Error>(ok && ptr(t)? % 16 == 0))?;
    let case = Case { bf16: q.dtype() == DType::BF16, head_dim: d, q_heads: hq, kv_heads: k.dim(1)?, aligned };
    let padded = match policy::case_verdict(&case).and_then(|()| mask.key_lengths().map_err(str::to_string)) {
        Ok(lens) => lens.is_some(),
        Err(why) => return fall_back(lib, why, false).map(|()| None),
    };
    plans(q, k, scale, padded).or_else(|why| fall_back(lib, why, true).map(|()| None))
}

#[cfg(trainer_cudnn)]
fn plans(q: &Tensor, k: &Tensor, scale: f64, padded: bool) -> std::result::Result<Option<Prepared>, String> {
    let shape = shape(q, k, scale, padded).map_err(|e| e.to_string())?;
    let bytes = |backward: i32| {
        let mut n = 0i64;
        // SAFETY: `shape` and `n` outlive the call.
        match unsafe { ffi::trainer_cudnn_sdpa_workspace(&shape, backward, &mut n) } {
            0 => Ok(n.max(0) as usize),
            _ => Err(ffi::last_error()),
        }
    };
    let (fwd_bytes, bwd_bytes) = (bytes(0)?, bytes(1)?);
    Ok(Some(Prepared { shape, fwd_bytes, bwd_bytes }))
}

#[cfg(not(trainer_cudnn))]
enum Prepared {}

#[cfg(not(trainer_cudnn))]
fn plans(_: &Tensor, _: &Tensor, _: f64, _: bool) -> std::result::Result<Option<Prepared>, String> {
    unreachable!("library_verdict fails when the shim is not compiled in")
}

#[cfg(trainer_cudnn)]
fn workspace(bytes: usize, dev: &CudaDevice) -> Result<Option<Tensor>> {
    (bytes > 0).then(|| empty(bytes, DType::U8, dev)).transpose()
}

#[cfg(trainer_cudnn)]
fn stream(dev: &CudaDevice) -> *mut std::ffi::c_void {
    dev.cuda_stream().cu_stream() as *mut std::ffi::c_void
}

/// Causal attention through cuDNN: `Some((o [B, Hq, T, D], lse [B, Hq, T, 1] f32))`, or `None` when our
/// kernels must take this call (see [`prepare`]).
pub fn forward(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, scale: f64) -> Result<Option<(Tensor, Tensor)>> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let Some(p) = prepare(&q, &k, &v, mask, scale)? else { return Ok(None) };
    run_forward(&q, &k, &v, mask, p).map(Some)
}

#[cfg(trainer_cudnn)]
fn run_forward(q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, p: Prepared) -> Result<(Tensor, Tensor)> {
    let dev = device(q)?;
    let (b, hq, t, d) = q.dims4()?;
    let o = empty((b, hq, t, d), q.dtype(), dev)?;
    let lse = empty((b, hq, t, 1), DType::F32, dev)?;
    let (seq_q, seq_kv) = lengths(mask, p.shape.padded != 0)?;
    let ws = workspace(p.fwd_bytes, dev)?;
    let opt = |t: Option<&Tensor>| t.map_or(Ok(0), ptr);
    // SAFETY: every pointer is a live device allocation of the size the plan was built for, on this stream.
    let rc = unsafe {
        ffi::trainer_cudnn_sdpa_fwd(&p.shape, stream(dev), ptr(q)?, ptr(k)?, ptr(v)?, opt(seq_q)?, opt(seq_kv)?, ptr(&o)?, ptr(&lse)?, opt(ws.as_ref())?)
    };
    if rc != 0 {
        bail!("{}", ffi::last_error());
    }
    Ok((o, lse))
}

#[cfg(not(trainer_cudnn))]
fn run_forward(_: &Tensor, _: &Tensor, _: &Tensor, _: &AttnMask, p: Prepared) -> Result<(Tensor, Tensor)> {
    match p {}
}

/// The mask's `(seq_len_q, seq_len_kv)` device tensors when the batch is padded.
#[cfg(trainer_cudnn)]
fn lengths(mask: &AttnMask, padded: bool) -> Result<(Option<&Tensor>, Option<&Tensor>)> {
    if !padded {
        return Ok((None, None));
    }
    let (q, kv) = mask.length_tensors()?;
    Ok((Some(q), Some(kv)))
}

/// The gradients `(dq, dk, dv)` through cuDNN, or `None` when our kernels take this call (the same decision as
/// the forward's for the same inputs).
#[allow(clippy::too_many_arguments)]
pub fn backward(dout: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, mask: &AttnMask, scale: f64) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let Some(p) = prepare(&q, &k, &v, mask, scale)? else { return Ok(None) };
    run_backward(&dout.contiguous()?, &q, &k, &v, &o.contiguous()?, &lse.contiguous()?, mask, p).map(Some)
}

#[cfg(trainer_cudnn)]
#[allow(clippy::too_many_arguments)]
fn run_backward(dout: &Tensor, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, mask: &AttnMask, p: Prepared) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = device(q)?;
    let padded = p.shape.padded != 0;
    let dq = empty(q.shape(), q.dtype(), dev)?;
    // Keys past a row's length are masked, and cuDNN need not write their gradient rows; zeros are the
    // reference's value there, and anything else would reach the LoRA gradients of k and v.
    let (dk, dv) = if padded {
        (Tensor::zeros(k.shape(), k.dtype(), q.device())?, Tensor::zeros(v.shape(), v.dtype(), q.device())?)
    } else {
        (empty(k.shape(), k.dtype(), dev)?, empty(v.shape(), v.dtype(), dev)?)
    };
    let (seq_q, seq_kv) = lengths(mask, padded)?;
    let ws = workspace(p.bwd_bytes, dev)?;
    let opt = |t: Option<&Tensor>| t.map_or(Ok(0), ptr);
    // SAFETY: as in run_forward.
    let rc = unsafe {
        ffi::trainer_cudnn_sdpa_bwd(
            &p.shape,
            stream(dev),
            ptr(q)?,
            ptr(k)?,
            ptr(v)?,
            ptr(o)?,
            ptr(dout)?,
            ptr(lse)?,
            opt(seq_q)?,
            opt(seq_kv)?,
            ptr(&dq)?,
            ptr(&dk)?,
            ptr(&dv)?,
            opt(ws.as_ref())?,
        )
    };
    if rc != 0 {
        bail!("{}", ffi::last_error());
    }
    Ok((dq, dk, dv))
}

#[cfg(not(trainer_cudnn))]
#[allow(clippy::too_many_arguments)]
fn run_backward(_: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor, _: &AttnMask, p: Prepared) -> Result<(Tensor, Tensor, Tensor)> {
    match p {}
}

/// The implementation attention uses on CUDA in this process, in words (benchmarks record it).
pub fn describe(dev: &candle_core::Device) -> Result<String> {
    let lib = library(dev.as_cuda_device()?)?;
    Ok(match &lib.verdict {
        Ok(v) => format!("cudnn {v}"),
        Err(why) => format!("kernels ({why})"),
    })
}
