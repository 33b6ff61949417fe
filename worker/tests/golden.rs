//! Golden tests: the engine against transformers on the tiny random models in tests/fixtures
//! (made by tests/scripts/make_tiny_models.py, which records transformers' float32 logits,
//! greedy continuations and chat-template renders).

use std::path::PathBuf;

use ibench_shared::{ChatMessage, FinishReason, GenerationParams, Role};
use ibench_worker::{Engine, GenerateRequest, LoadOptions};
use serde_json::Value;

/// Largest allowed |logit difference| against transformers' float32 CPU logits (logits here are of
/// magnitude ~5): 1e-3 on the CPU; 2e-2 on CUDA, where burn's f32 matmul runs on TF32 tensor cores
/// (8e-3 measured on the H200, docs/benchmarks.md).
fn logit_tol() -> f32 {
    if options().device == ibench_worker::DeviceSpec::Cpu {
        1e-3
    } else {
        2e-2
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("golden.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn options() -> LoadOptions {
    let mut o = LoadOptions::default();
    if let Ok(d) = std::env::var("IBENCH_TEST_DEVICE") {
        o.device = d.parse().unwrap();
        o.dtype = Some(ibench_worker::ComputeDtype::F32);
    }
    o
}

fn greedy(n: usize) -> GenerationParams {
    GenerationParams {
        max_new_tokens: n,
        ..Default::default()
    }
}

fn check_logits(name: &str) {
    let g = golden(name);
    let engine = Engine::load(&fixture(name), &options()).unwrap();
    for p in g["prompts"].as_array().unwrap() {
        let prompt = ids(&p["ids"]);
        let got = engine.prompt_logits(&prompt).unwrap();
        let want = p["logits"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        let mut worst = 0f32;
        for (row, wrow) in got.iter().zip(want) {
            for (a, b) in row.iter().zip(wrow.as_array().unwrap()) {
                worst = worst.max((a - b.as_f64().unwrap() as f32).abs());
            }
        }
        let tol = logit_tol();
        assert!(
            worst < tol,
            "{name}: max |logit diff| {worst} over {tol} for prompt {prompt:?}"
        );
    }
}

fn check_greedy(name: &str) {
    let g = golden(name);
    let engine = Engine::load(&fixture(name), &options()).unwrap();
    for p in g["prompts"].as_array().unwrap() {
        let prompt = ids(&p["ids"]);
        let want = ids(&p["greedy"]);
        let out = engine
            .generate(&[GenerateRequest {
                prompt_ids: prompt.clone(),
                params: greedy(24),
            }])
            .unwrap();
        assert_eq!(
            out[0].token_ids, want,
            "{name}: greedy tokens differ from transformers for {prompt:?}"
        );
        let eos = engine.config().eos_token_ids.contains(want.last().unwrap());
        assert_eq!(
            out[0].finish_reason,
            if eos {
                FinishReason::Eos
            } else {
                FinishReason::Length
            }
        );
        assert_eq!(out[0].prompt_token_ids, prompt);
    }
}

fn check_chat_template(name: &str) {
    let g = golden(name);
    let engine = Engine::load(&fixture(name), &options()).unwrap();
    for c in g["chats"].as_array().unwrap() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(c["messages"].clone()).unwrap();
        let agp = c["add_generation_prompt"].as_bool().unwrap();
        let thinking = c
            .get("enable_thinking")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let text = engine.tokenizer().render(&msgs, agp, thinking).unwrap();
        assert_eq!(
            text,
            c["text"].as_str().unwrap(),
            "{name}: chat template render differs"
        );
        assert_eq!(
            engine.encode_chat(&msgs, agp, thinking).unwrap(),
            ids(&c["ids"]),
            "{name}: chat ids differ"
        );
    }
}

#[test]
fn llama_tied_f16_logits_match_transformers() {
    check_logits("tiny-llama");
}
#[test]
fn qwen2_untied_f32_sharded_logits_match_transformers() {
    check_logits("tiny-qwen2");
}
#[test]
fn qwen3_bf16_sharded_logits_match_transformers() {
    check_logits("tiny-qwen3");
}
#[test]
fn llama_greedy_tokens_match_transformers() {
    check_greedy("tiny-llama");
}
#[test]
fn qwen2_greedy_tokens_match_transformers() {
    check_greedy("tiny-qwen2");
}
#[test]
fn qwen3_greedy_tokens_match_transformers() {
    check_greedy("tiny-qwen3");
}
#[test]
fn qwen3_chat_template_renders_like_transformers() {
    check_chat_template("tiny-qwen3");
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-qwen3"] {
        let g = golden(name);
        let engine = Engine::load(&fixture(name), &options()).unwrap();
        let reqs: Vec<GenerateRequest> = g["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| GenerateRequest {
                prompt_ids: ids(&p["ids"]),
                params: greedy(24),
            })
            .collect();
        let together = engine.generate(&reqs).unwrap();
        for (r, t) in reqs.iter().zip(&together) {
            let alone = engine.generate(std::slice::from_ref(r)).unwrap();
            assert_eq!(alone[0], *t, "{name}");
        }
        // A batch smaller than the number of requests: finished sequences leave, waiting ones join.
        let mut o = options();
        o.max_batch = 2;
        let small = Engine::load(&fixture(name), &o).unwrap();
        assert_eq!(
            small.generate(&reqs).unwrap(),
            together,
            "{name}: max_batch 2"
        );
    }
}

