//! Where the model runs: `--device cpu` (the default), `cuda` or `cuda:N`.
//!
//! CUDA needs a build with the `cuda` feature (candle's CUDA backend); a build without it says so
//! and how to get one, instead of candle's bare "not built with cuda support".

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Result};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(ordinal)) => Ok(DeviceChoice::Cuda(ordinal)),
                _ => Err(format!("unknown device {s:?}: expected cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device: on a build without the `cuda` feature, a CUDA choice is an error that
    /// names the feature; on one with it, candle's error when the driver or GPU is missing.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(_) if !candle_core::utils::cuda_is_available() => candle_core::bail!(
                "{self} asked for, but this rlhf was built without CUDA: build it with \
                 `cargo build --release -p rlhf --features cuda` on a machine with the CUDA toolkit"
            ),
            DeviceChoice::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| {
                candle_core::Error::Msg(format!("cannot open {self} (is a GPU and its driver there?): {e}"))
            }),
        }
    }
}

/// The dtype to train and score in on `device`: f32 on the CPU (the fused kernels are f32, and
/// this CPU has no fast bf16), bf16 on a GPU when `bf16` is asked for.
pub fn compute_dtype(device: &Device, bf16: bool) -> DType {
    if bf16 && !device.is_cpu() { DType::BF16 } else { DType::F32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_the_command_line_spells_them() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("CUDA".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("cuda:x".parse::<DeviceChoice>().unwrap_err().contains("cuda:N"));
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
    }

    #[test]
    fn a_build_without_cuda_says_how_to_get_one() {
        if candle_core::utils::cuda_is_available() {
            return;
        }
        let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
