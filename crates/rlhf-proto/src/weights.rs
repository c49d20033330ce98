//! Policy weights on the wire: a version is a stream of [`WeightChunk`]s, each tensor cut into
//! pieces of at most [`CHUNK_BYTES`] and closed by its CRC32C; the first chunk carries the
//! model's `config.json` so that an empty replica can build the model.
//!
//! [`Assembler`] is the receiving side: it refuses a stream that mixes versions, skips or
//! repeats bytes, misses a tensor, or fails a checksum, and only then hands out tensors (whose
//! values the replica still checks for NaN before it swaps them in).

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use rlhf_model::Config;

use crate::v1::WeightChunk;

/// Why a weight stream is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("weight update refused: {0}")]
pub struct BadWeights(pub String);

type Result<T> = std::result::Result<T, BadWeights>;

/// Bytes per chunk: far below gRPC's default 4 MiB message limit.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Cuts `tensors` (f32) into the chunks of `version`, tensor by tensor in name order.
pub fn encode(
    version: u64,
    tensors: &HashMap<String, Tensor>,
    config: &Config,
    pad_id: u32,
) -> Result<Vec<WeightChunk>> {
    encode_for_epoch(0, version, tensors, config, pad_id)
}

/// [`encode`] for learner `epoch` (see `learner_epoch` in the proto).
pub fn encode_for_epoch(
    epoch: u64,
    version: u64,
    tensors: &HashMap<String, Tensor>,
    config: &Config,
    pad_id: u32,
) -> Result<Vec<WeightChunk>> {
    let config_json = serde_json::to_string(config).map_err(|e| BadWeights(e.to_string()))?;
    let names: std::collections::BTreeSet<&String> = tensors.keys().collect();
    let mut chunks = vec![];
    for name in names {
        let tensor = &tensors[name];
        let values = tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| BadWeights(format!("{name}: {e}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let crc = crc32c::crc32c(&bytes);
        let pieces: Vec<&[u8]> = if bytes.is_empty() { vec![&[]] } else { bytes.chunks(CHUNK_BYTES).collect() };
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            chunks.push(WeightChunk {
                policy_version: version,
                tensor_name: name.clone(),
                shape: tensor.dims().iter().map(|&d| d as u64).collect(),
                dtype: "F32".into(),
                data: piece.to_vec(),
                offset: (i * CHUNK_BYTES) as u64,
                tensor_count: tensors.len() as u32,
                crc32c: (i == last).then_some(crc),
                model_config_json: if chunks.is_empty() { config_json.clone() } else { String::new() },
                pad_token_id: pad_id,
                learner_epoch: epoch,
            });
        }
    }
    Ok(chunks)
}

struct Partial {
    shape: Vec<usize>,
    dtype: DType,
    bytes: Vec<u8>,
    crc32c: Option<u32>,
}

/// A complete, checked version.
#[derive(Debug)]
pub struct WeightUpdate {
    pub epoch: u64,
    pub version: u64,
    pub config: Option<Config>,
    pub pad_id: u32,
    pub tensors: HashMap<String, Tensor>,
}

/// Receives the chunks of one version.
#[derive(Default)]
pub struct Assembler {
    version: Option<u64>,
    epoch: u64,
    tensor_count: u32,
    config: Option<Config>,
    pad_id: u32,
    partial: BTreeMap<String, Partial>,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler").field("version", &self.version).field("tensors", &self.partial.len()).finish()
    }
}

/// The bytes a tensor of `shape` and `dtype` holds, refusing shapes too large to exist (a
/// hostile shape would otherwise overflow the product).
fn byte_len(name: &str, shape: &[usize], dtype: DType) -> Result<usize> {
    shape
        .iter()
        .try_fold(dtype.size_in_bytes(), |n, &d| n.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| BadWeights(format!("{name}: shape {shape:?} is too large")))
}

fn dtype(name: &str) -> Result<DType> {
    match name {
        "F32" => Ok(DType::F32),
        "F16" => Ok(DType::F16),
        "BF16" => Ok(DType::BF16),
        other => Err(BadWeights(format!("unsupported dtype {other:?}"))),
    }
}

