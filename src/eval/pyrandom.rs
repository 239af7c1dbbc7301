//! CPython's `random.Random(seed).sample`, bit for bit: lm-evaluation-harness draws each item's few-shot examples
//! with `random.Random(1234).sample(fewshot_docs, k)`, one generator per task shared by its items in order, so the
//! same prompts need the same Mersenne Twister and the same sampling algorithm.

/// MT19937 seeded as CPython seeds it from a non-negative integer (`init_by_array` over its 32-bit words).
pub struct PyRandom {
    mt: [u32; 624],
    index: usize,
}

impl PyRandom {
    pub fn new(seed: u64) -> Self {
        let mut key: Vec<u32> = Vec::new();
        let mut s = seed;
        while s > 0 {
            key.push(s as u32);
            s >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        let mut r = PyRandom { mt: [0; 624], index: 624 };
        r.init_genrand(19650218);
        let (n, mut i, mut j) = (624usize, 1usize, 0usize);
        for _ in 0..n.max(key.len()) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1664525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= n {
                r.mt[0] = r.mt[n - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..n - 1 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1566083941)).wrapping_sub(i as u32);
            i += 1;
            if i >= n {
                r.mt[0] = r.mt[n - 1];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..624 {
            self.mt[i] = 1812433253u32.wrapping_mul(self.mt[i - 1] ^ (self.mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        self.index = 624;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
                let mut v = self.mt[(k + 397) % 624] ^ (y >> 1);
                if y & 1 == 1 {
                    v ^= 0x9908_b0df;
                }
                self.mt[k] = v;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for 1 ≤ k ≤ 32.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)`: rejection sampling on `n.bit_length()` bits.
    fn randbelow(&mut self, n: usize) -> usize {
        assert!(n > 0 && n <= u32::MAX as usize, "few-shot pools are small");
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// The indices `random.sample(range(n), k)` picks, in order.
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            // 4 ** ceil(log(3k, 4)), computed as CPython does in floating point.
            setsize += 4usize.pow(((k * 3) as f64).log(4.0).ceil() as u32);
        }
        let mut out = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow(n - i);
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::new();
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while selected.contains(&j) {
                    j = self.randbelow(n);
                }
                selected.insert(j);
                out.push(j);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PY_U32: [u32; 3] = [4150886329, 3342196574, 1892932127];
    const PY_SAMPLE_10_3: [usize; 3] = [7, 1, 0];
    const PY_SAMPLE_40_4_A: [usize; 4] = [28, 7, 0, 5];
    const PY_SAMPLE_40_4_B: [usize; 4] = [37, 2, 5, 6];

    /// Values printed by CPython 3.11: `r = random.Random(1234); [r.getrandbits(32) for _ in range(3)]`, then
    /// `random.Random(1234).sample(range(10), 3)` and, from one generator, `sample(range(40), 4)` twice.
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::new(1234);
        assert_eq!([r.next_u32(), r.next_u32(), r.next_u32()], PY_U32);
        assert_eq!(PyRandom::new(1234).sample(10, 3), PY_SAMPLE_10_3);
        let mut r = PyRandom::new(1234);
        assert_eq!((r.sample(40, 4), r.sample(40, 4)), (PY_SAMPLE_40_4_A.to_vec(), PY_SAMPLE_40_4_B.to_vec()));
    }
}

