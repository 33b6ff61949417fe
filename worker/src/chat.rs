//! The tokenizer and chat template of a model folder: `tokenizer.json` through the `tokenizers`
//! crate, the Jinja chat template (from `tokenizer_config.json` or `chat_template.jinja`) through
//! minijinja with Python-compatible string methods, configured like transformers' renderer.

use std::path::{Path, PathBuf};

use ibench_shared::ChatMessage;
use minijinja::{context, Environment};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};

pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    path: PathBuf,
}

fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl ChatTokenizer {
    pub fn from_folder(folder: &Path) -> Result<Self> {
        let path = folder.join("tokenizer.json");
        if !path.is_file() {
            return Err(EngineError::MissingFile {
                path,
                what: "the model folder needs a tokenizer.json (fast tokenizer)",
            });
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| EngineError::Tokenizer {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let cfg_path = folder.join("tokenizer_config.json");
        let cfg: Value = match std::fs::read_to_string(&cfg_path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| EngineError::Tokenizer {
                path: cfg_path.clone(),
                why: format!("invalid JSON: {e}"),
            })?,
            Err(_) => Value::Null,
        };
        let mut template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        let jinja = folder.join("chat_template.jinja");
        if template.is_none() && jinja.is_file() {
            template = Some(
                std::fs::read_to_string(&jinja).map_err(|source| EngineError::Io {
                    path: jinja,
                    source,
                })?,
            );
        }
        Ok(Self {
            tokenizer,
            template,
            bos_token: token_string(cfg.get("bos_token")),
            eos_token: token_string(cfg.get("eos_token")),
            path,
        })
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Renders the chat template like transformers' `apply_chat_template(tokenize=False)`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: bool,
    ) -> Result<String> {
        let template = self
            .template
            .as_deref()
            .ok_or(EngineError::NoChatTemplate)?;
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use it for "today's date" in system prompts; a fixed date keeps renders reproducible.
            fmt.replace("%Y", "2026")
                .replace("%m", "01")
                .replace("%d", "01")
                .replace("%B", "January")
                .replace("%b", "Jan")
        });
        let tmpl = env
            .template_from_str(template)
            .map_err(|e| EngineError::Template(format!("does not parse: {e}")))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            enable_thinking => enable_thinking,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| EngineError::Template(format!("rendering failed: {e}")))
    }

    /// Tokenizes text as `tokenizer(text, add_special_tokens=False)` does (no BOS is prepended).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                why: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer {
                path: self.path.clone(),
                why: e.to_string(),
            })
    }

    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: bool,
    ) -> Result<Vec<u32>> {
        self.encode(&self.render(messages, add_generation_prompt, enable_thinking)?)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}
