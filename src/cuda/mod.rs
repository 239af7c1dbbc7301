//! Our fused CUDA kernels (kernels/*.cu, compiled to PTX by build.rs and embedded here), launched on Candle's
//! CUDA device. Each function is the CUDA body of one op in [`crate::ops`]; the op's Candle reference stays the
//! CPU path and the test oracle (tests/cuda_kernels.rs).
//!
//! Kernels take raw device pointers of contiguous tensors. Everything runs on Candle's one stream, so a tensor
//! dropped after a launch is freed (stream-ordered) only after the kernel has read it.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, DType, Result, Shape, Storage, Tensor};

pub mod cudnn_sdpa;

mod ptx {
    pub const RMSNORM: &str = include_str!(concat!(env!("OUT_DIR"), "/rmsnorm.ptx"));
    pub const ROPE: &str = include_str!(concat!(env!("OUT_DIR"), "/rope.ptx"));
    pub const ACTIVATION: &str = include_str!(concat!(env!("OUT_DIR"), "/activation.ptx"));
    pub const CROSS_ENTROPY: &str = include_str!(concat!(env!("OUT_DIR"), "/cross_entropy.ptx"));
    pub const DROPOUT: &str = include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx"));
    pub const ATTENTION: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
    pub const ATTENTION_ROWS: &str = include_str!(concat!(env!("OUT_DIR"), "/attention_rows.ptx"));
}

/// Whether the fused kernels serve these tensors: on CUDA, f32 or bf16, and not tracked by Candle's autograd
/// (the kernels are opaque to it; autograd is the tests' oracle of whole models).
pub fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.device().is_cuda() && matches!(t.dtype(), DType::F32 | DType::BF16) && !t.track_op())
}

fn suffix(dt: DType) -> Result<&'static str> {
    match dt {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => bail!("no fused kernel for {other:?}"),
    }
}

fn device(t: &Tensor) -> Result<&CudaDevice> {
    t.device().as_cuda_device()
}

/// Device address of a contiguous tensor's first element.
fn ptr(t: &Tensor) -> Result<u64> {
    let (st, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*st else { bail!("fused kernel: expected a cuda tensor") };
    if !layout.is_contiguous() {
        bail!("fused kernel: expected a contiguous tensor");
    }
    let stream = cs.device().cuda_stream();
    let base = match t.dtype() {
        DType::F32 => cs.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
        DType::BF16 => cs.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0,
        DType::U32 => cs.as_cuda_slice::<u32>()?.device_ptr(&stream).0,
        DType::U8 => cs.as_cuda_slice::<u8>()?.device_ptr(&stream).0,
        other => bail!("fused kernel: unsupported dtype {other:?}"),
    };
    Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// An uninitialised tensor: every kernel below writes all of its outputs.
fn empty(shape: impl Into<Shape>, dtype: DType, dev: &CudaDevice) -> Result<Tensor> {
    let shape = shape.into();
    let st = unsafe { dev.alloc_uninit(&shape, dtype)? };
    Ok(Tensor::from_storage(Storage::Cuda(st), shape, BackpropOp::none(), false))
}

fn grid_for(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 65_535 * 8) as u32
}

/// Launch helper: loads `name` from module `module` and runs it with the given arguments.
macro_rules! launch {
    ($dev:expr, $module:literal, $ptx:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let func = $dev.get_or_load_custom_func(&$name, $module, $ptx)?;
        let mut b = func.builder();
        $( let a = $arg; b.arg(&a); )+
        // The argument values are copied into the launch by the driver when it is enqueued.
        unsafe { b.launch($cfg) }.w()?;
        Ok::<(), candle_core::Error>(())
    }};
}

fn rows_cols(x: &Tensor) -> Result<(usize, usize)> {
    let cols = x.dim(candle_core::D::Minus1)?;
    Ok((x.elem_count() / cols.max(1), cols))
}

