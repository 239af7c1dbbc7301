//! Tokenized examples and padded micro-batches.

/// One tokenized training sequence: its ids and which of them are loss targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `is_target[i]`: token `i` is predicted and scored (response tokens and the final EOS).
    pub is_target: Vec<bool>,
    /// True when the sequence was cut at `max_seq_len`.
    pub truncated: bool,
    /// For packed sequences: the segment (packed example) of each token. Attention and positions restart at
    /// every segment, so packed examples never see each other.
    pub segments: Option<Vec<u32>>,
}

impl Example {
    pub fn new(ids: Vec<u32>, is_target: Vec<bool>, truncated: bool) -> Self {
        Self { ids, is_target, truncated, segments: None }
    }

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
        let packed = examples.iter().any(|e| e.segments.is_some());
        let mut segments = Vec::new();
        for e in examples {
            let n = e.ids.len();
            let mut ids = e.ids.clone();
            ids.resize(t, pad_id);
            batch.ids.push(ids);
            batch.key_valid.push((0..t).map(|i| i < n).collect());
            let mut seg = e.segments.clone().unwrap_or_else(|| vec![0; n]);
            // Padding gets a segment of its own; it is never attended to anyway.
            seg.resize(t, u32::MAX);
            let mut positions = Vec::with_capacity(t);
            for i in 0..t {
                positions.push(if i > 0 && seg[i] == seg[i - 1] { positions[i - 1] + 1 } else { 0 });
            }
            batch.positions.push(positions);
            // A segment's first token is never a target (pack() clears it), so no prediction crosses segments.
            batch.targets.extend((0..t).map(|i| (i + 1 < n && e.is_target[i + 1]).then(|| e.ids[i + 1])));
            segments.push(seg);
        }
        if packed {
            batch.segments = Some(segments);
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

/// Packs examples into sequences of at most `max_len` tokens, first-fit in the given order (examples longer than
/// `max_len` stay alone). Each packed sequence records its segments; the first token of every segment is not a
/// target, so the loss never asks one example to predict the next.
pub fn pack(examples: &[Example], max_len: usize) -> Vec<Example> {
    let mut bins: Vec<Example> = Vec::new();
    for e in examples {
        let slot = bins.iter_mut().find(|b| b.ids.len() + e.ids.len() <= max_len);
        let bin = match slot {
            Some(b) => b,
            None => {
                bins.push(Example { ids: vec![], is_target: vec![], truncated: false, segments: Some(vec![]) });
                bins.last_mut().expect("just pushed")
            }
        };
        let segment = bin.segments.as_ref().and_then(|s| s.last()).map_or(0, |&s| s + 1);
        bin.ids.extend(&e.ids);
        bin.is_target.extend(e.is_target.iter().enumerate().map(|(i, &t)| t && i > 0));
        bin.segments.as_mut().expect("packed bins have segments").extend(std::iter::repeat_n(segment, e.ids.len()));
        bin.truncated |= e.truncated;
    }
    bins
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], prompt: usize) -> Example {
        Example::new(ids.to_vec(), (0..ids.len()).map(|i| i >= prompt).collect(), false)
    }

    #[test]
    fn packing_keeps_examples_apart() {
        let examples = vec![ex(&[1, 5, 6, 2], 2), ex(&[1, 7, 2], 1), ex(&[1, 8, 9, 9, 2], 3)];
        let packed = pack(&examples, 8);
        assert_eq!(packed.len(), 2, "4 + 3 tokens fit in 8, the third starts a new sequence");
        assert_eq!(packed[0].ids, [1, 5, 6, 2, 1, 7, 2]);
        assert_eq!(packed[0].segments.as_deref(), Some(&[0, 0, 0, 0, 1, 1, 1][..]));
        // Same scored tokens as unpacked: the packed sequence predicts exactly the union of both examples' targets.
        let total: usize = examples.iter().map(Example::target_tokens).sum();
        assert_eq!(packed.iter().map(Example::target_tokens).sum::<usize>(), total);
        let b = Batch::pad(&[&packed[0], &packed[1]], 0);
        assert_eq!(b.positions[0], [0, 1, 2, 3, 0, 1, 2]);
        assert_eq!(b.targets[3], None, "the last token of example 1 does not predict example 2's BOS");
        assert_eq!(b.targets[4], Some(7));
        assert_eq!(b.target_tokens(), total);
        let segs = b.segments.as_ref().unwrap();
        assert_ne!(segs[0][3], segs[0][4]);
    }
}
