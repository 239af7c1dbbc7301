//! The report's statistics: a percentile bootstrap interval of a mean, a paired bootstrap test of a difference of
//! means, McNemar's test for paired accuracies, and Pearson and Spearman correlations.
//!
//! The closed forms match scipy / statsmodels (checked against `tests/fixtures/stats/stats.json`, made by
//! `tests/fixtures/stats/gen_stats_fixtures.py`). The bootstraps use our own seeded ChaCha8 stream, so their
//! results are reproducible on every machine: the same data, resamples and seed give the same numbers.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Resamples the report's bootstraps draw.
pub const RESAMPLES: usize = 1000;
/// The seed of the report's bootstraps.
pub const SEED: u64 = 20240618;

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// numpy's `percentile(xs, q)` with linear interpolation (its default), over sorted `xs`.
fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Means of `resamples` resamples (with replacement, of the same size) of `xs`.
fn bootstrap_means(xs: &[f64], resamples: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = xs.len();
    (0..resamples).map(|_| (0..n).map(|_| xs[rng.random_range(0..n)]).sum::<f64>() / n as f64).collect()
}

/// The percentile bootstrap interval of the mean of `xs` at `level` (e.g. 0.95): the (1−level)/2 and (1+level)/2
/// percentiles of the means of `resamples` resamples drawn with a ChaCha8 stream seeded with `seed`. None for no
/// data.
pub fn bootstrap_ci(xs: &[f64], level: f64, resamples: usize, seed: u64) -> Option<(f64, f64)> {
    if xs.is_empty() || resamples == 0 {
        return None;
    }
    let mut means = bootstrap_means(xs, resamples, seed);
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0 * 100.0;
    Some((percentile_sorted(&means, alpha), percentile_sorted(&means, 100.0 - alpha)))
}

/// Two-sided paired bootstrap p-value for mean(a) − mean(b) ≠ 0 over the same items: the differences d = a − b are
/// resampled `resamples` times and p = (1 + #{|mean(d*) − mean(d)| ≥ |mean(d)|}) / (resamples + 1) (the bootstrap
/// distribution shifted to the null, with the +1 that keeps p above 0). 1 when every difference is 0.
pub fn paired_bootstrap_p(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() || resamples == 0 {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let observed = mean(&d);
    // A tolerance for sums of the same numbers in another order.
    let eps = 1e-12 * d.iter().map(|x| x.abs()).fold(0.0, f64::max);
    let extreme = bootstrap_means(&d, resamples, seed).into_iter().filter(|m| (m - observed).abs() >= observed.abs() - eps).count();
    Some((1 + extreme) as f64 / (resamples + 1) as f64)
}

/// McNemar's test of two paired binary outcomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McNemar {
    /// Items right under the first and wrong under the second.
    pub b: u64,
    /// Items wrong under the first and right under the second.
    pub c: u64,
    /// Exact: min(b, c); chi-square: (|b − c| − 1)² / (b + c).
    pub statistic: f64,
    pub p: f64,
    pub exact: bool,
}

/// Below this many discordant pairs the exact binomial test is used, from it on the chi-square.
pub const MCNEMAR_EXACT_BELOW: u64 = 25;

/// McNemar's test on the discordant counts `b` and `c`, as statsmodels' `mcnemar`: exact (two-sided binomial,
/// p = min(1, 2·P[X ≤ min(b, c)]) for X ~ Bin(b + c, ½); `exact=True`) when b + c < 25, else the chi-square with
/// continuity correction ((|b − c| − 1)² / (b + c) on 1 degree of freedom; `exact=False, correction=True`).
pub fn mcnemar(b: u64, c: u64) -> McNemar {
    if b + c < MCNEMAR_EXACT_BELOW {
        mcnemar_exact(b, c)
    } else {
        mcnemar_chi2(b, c)
    }
}