fn row_cfg(rows: usize, cols: usize) -> LaunchConfig {
    let threads = (cols.div_ceil(32) * 32).clamp(32, 1024) as u32;
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

fn flat_cfg(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid_for(n), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// RMSNorm of `x` (or of `x + residual`, returned too); `rstd` has `x`'s shape with a last dim of 1.
pub fn rmsnorm_fwd(x: &Tensor, residual: Option<&Tensor>, w: &Tensor, offset: f64, eps: f64) -> Result<(Tensor, Option<Tensor>, Tensor)> {
    let dev = device(x)?;
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let (rows, h) = rows_cols(&x)?;
    let y = empty(x.shape(), x.dtype(), dev)?;
    let mut rstd_shape = x.dims().to_vec();
    *rstd_shape.last_mut().unwrap() = 1;
    let rstd = empty(rstd_shape, DType::F32, dev)?;
    let (res, sum) = match residual {
        Some(r) => (Some(r.contiguous()?), Some(empty(x.shape(), x.dtype(), dev)?)),
        None => (None, None),
    };
    let name = format!("rmsnorm_fwd_{}", suffix(x.dtype())?);
    let opt = |t: &Option<Tensor>| t.as_ref().map_or(Ok(0), ptr);
    launch!(dev, "rmsnorm", ptx::RMSNORM, name, row_cfg(rows, h),
        ptr(&x)?, opt(&res)?, ptr(&w)?, ptr(&y)?, opt(&sum)?, ptr(&rstd)?, h as i32, offset as f32, eps as f32)?;
    Ok((y, sum, rstd))
}

/// `dadd + d rmsnorm(x)/dx · dy`.
pub fn rmsnorm_bwd(dy: &Tensor, x: &Tensor, w: &Tensor, offset: f64, rstd: &Tensor, dadd: Option<&Tensor>) -> Result<Tensor> {
    let dev = device(x)?;
    let (dy, x, w, rstd) = (dy.contiguous()?, x.contiguous()?, w.contiguous()?, rstd.contiguous()?);
    let dadd = dadd.map(|t| t.contiguous()).transpose()?;
    let (rows, h) = rows_cols(&x)?;
    let dx = empty(x.shape(), x.dtype(), dev)?;
    let name = format!("rmsnorm_bwd_{}", suffix(x.dtype())?);
    launch!(dev, "rmsnorm", ptx::RMSNORM, name, row_cfg(rows, h),
        ptr(&dy)?, ptr(&x)?, ptr(&w)?, ptr(&rstd)?, dadd.as_ref().map_or(Ok(0), ptr)?, ptr(&dx)?, h as i32, offset as f32)?;
    Ok(dx)
}

/// RoPE fused with the head transpose: `rows` `[B·T, H·D]` → rotated `[B, H, T, D]`; cos/sin `[B, 1, T, D]`.
pub fn rope_fwd(rows: &Tensor, cos: &Tensor, sin: &Tensor, b: usize, t: usize, h: usize, d: usize) -> Result<Tensor> {
    let dev = device(rows)?;
    let (x, cos, sin) = (rows.contiguous()?, cos.contiguous()?, sin.contiguous()?);
    let y = empty((b, h, t, d), x.dtype(), dev)?;
    let name = format!("rope_fwd_{}", suffix(x.dtype())?);
    launch!(dev, "rope", ptx::ROPE, name, flat_cfg(b * t * h * d / 2),
        ptr(&x)?, ptr(&cos)?, ptr(&sin)?, ptr(&y)?, b as i32, t as i32, h as i32, d as i32)?;
    Ok(y)
}

/// The inverse of [`rope_fwd`] applied to a gradient: `[B, H, T, D]` → `[B·T, H·D]`.
pub fn rope_bwd(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dev = device(dy)?;
    let (b, h, t, d) = dy.dims4()?;
    let (dy, cos, sin) = (dy.contiguous()?, cos.contiguous()?, sin.contiguous()?);
    let dx = empty((b * t, h * d), dy.dtype(), dev)?;
    let name = format!("rope_bwd_{}", suffix(dy.dtype())?);
    launch!(dev, "rope", ptx::ROPE, name, flat_cfg(b * t * h * d / 2),
        ptr(&dy)?, ptr(&cos)?, ptr(&sin)?, ptr(&dx)?, b as i32, t as i32, h as i32, d as i32)?;
    Ok(dx)
}

/// `act(g) ⊙ u`; `act`: 0 SiLU, 1 tanh-GELU, 2 erf-GELU.
pub fn glu_fwd(g: &Tensor, u: &Tensor, act: i32) -> Result<Tensor> {
    let dev = device(g)?;
    let (g, u) = (g.contiguous()?, u.contiguous()?);
    let n = g.elem_count();
    let h = empty(g.shape(), g.dtype(), dev)?;
    let name = format!("glu_fwd_{}", suffix(g.dtype())?);
    let ptrs = [ptr(&g)?, ptr(&u)?, ptr(&h)?];
    let vec = ptrs.iter().all(|p| p % 16 == 0) as i32;
    launch!(dev, "activation", ptx::ACTIVATION, name, flat_cfg(if vec == 1 { n / 8 } else { n }), ptrs[0], ptrs[1], ptrs[2], n, act, vec)?;
    Ok(h)
}

pub fn glu_bwd(dh: &Tensor, g: &Tensor, u: &Tensor, act: i32) -> Result<(Tensor, Tensor)> {
    let dev = device(g)?;
    let (dh, g, u) = (dh.contiguous()?, g.contiguous()?, u.contiguous()?);
    let n = g.elem_count();
    let dg = empty(g.shape(), g.dtype(), dev)?;
    let du = empty(g.shape(), g.dtype(), dev)?;
    let name = format!("glu_bwd_{}", suffix(g.dtype())?);
    let ptrs = [ptr(&dh)?, ptr(&g)?, ptr(&u)?, ptr(&dg)?, ptr(&du)?];
    let vec = ptrs.iter().all(|p| p % 16 == 0) as i32;
    launch!(dev, "activation", ptx::ACTIVATION, name, flat_cfg(if vec == 1 { n / 8 } else { n }), ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], n, act, vec)?;
    Ok((dg, du))
}

/// Per-row NLL `[rows]` (f32) of `logits` `[rows, V]` against `targets` (u32 `[rows]`, `u32::MAX` = ignored)
/// and, when `grad_scale` is given, `grad_scale · (softmax − onehot)` in the logits' dtype.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, grad_scale: Option<f64>) -> Result<(Tensor, Option<Tensor>)> {
    let dev = device(logits)?;
    let logits = logits.contiguous()?;
    let (rows, v) = logits.dims2()?;
    let nll = empty(rows, DType::F32, dev)?;
    let dl = grad_scale.map(|_| empty((rows, v), logits.dtype(), dev)).transpose()?;
    let name = format!("ce_{}", suffix(logits.dtype())?);
    launch!(dev, "cross_entropy", ptx::CROSS_ENTROPY, name, row_cfg(rows, v.min(1024)),
        ptr(&logits)?, ptr(targets)?, ptr(&nll)?, dl.as_ref().map_or(Ok(0), ptr)?, v as i32, grad_scale.unwrap_or(0.0) as f32)?;
    Ok((nll, dl))
}

