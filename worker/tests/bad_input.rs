//! Bad model folders and requests give clear errors naming the problem, never a panic.

use std::path::{Path, PathBuf};

use ibench_shared::GenerationParams;
use ibench_worker::{Engine, EngineError, GenerateRequest, LoadOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn load_err(p: &Path) -> EngineError {
    match Engine::load(p, &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", p.display()),
        Err(e) => e,
    }
}

#[test]
fn truncated_shard_is_named() {
    let d = copy_fixture("tiny-qwen2");
    let shard = d.path().join("model-00002-of-00004.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len / 2).unwrap();
    let e = load_err(d.path());
    assert!(matches!(e, EngineError::CorruptShard { .. }), "{e:?}");
    assert!(
        e.to_string().contains("model-00002-of-00004.safetensors"),
        "{e}"
    );
}

#[test]
fn missing_shard_named_in_the_index() {
    let d = copy_fixture("tiny-qwen3");
    std::fs::remove_file(d.path().join("model-00003-of-00003.safetensors")).unwrap();
    let e = load_err(d.path()).to_string();
    assert!(
        e.contains("model-00003-of-00003.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn config_that_does_not_match_the_weights() {
    let d = copy_fixture("tiny-llama");
    let p = d.path().join("config.json");
    let cfg = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 128");
    std::fs::write(&p, cfg).unwrap();
    let e = load_err(d.path());
    assert!(matches!(e, EngineError::ShapeMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("gate_proj"), "{e}");
}

#[test]
fn unknown_architecture() {
    let d = copy_fixture("tiny-llama");
    let p = d.path().join("config.json");
    let cfg = std::fs::read_to_string(&p)
        .unwrap()
        .replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
    std::fs::write(&p, cfg).unwrap();
    let e = load_err(d.path()).to_string();
    assert!(
        e.contains("GPTNeoXForCausalLM") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn untied_config_without_lm_head() {
    let d = copy_fixture("tiny-llama");
    let p = d.path().join("config.json");
    let cfg = std::fs::read_to_string(&p).unwrap().replace(
        "\"tie_word_embeddings\": true",
        "\"tie_word_embeddings\": false",
    );
    std::fs::write(&p, cfg).unwrap();
    let e = load_err(d.path()).to_string();
    assert!(e.contains("lm_head.weight"), "{e}");
}

#[test]
fn missing_folder_and_missing_tokenizer() {
    let e = load_err(Path::new("/nonexistent/model")).to_string();
    assert!(e.contains("/nonexistent/model"), "{e}");
    let d = copy_fixture("tiny-llama");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    assert!(load_err(d.path()).to_string().contains("tokenizer.json"));
}

#[test]
fn prompt_longer_than_the_context() {
    let engine = Engine::load(&fixture("tiny-qwen3"), &LoadOptions::default()).unwrap();
    let ok = GenerateRequest {
        prompt_ids: vec![1, 2, 3],
        params: GenerationParams {
            max_new_tokens: 2,
            ..Default::default()
        },
    };
    let long = GenerateRequest {
        prompt_ids: vec![5; 80],
        params: ok.params.clone(),
    };
    let e = engine.generate(&[ok.clone(), long]).unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::PromptTooLong {
                index: 1,
                prompt_tokens: 80,
                context: 64
            }
        ),
        "{e:?}"
    );
    // Generation stops at the context instead of overrunning it.
    let near = GenerateRequest {
        prompt_ids: vec![5; 60],
        params: GenerationParams {
            max_new_tokens: 50,
            ..Default::default()
        },
    };
    let out = engine.generate(&[near]).unwrap();
    assert!(out[0].token_ids.len() <= 4, "{:?}", out[0]);
    let bad = GenerateRequest {
        prompt_ids: vec![100_000],
        params: ok.params,
    };
    assert!(matches!(
        engine.generate(&[bad]).unwrap_err(),
        EngineError::TokenOutOfRange { .. }
    ));
}
