//! Tokenized examples and padded micro-batches.

/// One tokenized training sequence: its ids and which of them are loss targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `is_target[i]`: token `i` is predicted and scored (response tokens and the final EOS).
    pub is_target: Vec<bool>,
    /// True when the sequence was cut at `max_seq_len`.
    pub truncated: bool,
}

impl Example {
    /// Number of scored next-token predictions (targets after the first position).
    pub fn target_tokens(&self) -> usize {
        self.is_target.iter().skip(1).filter(|&&t| t).count()
    }
}

/// A right-padded micro-batch, in the layout the decoder consumes.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B][T]` token ids, padded with `pad_id`.
    pub ids: Vec<Vec<u32>>,
    /// `[B][T]`: false on padding (never attended to).
    pub key_valid: Vec<Vec<bool>>,
    /// `[B][T]` RoPE positions.
    pub positions: Vec<Vec<u32>>,
    /// `[B][T]` packed-segment ids; `None` when each row holds one example.
    pub segments: Option<Vec<Vec<u32>>>,
    /// `[B*T]`: the token that row `(b, t)` must predict, if scored.
    pub targets: Vec<Option<u32>>,
}

impl Batch {
    pub fn pad(examples: &[&Example], pad_id: u32) -> Self {
        let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut batch = Batch { ids: vec![], key_valid: vec![], positions: vec![], segments: None, targets: vec![] };
        for e in examples {
            let n = e.ids.len();
            let mut ids = e.ids.clone();
            ids.resize(t, pad_id);
            batch.ids.push(ids);
            batch.key_valid.push((0..t).map(|i| i < n).collect());
            batch.positions.push((0..t as u32).collect());
            batch.targets.extend((0..t).map(|i| (i + 1 < n && e.is_target[i + 1]).then(|| e.ids[i + 1])));
        }
        batch
    }

    pub fn size(&self) -> usize {
        self.ids.len()
    }

    pub fn seq_len(&self) -> usize {
        self.ids.first().map_or(0, |r| r.len())
    }

    pub fn target_tokens(&self) -> usize {
        self.targets.iter().filter(|t| t.is_some()).count()
    }
}