/// `x` with elements dropped (probability `p`) and the rest scaled by `keep`, the mask drawn from `key`.
pub fn dropout(x: &Tensor, key: u64, p: f32, keep: f32) -> Result<Tensor> {
    let dev = device(x)?;
    let x = x.contiguous()?;
    let n = x.elem_count();
    let y = empty(x.shape(), x.dtype(), dev)?;
    let name = format!("dropout_{}", suffix(x.dtype())?);
    launch!(dev, "dropout", ptx::DROPOUT, name, flat_cfg(n), ptr(&x)?, ptr(&y)?, n, key, p, keep)?;
    Ok(y)
}

/// Head dims the attention kernels are instantiated for.
pub const ATTENTION_HEAD_DIMS: [usize; 5] = [16, 32, 64, 128, 256];

/// The kernels' tile size (kernels/attention.cu `TILE`).
fn tile(dt: DType, d: usize) -> usize {
    if dt.size_in_bytes() * d >= 1024 {
        32
    } else {
        64
    }
}

fn attn_cfg(grid: (usize, usize, usize), smem: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32), block_dim: (256, 1, 1), shared_mem_bytes: smem as u32 }
}

fn attn_func(dev: &CudaDevice, name: &str, smem: usize) -> Result<()> {
    let func = dev.get_or_load_custom_func(name, "attention", ptx::ATTENTION)?;
    func.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32).w()?;
    Ok(())
}

