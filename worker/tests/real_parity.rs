//! Parity on real weights: the engine's greedy continuation of a chat-templated prompt equals
//! transformers' on the same imported folder, token for token (tests/fixtures/real_parity.json,
//! recorded by tests/scripts/make_real_parity.py with transformers on the CPU in float32).
//!
//! The folders come from `ibench fetch-model` (under `$IBENCH_MODELS_DIR`); a missing folder fails
//! the test, saying what to run, unless `IBENCH_SKIP_REAL_MODELS=1`.

mod common;

use std::path::PathBuf;

use ibench_shared::{ChatMessage, FinishReason, GenerationParams};
use ibench_worker::{Engine, GenerateRequest, LoadOptions};
use serde_json::Value;

use common::real_model_folder as folder;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `tokens`: how many of the 40 recorded tokens to compare (the 0.5B model is slow on 2 CPU cores).
fn check(name: &str, tokens: usize) {
    let Some(dir) = folder(name) else { return };
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/real_parity.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let case = &all["models"][name];
    let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
    let engine = Engine::load(&dir, &LoadOptions::default()).unwrap();
    let text = engine.tokenizer().render(&messages, true, true).unwrap();
    assert_eq!(
        text,
        case["text"].as_str().unwrap(),
        "{name}: chat template render differs from transformers'"
    );
    let prompt = engine.encode_chat(&messages, true, true).unwrap();
    assert_eq!(
        prompt,
        ids(&case["prompt_ids"]),
        "{name}: prompt ids differ from transformers'"
    );
    let all_ids = ids(&case["greedy"]);
    let want = all_ids[..tokens.min(all_ids.len())].to_vec();
    let out = engine
        .generate(&[GenerateRequest {
            prompt_ids: prompt,
            params: GenerationParams {
                max_new_tokens: want.len(),
                ..Default::default()
            },
        }])
        .unwrap();
    assert!(
        want.len() >= 30 || out[0].finish_reason == FinishReason::Eos,
        "{name}: reference too short"
    );
    assert_eq!(
        out[0].token_ids, want,
        "{name}: greedy tokens differ from transformers'"
    );
    if want.len() == all_ids.len() {
        assert_eq!(
            out[0].text,
            case["reply"].as_str().unwrap(),
            "{name}: decoded reply differs"
        );
    }
}

#[test]
fn smollm2_greedy_equals_transformers() {
    check("smollm2-135m-instruct", 40);
}

#[test]
fn qwen25_coder_greedy_equals_transformers() {
    check("qwen2.5-coder-0.5b-instruct", 32);
}
