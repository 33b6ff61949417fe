//! Conversions between the wire messages of `ibench.v1` and domain types, checked on the way in:
//! every length and shape a peer sends is validated here, so handlers work on consistent data.

use std::path::PathBuf;

use ibench_shared::placement::{DeviceInfo, ModelSource, StageSpec};
use ibench_shared::Quantization;

use crate::v1 as pb;

/// A message that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
}

impl From<ConvertError> for tonic::Status {
    fn from(e: ConvertError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn invalid(field: &'static str, why: impl Into<String>) -> ConvertError {
    ConvertError::Invalid {
        field,
        why: why.into(),
    }
}

// ---- devices ------------------------------------------------------------------------------

impl From<DeviceInfo> for pb::Device {
    fn from(d: DeviceInfo) -> Self {
        Self {
            name: d.name,
            total_bytes: d.total_bytes,
            free_bytes: d.free_bytes,
            model: String::new(),
        }
    }
}

impl From<pb::Device> for DeviceInfo {
    fn from(d: pb::Device) -> Self {
        Self {
            name: d.name,
            total_bytes: d.total_bytes,
            free_bytes: d.free_bytes.min(d.total_bytes),
        }
    }
}

// ---- stages -------------------------------------------------------------------------------

impl From<Quantization> for pb::Quantization {
    fn from(q: Quantization) -> Self {
        match q {
            Quantization::None => Self::None,
            Quantization::Int8 => Self::Int8,
            Quantization::Int4 => Self::Int4,
        }
    }
}

impl From<pb::Quantization> for Quantization {
    fn from(q: pb::Quantization) -> Self {
        match q {
            pb::Quantization::None => Self::None,
            pb::Quantization::Int8 => Self::Int8,
            pb::Quantization::Int4 => Self::Int4,
        }
    }
}

impl From<StageSpec> for pb::LoadStageRequest {
    fn from(s: StageSpec) -> Self {
        Self {
            stage_id: s.stage_id,
            model: Some(match s.model {
                ModelSource::Path(p) => {
                    pb::load_stage_request::Model::Path(p.to_string_lossy().into_owned())
                }
                ModelSource::Registry(n) => pb::load_stage_request::Model::RegistryName(n),
            }),
            layer_start: s.layers.start as u32,
            layer_end: s.layers.end as u32,
            device: s.device,
            dtype: s.dtype.unwrap_or_default(),
            quantization: pb::Quantization::from(s.quantization) as i32,
        }
    }
}

impl TryFrom<pb::LoadStageRequest> for StageSpec {
    type Error = ConvertError;
    fn try_from(r: pb::LoadStageRequest) -> Result<Self, ConvertError> {
        if r.stage_id.is_empty() {
            return Err(ConvertError::Missing("stage_id"));
        }
        let model = match r.model {
            Some(pb::load_stage_request::Model::Path(p)) if !p.is_empty() => {
                ModelSource::Path(PathBuf::from(p))
            }
            Some(pb::load_stage_request::Model::RegistryName(n)) if !n.is_empty() => {
                ModelSource::Registry(n)
            }
            _ => return Err(ConvertError::Missing("model (path or registry_name)")),
        };
        if r.layer_start >= r.layer_end {
            return Err(invalid(
                "layer_start",
                format!("empty layer range {}..{}", r.layer_start, r.layer_end),
            ));
        }
        let quantization = pb::Quantization::try_from(r.quantization)
            .map_err(|_| invalid("quantization", format!("unknown value {}", r.quantization)))?
            .into();
        Ok(Self {
            stage_id: r.stage_id,
            model,
            layers: r.layer_start as usize..r.layer_end as usize,
            device: if r.device.is_empty() {
                "cpu".into()
            } else {
                r.device
            },
            dtype: Some(r.dtype).filter(|d| !d.is_empty()),
            quantization,
        })
    }
}

// ---- forward steps ------------------------------------------------------------------------

/// One sequence's chunk of a step: `len` new positions starting at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqChunk {
    pub seq_id: u64,
    pub start: usize,
    pub len: usize,
}

/// What enters a stage.
#[derive(Debug, Clone, PartialEq)]
pub enum StepInput {
    /// One chunk of token ids per sequence (the first stage).
    Tokens(Vec<Vec<u32>>),
    /// Hidden states `[batch, t_max, hidden_size]`, row-major, padded past each chunk's length.
    Hidden {
        data: Vec<f32>,
        t_max: usize,
        hidden_size: usize,
    },
}

/// The next stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub address: String,
    pub stage_id: String,
}

