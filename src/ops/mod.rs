//! The trainer's differentiable ops, each with an explicit forward that returns what its backward needs and an
//! explicit backward that differentiates only with respect to activations (frozen weights are never
//! differentiated; LoRA factors are handled in [`linear`]).
//!
//! Every op's entry points (`forward`/`backward`) are the single place the decoder calls it. Today each body is
//! the reference implementation written with Candle tensor ops (it runs on CPU, and on CUDA through Candle's own
//! kernels); a fused CUDA kernel replaces an op by branching on `x.device().is_cuda()` inside that op's entry
//! points, one op at a time, and is tested against the reference kept here.

pub mod activation;
pub mod attention;
pub mod attention_backend;
pub mod cross_entropy;
pub mod dropout;
pub mod gemm;
pub mod linear;
pub mod moe;
pub mod rmsnorm;
pub mod rope;
pub mod softcap;
