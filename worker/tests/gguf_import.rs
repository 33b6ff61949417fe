//! GGUF reader, dequantizers and import, against data that `tests/scripts/make_gguf_vectors.py`
//! computed with the Python `gguf` package (independent of this code). Offline.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ibench_shared::hf::{Architecture, ModelConfig};
use ibench_worker::gguf::{dequantize, import_gguf, GgmlType, GgufError, GgufFile, OutDtype};
use safetensors::SafeTensors;
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gguf")
        .join(name)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

// ------------------------------------------------------------------------------------------------
// Dequantizers

fn check_vectors(name: &str, ty: GgmlType) {
    let blocks = std::fs::read(data(&format!("quant/{name}.blocks"))).unwrap();
    let expected = f32s(&std::fs::read(data(&format!("quant/{name}.f32"))).unwrap());
    let mut got = vec![f32::NAN; expected.len()];
    dequantize(ty, &blocks, &mut got).unwrap();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        // bit-exact: the same f32 operations in the same order as ggml / gguf-py
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "{name} element {i}: got {g}, gguf-py says {e}"
        );
    }
    assert!(!expected.is_empty());
}

#[test]
fn dequantize_f32() {
    check_vectors("F32", GgmlType::F32);
}
#[test]
fn dequantize_f16() {
    check_vectors("F16", GgmlType::F16);
}
#[test]
fn dequantize_bf16() {
    check_vectors("BF16", GgmlType::BF16);
}
#[test]
fn dequantize_q8_0() {
    check_vectors("Q8_0", GgmlType::Q8_0);
}
#[test]
fn dequantize_q4_0() {
    check_vectors("Q4_0", GgmlType::Q4_0);
}
#[test]
fn dequantize_q4_1() {
    check_vectors("Q4_1", GgmlType::Q4_1);
}
#[test]
fn dequantize_q5_0() {
    check_vectors("Q5_0", GgmlType::Q5_0);
}
#[test]
fn dequantize_q5_1() {
    check_vectors("Q5_1", GgmlType::Q5_1);
}
#[test]
fn dequantize_q4_k() {
    check_vectors("Q4_K", GgmlType::Q4_K);
}
#[test]
fn dequantize_q5_k() {
    check_vectors("Q5_K", GgmlType::Q5_K);
}
#[test]
fn dequantize_q6_k() {
    check_vectors("Q6_K", GgmlType::Q6_K);
}

// ------------------------------------------------------------------------------------------------
// Reader

#[test]
fn reader_parses_the_tiny_llama() {
    let g = GgufFile::open(&data("tiny-llama.gguf")).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.require_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.require_u64("llama.block_count").unwrap(), 2);
    assert_eq!(
        g.get_f64("llama.attention.layer_norm_rms_epsilon").unwrap(),
        Some(1e-5)
    );
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), Some("llama-bpe"));
    assert!(matches!(
        g.get_u64("general.name"),
        Err(GgufError::WrongKeyType { .. })
    ));
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.dims.clone(), q.ty), (vec![32, 32], GgmlType::Q8_0));
    assert_eq!(q.hf_shape(), vec![32, 32]);
    let down = g.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(
        (down.dims.clone(), down.hf_shape()),
        (vec![64, 32], vec![32, 64])
    );
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(tokens[256 + 20], "<|begin_of_text|>");
    assert!(g.tensor("output.weight").is_none());
}

// ------------------------------------------------------------------------------------------------
// Import

fn expected_tensors(name: &str) -> (Vec<u8>, BTreeSet<String>) {
    let bytes = std::fs::read(data(name)).unwrap();
    let names = SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect();
    (bytes, names)
}

/// Every tensor of `out/model.safetensors` equals the script's HF-layout expectation (bitwise in
/// f32, or after rounding to bf16).
fn compare_weights(out: &Path, expected_file: &str, dtype: OutDtype) {
    let (exp_bytes, exp_names) = expected_tensors(expected_file);
    let exp = SafeTensors::deserialize(&exp_bytes).unwrap();
    let got_bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let got = SafeTensors::deserialize(&got_bytes).unwrap();
    let got_names: BTreeSet<String> = got.names().into_iter().map(String::from).collect();
    assert_eq!(got_names, exp_names);
    for name in &exp_names {
        let (e, g) = (exp.tensor(name).unwrap(), got.tensor(name).unwrap());
        assert_eq!(g.shape(), e.shape(), "{name}");
        let want = f32s(e.data());
        let have: Vec<f32> = match dtype {
            OutDtype::F32 => {
                assert_eq!(g.dtype(), safetensors::Dtype::F32);
                f32s(g.data())
            }
            OutDtype::Bf16 => {
                assert_eq!(g.dtype(), safetensors::Dtype::BF16);
                g.data()
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect()
            }
        };
        for (i, (h, w)) in have.iter().zip(&want).enumerate() {
            let w = match dtype {
                OutDtype::F32 => *w,
                OutDtype::Bf16 => half::bf16::from_f32(*w).to_f32(),
            };
            assert_eq!(h.to_bits(), w.to_bits(), "{name}[{i}]: {h} != {w}");
        }
    }
}

