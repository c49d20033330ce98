//! Krippendorff's alpha: agreement among any number of annotators, with missing judgements,
//! corrected for the agreement chance would give. 1 is perfect agreement, 0 what chance gives,
//! below 0 systematic disagreement. Computed from the coincidence matrix as in Krippendorff,
//! "Computing Krippendorff's Alpha-Reliability" (2011), whose worked example is the test below.
//!
//! For rankings the level is ordinal: a unit is one response of a task ranked by several
//! annotators, its values the positions they gave it (1 = best).

use std::collections::BTreeMap;

/// How different two values are taken to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Equal or not.
    Nominal,
    /// By how many judgements lie between them (ranks, grades).
    Ordinal,
    /// By their squared difference.
    Interval,
}

/// Alpha of `units`, each the values its annotators gave (in any order, one per annotator).
/// Units with fewer than two values carry no information about agreement and are skipped;
/// `None` when nothing is left or every value is the same (alpha is undefined).
pub fn krippendorff_alpha(units: &[Vec<f64>], level: Level) -> Option<f64> {
    // Values are compared exactly; their bit patterns key the categories in value order.
    let key = |v: f64| ordered(v);
    let mut categories: BTreeMap<u64, f64> = BTreeMap::new();
    let pairable: Vec<&Vec<f64>> = units.iter().filter(|u| u.len() >= 2 && u.iter().all(|v| v.is_finite())).collect();
    for unit in &pairable {
        for &v in unit.iter() {
            categories.insert(key(v), v);
        }
    }
    let values: Vec<f64> = categories.values().copied().collect();
    let index: BTreeMap<u64, usize> = categories.keys().enumerate().map(|(i, k)| (*k, i)).collect();
    let c = values.len();
    if c < 2 {
        return None;
    }
    // Coincidences: every ordered pair of values from different annotators of a unit, weighted
    // 1 / (m_u - 1).
    let mut o = vec![vec![0.0f64; c]; c];
    for unit in &pairable {
        let m = unit.len() as f64;
        for (i, &a) in unit.iter().enumerate() {
            for (j, &b) in unit.iter().enumerate() {
                if i != j {
                    o[index[&key(a)]][index[&key(b)]] += 1.0 / (m - 1.0);
                }
            }
        }
    }
    let n_c: Vec<f64> = o.iter().map(|row| row.iter().sum()).collect();
    let n: f64 = n_c.iter().sum();
    let delta = |a: usize, b: usize| -> f64 {
        match level {
            Level::Nominal => f64::from(u8::from(a != b)),
            Level::Interval => (values[a] - values[b]).powi(2),
            Level::Ordinal => {
                let (lo, hi) = (a.min(b), a.max(b));
                let between: f64 = n_c[lo..=hi].iter().sum();
                (between - (n_c[lo] + n_c[hi]) / 2.0).powi(2)
            }
        }
    };
    let (mut observed, mut expected) = (0.0, 0.0);
    for a in 0..c {
        for b in 0..c {
            let d = delta(a, b);
            observed += o[a][b] * d;
            expected += n_c[a] * n_c[b] * d;
        }
    }
    (expected > 0.0).then(|| 1.0 - (n - 1.0) * observed / expected)
}

/// A total order on finite floats as integers, so they can key a map.
fn ordered(v: f64) -> u64 {
    let bits = v.to_bits();
    if bits >> 63 == 1 { !bits } else { bits | (1 << 63) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Krippendorff (2011), section C: four observers, twelve units, values 1 to 5, missing
    /// judgements. His results: nominal .743, ordinal .815, interval .849 (the Python package
    /// `krippendorff` agrees: 0.7434, 0.8154, 0.8491).
    fn krippendorffs_example() -> Vec<Vec<f64>> {
        let nan = f64::NAN;
        let coders = [
            [1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 4.0, 1.0, 2.0, nan, nan, nan],
            [1.0, 2.0, 3.0, 3.0, 2.0, 2.0, 4.0, 1.0, 2.0, 5.0, nan, 3.0],
            [nan, 3.0, 3.0, 3.0, 2.0, 3.0, 4.0, 2.0, 2.0, 5.0, 1.0, nan],
            [1.0, 2.0, 3.0, 3.0, 2.0, 4.0, 4.0, 1.0, 2.0, 5.0, 1.0, nan],
        ];
        (0..12).map(|u| coders.iter().map(|c| c[u]).filter(|v| !v.is_nan()).collect()).collect()
    }

    #[test]
    fn krippendorffs_worked_example() {
        let units = krippendorffs_example();
        let alpha = |level| krippendorff_alpha(&units, level).unwrap();
        assert!((alpha(Level::Nominal) - 0.7434).abs() < 5e-4, "{}", alpha(Level::Nominal));
        assert!((alpha(Level::Ordinal) - 0.8154).abs() < 5e-4, "{}", alpha(Level::Ordinal));
        assert!((alpha(Level::Interval) - 0.8491).abs() < 5e-4, "{}", alpha(Level::Interval));
    }

    #[test]
    fn perfect_agreement_is_one_and_systematic_disagreement_is_below_zero() {
        let agree = vec![vec![1.0, 1.0], vec![2.0, 2.0], vec![3.0, 3.0]];
        assert_eq!(krippendorff_alpha(&agree, Level::Ordinal), Some(1.0));
        // Two annotators who always rank the same two responses the other way round.
        let opposed = vec![vec![1.0, 2.0], vec![2.0, 1.0], vec![1.0, 2.0], vec![2.0, 1.0]];
        // Nominal by hand: n = 8, o(1,2) = o(2,1) = 4, n_1 = n_2 = 4:
        // alpha = 1 - 7 * 8 / (4 * 4 * 2) = -0.75.
        assert!((krippendorff_alpha(&opposed, Level::Nominal).unwrap() + 0.75).abs() < 1e-12);
        // Undefined without variation, or without two values in any unit.
        assert_eq!(krippendorff_alpha(&[vec![2.0, 2.0]], Level::Nominal), None);
        assert_eq!(krippendorff_alpha(&[vec![1.0], vec![2.0]], Level::Nominal), None);
    }
}
