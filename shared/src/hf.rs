//! Hugging Face `config.json` / `generation_config.json`, with HF's field names, resolved once into a
//! checked [`ModelConfig`] that the engine builds from.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SharedError;

/// `config.json` as transformers writes it (4.x and 5.x field spellings).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    /// transformers 5.x: `{"rope_type": "default", "rope_theta": ...}`.
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub bos_token_id: Option<Value>,
    pub eos_token_id: Option<Value>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub use_sliding_window: Option<bool>,
    pub quantization_config: Option<Value>,
}

/// `generation_config.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HfGenerationConfig {
    pub eos_token_id: Option<Value>,
    pub bos_token_id: Option<Value>,
    pub pad_token_id: Option<Value>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub do_sample: Option<bool>,
}

/// The architectures the engine implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
}

impl Architecture {
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// The checked model configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2 always, Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// Per-head RMSNorm of q and k (Qwen3).
    pub qk_norm: bool,
    /// The dtype the checkpoint declares (`bfloat16`, `float16`, `float32`).
    pub declared_dtype: Option<String>,
    pub eos_token_ids: Vec<u32>,
}

fn ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads and checks `config.json` and (if present) `generation_config.json` of a model folder.
    pub fn from_folder(folder: &Path) -> Result<Self, SharedError> {
        let path = folder.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| SharedError::Io {
            path: path.clone(),
            source,
        })?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| SharedError::Config {
            path: path.clone(),
            why: format!("not a valid config.json: {e}"),
        })?;
        let gpath = folder.join("generation_config.json");
        let gen = match std::fs::read_to_string(&gpath) {
            Ok(t) => Some(serde_json::from_str::<HfGenerationConfig>(&t).map_err(|e| {
                SharedError::Config {
                    path: gpath.clone(),
                    why: format!("not a valid generation_config.json: {e}"),
                }
            })?),
            Err(_) => None,
        };
        Self::resolve(&hf, gen.as_ref()).map_err(|why| SharedError::Config { path, why })
    }

    /// Resolves the HF fields into the checked form; the error says which field is wrong.
    pub fn resolve(hf: &HfConfig, gen: Option<&HfGenerationConfig>) -> Result<Self, String> {
        let arch_name = hf
            .architectures
            .first()
            .cloned()
            .or_else(|| hf.model_type.clone())
            .unwrap_or_default();
        let architecture = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            "Qwen3ForCausalLM" | "qwen3" => Architecture::Qwen3,
            "" => return Err("no `architectures` or `model_type`: cannot tell the architecture".into()),
            other => {
                return Err(format!(
                    "unsupported architecture '{other}': IBench runs LlamaForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM"
                ))
            }
        };
        if let Some(q) = &hf.quantization_config {
            let method = q
                .get("quant_method")
                .and_then(|m| m.as_str())
                .unwrap_or("unknown");
            return Err(format!(
                "pre-quantized checkpoints ({method}) are not supported: give the bf16/f16/f32 weights and ask for --load-in-8bit or --load-in-4bit"
            ));
        }
        let need = |v: Option<usize>, name: &str| {
            v.filter(|x| *x > 0)
                .ok_or_else(|| format!("missing or zero `{name}`"))
        };
        let hidden_size = need(hf.hidden_size, "hidden_size")?;
        let num_heads = need(hf.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!("num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"));
        }
        let head_dim = match hf.head_dim {
            Some(d) => d,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(format!(
                    "hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}"
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(format!(
                "head_dim {head_dim} must be even for rotary embeddings"
            ));
        }
        let rope = hf.rope_parameters.as_ref().or(hf.rope_scaling.as_ref());
        let rope_type = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(format!(
                "rope type '{rope_type}' is not supported yet (only the default rotary embedding)"
            ));
        }
        let rope_theta = hf
            .rope_theta
            .or_else(|| {
                hf.rope_parameters
                    .as_ref()
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(|t| t.as_f64())
            })
            .unwrap_or(10000.0);
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(format!("hidden_act '{act}' is not supported (only silu)"));
            }
        }
        if hf.mlp_bias == Some(true) {
            return Err("mlp_bias = true is not supported".into());
        }
        if hf.use_sliding_window == Some(true) {
            return Err("use_sliding_window = true is not supported".into());
        }
        let mut eos_token_ids = gen.map(|g| ids(&g.eos_token_id)).unwrap_or_default();
        for id in ids(&hf.eos_token_id) {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        Ok(Self {
            architecture,
            vocab_size: need(hf.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(hf.intermediate_size, "intermediate_size")?,
            num_layers: need(hf.num_hidden_layers, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(4096),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            qkv_bias: match architecture {
                Architecture::Qwen2 => true,
                _ => hf.attention_bias.unwrap_or(false),
            },
            qk_norm: architecture == Architecture::Qwen3,
            declared_dtype: hf.dtype.clone().or_else(|| hf.torch_dtype.clone()),
            eos_token_ids,
        })
    }

    /// Parameters of one decoder layer.
    pub fn layer_params(&self) -> u64 {
        let (h, i) = (self.hidden_size as u64, self.intermediate_size as u64);
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let mut n = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
        if self.qkv_bias {
            n += q + 2 * kv;
        }
        if self.qk_norm {
            n += 2 * self.head_dim as u64;
        }
        n
    }

    /// All parameters (embeddings counted once when tied).
    pub fn total_params(&self) -> u64 {
        let emb = (self.vocab_size * self.hidden_size) as u64;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + self.hidden_size as u64 + self.num_layers as u64 * self.layer_params()
    }

    /// Bytes of KV cache per token across all layers at `bytes_per_value`.
    pub fn kv_bytes_per_token(&self, bytes_per_value: u64) -> u64 {
        2 * (self.num_layers * self.num_kv_heads * self.head_dim) as u64 * bytes_per_value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen3-8B's config.json as published (transformers 4.x spelling).
    const QWEN3_8B: &str = r#"{"architectures":["Qwen3ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,
      "bos_token_id":151643,"eos_token_id":151645,"head_dim":128,"hidden_act":"silu","hidden_size":4096,
      "initializer_range":0.02,"intermediate_size":12288,"max_position_embeddings":40960,"max_window_layers":36,
      "model_type":"qwen3","num_attention_heads":32,"num_hidden_layers":36,"num_key_value_heads":8,
      "rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000,"sliding_window":null,"tie_word_embeddings":false,
      "torch_dtype":"bfloat16","transformers_version":"4.51.0","use_cache":true,"use_sliding_window":false,"vocab_size":151936}"#;

    #[test]
    fn qwen3_8b_resolves_with_the_published_sizes() {
        let hf: HfConfig = serde_json::from_str(QWEN3_8B).unwrap();
        let gen = HfGenerationConfig {
            eos_token_id: Some(serde_json::json!([151645, 151643])),
            ..Default::default()
        };
        let c = ModelConfig::resolve(&hf, Some(&gen)).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!((c.head_dim, c.num_kv_heads, c.rope_theta), (128, 8, 1e6));
        assert!(c.qk_norm && !c.qkv_bias && !c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![151645, 151643]);
        // 8.19 B parameters, as the model card says.
        let p = c.total_params() as f64 / 1e9;
        assert!((8.1..8.3).contains(&p), "{p}");
    }

    #[test]
    fn transformers5_rope_parameters_are_read() {
        let hf: HfConfig = serde_json::from_str(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_parameters":{"rope_type":"default","rope_theta":500.0}}"#,
        )
        .unwrap();
        let c = ModelConfig::resolve(&hf, None).unwrap();
        assert_eq!((c.rope_theta, c.head_dim, c.num_kv_heads), (500.0, 4, 2));
    }

    #[test]
    fn unknown_architecture_and_bad_heads_are_clear_errors() {
        let hf = HfConfig {
            architectures: vec!["MambaForCausalLM".into()],
            ..Default::default()
        };
        let e = ModelConfig::resolve(&hf, None).unwrap_err();
        assert!(
            e.contains("MambaForCausalLM") && e.contains("Qwen3ForCausalLM"),
            "{e}"
        );
        let hf: HfConfig = serde_json::from_str(
            r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2}"#,
        )
        .unwrap();
        assert!(ModelConfig::resolve(&hf, None)
            .unwrap_err()
            .contains("multiple"));
    }
}