impl Assembler {
    pub fn push(&mut self, chunk: WeightChunk) -> Result<()> {
        let bad = |m: String| Err(BadWeights(m));
        match self.version {
            None => {
                self.version = Some(chunk.policy_version);
                self.epoch = chunk.learner_epoch;
                self.tensor_count = chunk.tensor_count;
            }
            Some(v) if v != chunk.policy_version || self.epoch != chunk.learner_epoch => {
                return bad(format!("one stream mixes versions {v} and {}", chunk.policy_version));
            }
            Some(_) => {}
        }
        if !chunk.model_config_json.is_empty() {
            let config: Config =
                serde_json::from_str(&chunk.model_config_json).map_err(|e| BadWeights(format!("model config: {e}")))?;
            config.validate().map_err(|e| BadWeights(format!("model config: {e}")))?;
            self.config = Some(config);
            self.pad_id = chunk.pad_token_id;
        }
        let dtype = dtype(&chunk.dtype)?;
        let shape: Vec<usize> = chunk.shape.iter().map(|&d| d as usize).collect();
        let partial = self.partial.entry(chunk.tensor_name.clone()).or_insert_with(|| Partial {
            shape: shape.clone(),
            dtype,
            bytes: vec![],
            crc32c: None,
        });
        if partial.shape != shape || partial.dtype != dtype {
            return bad(format!("{}: shape or dtype changed between chunks", chunk.tensor_name));
        }
        if partial.crc32c.is_some() {
            return bad(format!("{}: chunk after the tensor's last one", chunk.tensor_name));
        }
        if chunk.offset != partial.bytes.len() as u64 {
            return bad(format!(
                "{}: chunk at byte {} but {} bytes arrived",
                chunk.tensor_name,
                chunk.offset,
                partial.bytes.len()
            ));
        }
        let expected = byte_len(&chunk.tensor_name, &shape, dtype)?;
        if partial.bytes.len() + chunk.data.len() > expected {
            return bad(format!("{}: more bytes than its shape holds", chunk.tensor_name));
        }
        partial.bytes.extend_from_slice(&chunk.data);
        partial.crc32c = chunk.crc32c;
        Ok(())
    }

    /// The checked version, or why it is refused.
    pub fn finish(self) -> Result<WeightUpdate> {
        let version = self.version.ok_or_else(|| BadWeights("empty update".into()))?;
        if self.partial.len() != self.tensor_count as usize {
            return Err(BadWeights(format!("{} of {} tensors arrived", self.partial.len(), self.tensor_count)));
        }
        let mut tensors = HashMap::with_capacity(self.partial.len());
        for (name, p) in self.partial {
            let expected = byte_len(&name, &p.shape, p.dtype)?;
            if p.bytes.len() != expected {
                return Err(BadWeights(format!("{name}: {} of {expected} bytes arrived", p.bytes.len())));
            }
            match p.crc32c {
                Some(crc) if crc == crc32c::crc32c(&p.bytes) => {}
                Some(_) => return Err(BadWeights(format!("{name}: checksum mismatch"))),
                None => return Err(BadWeights(format!("{name}: no checksum"))),
            }
            let tensor = Tensor::from_raw_buffer(&p.bytes, p.dtype, &p.shape, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| BadWeights(format!("{name}: {e}")))?;
            tensors.insert(name, tensor);
        }
        Ok(WeightUpdate { epoch: self.epoch, version, config: self.config, pad_id: self.pad_id, tensors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights() -> (Config, HashMap<String, Tensor>) {
        let tensor =
            |n: usize, shift: f32| Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().affine(0.5, f64::from(shift));
        let tensors = [("a.weight", 6, 0.0), ("b.weight", 10, 1.0), ("c.bias", 3, -2.0), ("d.weight", 8, 3.0)]
            .into_iter()
            .map(|(name, n, shift)| (name.to_string(), tensor(n, shift).unwrap()))
            .collect();
        (Config::tiny(20, 16, 1, 2, 1), tensors)
    }

    fn assemble(chunks: Vec<WeightChunk>) -> Result<WeightUpdate> {
        let mut a = Assembler::default();
        for c in chunks {
            a.push(c)?;
        }
        a.finish()
    }

    #[test]
    fn a_version_survives_the_trip_through_chunks_bit_for_bit() {
        let (cfg, mut tensors) = weights();
        // One tensor larger than a chunk, so it is split.
        let big = Tensor::arange(0f32, (CHUNK_BYTES / 4 + 1000) as f32, &Device::Cpu).unwrap();
        tensors.insert("extra.big".into(), big);
        let chunks = encode(5, &tensors, &cfg, 0).unwrap();
        assert!(chunks.iter().filter(|c| c.tensor_name == "extra.big").count() == 2);
        assert!(!chunks[0].model_config_json.is_empty() && chunks[1..].iter().all(|c| c.model_config_json.is_empty()));
        let update = assemble(chunks).unwrap();
        assert_eq!(update.version, 5);
        assert_eq!(update.config.as_ref(), Some(&cfg));
        assert_eq!(update.tensors.len(), tensors.len());
        for (name, t) in &tensors {
            let got = update.tensors[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name}");
        }
    }

    #[test]
    fn corrupt_incomplete_or_mixed_updates_are_refused() {
        let (cfg, tensors) = weights();
        let good = encode(2, &tensors, &cfg, 0).unwrap();
        let refused = |chunks: Vec<WeightChunk>, why: &str| {
            let err = assemble(chunks).expect_err(why).to_string();
            assert!(err.contains("refused"), "{why}: {err}");
        };
        let mut flipped = good.clone();
        flipped[1].data[0] ^= 0x40;
        refused(flipped, "a flipped bit fails the checksum");
        refused(good[..good.len() - 1].to_vec(), "a missing tensor");
        let mut mixed = good.clone();
        mixed[2].policy_version = 3;
        refused(mixed, "two versions in one stream");
        let mut gap = good.clone();
        gap[1].offset += 4;
        refused(gap, "a gap in a tensor's bytes");
        let mut bad_config = good.clone();
        bad_config[0].model_config_json = "{\"hidden_size\": \"wide\"}".into();
        refused(bad_config, "a config that does not parse");
    }
}