/// The exact binomial McNemar test (statsmodels `mcnemar(table, exact=True)`).
pub fn mcnemar_exact(b: u64, c: u64) -> McNemar {
    let n = b + c;
    let k = b.min(c);
    // P[X ≤ k] for X ~ Bin(n, ½), terms from logs of factorials.
    let ln_fact = |m: u64| (1..=m).map(|i| (i as f64).ln()).sum::<f64>();
    let ln_n = ln_fact(n);
    let half = n as f64 * std::f64::consts::LN_2;
    let cdf: f64 = (0..=k).map(|i| (ln_n - ln_fact(i) - ln_fact(n - i) - half).exp()).sum();
    McNemar { b, c, statistic: k as f64, p: (2.0 * cdf).min(1.0), exact: true }
}

/// The chi-square McNemar test with continuity correction (statsmodels `mcnemar(table, exact=False,
/// correction=True)`); NaN for b + c = 0.
pub fn mcnemar_chi2(b: u64, c: u64) -> McNemar {
    let stat = ((b as f64 - c as f64).abs() - 1.0).powi(2) / (b + c) as f64;
    McNemar { b, c, statistic: stat, p: chi2_sf_1(stat), exact: false }
}

/// The chi-square survival function with 1 degree of freedom: Q(½, x/2), the regularized upper incomplete gamma.
pub fn chi2_sf_1(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let (a, x) = (0.5, x / 2.0);
    let ln_gamma_a = 0.5 * std::f64::consts::PI.ln();
    let prefactor = (-x + a * x.ln() - ln_gamma_a).exp();
    if x < a + 1.0 {
        // Series for P(a, x).
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        1.0 - sum * prefactor
    } else {
        // Continued fraction for Q(a, x) (modified Lentz).
        let tiny = 1e-300;
        let mut bb = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / bb;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            bb += 2.0;
            d = an * d + bb;
            if d.abs() < tiny {
                d = tiny;
            }
            c = bb + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-17 {
                break;
            }
        }
        prefactor * h
    }
}

