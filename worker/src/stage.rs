//! A loaded pipeline stage behind a backend-independent interface: host-side inputs and outputs,
//! opaque per-sequence caches. The engine chains one or more of these; a gRPC stage server wraps one.

use std::any::Any;
use std::ops::Range;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use ibench_shared::hf::ModelConfig;
use ibench_shared::Quantization;

use crate::device::{ComputeDtype, DeviceSpec};
use crate::error::{EngineError, Result};
use crate::loading::WeightFiles;
use crate::model::{Stage, StageCache, StageIn, StageOut};

/// Activations or tokens entering a stage, on the host.
#[derive(Debug, Clone, PartialEq)]
pub enum HostStageInput {
    /// One chunk of new token ids per sequence.
    Tokens(Vec<Vec<u32>>),
    /// Hidden states `[batch, t_max, hidden]` (row-major) and each sequence's chunk length.
    Hidden {
        data: Vec<f32>,
        lens: Vec<usize>,
        t_max: usize,
    },
}

/// What a stage produces, on the host.
#[derive(Debug, Clone, PartialEq)]
pub enum HostStageOutput {
    Hidden {
        data: Vec<f32>,
        lens: Vec<usize>,
        t_max: usize,
    },
    /// `rows x vocab` logits: one row per sequence, or per (sequence, position) when all positions were asked for.
    Logits {
        data: Vec<f32>,
        rows: usize,
        vocab: usize,
    },
}

/// The KV cache of one sequence in one stage.
pub struct SeqCache {
    inner: Box<dyn Any + Send>,
    len: usize,
}

impl SeqCache {
    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

trait Runner: Send + Sync {
    fn new_cache(&self) -> SeqCache;
    fn forward(
        &self,
        input: HostStageInput,
        caches: &mut [&mut SeqCache],
        all_logits: bool,
    ) -> Result<HostStageOutput>;
}

struct BurnRunner<B: Backend> {
    stage: Stage<B>,
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| EngineError::Compute(format!("{e:?}")))
}

impl<B: Backend> Runner for BurnRunner<B>
where
    Stage<B>: Send + Sync,
    StageCache<B>: Send,
{
    fn new_cache(&self) -> SeqCache {
        SeqCache {
            inner: Box::new(self.stage.new_cache()),
            len: 0,
        }
    }

    fn forward(
        &self,
        input: HostStageInput,
        caches: &mut [&mut SeqCache],
        all_logits: bool,
    ) -> Result<HostStageOutput> {
        let dev = self.stage.device().clone();
        let input = match input {
            HostStageInput::Tokens(t) => StageIn::Tokens(t),
            HostStageInput::Hidden { data, lens, t_max } => {
                let h = self.stage.cfg.hidden_size;
                if data.len() != lens.len() * t_max * h {
                    return Err(EngineError::StageInput(format!(
                        "{} hidden values for {} sequences x {t_max} positions x {h}",
                        data.len(),
                        lens.len()
                    )));
                }
                let x =
                    Tensor::<B, 3>::from_data(TensorData::new(data, [lens.len(), t_max, h]), &dev);
                StageIn::Hidden(x, lens)
            }
        };
        let mut typed: Vec<&mut StageCache<B>> = Vec::with_capacity(caches.len());
        for c in caches.iter_mut() {
            typed.push(
                c.inner
                    .downcast_mut::<StageCache<B>>()
                    .ok_or_else(|| EngineError::StageInput("cache of another stage".into()))?,
            );
        }
        let out = self.stage.forward(input, &mut typed, all_logits)?;
        for c in caches.iter_mut() {
            c.len = c
                .inner
                .downcast_ref::<StageCache<B>>()
                .expect("checked above")
                .len();
        }
        Ok(match out {
            StageOut::Hidden(x, lens) => {
                let t_max = x.dims()[1];
                HostStageOutput::Hidden {
                    data: to_vec(x)?,
                    lens,
                    t_max,
                }
            }
            StageOut::Logits(l) => {
                let [rows, vocab] = l.dims();
                HostStageOutput::Logits {
                    data: to_vec(l)?,
                    rows,
                    vocab,
                }
            }
        })
    }
}

/// A range of a model's layers loaded on one device.
pub struct LoadedStage {
    runner: Box<dyn Runner>,
    cfg: ModelConfig,
    range: Range<usize>,
}

impl LoadedStage {
    /// Loads `range` of the model whose weights are in `weights` onto `device`.
    pub fn load(
        cfg: &ModelConfig,
        weights: &WeightFiles,
        range: Range<usize>,
        device: &DeviceSpec,
        dtype: ComputeDtype,
        quant: Quantization,
    ) -> Result<Self> {
        let runner: Box<dyn Runner> = match (device, dtype) {
            (DeviceSpec::Cpu, ComputeDtype::F32) => {
                let dev = burn::backend::ndarray::NdArrayDevice::Cpu;
                Box::new(BurnRunner {
                    stage: Stage::<burn::backend::NdArray<f32>>::load(
                        cfg,
                        weights,
                        range.clone(),
                        quant,
                        &dev,
                    )?,
                })
            }
            (DeviceSpec::Cpu, ComputeDtype::Bf16) => {
                return Err(EngineError::Device(
                    "cpu".into(),
                    "the CPU backend computes in f32; use --dtype f32".into(),
                ))
            }
            #[cfg(feature = "cuda")]
            (DeviceSpec::Cuda(i), ComputeDtype::F32) => {
                let dev = burn::backend::cuda::CudaDevice::new(*i);
                Box::new(BurnRunner {
                    stage: Stage::<burn::backend::Cuda<f32, i32>>::load(
                        cfg,
                        weights,
                        range.clone(),
                        quant,
                        &dev,
                    )?,
                })
            }
            #[cfg(feature = "cuda")]
            (DeviceSpec::Cuda(i), ComputeDtype::Bf16) => {
                let dev = burn::backend::cuda::CudaDevice::new(*i);
                Box::new(BurnRunner {
                    stage: Stage::<burn::backend::Cuda<half::bf16, i32>>::load(
                        cfg,
                        weights,
                        range.clone(),
                        quant,
                        &dev,
                    )?,
                })
            }
            #[cfg(not(feature = "cuda"))]
            (DeviceSpec::Cuda(i), _) => {
                return Err(EngineError::Device(
                    format!("cuda:{i}"),
                    "this ibench was built without CUDA; rebuild with `--features cuda`".into(),
                ))
            }
        };
        Ok(Self {
            runner,
            cfg: cfg.clone(),
            range,
        })
    }

    /// Convenience: open the folder's weights and load `range`.
    pub fn load_folder(
        folder: &Path,
        range: Range<usize>,
        device: &DeviceSpec,
        dtype: ComputeDtype,
        quant: Quantization,
    ) -> Result<Self> {
        let cfg = ModelConfig::from_folder(folder)?;
        let weights = WeightFiles::open(folder)?;
        Self::load(&cfg, &weights, range, device, dtype, quant)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn layers(&self) -> Range<usize> {
        self.range.clone()
    }
    pub fn is_first(&self) -> bool {
        self.range.start == 0
    }
    pub fn is_last(&self) -> bool {
        self.range.end == self.cfg.num_layers
    }
    pub fn new_cache(&self) -> SeqCache {
        self.runner.new_cache()
    }

    /// One forward step over a batch; appends to every sequence's cache.
    pub fn forward(
        &self,
        input: HostStageInput,
        caches: &mut [&mut SeqCache],
        all_logits: bool,
    ) -> Result<HostStageOutput> {
        self.runner.forward(input, caches, all_logits)
    }
}
