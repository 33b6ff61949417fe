//! Generation settings, with the seed guide's defaults (max_new_tokens 512, temperature 0, top_p 0.9).

use serde::{Deserialize, Serialize};

use crate::SharedError;

/// How to sample a continuation. `temperature == 0` means greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationParams {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k filtering.
    pub top_k: usize,
    pub seed: u64,
    /// Generation stops when the decoded text contains one of these; the stop string is cut off.
    pub stop: Vec<String>,
    /// Qwen3's thinking switch, passed to the chat template as `enable_thinking`.
    pub enable_thinking: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 512,
            temperature: 0.0,
            top_p: 0.9,
            top_k: 0,
            seed: 0,
            stop: Vec::new(),
            enable_thinking: false,
        }
    }
}

impl GenerationParams {
    /// Checks the ranges; every flag that sets these goes through here.
    pub fn validate(&self) -> Result<(), SharedError> {
        let bad =
            |field: &'static str, why: String| Err(SharedError::InvalidGeneration { field, why });
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!("{} is not a number >= 0", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token of the model was produced.
    Eos,
    /// A stop string appeared in the text.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// The model's context window is full.
    ContextFull,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_guides() {
        let p = GenerationParams::default();
        assert_eq!((p.max_new_tokens, p.temperature, p.top_p), (512, 0.0, 0.9));
        assert!(p.is_greedy());
        p.validate().unwrap();
    }

    #[test]
    fn out_of_range_values_are_named() {
        let p = GenerationParams {
            top_p: 1.5,
            ..Default::default()
        };
        let e = p.validate().unwrap_err().to_string();
        assert!(e.contains("top_p"), "{e}");
        let p = GenerationParams {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
    }
}
