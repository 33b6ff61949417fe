//! Placement maths: which layers of which model go on which device, as a pure function of layer
//! sizes, the KV-cache budget and the free memory of each device.
//!
//! The rules, in order of preference for each model (largest model first, so smaller ones fill the
//! gaps):
//! 1. the whole model on one device: the fullest device it fits on (best fit, to pack models);
//! 2. split across devices of one worker (activations never leave the host), fewest devices first;
//! 3. split across workers, fewest devices first, whole workers at a time.
//!
//! A split gives each device a consecutive layer range in proportion to its free memory; the
//! first stage also holds the embeddings, the last the final norm and the LM head.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::hf::ModelConfig;
use crate::Quantization;

/// One compute device as a worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `cpu`, `cuda:0`, ...
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// A device stages can go on: its worker, its name there and the memory placement may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSlot {
    pub worker: String,
    pub device: String,
    pub free_bytes: u64,
}

/// What one model needs, layer by layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDemand {
    pub model: String,
    /// Weights plus KV-cache budget of each decoder layer.
    pub layer_bytes: Vec<u64>,
    /// Held by the stage with layer 0 only: the token embeddings.
    pub first_extra_bytes: u64,
    /// Held by the stage with the last layer only: the final norm and the LM head.
    pub last_extra_bytes: u64,
    /// Counted in both extras but held once by a stage with the first and the last layer (a head
    /// tied to the embeddings).
    pub shared_extra_bytes: u64,
    /// Split into at least this many stages on distinct devices (1: as few as fit).
    pub min_stages: usize,
}

impl ModelDemand {
    /// The demand of a model from its config: weights at `weight_bits` per parameter (16 for bf16,
    /// 8 or 4 when quantized), a KV cache of `kv_tokens` tokens at `kv_bytes_per_value`.
    pub fn from_config(
        model: &str,
        cfg: &ModelConfig,
        weight_bits: u64,
        kv_tokens: u64,
        kv_bytes_per_value: u64,
    ) -> Self {
        let bytes = |params: u64| params * weight_bits / 8;
        let kv_per_layer =
            cfg.kv_bytes_per_token(kv_bytes_per_value) / cfg.num_layers.max(1) as u64;
        let layer = bytes(cfg.layer_params()) + kv_tokens * kv_per_layer;
        let embed = (cfg.vocab_size * cfg.hidden_size) as u64;
        Self {
            model: model.to_string(),
            layer_bytes: vec![layer; cfg.num_layers],
            first_extra_bytes: bytes(embed),
            // A tied head is the embedding matrix: the last stage needs its own copy unless it is
            // also the first.
            last_extra_bytes: bytes(embed + cfg.hidden_size as u64),
            shared_extra_bytes: if cfg.tie_word_embeddings {
                bytes(embed)
            } else {
                0
            },
            min_stages: 1,
        }
    }

    /// Everything on one device.
    pub fn total_bytes(&self) -> u64 {
        self.stage_bytes(0..self.layer_bytes.len())
    }

    /// The bytes of a stage holding `layers`.
    pub fn stage_bytes(&self, layers: Range<usize>) -> u64 {
        let mut b: u64 = self.layer_bytes[layers.clone()].iter().sum();
        if layers.start == 0 {
            b += self.first_extra_bytes;
        }
        if layers.end == self.layer_bytes.len() {
            b += self.last_extra_bytes;
            if layers.start == 0 {
                b -= self.shared_extra_bytes;
            }
        }
        b
    }
}

/// Bits a weight takes in memory: the compute dtype's, or the quantized size with its per-block
/// scales (8.5 and 4.5 bits, rounded up).
pub fn weight_bits(quantization: Quantization, dtype_bytes: u64) -> u64 {
    match quantization {
        Quantization::None => dtype_bytes * 8,
        Quantization::Int8 => 9,
        Quantization::Int4 => 5,
    }
}

/// Knobs of the placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementOptions {
    /// Memory kept free on every device (activations, allocator slack, other processes).
    pub reserve_bytes: u64,
}

impl Default for PlacementOptions {
    fn default() -> Self {
        Self {
            reserve_bytes: 512 << 20,
        }
    }
}

