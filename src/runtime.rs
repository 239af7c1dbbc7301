//! Turning the user's device and dtype words into Candle's, with clear errors.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map_err(|_| anyhow::anyhow!("device `{s}`: expected cuda:N"))?,
                None => 0,
            };
            open_cuda(s, ordinal)
        }
        other => bail!("unknown device `{other}` (cpu, cuda, cuda:N)"),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(_name: &str, ordinal: usize) -> Result<Device> {
    Ok(crate::cuda::open_device(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(name: &str, _ordinal: usize) -> Result<Device> {
    bail!("device `{name}`: this trainer was built without CUDA (rebuild with `--features cuda`)")
}

/// "auto" picks f32 on CPU (Candle's CPU bf16 matmul widens to f32 on every call) and bf16 on CUDA.
pub fn dtype(name: &str, device: &Device) -> Result<DType> {
    dtype_for(name, device.is_cuda())
}

/// [`dtype`] for a device named but not opened (`trainer plan` on a machine without the GPU).
pub fn dtype_for(name: &str, cuda: bool) -> Result<DType> {
    match (name, cuda) {
        ("auto", false) | ("f32", _) => Ok(DType::F32),
        ("auto", true) | ("bf16", true) => Ok(DType::BF16),
        ("bf16", false) => bail!("dtype bf16 is for cuda; on cpu the trainer computes in f32"),
        (other, _) => bail!("unknown dtype `{other}` (auto, f32, bf16)"),
    }
}
