//! The token embedding table, by rows for training or by columns for a decode-layout copy.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::Embedding;

/// `[vocab, hidden]` as candle-nn looks it up (row-major), or stored transposed (`[hidden, vocab]`
/// row-major), the layout a tied LM head reads in place when decoding ([`crate::Llama::into_decode_layout`]):
/// one table then serves both the lookup and the head instead of two copies of the largest weight.
#[derive(Debug, Clone)]
pub(crate) enum TokenEmbedding {
    Rows(Embedding),
    /// `[hidden, vocab]` row-major; the lookup selects columns.
    Columns(Tensor),
}

impl TokenEmbedding {
    pub(crate) fn rows(table: Tensor, hidden: usize) -> Self {
        TokenEmbedding::Rows(Embedding::new(table, hidden))
    }

    /// The table as `[vocab, hidden]` (a transposed view in the column layout).
    pub(crate) fn table(&self) -> Result<Tensor> {
        match self {
            TokenEmbedding::Rows(e) => Ok(e.embeddings().clone()),
            TokenEmbedding::Columns(t) => t.t(),
        }
    }

    /// The same table stored by columns, in fresh storage.
    pub(crate) fn into_columns(self) -> Result<Self> {
        match self {
            TokenEmbedding::Rows(e) => Ok(TokenEmbedding::Columns(fresh_contiguous(&e.embeddings().t()?)?)),
            TokenEmbedding::Columns(t) => Ok(TokenEmbedding::Columns(t.copy()?.detach())),
        }
    }

    /// The same table in fresh storage.
    pub(crate) fn copy(&self) -> Result<Self> {
        match self {
            TokenEmbedding::Rows(e) => Ok(TokenEmbedding::rows(e.embeddings().copy()?.detach(), e.hidden_size())),
            TokenEmbedding::Columns(t) => Ok(TokenEmbedding::Columns(t.copy()?.detach())),
        }
    }

    pub(crate) fn device(&self) -> &Device {
        match self {
            TokenEmbedding::Rows(e) => e.embeddings().device(),
            TokenEmbedding::Columns(t) => t.device(),
        }
    }

    /// `ids: [B, T]` → `[B, T, hidden]`.
    pub(crate) fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            TokenEmbedding::Rows(e) => e.forward(ids),
            TokenEmbedding::Columns(t) => {
                let hidden = t.dim(0)?;
                let mut shape = ids.dims().to_vec();
                shape.push(hidden);
                t.index_select(&ids.flatten_all()?, 1)?.t()?.contiguous()?.reshape(shape)
            }
        }
    }
}

/// `t` laid out contiguously in storage of its own (`contiguous` alone hands back `t` itself when
/// it already is contiguous, as a transposed vector is), detached: a copy made for sampling must
/// not tie every op run on it to its source's gradient graph.
pub(crate) fn fresh_contiguous(t: &Tensor) -> Result<Tensor> {
    Ok(if t.is_contiguous() { t.copy()? } else { t.contiguous()? }.detach())
}