/// One stage: a layer range of a model on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageAssignment {
    pub worker: String,
    pub device: String,
    pub layers: Range<usize>,
    /// Memory the stage is expected to use.
    pub bytes: u64,
}

/// Where a stage's weights come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelSource {
    /// A model folder, at the same path on every host.
    Path(PathBuf),
    /// A name in the worker's model registry.
    Registry(String),
}

/// A stage to load on a worker: a model, a layer range, a device, a precision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Chosen by the coordinator, unique in the cluster.
    pub stage_id: String,
    pub model: ModelSource,
    pub layers: Range<usize>,
    pub device: String,
    /// `f32` or `bf16`; `None`: the device's default.
    pub dtype: Option<String>,
    pub quantization: Quantization,
}

/// Where one model goes: its stages in pipeline order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPlacement {
    pub model: String,
    pub stages: Vec<StageAssignment>,
}

/// Why a placement is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("model '{model}' has no layers")]
    NoLayers { model: String },
    #[error(
        "no devices to place '{model}' on: start a worker (`ibench worker --coordinator URL`)"
    )]
    NoDevices { model: String },
    #[error("model '{model}' cannot be split into {stages} stages: it has {layers} layers and the cluster {devices} usable devices")]
    TooManyStages {
        model: String,
        stages: usize,
        layers: usize,
        devices: usize,
    },
    #[error(
        "model '{model}' does not fit: it needs {} ({layers} layers, {} per layer, {} embeddings and head), \
         the cluster has {} free on {devices} devices (largest {}, {} reserved on each){}; \
         add devices, quantize (--load-in-8bit, --load-in-4bit) or lower the KV-cache budget",
        Gib(*need_bytes), Gib(*largest_layer_bytes), Gib(*extra_bytes), Gib(*free_bytes), Gib(*largest_device_bytes),
        Gib(*reserve_bytes), if *placed_before > 0 { format!(" after placing {placed_before} other model(s)") } else { String::new() }
    )]
    DoesNotFit {
        model: String,
        need_bytes: u64,
        layers: usize,
        largest_layer_bytes: u64,
        extra_bytes: u64,
        free_bytes: u64,
        devices: usize,
        largest_device_bytes: u64,
        reserve_bytes: u64,
        placed_before: usize,
    },
}

/// Bytes shown in GiB with two decimals.
pub struct Gib(pub u64);

impl fmt::Display for Gib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} GiB", self.0 as f64 / (1u64 << 30) as f64)
    }
}

/// Places every model; the answer is in the order of `models`. Models are placed largest first,
/// each in the memory the ones before it left.
pub fn place(
    models: &[ModelDemand],
    devices: &[DeviceSlot],
    opts: &PlacementOptions,
) -> Result<Vec<ModelPlacement>, PlacementError> {
    let mut free: Vec<u64> = devices
        .iter()
        .map(|d| d.free_bytes.saturating_sub(opts.reserve_bytes))
        .collect();
    let mut order: Vec<usize> = (0..models.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(models[i].total_bytes()));
    let mut out: Vec<Option<ModelPlacement>> = vec![None; models.len()];
    for (placed_before, &i) in order.iter().enumerate() {
        let m = &models[i];
        let stages = place_one(m, devices, &free).map_err(|e| match e {
            PlacementError::DoesNotFit { .. } => {
                does_not_fit(m, devices, &free, opts, placed_before)
            }
            other => other,
        })?;
        for (dev, layers) in &stages {
            free[*dev] -= m.stage_bytes(layers.clone());
        }
        out[i] = Some(ModelPlacement {
            model: m.model.clone(),
            stages: stages
                .into_iter()
                .map(|(dev, layers)| StageAssignment {
                    worker: devices[dev].worker.clone(),
                    device: devices[dev].device.clone(),
                    bytes: m.stage_bytes(layers.clone()),
                    layers,
                })
                .collect(),
        });
    }
    Ok(out
        .into_iter()
        .map(|p| p.expect("every model placed"))
        .collect())
}

