//! Which keys the query rows of one sequence can see, in blocks of 32: what the mixed-precision
//! products may skip. A masked key's probability is exactly 0 (its bias, [`MASKED`], puts its
//! exponent far below f32's underflow), so its terms add exact zeros to every sum that skips them.

use std::ops::Range;

use crate::amx::BLOCK;
use crate::padding::MASKED;

/// For one sequence of `rows` stacked query rows (`G` heads × `Tq` queries) over `Tk` keys.
pub(super) struct Visible {
    /// Per query (row `r` of the stack is query `r % Tq`): the keys from its first seen to its
    /// last seen.
    per_query: Vec<Range<usize>>,
    /// Per band of 32 rows: the key chunks of 32 its rows see.
    keys_of_band: Vec<Range<usize>>,
    /// Per chunk of 32 keys: the row bands that see one of them.
    bands_of_keys: Vec<Range<usize>>,
}

impl Visible {
    /// From the sequence's bias (`Tq × Tk`, row `r` of the stack is query `r % Tq`). A row that
    /// sees no key (never built by [`crate::padding`]) counts as seeing them all, so that nothing
    /// of its softmax is skipped.
    pub(super) fn new(bias: &[f32], tq: usize, tk: usize, rows: usize) -> Self {
        let per_query: Vec<Range<usize>> = bias
            .chunks(tk)
            .take(tq)
            .map(|row| {
                let seen = |b: &f32| *b > MASKED;
                match (row.iter().position(seen), row.iter().rposition(seen)) {
                    (Some(first), Some(last)) => first..last + 1,
                    _ => 0..tk,
                }
            })
            .collect();
        let extent = |r: usize| per_query[r % tq].clone();
        let keys_of_band = (0..rows.div_ceil(BLOCK))
            .map(|band| {
                let band_rows = band * BLOCK..rows.min((band + 1) * BLOCK);
                let first = band_rows.clone().map(|r| extent(r).start).min().unwrap_or(0);
                let end = band_rows.map(|r| extent(r).end).max().unwrap_or(0);
                first / BLOCK..end.div_ceil(BLOCK)
            })
            .collect();
        let bands_of_keys = (0..tk.div_ceil(BLOCK))
            .map(|chunk| {
                let keys = chunk * BLOCK..tk.min((chunk + 1) * BLOCK);
                let sees = |r: &usize| {
                    let e = extent(*r);
                    e.start < keys.end && keys.start < e.end
                };
                match ((0..rows).position(|r| sees(&r)), (0..rows).rposition(|r| sees(&r))) {
                    (Some(first), Some(last)) => first / BLOCK..last / BLOCK + 1,
                    _ => 0..0,
                }
            })
            .collect();
        Self { per_query, keys_of_band, bands_of_keys }
    }

    /// The keys stacked row `row` sees, from the first to the last: every probability outside
    /// is exactly 0.
    pub(super) fn keys_of_row(&self, row: usize) -> Range<usize> {
        self.per_query[row % self.per_query.len()].clone()
    }

    /// The key chunks whose probabilities in row band `band` can be non-zero.
    pub(super) fn keys_of_band(&self, band: usize) -> Range<usize> {
        self.keys_of_band[band].clone()
    }

    /// Whether block (`band`, key chunk `chunk`) of the scores has a key some row sees.
    pub(super) fn sees(&self, band: usize, chunk: usize) -> bool {
        self.keys_of_band[band].contains(&chunk)
    }

    /// The row bands whose probabilities for key chunk `chunk` can be non-zero.
    pub(super) fn bands_of_keys(&self, chunk: usize) -> Range<usize> {
        self.bands_of_keys[chunk].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The causal bias of `t` queries over `t` keys with the first `pad` keys padding.
    fn causal(t: usize, pad: usize) -> Vec<f32> {
        let mask = vec![(0..t).map(|j| j >= pad).collect::<Vec<_>>()];
        crate::padding::attention_bias(&mask, t, &candle_core::Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn a_causal_mask_sees_the_blocks_on_and_below_the_diagonal() {
        let v = Visible::new(&causal(96, 0), 96, 96, 96);
        assert_eq!((0..3).map(|b| v.keys_of_band(b)).collect::<Vec<_>>(), [0..1, 0..2, 0..3]);
        assert_eq!((0..3).map(|c| v.bands_of_keys(c)).collect::<Vec<_>>(), [0..3, 1..3, 2..3]);
        assert!(v.sees(1, 1) && !v.sees(1, 2) && !v.sees(0, 1));
    }

    #[test]
    fn left_padding_hides_the_padding_keys_from_real_queries_only() {
        // 40 padding keys: queries 32..39 (padding) see themselves, 40.. see keys 40..=i.
        let v = Visible::new(&causal(96, 40), 96, 96, 96);
        assert_eq!((0..3).map(|b| v.keys_of_band(b)).collect::<Vec<_>>(), [0..1, 1..2, 1..3]);
        assert_eq!((0..3).map(|c| v.bands_of_keys(c)).collect::<Vec<_>>(), [0..1, 1..3, 2..3]);
        assert_eq!([v.keys_of_row(35), v.keys_of_row(50), v.keys_of_row(95)], [35..36, 40..51, 40..96]);
    }

    #[test]
    fn stacked_heads_and_ragged_edges_take_every_row_into_account() {
        // Two heads of 40 queries stacked: band 1 holds queries 32..39 of head 0 and 0..23 of head 1.
        let v = Visible::new(&causal(40, 0), 40, 40, 80);
        assert_eq!((0..3).map(|b| v.keys_of_band(b)).collect::<Vec<_>>(), [0..1, 0..2, 0..2]);
        assert_eq!((0..2).map(|c| v.bands_of_keys(c)).collect::<Vec<_>>(), [0..3, 1..3]);
        assert_eq!([v.keys_of_row(5), v.keys_of_row(45)], [0..6, 0..6]);
    }

    #[test]
    fn a_row_that_sees_nothing_counts_as_seeing_everything() {
        let bias = [MASKED; 64 * 64];
        let v = Visible::new(&bias, 64, 64, 64);
        assert_eq!(v.keys_of_band(0), 0..2);
        assert_eq!(v.bands_of_keys(1), 0..2);
    }
}
