//! Rebuilds a Hugging Face `tokenizer.json` (byte-level BPE) and `tokenizer_config.json` from the
//! `tokenizer.ggml.*` keys of a GGUF file.
//!
//! The pre-tokenizer follows `tokenizer.ggml.pre` with the regexes the models' own Hugging Face
//! tokenizers use (llama.cpp `llama-vocab.cpp` uses the same ones):
//! - `smollm` / `starcoder`: `Digits(individual_digits)` then GPT-2 `ByteLevel(use_regex)`,
//! - `gpt-2`: GPT-2 `ByteLevel(use_regex)`,
//! - `qwen2`: NFC, then the Qwen2 split regex, then `ByteLevel` without its own regex,
//! - `llama-bpe`: the Llama 3 split regex (digits in groups of up to three), `ignore_merges`.
//!
//! Tokens of type control (3) become special added tokens, user-defined (4) non-special added
//! tokens (both matched before BPE, as Hugging Face does).

use serde_json::{json, Map, Value};

use super::reader::GgufFile;
use super::GgufError;

/// The `tokenizer.ggml.pre` names this module knows.
pub const SUPPORTED_PRE: &str = "smollm, starcoder, gpt-2, qwen2, llama-bpe";

const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (`llama_token_type`).
pub mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
    pub const BYTE: i64 = 6;
}

/// The vocabulary part of a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    pub tokens: Vec<String>,
    pub types: Vec<i64>,
    pub merges: Vec<String>,
    pub pre: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Whether encoding prepends the BOS token (`tokenizer.ggml.add_bos_token`, else llama.cpp's
    /// default for the pre-tokenizer).
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the `tokenizer.ggml.*` keys; only byte-level BPE (`gpt2`) vocabularies are supported.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, GgufError> {
        let model = g.require_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GgufError::Tokenizer(format!(
                "tokenizer.ggml.model is '{model}'; only byte-level BPE ('gpt2') vocabularies can be imported \
                 (SentencePiece 'llama' vocabularies are not supported)"
            )));
        }
        let pre = g
            .get_str("tokenizer.ggml.pre")?
            .ok_or_else(|| {
                GgufError::Tokenizer(
                    "tokenizer.ggml.pre is missing: cannot tell how to pre-tokenize".into(),
                )
            })?
            .to_string();
        pre_tokenizer(&pre)?; // fail early on an unknown name
        let tokens: Vec<String> = g
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| GgufError::MissingKey("tokenizer.ggml.tokens".into()))?
            .into_iter()
            .map(String::from)
            .collect();
        let types = match g.get_i64_array("tokenizer.ggml.token_type")? {
            Some(t) if t.len() == tokens.len() => t,
            Some(t) => {
                return Err(GgufError::Tokenizer(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    t.len(),
                    tokens.len()
                )))
            }
            None => vec![token_type::NORMAL; tokens.len()],
        };
        let merges: Vec<String> = g
            .get_str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| GgufError::MissingKey("tokenizer.ggml.merges".into()))?
            .into_iter()
            .map(String::from)
            .collect();
        let n = tokens.len() as u64;
        let id = |key: &str| -> Result<Option<u32>, GgufError> {
            match g.get_u64(key)? {
                None => Ok(None),
                Some(i) if i < n => Ok(Some(i as u32)),
                Some(i) => Err(GgufError::Tokenizer(format!(
                    "{key} = {i} is outside the vocabulary of {n} tokens"
                ))),
            }
        };
        let add_bos = g
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(pre == "llama-bpe");
        Ok(Self {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            eom: id("tokenizer.ggml.eom_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos,
            chat_template: g.get_str("tokenizer.chat_template")?.map(String::from),
            tokens,
            types,
            merges,
            pre,
        })
    }

    fn text(&self, id: Option<u32>) -> Option<&str> {
        id.map(|i| self.tokens[i as usize].as_str())
    }

    fn id_of(&self, text: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == text).map(|i| i as u32)
    }

    /// Ids that end generation: EOS, EOT, EOM and, for the Qwen family, both `<|im_end|>` and
    /// `<|endoftext|>` (as Qwen's own `generation_config.json` lists them).
    pub fn eos_ids(&self, gguf_arch: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = [self.eos, self.eot, self.eom]
            .into_iter()
            .flatten()
            .collect();
        if gguf_arch.starts_with("qwen") {
            ids.extend(
                ["<|im_end|>", "<|endoftext|>"]
                    .iter()
                    .filter_map(|t| self.id_of(t)),
            );
        }
        let mut seen = Vec::new();
        ids.retain(|i| {
            let new = !seen.contains(i);
            seen.push(*i);
            new
        });
        ids
    }

    /// Whether token `i` is an added (matched before BPE) token, and if so whether it is special.
    fn added(&self, i: usize) -> Option<bool> {
        match self.types[i] {
            token_type::CONTROL | token_type::UNKNOWN => Some(true),
            token_type::USER_DEFINED => Some(false),
            _ => None,
        }
    }
}

