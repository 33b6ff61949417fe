//! Where and in which precision a stage computes.

use std::fmt;
use std::str::FromStr;

use crate::error::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    EngineError::Device(other.into(), "expected cpu, cuda or cuda:N".into())
                }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The activation and weight precision of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComputeDtype {
    F32,
    Bf16,
}

impl ComputeDtype {
    /// f32 on the CPU; bf16 on CUDA (as transformers runs these checkpoints).
    pub fn default_for(device: DeviceSpec) -> Self {
        match device {
            DeviceSpec::Cpu => Self::F32,
            DeviceSpec::Cuda(_) => Self::Bf16,
        }
    }
    pub fn bytes(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
}

impl FromStr for ComputeDtype {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(EngineError::Device(
                other.into(),
                "dtype must be f32 or bf16".into(),
            )),
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}