#[test]
fn cached_decode_equals_full_recompute() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        let engine = Engine::load(&fixture(name), &options()).unwrap();
        let prompt = ids(&golden(name)["prompts"][1]["ids"]);
        let cached = engine
            .generate(&[GenerateRequest {
                prompt_ids: prompt.clone(),
                params: greedy(16),
            }])
            .unwrap();
        let mut seq = prompt.clone();
        let mut recomputed = Vec::new();
        for _ in 0..cached[0].token_ids.len() {
            let logits = engine.prompt_logits(&seq).unwrap();
            let t = ibench_worker::sampling::argmax(logits.last().unwrap());
            recomputed.push(t);
            seq.push(t);
        }
        assert_eq!(cached[0].token_ids, recomputed, "{name}");
    }
}

#[test]
fn three_stages_give_the_tokens_of_one() {
    for name in ["tiny-qwen2", "tiny-qwen3"] {
        let one = Engine::load(&fixture(name), &options()).unwrap();
        let mut o = options();
        o.stages = 3;
        let three = Engine::load(&fixture(name), &o).unwrap();
        assert_eq!(three.report().stages, vec![(0, 1), (1, 2), (2, 3)]);
        let reqs: Vec<GenerateRequest> = golden(name)["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| GenerateRequest {
                prompt_ids: ids(&p["ids"]),
                params: greedy(20),
            })
            .collect();
        assert_eq!(
            one.generate(&reqs).unwrap(),
            three.generate(&reqs).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn sampling_is_seeded_and_stop_strings_cut() {
    let engine = Engine::load(&fixture("tiny-qwen3"), &options()).unwrap();
    let prompt = engine
        .encode_chat(&[ChatMessage::new(Role::User, "hello")], true, false)
        .unwrap();
    let p = GenerationParams {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 50,
        seed: 42,
        max_new_tokens: 12,
        ..Default::default()
    };
    let a = engine
        .generate(&[GenerateRequest {
            prompt_ids: prompt.clone(),
            params: p.clone(),
        }])
        .unwrap();
    let b = engine
        .generate(&[GenerateRequest {
            prompt_ids: prompt.clone(),
            params: p.clone(),
        }])
        .unwrap();
    assert_eq!(a, b, "same seed, same tokens");
    // A stop string taken from the greedy text itself must cut the text right before it.
    let g = engine
        .generate(&[GenerateRequest {
            prompt_ids: prompt.clone(),
            params: greedy(24),
        }])
        .unwrap();
    let text = g[0].text.clone();
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 4 {
        let stop: String = chars[2..4].iter().collect();
        let s = engine
            .generate(&[GenerateRequest {
                prompt_ids: prompt,
                params: GenerationParams {
                    stop: vec![stop.clone()],
                    ..greedy(24)
                },
            }])
            .unwrap();
        assert_eq!(s[0].finish_reason, FinishReason::Stop);
        assert_eq!(s[0].text, text[..text.find(&stop).unwrap()]);
    }
}

/// 8-bit and 4-bit weights: close to the full-precision logits, 4-bit less so than 8-bit.
#[test]
fn quantized_weights_stay_close_to_full_precision() {
    let g = golden("tiny-qwen2");
    let prompt = ids(&g["prompts"][1]["ids"]);
    let want = g["prompts"][1]["logits"].as_array().unwrap();
    let worst = |q| {
        let mut o = options();
        o.quantization = q;
        let e = Engine::load(&fixture("tiny-qwen2"), &o).unwrap();
        let got = e.prompt_logits(&prompt).unwrap();
        let mut w = 0f32;
        for (row, wrow) in got.iter().zip(want) {
            for (a, b) in row.iter().zip(wrow.as_array().unwrap()) {
                w = w.max((a - b.as_f64().unwrap() as f32).abs());
            }
        }
        w
    };
    let q8 = worst(ibench_shared::Quantization::Int8);
    assert!(q8 > 0.0 && q8 < 0.25, "8-bit max |logit diff| {q8}");
    if options().device != ibench_worker::DeviceSpec::Cpu {
        let q4 = worst(ibench_shared::Quantization::Int4);
        // 16 levels per block of 32 random weights: ~10% weight error, compounding over 3 layers
        // (3.5 measured on the H200).
        assert!(
            q4 > q8 && q4 < 6.0,
            "4-bit max |logit diff| {q4} (8-bit {q8})"
        );
    }
}