/// Flash-style causal attention. `valid`/`seg`: u32 `[B, T]` key validity and packed-example ids.
/// Returns `(o [B, Hq, T, D], lse [B, Hq, T, 1] f32)`.
pub fn attention_fwd(q: &Tensor, k: &Tensor, v: &Tensor, valid: &Tensor, seg: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
    let dev = device(q)?;
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (b, hq, t, d) = q.dims4()?;
    let hkv = k.dim(1)?;
    let dt = q.dtype();
    let (es, tl) = (dt.size_in_bytes(), tile(dt, d));
    let row = d + 4 / es;
    let smem = 3 * tl * row * es + tl * (tl + 1) * 4 + tl * 4;
    let o = empty((b, hq, t, d), dt, dev)?;
    let lse = empty((b, hq, t, 1), DType::F32, dev)?;
    let name = format!("attn_fwd_{}_d{d}", suffix(dt)?);
    attn_func(dev, &name, smem)?;
    launch!(dev, "attention", ptx::ATTENTION, name, attn_cfg((t.div_ceil(tl), hq, b), smem),
        ptr(&q)?, ptr(&k)?, ptr(&v)?, ptr(valid)?, ptr(seg)?, ptr(&o)?, ptr(&lse)?, hq as i32, hkv as i32, t as i32, scale as f32)?;
    Ok((o, lse))
}

/// Returns `(dq, dk, dv)`; `delta` = rowsum(dO ⊙ O) `[B, Hq, T, 1]` f32.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lse: &Tensor,
    delta: &Tensor,
    valid: &Tensor,
    seg: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = device(q)?;
    let (dout, q, k, v, lse, delta) = (dout.contiguous()?, q.contiguous()?, k.contiguous()?, v.contiguous()?, lse.contiguous()?, delta.contiguous()?);
    let (b, hq, t, d) = q.dims4()?;
    let hkv = k.dim(1)?;
    let dt = q.dtype();
    let (es, tl) = (dt.size_in_bytes(), tile(dt, d));
    let row = d + 4 / es;
    let smem = 4 * tl * row * es + 2 * tl * (tl + 1) * 4 + 2 * tl * 4 + 2 * tl * 4;
    let dq = Tensor::zeros((b, hq, t, d), DType::F32, q.device())?;
    let dk = empty((b, hkv, t, d), dt, dev)?;
    let dv = empty((b, hkv, t, d), dt, dev)?;
    let name = format!("attn_bwd_{}_d{d}", suffix(dt)?);
    attn_func(dev, &name, smem)?;
    launch!(dev, "attention", ptx::ATTENTION, name, attn_cfg((t.div_ceil(tl), hkv, b), smem),
        ptr(&q)?, ptr(&k)?, ptr(&v)?, ptr(&dout)?, ptr(&lse)?, ptr(&delta)?, ptr(valid)?, ptr(seg)?,
        ptr(&dq)?, ptr(&dk)?, ptr(&dv)?, hq as i32, hkv as i32, t as i32, scale as f32)?;
    Ok((dq.to_dtype(dt)?, dk, dv))
}

/// Queries per chunk of the tensor-core path: the chunk's scores `[B·Hq, C, ≤T]` are the only quadratic buffer,
/// kept near 256 Mi elements.
fn chunk_len(b: usize, hq: usize, t: usize) -> usize {
    ((256usize << 20) / (b * hq * t).max(1)).clamp(16, 1024).min(t.max(1))
}

/// Per chunk `c0..c0+len`, what both directions need: the query-side rows `[B·Hkv, rep·len, D]` of `x`
/// (`[B, Hq, T, D]`) and the visible key prefix length.
fn chunk_rows(x: &Tensor, hkv: usize, c0: usize, len: usize) -> Result<Tensor> {
    let (b, hq, t, d) = x.dims4()?;
    let rep = hq / hkv;
    x.reshape((b, hkv, rep, t, d))?.narrow(3, c0, len)?.contiguous()?.reshape((b * hkv, rep * len, d))
}