/// The tokenizer gives the reference BPE's ids and decodes back to the text.
fn compare_tokens(out: &Path, expected_file: &str, bos: Option<u32>) {
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let exp = read_json(&data(expected_file));
    for case in exp["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(enc.get_ids(), &ids[..], "{text:?}");
        let with_specials = tok.encode(text, true).unwrap();
        let mut want = bos.into_iter().collect::<Vec<_>>();
        want.extend(&ids);
        assert_eq!(
            with_specials.get_ids(),
            &want[..],
            "{text:?} with special tokens"
        );
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn tiny_llama_imports_to_a_transformers_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny-llama");
    let report = import_gguf(&data("tiny-llama.gguf"), &out, OutDtype::F32).unwrap();
    assert_eq!(report.architecture, Architecture::Llama);
    assert_eq!((report.tensor_count, report.tensors_written), (20, 20));
    assert!(report.tie_word_embeddings);
    assert_eq!(report.tensor_types["Q8_0"], 3);
    assert!(report.bytes_written > report.params * 4);

    let cfg = ModelConfig::from_folder(&out).unwrap();
    assert_eq!(cfg.architecture, Architecture::Llama);
    assert_eq!(
        (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers),
        (32, 64, 2)
    );
    assert_eq!((cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), (4, 2, 8));
    assert_eq!(
        (
            cfg.rms_norm_eps,
            cfg.rope_theta,
            cfg.max_position_embeddings
        ),
        (1e-5, 50000.0, 256)
    );
    assert!(cfg.tie_word_embeddings && !cfg.qkv_bias && !cfg.qk_norm);
    assert_eq!(cfg.vocab_size, 256 + 20 + 3 + 1 + 3);
    assert_eq!(cfg.declared_dtype.as_deref(), Some("float32"));
    assert_eq!(cfg.eos_token_ids, vec![278]); // <|eot_id|>
    assert_eq!(cfg.total_params(), report.params);

    let hf = read_json(&out.join("config.json"));
    assert_eq!(hf["architectures"][0], "LlamaForCausalLM");
    assert_eq!(
        (hf["bos_token_id"].as_u64(), hf["attention_bias"].as_bool()),
        (Some(276), Some(false))
    );
    let gen = read_json(&out.join("generation_config.json"));
    assert_eq!(gen["bos_token_id"], 276); // llama-bpe prepends BOS
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<|begin_of_text|>");
    assert_eq!(tc["eos_token"], "<|eot_id|>");
    assert_eq!(tc["add_bos_token"], true);
    assert!(tc["chat_template"].as_str().unwrap().contains("bos_token"));
    assert_eq!(tc["added_tokens_decoder"]["276"]["special"], true);
    assert_eq!(tc["added_tokens_decoder"]["279"]["content"], "<tool>");
    assert_eq!(tc["added_tokens_decoder"]["279"]["special"], false);
    assert!(
        tc["added_tokens_decoder"].get("280").is_none(),
        "unused [PAD] tokens are not added tokens"
    );

    // weights: names, [out, in] shapes, values, and q/k rows back in Hugging Face order
    compare_weights(&out, "tiny-llama.expected.safetensors", OutDtype::F32);
    compare_tokens(&out, "tiny-llama.tokens.json", Some(276));
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = tok
        .encode("<tool>call<|eot_id|>", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!((ids[0], *ids.last().unwrap()), (279, 278));
}

#[test]
fn tiny_llama_imports_as_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let report = import_gguf(&data("tiny-llama.gguf"), dir.path(), OutDtype::Bf16).unwrap();
    assert_eq!(report.dtype, OutDtype::Bf16);
    compare_weights(
        dir.path(),
        "tiny-llama.expected.safetensors",
        OutDtype::Bf16,
    );
    assert_eq!(
        ModelConfig::from_folder(dir.path())
            .unwrap()
            .declared_dtype
            .as_deref(),
        Some("bfloat16")
    );
}

#[test]
fn tiny_qwen3_imports_with_qk_norm_and_an_untied_head() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q3");
    let report = import_gguf(&data("tiny-qwen3.gguf"), &out, OutDtype::F32).unwrap();
    assert_eq!(report.architecture, Architecture::Qwen3);
    assert!(!report.tie_word_embeddings);
    let cfg = ModelConfig::from_folder(&out).unwrap();
    assert_eq!(cfg.architecture, Architecture::Qwen3);
    assert_eq!(
        (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.hidden_size
        ),
        (4, 2, 16, 32)
    );
    assert!(cfg.qk_norm && !cfg.tie_word_embeddings && !cfg.qkv_bias);
    // <|im_end|> then <|endoftext|>, like Qwen's generation_config.json
    assert_eq!(cfg.eos_token_ids, vec![278, 276]);
    assert_eq!(cfg.total_params(), report.params);
    let gen = read_json(&out.join("generation_config.json"));
    assert!(
        gen.get("bos_token_id").is_none(),
        "qwen does not prepend BOS"
    );
    compare_weights(&out, "tiny-qwen3.expected.safetensors", OutDtype::F32);
    compare_tokens(&out, "tiny-qwen3.tokens.json", None);
}

