//! Padding masks turned into what attention needs: per-row positions and an additive bias.
//!
//! Rows of a batch have different lengths. Sampling pads on the left (so every row's next token
//! sits in the last column), training data may pad on either side. Both work as long as
//! positions count only real tokens and no query ever attends to a padding key; this module is
//! the one place that encodes that rule.

use candle_core::{Device, Result, Tensor};

/// Added to the attention score of a masked key. Finite, so that even a mistaken fully masked
/// row gives a softmax instead of NaN.
pub const MASKED: f32 = -1e9;

/// Reads a `[B, T]` 0/1 attention mask (any dtype) into host memory.
pub fn mask_rows(attention_mask: &Tensor) -> Result<Vec<Vec<bool>>> {
    let rows = attention_mask.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    Ok(rows.into_iter().map(|r| r.into_iter().map(|m| m != 0.0).collect()).collect())
}

/// Position of every token: the number of real tokens before it in its row.
/// Padding gets position 0; its value is irrelevant because nothing attends to it.
pub fn positions(mask: &[Vec<bool>]) -> Vec<Vec<u32>> {
    mask.iter()
        .map(|row| {
            let mut next = 0u32;
            row.iter()
                .map(|&real| {
                    let pos = next;
                    if real {
                        next += 1;
                    }
                    if real { pos } else { 0 }
                })
                .collect()
        })
        .collect()
}

/// Additive attention bias `[B, 1, Tq, Tk]` for queries that are the last `Tq` of `Tk` keys:
/// query `i` (absolute index `Tk - Tq + i`) may see key `j` iff `j <= Tk - Tq + i` and key `j`
/// is a real token. A query always sees itself, so a padding query attends to itself alone
/// rather than to nothing (which would make its softmax depend on rounding of the bias).
/// `key_mask` is `[B][Tk]`.
pub fn attention_bias(key_mask: &[Vec<bool>], num_queries: usize, device: &Device) -> Result<Tensor> {
    let batch = key_mask.len();
    let num_keys = key_mask.first().map_or(0, Vec::len);
    let offset = num_keys - num_queries;
    let mut bias = Vec::with_capacity(batch * num_queries * num_keys);
    for row in key_mask {
        for i in 0..num_queries {
            let last_visible = offset + i;
            bias.extend(
                row.iter()
                    .enumerate()
                    .map(|(j, &real)| if (real && j <= last_visible) || j == last_visible { 0.0 } else { MASKED }),
            );
        }
    }
    Tensor::from_vec(bias, (batch, 1, num_queries, num_keys), device)
}

/// `index_select` indices of one column per row (`columns[row]`) in the flattened `[B · width]`
/// grid of a batch: where the reward head reads, from [`last_real_index`].
pub fn grid_index(columns: &[usize], width: usize, device: &Device) -> Result<Tensor> {
    let flat: Vec<u32> = columns.iter().enumerate().map(|(row, &col)| (row * width + col) as u32).collect();
    Tensor::from_vec(flat, columns.len(), device)
}

/// Index of the last real token of every row (the reward head reads there).
pub fn last_real_index(mask: &[Vec<bool>]) -> Result<Vec<usize>> {
    mask.iter()
        .enumerate()
        .map(|(b, row)| {
            row.iter()
                .rposition(|&real| real)
                .ok_or_else(|| candle_core::Error::Msg(format!("row {b} of the attention mask has no real token")))
        })
        .collect()
}