/// Keys `0..kend` of `x` (`[B, Hkv, T, D]`) as `[B·Hkv, kpad, D]`, zero keys appended up to `kpad` (a multiple
/// of 8) so that every score row starts 16-byte aligned for the row kernels' vector loads.
fn key_prefix(x: &Tensor, kend: usize) -> Result<Tensor> {
    let (b, hkv, _, d) = x.dims4()?;
    let kpad = kend.next_multiple_of(8);
    x.narrow(2, 0, kend)?.pad_with_zeros(2, 0, kpad - kend)?.contiguous()?.reshape((b * hkv, kpad, d))
}

/// One block per score row, a thread per 8 columns (at most 256 threads, looping beyond).
fn score_row_cfg(rows: usize, kpad: usize) -> LaunchConfig {
    let threads = (kpad / 8).next_multiple_of(32).clamp(32, 256) as u32;
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Chunk outputs `[B·Hkv, rep·len, D]` back to `[B, Hq, T, D]`.
fn unchunk(parts: Vec<Tensor>, b: usize, hq: usize, hkv: usize, lens: &[usize], d: usize) -> Result<Tensor> {
    let rep = hq / hkv;
    let parts: Vec<Tensor> = parts.into_iter().zip(lens).map(|(p, &len)| p.reshape((b, hkv, rep, len, d))).collect::<Result<_>>()?;
    let t: usize = lens.iter().sum();
    Tensor::cat(&parts, 3)?.reshape((b, hq, t, d))
}

/// Tensor-core attention: the same function as [`attention_fwd`], with the score blocks on cuBLAS. Queries go
/// in chunks; each chunk multiplies against only the keys it can see (causal), the row kernel applies mask,
/// scale and softmax in f32 and records the lse, and a second GEMM gives the chunk's output. Only the lse is
/// kept for the backward.
/// `chunk`: queries per chunk (None: sized to the memory budget; tests pass small ones to cross chunk edges).
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd_chunked(q: &Tensor, k: &Tensor, v: &Tensor, valid: &Tensor, seg: &Tensor, scale: f64, chunk: Option<usize>) -> Result<(Tensor, Tensor)> {
    let dev = device(q)?;
    let (b, hq, t, d) = q.dims4()?;
    let hkv = k.dim(1)?;
    let rep = hq / hkv;
    let dt = q.dtype();
    let lse = empty((b, hq, t, 1), DType::F32, dev)?;
    let c = chunk.unwrap_or_else(|| chunk_len(b, hq, t));
    let (mut outs, mut lens) = (Vec::new(), Vec::new());
    let name = format!("attn_softmax_fwd_{}", suffix(dt)?);
    for c0 in (0..t).step_by(c) {
        let len = c.min(t - c0);
        let kend = c0 + len;
        let qc = chunk_rows(q, hkv, c0, len)?;
        let kc = key_prefix(k, kend)?;
        let s = qc.matmul(&kc.t()?)?;
        let p = empty(s.shape(), dt, dev)?;
        let (rows, kpad) = (b * hkv * rep * len, kc.dim(1)?);
        launch!(dev, "attention_rows", ptx::ATTENTION_ROWS, name, score_row_cfg(rows, kpad),
            ptr(&s)?, ptr(&p)?, ptr(&lse)?, ptr(valid)?, ptr(seg)?, len as i32, rep as i32, hkv as i32, c0 as i32,
            kpad as i32, hq as i32, t as i32, scale as f32)?;
        outs.push(p.matmul(&key_prefix(v, kend)?)?);
        lens.push(len);
    }
    Ok((unchunk(outs, b, hq, hkv, &lens, d)?, lse))
}

/// Backward of [`attention_fwd_chunked`] (five GEMMs per chunk: S and dP recomputed, then dV, dK, dQ).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_chunked(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lse: &Tensor,
    delta: &Tensor,
    valid: &Tensor,
    seg: &Tensor,
    scale: f64,
    chunk: Option<usize>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = device(q)?;
    let (b, hq, t, d) = q.dims4()?;
    let hkv = k.dim(1)?;
    let rep = hq / hkv;
    let dt = q.dtype();
    let (lse, delta) = (lse.contiguous()?, delta.contiguous()?);
    let c = chunk.unwrap_or_else(|| chunk_len(b, hq, t));
    // dK and dV gather contributions from every chunk: accumulate in f32.
    let mut dk = Tensor::zeros((b * hkv, t, d), DType::F32, q.device())?;
    let mut dv = Tensor::zeros((b * hkv, t, d), DType::F32, q.device())?;
    let (mut dqs, mut lens) = (Vec::new(), Vec::new());
    let name = format!("attn_softmax_bwd_{}", suffix(dt)?);
    for c0 in (0..t).step_by(c) {
        let len = c.min(t - c0);
        let kend = c0 + len;
        let qc = chunk_rows(q, hkv, c0, len)?;
        let doc = chunk_rows(dout, hkv, c0, len)?;
        let kc = key_prefix(k, kend)?;
        let vc = key_prefix(v, kend)?;
        let s = qc.matmul(&kc.t()?)?;
        let dp = doc.matmul(&vc.t()?)?;
        let p = empty(s.shape(), dt, dev)?;
        let ds = empty(s.shape(), dt, dev)?;
        let (rows, kpad) = (b * hkv * rep * len, kc.dim(1)?);
        launch!(dev, "attention_rows", ptx::ATTENTION_ROWS, name, score_row_cfg(rows, kpad),
            ptr(&s)?, ptr(&dp)?, ptr(&lse)?, ptr(&delta)?, ptr(&p)?, ptr(&ds)?, ptr(valid)?, ptr(seg)?,
            len as i32, rep as i32, hkv as i32, c0 as i32, kpad as i32, hq as i32, t as i32, scale as f32)?;
        let pad = |x: Tensor| -> Result<Tensor> { x.narrow(1, 0, kend)?.to_dtype(DType::F32)?.pad_with_zeros(1, 0, t - kend) };
        dv = dv.add(&pad(p.t()?.matmul(&doc)?)?)?;
        dk = dk.add(&pad(ds.t()?.matmul(&qc)?)?)?;
        dqs.push(ds.matmul(&kc)?);
        lens.push(len);
    }
    let dq = unchunk(dqs, b, hq, hkv, &lens, d)?;
    let shape = (b, hkv, t, d);
    Ok((dq, dk.reshape(shape)?.to_dtype(dt)?, dv.reshape(shape)?.to_dtype(dt)?))
}