/// The `pre_tokenizer` / `normalizer` JSON and whether BPE ignores merges for whole-vocab words.
fn pre_tokenizer(pre: &str) -> Result<(Value, Value, bool), GgufError> {
    let byte_level = |use_regex: bool, trim: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "smollm" | "starcoder" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true, true)]}),
            Value::Null,
            false,
        ),
        "gpt-2" => (byte_level(true, true), Value::Null, false),
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false, false)]}),
            json!({"type": "NFC"}),
            false,
        ),
        "llama-bpe" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false, true)]}),
            Value::Null,
            true,
        ),
        other => {
            return Err(GgufError::UnsupportedPreTokenizer {
                name: other.into(),
                supported: SUPPORTED_PRE,
            })
        }
    })
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

/// `tokenizer.json` for the vocabulary.
pub fn tokenizer_json(v: &GgufVocab) -> Result<Value, GgufError> {
    let (pre_tokenizer, normalizer, ignore_merges) = pre_tokenizer(&v.pre)?;
    let mut vocab = Map::with_capacity(v.tokens.len());
    let mut duplicates = 0usize;
    for (i, t) in v.tokens.iter().enumerate() {
        if vocab.contains_key(t) {
            duplicates += 1;
        } else {
            vocab.insert(t.clone(), json!(i));
        }
    }
    if duplicates > 0 {
        tracing::warn!(
            duplicates,
            "GGUF vocabulary repeats token texts; the later ids only decode"
        );
    }
    let merges = v
        .merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(GgufError::Tokenizer(format!(
                "merge {m:?} is not two tokens separated by one space"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let added: Vec<Value> = (0..v.tokens.len())
        .filter_map(|i| {
            v.added(i)
                .map(|special| added_token(i, &v.tokens[i], special))
        })
        .collect();
    let post_processor = match (v.add_bos, v.bos) {
        (true, Some(bos)) => {
            let b = v.tokens[bos as usize].as_str();
            let special = |t: &str| json!({"SpecialToken": {"id": t, "type_id": 0}});
            let seq = |s: &str, ty: u32| json!({"Sequence": {"id": s, "type_id": ty}});
            json!({
                "type": "TemplateProcessing",
                "single": [special(b), seq("A", 0)],
                "pair": [special(b), seq("A", 0), json!({"SpecialToken": {"id": b, "type_id": 1}}), seq("B", 1)],
                "special_tokens": {b: {"id": b, "ids": [bos], "tokens": [b]}},
            })
        }
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
        }
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": v.text(v.unk),
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    }))
}

/// `tokenizer_config.json`: chat template, special token strings and `added_tokens_decoder`.
pub fn tokenizer_config_json(v: &GgufVocab, model_max_length: u64) -> Value {
    let mut decoder = Map::new();
    for i in 0..v.tokens.len() {
        if let Some(special) = v.added(i) {
            decoder.insert(
                i.to_string(),
                json!({"content": v.tokens[i], "lstrip": false, "normalized": false, "rstrip": false,
                       "single_word": false, "special": special}),
            );
        }
    }
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": v.add_bos,
        "add_eos_token": false,
        "add_prefix_space": false,
        "bos_token": v.text(v.bos),
        "eos_token": v.text(v.eos),
        "pad_token": v.text(v.pad),
        "unk_token": v.text(v.unk),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": false,
        "split_special_tokens": false,
        "errors": "replace",
        "added_tokens_decoder": decoder,
    });
    if let Some(t) = &v.chat_template {
        cfg["chat_template"] = json!(t);
    }
    cfg
}