fn does_not_fit(
    m: &ModelDemand,
    devices: &[DeviceSlot],
    free: &[u64],
    opts: &PlacementOptions,
    placed_before: usize,
) -> PlacementError {
    PlacementError::DoesNotFit {
        model: m.model.clone(),
        need_bytes: m.total_bytes(),
        layers: m.layer_bytes.len(),
        largest_layer_bytes: m.layer_bytes.iter().copied().max().unwrap_or(0),
        extra_bytes: m.first_extra_bytes + m.last_extra_bytes,
        free_bytes: free.iter().sum(),
        devices: devices.len(),
        largest_device_bytes: free.iter().copied().max().unwrap_or(0),
        reserve_bytes: opts.reserve_bytes,
        placed_before,
    }
}

/// Stages as (device index, layers).
type Split = Vec<(usize, Range<usize>)>;

/// Stages of one model as (device index, layers); `DoesNotFit` is filled in by the caller.
fn place_one(
    m: &ModelDemand,
    devices: &[DeviceSlot],
    free: &[u64],
) -> Result<Vec<(usize, Range<usize>)>, PlacementError> {
    let n = m.layer_bytes.len();
    if n == 0 {
        return Err(PlacementError::NoLayers {
            model: m.model.clone(),
        });
    }
    if devices.is_empty() {
        return Err(PlacementError::NoDevices {
            model: m.model.clone(),
        });
    }
    let min_stages = m.min_stages.max(1);
    let usable = free.iter().filter(|&&f| f > 0).count();
    if min_stages > n || min_stages > usable {
        return Err(PlacementError::TooManyStages {
            model: m.model.clone(),
            stages: min_stages,
            layers: n,
            devices: usable,
        });
    }
    // 1. One device: the one with the least free memory that holds everything.
    if min_stages == 1 {
        let need = m.total_bytes();
        if let Some(d) = (0..devices.len())
            .filter(|&d| free[d] >= need)
            .min_by_key(|&d| (free[d], d))
        {
            return Ok(vec![(d, 0..n)]);
        }
    }
    let k_min = min_stages.max(2);
    // Workers in first-seen order, each with its devices by decreasing free memory.
    let mut workers: Vec<(&str, Vec<usize>)> = Vec::new();
    for (d, slot) in devices.iter().enumerate() {
        if free[d] == 0 {
            continue;
        }
        match workers.iter_mut().find(|(w, _)| *w == slot.worker) {
            Some((_, list)) => list.push(d),
            None => workers.push((&slot.worker, vec![d])),
        }
    }
    for (_, list) in &mut workers {
        list.sort_by_key(|&d| (std::cmp::Reverse(free[d]), d));
    }
    // 2. Devices of one worker: fewest devices, then the worker with the least free memory.
    let mut best: Option<(usize, u64, Split)> = None;
    for (_, list) in &workers {
        let total: u64 = list.iter().map(|&d| free[d]).sum();
        for k in k_min..=list.len().min(n) {
            if let Some(split) = split(m, &list[..k], free) {
                if best
                    .as_ref()
                    .is_none_or(|(bk, bt, _)| (k, total) < (*bk, *bt))
                {
                    best = Some((k, total, split));
                }
                break;
            }
        }
    }
    if let Some((_, _, split)) = best {
        return Ok(split);
    }
    // 3. Across workers: the workers with the most free memory first, whole workers at a time.
    workers.sort_by_key(|(_, list)| std::cmp::Reverse(list.iter().map(|&d| free[d]).sum::<u64>()));
    let all: Vec<usize> = workers
        .iter()
        .flat_map(|(_, list)| list.iter().copied())
        .collect();
    for k in k_min..=all.len().min(n) {
        if let Some(split) = split(m, &all[..k], free) {
            return Ok(split);
        }
    }
    Err(PlacementError::DoesNotFit {
        model: m.model.clone(),
        need_bytes: 0,
        layers: n,
        largest_layer_bytes: 0,
        extra_bytes: 0,
        free_bytes: 0,
        devices: 0,
        largest_device_bytes: 0,
        reserve_bytes: 0,
        placed_before: 0,
    })
}

