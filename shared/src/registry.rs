//! The model registry: named models with their folder, quantization wish, device map and
//! description. Three names are predefined (the seed guide's server models, under a configurable
//! models root); users add their own with `ibench models register`, persisted in a TOML file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::SharedError;

/// The seed guide's models root on the team's server.
pub const DEFAULT_MODELS_ROOT: &str = "/data/wudy/projects/models";

/// Weight quantization applied at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// The checkpoint's own dtype (bf16/f16/f32).
    #[default]
    None,
    /// 8-bit integer weights with per-row scales.
    Int8,
    /// 4-bit integer weights with per-group scales.
    Int4,
}

impl Quantization {
    pub fn from_flags(load_in_8bit: bool, load_in_4bit: bool) -> Result<Self, SharedError> {
        match (load_in_8bit, load_in_4bit) {
            (true, true) => Err(SharedError::ConflictingQuantization),
            (true, false) => Ok(Self::Int8),
            (false, true) => Ok(Self::Int4),
            _ => Ok(Self::None),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Int8 => "8-bit",
            Self::Int4 => "4-bit",
        }
    }
}

/// One named model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub quantization: Quantization,
    /// `auto` (place by free memory) or a device such as `cpu`, `cuda:0`.
    #[serde(default = "auto")]
    pub device_map: String,
    #[serde(default)]
    pub description: String,
    #[serde(skip)]
    pub predefined: bool,
}

fn auto() -> String {
    "auto".into()
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    #[serde(default, rename = "model")]
    models: Vec<ModelSpec>,
}

/// Predefined plus user-registered models.
#[derive(Debug, Clone)]
pub struct Registry {
    file: PathBuf,
    models: BTreeMap<String, ModelSpec>,
}

/// Where the registry lives unless `--registry`/`IBENCH_REGISTRY` says otherwise.
pub fn default_registry_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ibench").join("models.toml")
}

/// Valid names are what a shell and a file name can carry without quoting.
pub fn validate_name(name: &str) -> Result<(), SharedError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(SharedError::InvalidModelName(name.to_string()))
    }
}

impl Registry {
    /// The seed's three server models under `models_root`.
    pub fn predefined(models_root: &Path) -> Vec<ModelSpec> {
        let spec = |name: &str, description: &str| ModelSpec {
            name: name.into(),
            path: models_root.join(name),
            quantization: Quantization::Int4,
            device_map: auto(),
            description: description.into(),
            predefined: true,
        };
        vec![
            spec("Qwen3-8B", "Base Qwen3-8B model (5 safetensors shards)"),
            spec(
                "qwen3_full_sft",
                "Fine-tuned Qwen3-8B, full SFT (4 safetensors shards)",
            ),
            spec(
                "llama_factory_psy1.32.1_lora_qwen2_7b_dpo",
                "Qwen2-7B with LoRA + DPO (LLaMA-Factory, psychology)",
            ),
        ]
    }

    /// Loads the registry file (a missing file is an empty registry) on top of the predefined names.
    pub fn load(file: &Path, models_root: &Path) -> Result<Self, SharedError> {
        let mut models: BTreeMap<String, ModelSpec> = Self::predefined(models_root)
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect();
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let parsed: RegistryFile =
                    toml::from_str(&text).map_err(|e| SharedError::RegistryParse {
                        path: file.to_path_buf(),
                        why: e.to_string(),
                    })?;
                for m in parsed.models {
                    validate_name(&m.name)?;
                    models.insert(m.name.clone(), m);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SharedError::Io {
                    path: file.to_path_buf(),
                    source,
                })
            }
        }
        Ok(Self {
            file: file.to_path_buf(),
            models,
        })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn list(&self) -> impl Iterator<Item = &ModelSpec> {
        self.models.values()
    }

    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models.get(name)
    }

    /// A registered name, or else a model folder given by path.
    pub fn resolve(&self, name_or_path: &str) -> Result<ModelSpec, SharedError> {
        if let Some(m) = self.models.get(name_or_path) {
            return Ok(m.clone());
        }
        let p = Path::new(name_or_path);
        if p.is_dir() {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name_or_path.into());
            return Ok(ModelSpec {
                name,
                path: p.to_path_buf(),
                quantization: Quantization::None,
                device_map: auto(),
                description: String::new(),
                predefined: false,
            });
        }
        Err(SharedError::UnknownModel {
            name: name_or_path.into(),
            known: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Adds or replaces a user model and writes the file (atomically: temp file, then rename).
    pub fn register(&mut self, spec: ModelSpec) -> Result<(), SharedError> {
        validate_name(&spec.name)?;
        if self.models.get(&spec.name).is_some_and(|m| m.predefined) {
            return Err(SharedError::Predefined(spec.name));
        }
        self.models.insert(spec.name.clone(), spec);
        self.save()
    }

    fn save(&self) -> Result<(), SharedError> {
        let file = RegistryFile {
            models: self
                .models
                .values()
                .filter(|m| !m.predefined)
                .cloned()
                .collect(),
        };
        let text = toml::to_string_pretty(&file).expect("registry entries serialize");
        let io = |source| SharedError::Io {
            path: self.file.clone(),
            source,
        };
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.file.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.file).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predefined_names_live_under_the_models_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::load(&dir.path().join("none.toml"), Path::new("/srv/models")).unwrap();
        let m = r.get("Qwen3-8B").unwrap();
        assert_eq!(m.path, Path::new("/srv/models/Qwen3-8B"));
        assert_eq!(m.quantization, Quantization::Int4);
        assert_eq!(r.list().count(), 3);
    }

    #[test]
    fn registered_models_persist_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/models.toml");
        let mut r = Registry::load(&file, dir.path()).unwrap();
        let spec = ModelSpec {
            name: "my_new_model".into(),
            path: "/path/to/new/model".into(),
            quantization: Quantization::Int8,
            device_map: "cuda:1".into(),
            description: "My newly trained model".into(),
            predefined: false,
        };
        r.register(spec.clone()).unwrap();
        let again = Registry::load(&file, dir.path()).unwrap();
        assert_eq!(again.resolve("my_new_model").unwrap(), spec);
        assert!(matches!(
            again.resolve("nope"),
            Err(SharedError::UnknownModel { .. })
        ));
        // A folder path resolves without registration.
        assert_eq!(
            again.resolve(dir.path().to_str().unwrap()).unwrap().path,
            dir.path()
        );
    }

    #[test]
    fn predefined_cannot_be_replaced_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::load(&dir.path().join("m.toml"), dir.path()).unwrap();
        let mut spec = r.get("Qwen3-8B").unwrap().clone();
        spec.predefined = false;
        assert!(matches!(r.register(spec), Err(SharedError::Predefined(_))));
        assert!(validate_name("bad name").is_err());
        assert!(validate_name("llama_factory_psy1.32.1_lora_qwen2_7b_dpo").is_ok());
        assert!(Quantization::from_flags(true, true).is_err());
    }

    #[test]
    fn a_corrupt_registry_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "[[model]]\nname = 3\n").unwrap();
        let e = Registry::load(&file, dir.path()).unwrap_err().to_string();
        assert!(e.contains("m.toml"), "{e}");
    }
}
