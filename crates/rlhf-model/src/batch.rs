//! Prompt + response sequences as one right-padded batch, and the grid per-token RL quantities
//! live on.
//!
//! Row `b` holds `prompt_b ++ response_b ++ padding`. Per-token quantities (log-probs, values,
//! KL, rewards, advantages) live on the *next-token grid* `[B, T - 1]`: entry `t` belongs to the
//! token at `t + 1`, predicted from the prefix ending at `t`. Response token `j` of row `b` sits at
//! grid column `len(prompt_b) - 1 + j`; `response_mask` marks those columns.

use candle_core::{DType, Device, Result, Tensor};

/// A batch of (prompt, response) token sequences.
#[derive(Debug, Clone)]
pub struct SequenceBatch {
    /// `[B, T]` token ids, right-padded.
    pub ids: Tensor,
    /// `[B, T]` 1.0 for real tokens.
    pub attention_mask: Tensor,
    /// `[B, T - 1]` 1.0 on the grid columns of response tokens.
    pub response_mask: Tensor,
    pub prompt_lens: Vec<usize>,
    pub response_lens: Vec<usize>,
    width: usize,
}

impl SequenceBatch {
    /// Every prompt needs at least one token and every response at least one.
    pub fn new(rows: &[(&[u32], &[u32])], pad_id: u32, device: &Device) -> Result<Self> {
        if rows.is_empty() {
            candle_core::bail!("empty batch");
        }
        if let Some(i) = rows.iter().position(|(p, r)| p.is_empty() || r.is_empty()) {
            candle_core::bail!("row {i} has an empty prompt or response");
        }
        let width = rows.iter().map(|(p, r)| p.len() + r.len()).max().unwrap_or(0);
        let batch = rows.len();
        let mut ids = Vec::with_capacity(batch * width);
        let mut attention = Vec::with_capacity(batch * width);
        let mut response = vec![0f32; batch * (width - 1)];
        for (b, (prompt, resp)) in rows.iter().enumerate() {
            let len = prompt.len() + resp.len();
            ids.extend(prompt.iter().chain(resp.iter()).copied().chain(std::iter::repeat_n(pad_id, width - len)));
            attention.extend(std::iter::repeat_n(1f32, len).chain(std::iter::repeat_n(0f32, width - len)));
            for j in 0..resp.len() {
                response[b * (width - 1) + prompt.len() - 1 + j] = 1.0;
            }
        }
        Ok(SequenceBatch {
            ids: Tensor::from_vec(ids, (batch, width), device)?,
            attention_mask: Tensor::from_vec(attention, (batch, width), device)?,
            response_mask: Tensor::from_vec(response, (batch, width - 1), device)?,
            prompt_lens: rows.iter().map(|(p, _)| p.len()).collect(),
            response_lens: rows.iter().map(|(_, r)| r.len()).collect(),
            width,
        })
    }

    pub fn len(&self) -> usize {
        self.prompt_lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prompt_lens.is_empty()
    }

    /// The first next-token grid column that can hold a response token (the shortest prompt's
    /// last token): log-probs and values are only read from there on.
    pub fn first_response_column(&self) -> usize {
        self.prompt_lens.iter().min().copied().unwrap_or(1) - 1
    }

    /// Per-response-token values (one `Vec` per row, response order) placed on the grid, 0 elsewhere.
    pub fn to_grid(&self, rows: &[Vec<f32>]) -> Result<Tensor> {
        let cols = self.width - 1;
        let mut grid = vec![0f32; rows.len() * cols];
        for (b, row) in rows.iter().enumerate() {
            if row.len() != self.response_lens[b] {
                candle_core::bail!("row {b}: {} values for {} response tokens", row.len(), self.response_lens[b]);
            }
            let start = b * cols + self.prompt_lens[b] - 1;
            grid[start..start + row.len()].copy_from_slice(row);
        }
        Tensor::from_vec(grid, (rows.len(), cols), self.ids.device())
    }

    /// The response-token entries of a grid tensor `[B, T - 1]`, one `Vec` per row.
    pub fn from_grid(&self, grid: &Tensor) -> Result<Vec<Vec<f32>>> {
        let rows = grid.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(b, row)| {
                let start = self.prompt_lens[b] - 1;
                row[start..start + self.response_lens[b]].to_vec()
            })
            .collect())
    }

    /// Rows `index` of this batch, as a new batch (for minibatches).
    pub fn select(&self, index: &[usize]) -> Result<SequenceBatch> {
        let idx =
            Tensor::from_vec(index.iter().map(|&i| i as u32).collect::<Vec<_>>(), index.len(), self.ids.device())?;
        Ok(SequenceBatch {
            ids: self.ids.index_select(&idx, 0)?,
            attention_mask: self.attention_mask.index_select(&idx, 0)?,
            response_mask: self.response_mask.index_select(&idx, 0)?,
            prompt_lens: index.iter().map(|&i| self.prompt_lens[i]).collect(),
            response_lens: index.iter().map(|&i| self.response_lens[i]).collect(),
            width: self.width,
        })
    }
}