#[test]
fn importing_twice_into_the_same_folder_gives_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    import_gguf(&data("tiny-qwen3.gguf"), dir.path(), OutDtype::Bf16).unwrap();
    let first = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    import_gguf(&data("tiny-qwen3.gguf"), dir.path(), OutDtype::Bf16).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("model.safetensors")).unwrap(),
        first
    );
}

// ------------------------------------------------------------------------------------------------
// Bad input: clear errors, no panics

fn write_tmp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Replaces the first occurrence of `from` (same length as `to`) in `bytes`.
fn patch(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn truncated_files_are_reported_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(data("tiny-llama.gguf")).unwrap();
    let g = GgufFile::open(&data("tiny-llama.gguf")).unwrap();
    let data_end = g
        .tensors
        .iter()
        .map(|t| g.data_offset + t.offset + t.byte_size().unwrap())
        .max()
        .unwrap();
    // every cut before the end of the last tensor's data fails cleanly
    let mut cuts: Vec<u64> = (0..data_end).step_by(37).collect();
    cuts.extend([3, 4, 8, 23, 24, g.data_offset, data_end - 1]);
    for cut in cuts {
        let p = write_tmp(dir.path(), "cut.gguf", &full[..cut as usize]);
        let e = GgufFile::open(&p).expect_err(&format!("cut at {cut} must fail"));
        let msg = e.to_string();
        assert!(
            matches!(e, GgufError::Truncated { .. }),
            "cut at {cut}: {msg}"
        );
        assert!(
            msg.contains("truncated") && msg.contains("cut.gguf"),
            "{msg}"
        );
    }
    let p = write_tmp(dir.path(), "cut.gguf", &full[..full.len() / 2]);
    let e = import_gguf(&p, &dir.path().join("out"), OutDtype::F32).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(!dir.path().join("out").join("model.safetensors").exists());
}

#[test]
fn wrong_magic_and_versions_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(data("tiny-llama.gguf")).unwrap();
    let mut bad = full.clone();
    bad[..4].copy_from_slice(b"GGML");
    let e = GgufFile::open(&write_tmp(dir.path(), "magic.gguf", &bad)).unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }));
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
    let e =
        GgufFile::open(&write_tmp(dir.path(), "json.gguf", b"{\"not\": \"gguf\"}")).unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");

    let mut v1 = full.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = GgufFile::open(&write_tmp(dir.path(), "v1.gguf", &v1)).unwrap_err();
    assert!(e.to_string().contains("version 1"), "{e}");
    let mut be = full;
    be[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = GgufFile::open(&write_tmp(dir.path(), "be.gguf", &be)).unwrap_err();
    assert!(e.to_string().contains("big-endian"), "{e}");

    let e = GgufFile::open(&dir.path().join("missing.gguf")).unwrap_err();
    assert!(
        matches!(e, GgufError::Io { .. }) && e.to_string().contains("missing.gguf"),
        "{e}"
    );
}

#[test]
fn unsupported_tensor_types_name_the_tensor_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let e = import_gguf(&data("unsupported-type.gguf"), dir.path(), OutDtype::F32).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            GgufError::UnsupportedTensorType {
                ty: GgmlType::Q2_K,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("blk.0.ffn_up.weight") && msg.contains("Q2_K") && msg.contains("Q6_K"),
        "{msg}"
    );
    let g = GgufFile::open(&data("unsupported-type.gguf")).unwrap();
    let e = g.dequantize_tensor(&g.tensors[0]).unwrap_err();
    assert!(e.to_string().contains("blk.0.ffn_up.weight"), "{e}");
}

#[test]
fn unknown_pre_tokenizer_and_architecture_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(data("tiny-llama.gguf")).unwrap();
    let p = write_tmp(
        dir.path(),
        "pre.gguf",
        &patch(&full, b"llama-bpe", b"llama-xyz"),
    );
    let e = import_gguf(&p, &dir.path().join("a"), OutDtype::F32).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, GgufError::UnsupportedPreTokenizer { .. }),
        "{msg}"
    );
    assert!(msg.contains("llama-xyz") && msg.contains("qwen2"), "{msg}");

    // general.architecture = "llama" (string type 8, length 5) -> "gemma"
    let mut key = b"general.architecture".to_vec();
    key.extend(8u32.to_le_bytes());
    key.extend(5u64.to_le_bytes());
    let mut from = key.clone();
    from.extend(b"llama");
    key.extend(b"gemma");
    let p = write_tmp(dir.path(), "arch.gguf", &patch(&full, &from, &key));
    let e = import_gguf(&p, &dir.path().join("b"), OutDtype::F32).unwrap_err();
    assert!(
        matches!(e, GgufError::UnsupportedArchitecture(ref a) if a == "gemma"),
        "{e}"
    );
}
