//! Seeded weight initialisation.
//!
//! candle's CPU random generator cannot be seeded (`Device::Cpu.set_seed` is an error), so a
//! model built from a plain `VarMap` differs on every run. [`seeded_var_builder`] creates each
//! fresh weight from its own `StdRng`, seeded by the run's seed and the weight's name, so the
//! result depends neither on the thread nor on the order the layers are built in.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap, var_builder::SimpleBackend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A `VarBuilder` that stores trainable weights in `varmap`, creating missing ones from `seed`.
/// Weights already in `varmap` are returned as they are, so building twice shares them.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Seeded { varmap: varmap.clone(), seed }), dtype, device.clone())
}

struct Seeded {
    varmap: VarMap,
    seed: u64,
}

impl SimpleBackend for Seeded {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut vars = self.varmap.data().lock().expect("VarMap lock poisoned");
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!("shape mismatch for {name}: stored {:?}, requested {shape:?}", var.shape());
            }
            // A stored weight is handed out as it is: one left on another device would only
            // fail later, in the middle of a forward pass, under a less helpful name.
            if !var.device().same_device(device) {
                candle_core::bail!("{name} is stored on {:?} but the model is built on {device:?}", var.device());
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = StdRng::seed_from_u64(self.seed ^ fnv1a(name));
        let n = shape.elem_count();
        let values: Vec<f64> = match init {
            Init::Const(c) => vec![c; n],
            Init::Randn { mean, stdev } => (0..n).map(|_| mean + stdev * standard_normal(&mut rng)).collect(),
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up)).collect(),
            Init::Kaiming { .. } => candle_core::bail!("{name}: Kaiming init is not used by rlhf models"),
        };
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> Result<Tensor> {
        candle_core::bail!("{name}: a fresh weight needs a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().expect("VarMap lock poisoned").contains_key(name)
    }
}

/// Box–Muller transform: one N(0, 1) draw from two uniforms.
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// FNV-1a: a stable hash of a weight name (std's hasher may change between releases).
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
