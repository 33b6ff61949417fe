//! Finding and reading the safetensors weights of a Hugging Face model folder: a single
//! `model.safetensors`, or shards listed by `model.safetensors.index.json`, memory-mapped.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// The weight files of a folder, memory-mapped and validated.
pub struct WeightFiles {
    folder: PathBuf,
    shards: Vec<(PathBuf, Mmap)>,
    /// tensor name -> shard index
    index: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

/// A tensor's data converted to f32, with its shape.
pub struct HostWeights {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl WeightFiles {
    /// Detects the layout (single file or sharded index) and maps every shard.
    pub fn open(folder: &Path) -> Result<Self> {
        let index_path = folder.join("model.safetensors.index.json");
        let single = folder.join("model.safetensors");
        let shard_names: Vec<String>;
        let mut named: Option<BTreeMap<String, String>> = None;
        if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| EngineError::Io {
                path: index_path.clone(),
                source,
            })?;
            let idx: IndexFile =
                serde_json::from_str(&text).map_err(|e| EngineError::BadIndex {
                    path: index_path.clone(),
                    why: format!("not a valid index: {e}"),
                })?;
            let mut names: Vec<String> = idx.weight_map.values().cloned().collect();
            names.sort();
            names.dedup();
            shard_names = names;
            named = Some(idx.weight_map);
        } else if single.is_file() {
            shard_names = vec!["model.safetensors".into()];
        } else {
            let mut found: Vec<String> = std::fs::read_dir(folder)
                .map_err(|source| EngineError::Io {
                    path: folder.to_path_buf(),
                    source,
                })?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            if found.is_empty() {
                return Err(EngineError::MissingFile {
                    path: single,
                    what: "no model.safetensors, model.safetensors.index.json or *.safetensors in the model folder",
                });
            }
            found.sort();
            shard_names = found;
        }
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let path = folder.join(name);
            let file = File::open(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    EngineError::BadIndex {
                        path: index_path.clone(),
                        why: format!("names shard {name}, which is missing from the folder"),
                    }
                } else {
                    EngineError::Io {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
            // SAFETY: the file is opened read-only; a concurrent writer would corrupt values, not memory safety of our reads
            // beyond what any reader of a changing file sees.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| EngineError::Io {
                path: path.clone(),
                source,
            })?;
            let st = SafeTensors::deserialize(&map).map_err(|e| EngineError::CorruptShard {
                path: path.clone(),
                why: e.to_string(),
            })?;
            for n in st.names() {
                index.insert(n.to_string(), i);
            }
            shards.push((path, map));
        }
        if let Some(map) = named {
            for (tensor, shard) in map {
                let i = shard_names
                    .iter()
                    .position(|s| *s == shard)
                    .expect("shard list built from the map");
                if index.get(&tensor) != Some(&i) {
                    return Err(EngineError::BadIndex {
                        path: index_path.clone(),
                        why: format!("lists tensor '{tensor}' in {shard}, but that shard does not contain it"),
                    });
                }
            }
        }
        Ok(Self {
            folder: folder.to_path_buf(),
            shards,
            index,
        })
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    pub fn shard_paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|(p, _)| p.as_path())
    }

    /// Bytes on disk of all shards.
    pub fn bytes_on_disk(&self) -> u64 {
        self.shards.iter().map(|(_, m)| m.len() as u64).sum()
    }

    /// The dtype of a tensor as a string (`BF16`, ...).
    pub fn dtype(&self, name: &str) -> Option<String> {
        let &i = self.index.get(name)?;
        let st = SafeTensors::deserialize(&self.shards[i].1).ok()?;
        st.tensor(name).ok().map(|t| format!("{:?}", t.dtype()))
    }

    /// Reads a tensor as f32, checking its shape.
    pub fn read(&self, name: &str, expected: &[usize]) -> Result<HostWeights> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor {
                name: name.into(),
                folder: self.folder.clone(),
            })?;
        let (path, map) = &self.shards[i];
        let st = SafeTensors::deserialize(map).map_err(|e| EngineError::CorruptShard {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|e| EngineError::CorruptShard {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let shape = view.shape().to_vec();
        if shape != expected {
            return Err(EngineError::ShapeMismatch {
                name: name.into(),
                path: path.clone(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(EngineError::UnsupportedDtype {
                    name: name.into(),
                    path: path.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(HostWeights { shape, data })
    }
}