/// Consecutive layer ranges for `devs` (in pipeline order), each at least one layer, in proportion
/// to free memory; falls back to filling each device in turn. `None` when neither fits.
fn split(m: &ModelDemand, devs: &[usize], free: &[u64]) -> Option<Vec<(usize, Range<usize>)>> {
    let n = m.layer_bytes.len();
    let k = devs.len();
    if k == 0 || k > n {
        return None;
    }
    let caps: Vec<u64> = devs.iter().map(|&d| free[d]).collect();
    let fits = |ranges: &[Range<usize>]| {
        ranges
            .iter()
            .zip(&caps)
            .all(|(r, &c)| m.stage_bytes(r.clone()) <= c)
    };
    let cap_total: u128 = caps.iter().map(|&c| c as u128).sum();
    let need_total = m.total_bytes() as u128;
    // Proportional: stage i ends where the running cost crosses its share of the running capacity.
    let mut ranges = Vec::with_capacity(k);
    let mut start = 0;
    let mut cost: u128 = m.first_extra_bytes as u128;
    let mut cap_acc: u128 = 0;
    for (i, &c) in caps.iter().enumerate().take(k - 1) {
        cap_acc += c as u128;
        let target = need_total * cap_acc / cap_total.max(1);
        let mut end = start + 1;
        cost += m.layer_bytes[start] as u128;
        // Leave one layer for every later stage.
        while end < n - (k - 1 - i) && cost + m.layer_bytes[end] as u128 / 2 <= target {
            cost += m.layer_bytes[end] as u128;
            end += 1;
        }
        ranges.push(start..end);
        start = end;
    }
    ranges.push(start..n);
    if fits(&ranges) {
        return Some(devs.iter().copied().zip(ranges).collect());
    }
    // Greedy: each stage takes as many layers as it holds, leaving one for every later stage.
    let mut ranges = Vec::with_capacity(k);
    let mut start = 0;
    for (i, &c) in caps.iter().enumerate().take(k - 1) {
        let mut end = start + 1;
        while end < n - (k - 1 - i) && m.stage_bytes(start..end + 1) <= c {
            end += 1;
        }
        ranges.push(start..end);
        start = end;
    }
    ranges.push(start..n);
    fits(&ranges).then(|| devs.iter().copied().zip(ranges).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::HfConfig;

    const GB: u64 = 1_000_000_000;
    const GIB: u64 = 1 << 30;

    /// Qwen3-8B's published shape: 36 layers, ~16.4 GB of bf16 weights.
    fn qwen3_8b() -> ModelConfig {
        let hf: HfConfig = serde_json::from_str(
            r#"{"architectures":["Qwen3ForCausalLM"],"head_dim":128,"hidden_size":4096,"intermediate_size":12288,
            "max_position_embeddings":40960,"num_attention_heads":32,"num_hidden_layers":36,"num_key_value_heads":8,
            "rope_theta":1000000,"tie_word_embeddings":false,"vocab_size":151936}"#,
        )
        .unwrap();
        ModelConfig::resolve(&hf, None).unwrap()
    }

    /// Qwen3-8B in bf16 with a 4096-token bf16 KV cache (0.6 GB).
    fn demand_8b(name: &str) -> ModelDemand {
        ModelDemand::from_config(name, &qwen3_8b(), 16, 4096, 2)
    }

    fn gpus(worker: &str, sizes: &[u64]) -> Vec<DeviceSlot> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| DeviceSlot {
                worker: worker.into(),
                device: format!("cuda:{i}"),
                free_bytes: s,
            })
            .collect()
    }

    fn opts() -> PlacementOptions {
        PlacementOptions { reserve_bytes: 0 }
    }

    fn check_cover(m: &ModelDemand, p: &ModelPlacement) {
        let mut at = 0;
        for s in &p.stages {
            assert_eq!(s.layers.start, at, "stages are consecutive: {p:?}");
            assert!(!s.layers.is_empty());
            assert_eq!(s.bytes, m.stage_bytes(s.layers.clone()));
            at = s.layers.end;
        }
        assert_eq!(at, m.layer_bytes.len());
    }

    #[test]
    fn qwen3_8b_shape_is_about_16_gb() {
        let d = demand_8b("q");
        let weights = ModelDemand::from_config("q", &qwen3_8b(), 16, 0, 2).total_bytes();
        assert!((16 * GB..17 * GB).contains(&weights), "{weights}");
        // 4096 tokens x 36 layers x 8 kv heads x 128 x 2 (k, v) x 2 bytes
        assert_eq!(d.total_bytes() - weights, 4096 * 36 * 8 * 128 * 2 * 2);
    }

    #[test]
    fn fits_one_24gb_gpu_goes_on_one() {
        let m = demand_8b("qwen3-8b");
        let p = place(std::slice::from_ref(&m), &gpus("a", &[24 * GB]), &opts()).unwrap();
        assert_eq!(p[0].stages.len(), 1);
        assert_eq!(p[0].stages[0].layers, 0..36);
        assert_eq!(p[0].stages[0].device, "cuda:0");
    }

    #[test]
    fn prefers_one_gpu_over_a_split_even_with_two() {
        let m = demand_8b("qwen3-8b");
        let mut devs = gpus("a", &[12 * GB, 24 * GB]);
        devs.extend(gpus("b", &[40 * GB]));
        let p = place(std::slice::from_ref(&m), &devs, &opts()).unwrap();
        // Best fit: the fullest device that holds it.
        assert_eq!(
            (
                p[0].stages.len(),
                p[0].stages[0].worker.as_str(),
                p[0].stages[0].device.as_str()
            ),
            (1, "a", "cuda:1")
        );
    }

    #[test]
    fn two_12gb_gpus_of_one_worker_split_evenly() {
        let m = demand_8b("qwen3-8b");
        let mut devs = gpus("a", &[12 * GB, 12 * GB]);
        // A worker with a single big-but-too-small GPU must not be chosen over a same-host split.
        devs.extend(gpus("b", &[10 * GB]));
        let p = place(std::slice::from_ref(&m), &devs, &opts()).unwrap();
        check_cover(&m, &p[0]);
        assert_eq!(p[0].stages.len(), 2);
        assert!(p[0].stages.iter().all(|s| s.worker == "a"));
        assert_eq!(p[0].stages[0].layers, 0..18);
        for s in &p[0].stages {
            assert!(s.bytes <= 12 * GB);
        }
    }

    #[test]
    fn split_follows_free_memory() {
        let m = demand_8b("qwen3-8b");
        let p = place(
            std::slice::from_ref(&m),
            &gpus("a", &[16 * GB, 8 * GB]),
            &opts(),
        )
        .unwrap();
        check_cover(&m, &p[0]);
        let first = p[0].stages[0].layers.len();
        assert!(
            (22..=26).contains(&first),
            "about two thirds of 36 layers on the 16 GB GPU: {:?}",
            p[0]
        );
    }

    #[test]
    fn one_gpu_workers_split_across_workers() {
        let m = demand_8b("qwen3-8b");
        let mut devs = gpus("a", &[12 * GB]);
        devs.extend(gpus("b", &[12 * GB]));
        let p = place(std::slice::from_ref(&m), &devs, &opts()).unwrap();
        check_cover(&m, &p[0]);
        let workers: Vec<&str> = p[0].stages.iter().map(|s| s.worker.as_str()).collect();
        assert_eq!(workers, vec!["a", "b"]);
    }

    #[test]
    fn across_workers_takes_whole_workers_first() {
        let m = demand_8b("qwen3-8b");
        let mut devs = gpus("small", &[6 * GB]);
        devs.extend(gpus("big", &[6 * GB, 6 * GB]));
        devs.extend(gpus("c", &[6 * GB]));
        let p = place(std::slice::from_ref(&m), &devs, &opts()).unwrap();
        check_cover(&m, &p[0]);
        assert_eq!(p[0].stages.len(), 3, "{:?}", p[0]);
        assert_eq!(p[0].stages[0].worker, "big");
        assert_eq!(p[0].stages[1].worker, "big");
    }

    #[test]
    fn does_not_fit_says_the_numbers() {
        let m = demand_8b("qwen3-8b");
        let e = place(
            std::slice::from_ref(&m),
            &gpus("a", &[16 * GB]),
            &PlacementOptions { reserve_bytes: GIB },
        )
        .unwrap_err();
        let PlacementError::DoesNotFit {
            need_bytes,
            free_bytes,
            devices,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(
            (*need_bytes, *free_bytes, *devices),
            (m.total_bytes(), 16 * GB - GIB, 1)
        );
        let text = e.to_string();
        assert!(
            text.contains("qwen3-8b") && text.contains("does not fit"),
            "{text}"
        );
        assert!(
            text.contains("15.82 GiB") && text.contains("13.90 GiB") && text.contains("quantize"),
            "{text}"
        );
    }

    #[test]
    fn quantized_8bit_fits_where_bf16_does_not() {
        let int8 = ModelDemand::from_config("q8", &qwen3_8b(), 8, 4096, 2);
        let p = place(&[int8], &gpus("a", &[12 * GB]), &opts()).unwrap();
        assert_eq!(p[0].stages.len(), 1);
        assert!(place(&[demand_8b("bf16")], &gpus("a", &[12 * GB]), &opts()).is_err());
    }

    #[test]
    fn models_are_packed_together_when_they_fit() {
        // Two 8B models on one 40 GB GPU plus a small one; then the same on a 24 GB GPU and a 12 GB GPU.
        let small = ModelDemand {
            model: "small".into(),
            layer_bytes: vec![100_000_000; 8],
            first_extra_bytes: 0,
            last_extra_bytes: 0,
            shared_extra_bytes: 0,
            min_stages: 1,
        };
        let models = [small.clone(), demand_8b("a"), demand_8b("b")];
        let p = place(&models, &gpus("w", &[40 * GB]), &opts()).unwrap();
        assert!(p
            .iter()
            .all(|m| m.stages.len() == 1 && m.stages[0].device == "cuda:0"));
        assert_eq!(
            p.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(),
            vec!["small", "a", "b"]
        );
        // 24 + 12 GB: one 8B on the 24 GB GPU, the other split over the 12 GB GPU and what is left.
        let p = place(&models, &gpus("w", &[24 * GB, 12 * GB]), &opts()).unwrap();
        assert_eq!(p[1].stages.len(), 1);
        assert_eq!(p[2].stages.len(), 2);
        check_cover(&models[2], &p[2]);
        // 24 + 8 GB: the second 8B does not fit in what the first leaves.
        let e = place(&models, &gpus("w", &[24 * GB, 8 * GB]), &opts()).unwrap_err();
        assert!(
            matches!(
                &e,
                PlacementError::DoesNotFit {
                    placed_before: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("after placing 1 other model"), "{e}");
        // With two 24 GB GPUs each 8B gets its own and the small one packs beside one of them.
        let p = place(&models, &gpus("w", &[24 * GB, 24 * GB]), &opts()).unwrap();
        assert_ne!(p[1].stages[0].device, p[2].stages[0].device);
        assert_eq!(p[0].stages.len(), 1);
    }

    #[test]
    fn min_stages_splits_a_model_that_would_fit_one_device() {
        let m = ModelDemand {
            min_stages: 3,
            ..ModelDemand::from_config("tiny", &qwen3_8b(), 16, 0, 2)
        };
        let devs: Vec<DeviceSlot> = ["w1", "w2", "w3"]
            .iter()
            .map(|w| DeviceSlot {
                worker: w.to_string(),
                device: "cpu".into(),
                free_bytes: 100 * GB,
            })
            .collect();
        let p = place(std::slice::from_ref(&m), &devs, &opts()).unwrap();
        check_cover(&m, &p[0]);
        assert_eq!(p[0].stages.len(), 3);
        let mut ws: Vec<&str> = p[0].stages.iter().map(|s| s.worker.as_str()).collect();
        ws.sort();
        assert_eq!(ws, vec!["w1", "w2", "w3"]);
        let e = place(&[ModelDemand { min_stages: 4, ..m }], &devs, &opts()).unwrap_err();
        assert!(
            matches!(
                e,
                PlacementError::TooManyStages {
                    stages: 4,
                    devices: 3,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn empty_inputs_are_clear_errors() {
        let m = demand_8b("m");
        assert!(matches!(
            place(std::slice::from_ref(&m), &[], &opts()),
            Err(PlacementError::NoDevices { .. })
        ));
        let none = ModelDemand {
            layer_bytes: vec![],
            ..m
        };
        assert!(matches!(
            place(&[none], &gpus("a", &[GB]), &opts()),
            Err(PlacementError::NoLayers { .. })
        ));
    }
}