/// Opens CUDA device `ordinal` with its memory pool set to keep freed memory (release threshold: unlimited).
///
/// Candle allocates through the stream-ordered pool (`cuMemAllocAsync`), whose default threshold of 0 hands all
/// freed memory back to the driver at every synchronisation; the trainer synchronises once per optimizer step, so
/// every step would map its activations afresh. Measured on the H100 this doubled the time of small kernels
/// (BENCHMARKS.md); torch's caching allocator keeps memory the same way.
pub fn open_device(ordinal: usize) -> Result<candle_core::Device> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let device = candle_core::Device::new_cuda(ordinal)?;
    let ctx = device.as_cuda_device()?.cuda_stream().context().clone();
    ctx.bind_to_thread().w()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    unsafe {
        let r = sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device());
        if r != sys::CUresult::CUDA_SUCCESS {
            bail!("cuDeviceGetDefaultMemPool: {r:?}");
        }
        let r = sys::cuMemPoolSetAttribute(pool, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &mut threshold as *mut u64 as *mut _);
        if r != sys::CUresult::CUDA_SUCCESS {
            bail!("cuMemPoolSetAttribute: {r:?}");
        }
    }
    Ok(device)
}

/// Returns the memory the pool of `device` keeps back to the driver (between benchmark runs, so that each run's
/// peak is its own).
pub fn trim_pool(device: &candle_core::Device) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    device.synchronize()?;
    let ctx = device.as_cuda_device()?.cuda_stream().context().clone();
    ctx.bind_to_thread().w()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    unsafe {
        let r = sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device());
        if r != sys::CUresult::CUDA_SUCCESS {
            bail!("cuDeviceGetDefaultMemPool: {r:?}");
        }
        let r = sys::cuMemPoolTrimTo(pool, 0);
        if r != sys::CUresult::CUDA_SUCCESS {
            bail!("cuMemPoolTrimTo: {r:?}");
        }
    }
    Ok(())
}