/// Pearson's r (scipy.stats.pearsonr's statistic); None with fewer than 2 pairs or a constant input.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    Some((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// Ranks from 1, ties getting their average rank (scipy.stats.rankdata's default, "average").
pub fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&i, &j| xs[i].total_cmp(&xs[j]));
    let mut out = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rho (scipy.stats.spearmanr's statistic): Pearson's r of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f64>()).collect()
    }

    #[test]
    fn bootstrap_interval_contains_the_mean_shrinks_with_n_and_is_deterministic() {
        for n in [5, 20, 200] {
            let xs = data(n, n as u64);
            let (lo, hi) = bootstrap_ci(&xs, 0.95, RESAMPLES, SEED).unwrap();
            assert!(lo <= mean(&xs) && mean(&xs) <= hi, "n={n}: [{lo}, {hi}] vs {}", mean(&xs));
            assert_eq!(bootstrap_ci(&xs, 0.95, RESAMPLES, SEED), Some((lo, hi)), "same seed, same interval");
            assert_ne!(bootstrap_ci(&xs, 0.95, RESAMPLES, SEED + 1), Some((lo, hi)), "another seed, another interval");
        }
        let width = |n: usize| {
            let (lo, hi) = bootstrap_ci(&data(n, 7), 0.95, RESAMPLES, SEED).unwrap();
            hi - lo
        };
        assert!(width(400) < width(100) && width(100) < width(25), "{} {} {}", width(25), width(100), width(400));
        // Uniform(0,1): the mean's sd is 1/sqrt(12 n); a 95% interval is about 3.92 of them wide.
        let expected = 3.92 / (12.0f64 * 400.0).sqrt();
        assert!((width(400) / expected - 1.0).abs() < 0.15, "{} vs {expected}", width(400));
        assert_eq!(bootstrap_ci(&[0.25; 9], 0.95, RESAMPLES, SEED), Some((0.25, 0.25)), "constant data: exact");
        assert_eq!(bootstrap_ci(&[], 0.95, RESAMPLES, SEED), None);
        let (lo90, hi90) = bootstrap_ci(&data(50, 3), 0.90, RESAMPLES, SEED).unwrap();
        let (lo95, hi95) = bootstrap_ci(&data(50, 3), 0.95, RESAMPLES, SEED).unwrap();
        assert!(lo95 <= lo90 && hi90 <= hi95, "a higher level is wider");
    }

    #[test]
    fn paired_bootstrap_p_is_one_without_differences_and_small_for_a_clear_one() {
        let a = data(100, 1);
        assert_eq!(paired_bootstrap_p(&a, &a, RESAMPLES, SEED), Some(1.0));
        let shifted: Vec<f64> = a.iter().map(|x| x + 0.5).collect();
        let p = paired_bootstrap_p(&shifted, &a, RESAMPLES, SEED).unwrap();
        assert_eq!(p, 1.0 / (RESAMPLES + 1) as f64, "constant shift: no resample is as extreme");
        let noise: Vec<f64> = a.iter().zip(data(100, 2)).map(|(x, e)| x + 0.02 * (e - 0.5)).collect();
        let p = paired_bootstrap_p(&noise, &a, RESAMPLES, SEED).unwrap();
        assert!(p > 0.05, "zero-mean noise is not significant: p = {p}");
        assert_eq!(paired_bootstrap_p(&noise, &a, RESAMPLES, SEED), Some(p), "deterministic for a seed");
        assert_eq!(paired_bootstrap_p(&a, &a[1..], RESAMPLES, SEED), None, "unpaired lengths");
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0, 3.0]), vec![4.0, 1.0, 4.0, 2.0, 4.0]);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0]), None, "constant input");
        assert_eq!(pearson(&[1.0], &[2.0]), None);
    }

    /// Values computed by scipy on the same inputs (tests/fixtures/stats/gen_stats_fixtures.py).
    #[test]
    fn closed_forms_match_scipy() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats/stats.json");
        let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let vec = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
        // Tolerances: 1e-12 relative for the closed forms (sums of at most a few hundred terms); 1e-10 relative for
        // the chi-square tail (a continued fraction) and the binomial sums (logs of factorials).
        // (Correlations lie in [-1, 1]: their tolerance is absolute; p-values can be tiny: theirs is relative.)
        let close = |what: &str, a: f64, b: f64, rel: f64| assert!((a - b).abs() <= rel * b.abs().max(1e-300), "{what}: {a} vs scipy {b}");
        let close_abs = |what: &str, a: f64, b: f64, tol: f64| assert!((a - b).abs() <= tol, "{what}: {a} vs scipy {b}");
        let cases = fx["correlations"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for (i, c) in cases.iter().enumerate() {
            let (x, y) = (vec(&c["x"]), vec(&c["y"]));
            close_abs(&format!("pearson #{i}"), pearson(&x, &y).unwrap(), c["pearson"].as_f64().unwrap(), 1e-12);
            close_abs(&format!("spearman #{i}"), spearman(&x, &y).unwrap(), c["spearman"].as_f64().unwrap(), 1e-12);
            assert_eq!(ranks(&x), vec(&c["ranks_x"]), "rankdata #{i}");
        }
        for c in fx["mcnemar"].as_array().unwrap() {
            let (b, c_, p) = (c["b"].as_u64().unwrap(), c["c"].as_u64().unwrap(), c["exact_p"].as_f64().unwrap());
            close(&format!("exact mcnemar {b} {c_}"), mcnemar_exact(b, c_).p, p, 1e-10);
            if b + c_ > 0 {
                let m = mcnemar_chi2(b, c_);
                close(&format!("chi2 mcnemar statistic {b} {c_}"), m.statistic, c["chi2_statistic"].as_f64().unwrap(), 1e-12);
                close(&format!("chi2 mcnemar p {b} {c_}"), m.p, c["chi2_p"].as_f64().unwrap(), 1e-10);
            }
            assert_eq!(mcnemar(b, c_).exact, b + c_ < MCNEMAR_EXACT_BELOW);
        }
        for c in fx["chi2_sf_1"].as_array().unwrap() {
            close(&format!("chi2.sf({}, 1)", c["x"]), chi2_sf_1(c["x"].as_f64().unwrap()), c["sf"].as_f64().unwrap(), 1e-10);
        }
        for c in fx["percentile"].as_array().unwrap() {
            let mut xs = vec(&c["x"]);
            xs.sort_by(f64::total_cmp);
            for (q, v) in vec(&c["q"]).into_iter().zip(vec(&c["values"])) {
                close(&format!("percentile {q}"), percentile_sorted(&xs, q), v, 1e-12);
            }
        }
    }
}
