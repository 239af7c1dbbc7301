//! All matrix products of the decoder go through [`matmul`], so that tests can record every GEMM a training
//! step performs (shape in, shape out) and prove that no weight-sized gradient is ever computed.

use candle_core::{Result, Tensor};
use std::cell::RefCell;

/// One recorded product: `lhs @ rhs -> out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GemmRecord {
    pub lhs: Vec<usize>,
    pub rhs: Vec<usize>,
    pub out: Vec<usize>,
}

thread_local! {
    static RECORDER: RefCell<Option<Vec<GemmRecord>>> = const { RefCell::new(None) };
}

/// Starts recording the GEMMs issued by this thread (clearing any earlier record).
pub fn start_recording() {
    RECORDER.with(|r| *r.borrow_mut() = Some(Vec::new()));
}

/// Stops recording and returns what was recorded since [`start_recording`].
pub fn take_recording() -> Vec<GemmRecord> {
    RECORDER.with(|r| r.borrow_mut().take().unwrap_or_default())
}

pub fn matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let out = lhs.matmul(rhs)?;
    RECORDER.with(|r| {
        if let Some(log) = r.borrow_mut().as_mut() {
            log.push(GemmRecord {
                lhs: lhs.dims().to_vec(),
                rhs: rhs.dims().to_vec(),
                out: out.dims().to_vec(),
            });
        }
    });
    Ok(out)
}