/// What the last stage answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One row of logits per sequence.
    Logits,
    /// The argmax token per sequence.
    Argmax,
}

/// One batched forward step through a stage and the stages after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub stage_id: String,
    pub seqs: Vec<SeqChunk>,
    pub input: StepInput,
    pub next: Vec<Hop>,
    pub output: OutputKind,
}

impl Step {
    /// The same step one stage further: `input` is this stage's hidden output.
    pub fn relay(&self, input: StepInput) -> Option<Step> {
        let (hop, rest) = self.next.split_first()?;
        Some(Step {
            stage_id: hop.stage_id.clone(),
            seqs: self.seqs.clone(),
            input,
            next: rest.to_vec(),
            output: self.output,
        })
    }
}

/// The last stage's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutput {
    Logits {
        data: Vec<f32>,
        rows: usize,
        vocab: usize,
    },
    Tokens(Vec<u32>),
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn bytes_f32(field: &'static str, b: &[u8]) -> Result<Vec<f32>, ConvertError> {
    if !b.len().is_multiple_of(4) {
        return Err(invalid(
            field,
            format!("{} bytes is not a whole number of float32 values", b.len()),
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

impl From<Step> for pb::ForwardRequest {
    fn from(s: Step) -> Self {
        let input = match s.input {
            StepInput::Tokens(t) => {
                pb::forward_request::Input::Tokens(pb::Tokens { ids: t.concat() })
            }
            StepInput::Hidden {
                data,
                t_max,
                hidden_size,
            } => pb::forward_request::Input::Hidden(pb::Hidden {
                data: f32_bytes(&data),
                t_max: t_max as u32,
                hidden_size: hidden_size as u32,
                precision: pb::Precision::F32 as i32,
            }),
        };
        Self {
            stage_id: s.stage_id,
            seqs: s
                .seqs
                .iter()
                .map(|c| pb::SeqChunk {
                    seq_id: c.seq_id,
                    start: c.start as u32,
                    len: c.len as u32,
                })
                .collect(),
            input: Some(input),
            next: s
                .next
                .into_iter()
                .map(|h| pb::Hop {
                    address: h.address,
                    stage_id: h.stage_id,
                })
                .collect(),
            output: match s.output {
                OutputKind::Logits => pb::Output::Logits,
                OutputKind::Argmax => pb::Output::Argmax,
            } as i32,
        }
    }
}

impl TryFrom<pb::ForwardRequest> for Step {
    type Error = ConvertError;
    fn try_from(r: pb::ForwardRequest) -> Result<Self, ConvertError> {
        if r.seqs.is_empty() {
            return Err(ConvertError::Missing("seqs"));
        }
        let seqs: Vec<SeqChunk> = r
            .seqs
            .iter()
            .map(|c| SeqChunk {
                seq_id: c.seq_id,
                start: c.start as usize,
                len: c.len as usize,
            })
            .collect();
        if let Some(c) = seqs.iter().find(|c| c.len == 0) {
            return Err(invalid(
                "seqs",
                format!("sequence {} has an empty chunk", c.seq_id),
            ));
        }
        let mut ids_seen: Vec<u64> = seqs.iter().map(|c| c.seq_id).collect();
        ids_seen.sort_unstable();
        if ids_seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("seqs", "a sequence appears twice in one step"));
        }
        let total: usize = seqs.iter().map(|c| c.len).sum();
        let input = match r.input {
            Some(pb::forward_request::Input::Tokens(t)) => {
                if t.ids.len() != total {
                    return Err(invalid(
                        "tokens",
                        format!("{} ids for chunks of {total} tokens", t.ids.len()),
                    ));
                }
                let mut at = 0;
                StepInput::Tokens(
                    seqs.iter()
                        .map(|c| {
                            at += c.len;
                            t.ids[at - c.len..at].to_vec()
                        })
                        .collect(),
                )
            }
            Some(pb::forward_request::Input::Hidden(h)) => {
                if pb::Precision::try_from(h.precision) != Ok(pb::Precision::F32) {
                    return Err(invalid(
                        "hidden.precision",
                        format!("unsupported precision {}", h.precision),
                    ));
                }
                let (t_max, hidden_size) = (h.t_max as usize, h.hidden_size as usize);
                if let Some(c) = seqs.iter().find(|c| c.len > t_max) {
                    return Err(invalid(
                        "hidden.t_max",
                        format!(
                            "sequence {} has {} positions, t_max is {t_max}",
                            c.seq_id, c.len
                        ),
                    ));
                }
                let data = bytes_f32("hidden.data", &h.data)?;
                if data.len() != seqs.len() * t_max * hidden_size {
                    return Err(invalid(
                        "hidden.data",
                        format!(
                            "{} values for {} sequences x {t_max} positions x {hidden_size}",
                            data.len(),
                            seqs.len()
                        ),
                    ));
                }
                StepInput::Hidden {
                    data,
                    t_max,
                    hidden_size,
                }
            }
            None => return Err(ConvertError::Missing("input (tokens or hidden)")),
        };
        let output = match pb::Output::try_from(r.output) {
            Ok(pb::Output::Logits) => OutputKind::Logits,
            Ok(pb::Output::Argmax) => OutputKind::Argmax,
            Err(_) => return Err(invalid("output", format!("unknown value {}", r.output))),
        };
        if let Some(h) = r
            .next
            .iter()
            .find(|h| h.address.is_empty() || h.stage_id.is_empty())
        {
            return Err(invalid(
                "next",
                format!("hop {h:?} lacks an address or a stage id"),
            ));
        }
        Ok(Self {
            stage_id: r.stage_id,
            seqs,
            input,
            next: r
                .next
                .into_iter()
                .map(|h| Hop {
                    address: h.address,
                    stage_id: h.stage_id,
                })
                .collect(),
            output,
        })
    }
}

impl From<StepOutput> for pb::ForwardResponse {
    fn from(o: StepOutput) -> Self {
        let output = match o {
            StepOutput::Logits { data, rows, vocab } => {
                pb::forward_response::Output::Logits(pb::Logits {
                    data: f32_bytes(&data),
                    rows: rows as u32,
                    vocab: vocab as u32,
                })
            }
            StepOutput::Tokens(ids) => pb::forward_response::Output::Tokens(pb::Tokens { ids }),
        };
        Self {
            output: Some(output),
        }
    }
}

impl TryFrom<pb::ForwardResponse> for StepOutput {
    type Error = ConvertError;
    fn try_from(r: pb::ForwardResponse) -> Result<Self, ConvertError> {
        match r.output {
            Some(pb::forward_response::Output::Logits(l)) => {
                let data = bytes_f32("logits.data", &l.data)?;
                let (rows, vocab) = (l.rows as usize, l.vocab as usize);
                if data.len() != rows * vocab || vocab == 0 {
                    return Err(invalid(
                        "logits",
                        format!("{} values for {rows} rows x {vocab}", data.len()),
                    ));
                }
                Ok(Self::Logits { data, rows, vocab })
            }
            Some(pb::forward_response::Output::Tokens(t)) => Ok(Self::Tokens(t.ids)),
            None => Err(ConvertError::Missing("output")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(input: StepInput) -> Step {
        Step {
            stage_id: "s0".into(),
            seqs: vec![
                SeqChunk {
                    seq_id: 7,
                    start: 0,
                    len: 3,
                },
                SeqChunk {
                    seq_id: 9,
                    start: 5,
                    len: 1,
                },
            ],
            input,
            next: vec![Hop {
                address: "http://127.0.0.1:1".into(),
                stage_id: "s1".into(),
            }],
            output: OutputKind::Argmax,
        }
    }

    #[test]
    fn steps_round_trip() {
        let tokens = step(StepInput::Tokens(vec![vec![1, 2, 3], vec![4]]));
        assert_eq!(
            Step::try_from(pb::ForwardRequest::from(tokens.clone())).unwrap(),
            tokens
        );
        let hidden = step(StepInput::Hidden {
            data: (0..12).map(|x| x as f32 * 0.5 - 1.0).collect(),
            t_max: 3,
            hidden_size: 2,
        });
        assert_eq!(
            Step::try_from(pb::ForwardRequest::from(hidden.clone())).unwrap(),
            hidden
        );
        let next = hidden.relay(StepInput::Tokens(vec![])).unwrap();
        assert_eq!((next.stage_id.as_str(), next.next.len()), ("s1", 0));
        assert!(next.relay(StepInput::Tokens(vec![])).is_none());
        let out = StepOutput::Logits {
            data: vec![1.0, -2.5, 3.0, 0.0],
            rows: 2,
            vocab: 2,
        };
        assert_eq!(
            StepOutput::try_from(pb::ForwardResponse::from(out.clone())).unwrap(),
            out
        );
    }

    #[test]
    fn inconsistent_shapes_are_rejected() {
        let mut r = pb::ForwardRequest::from(step(StepInput::Tokens(vec![vec![1, 2, 3], vec![4]])));
        if let Some(pb::forward_request::Input::Tokens(t)) = &mut r.input {
            t.ids.pop();
        }
        assert!(Step::try_from(r)
            .unwrap_err()
            .to_string()
            .contains("3 ids for chunks of 4"));
        let mut r = pb::ForwardRequest::from(step(StepInput::Hidden {
            data: vec![0.0; 12],
            t_max: 3,
            hidden_size: 2,
        }));
        if let Some(pb::forward_request::Input::Hidden(h)) = &mut r.input {
            h.data.truncate(10);
        }
        assert!(Step::try_from(r).is_err());
        let mut r = pb::ForwardRequest::from(step(StepInput::Tokens(vec![vec![1, 2, 3], vec![4]])));
        r.seqs[1].seq_id = 7;
        assert!(Step::try_from(r).unwrap_err().to_string().contains("twice"));
        let bad = pb::ForwardResponse {
            output: Some(pb::forward_response::Output::Logits(pb::Logits {
                data: vec![0; 8],
                rows: 3,
                vocab: 2,
            })),
        };
        assert!(StepOutput::try_from(bad).is_err());
    }

    #[test]
    fn stage_specs_round_trip_and_need_a_model() {
        let s = StageSpec {
            stage_id: "m/0".into(),
            model: ModelSource::Path("/models/qwen3".into()),
            layers: 0..18,
            device: "cuda:1".into(),
            dtype: Some("bf16".into()),
            quantization: Quantization::Int8,
        };
        assert_eq!(
            StageSpec::try_from(pb::LoadStageRequest::from(s.clone())).unwrap(),
            s
        );
        let mut r = pb::LoadStageRequest::from(s);
        r.model = None;
        assert!(StageSpec::try_from(r.clone()).is_err());
        r.model = Some(pb::load_stage_request::Model::RegistryName(
            "qwen3-8b".into(),
        ));
        r.layer_end = 0;
        assert!(StageSpec::try_from(r)
            .unwrap_err()
            .to_string()
            .contains("empty layer range"));
    }
}
