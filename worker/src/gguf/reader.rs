//! The GGUF container (little-endian, versions 2 and 3): header, metadata key/values, tensor infos,
//! then the tensor data at `general.alignment` (default 32). See ggml's `docs/gguf.md`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::quant::{dequantize, GgmlType};
use super::GgufError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The GGUF type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::F32(_) => "float32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F64(_) => "float64",
        }
    }

    /// Any non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            _ => self.as_u64().map(|v| v as i64),
        }
    }

    /// Any number. A float32 comes back as the shortest decimal that round-trips it, so that
    /// `1e-5` stored as f32 reads as `1e-5` rather than `9.999999747378752e-6`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => format!("{v}").parse().ok(),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// `ne` in GGUF order: `dims[0]` is the fastest-varying (column) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in PyTorch / Hugging Face order (`dims` reversed).
    pub fn hf_shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Bytes of data, when the type is known and the rows are whole blocks.
    pub fn byte_size(&self) -> Option<u64> {
        let row = *self.dims.first()?;
        let (block, _) = self.ty.block_layout()?;
        if row % block as u64 != 0 {
            return None;
        }
        self.ty.bytes_for(self.n_elements())
    }
}

/// An open GGUF file: parsed header and the memory-mapped file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    /// Key/values in file order.
    pub metadata: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                needed: self.pos as u64 + n as u64,
                len: self.buf.len() as u64,
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn corrupt(&self, why: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            why,
        }
    }
    /// A length that must fit in what is left of the file (at `min_each` bytes per item).
    fn count(&mut self, min_each: u64, what: &dyn Fn() -> String) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_each) > left {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: format!("{} ({n} items)", what()),
                needed: self.pos as u64 + n.saturating_mul(min_each),
                len: self.buf.len() as u64,
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let n = self.count(1, what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.corrupt(format!("{} is not valid UTF-8", what())))
    }
    fn value(
        &mut self,
        ty: u32,
        what: &dyn Fn() -> String,
        depth: u32,
    ) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8(what)?),
            1 => MetaValue::I8(self.u8(what)? as i8),
            2 => MetaValue::U16(self.u16(what)?),
            3 => MetaValue::I16(self.u16(what)? as i16),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(self.u32(what)? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.u8(what)? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.corrupt(format!("{}: bool byte {b}", what()))),
            },
            8 => MetaValue::String(self.string(what)?),
            9 => {
                if depth > 8 {
                    return Err(self.corrupt(format!("{}: arrays nested too deep", what())));
                }
                let elem = self.u32(what)?;
                let min_each = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(
                            self.corrupt(format!("{}: unknown array element type {other}", what()))
                        )
                    }
                };
                let n = self.count(min_each, what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(self.u64(what)? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(self.corrupt(format!("{}: unknown value type {other}", what()))),
        })
    }
}

impl GgufFile {
    /// Opens and parses `path`; tensor data stays on disk (memory-mapped).
    ///
    /// The file must not be modified while this value lives (it is mapped, not copied).
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: read-only map; we document that the file must not change underneath us.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut c = Cursor {
            buf: &map,
            pos: 0,
            path,
        };
        let magic = c.take(4, &|| "the magic number".into())?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(magic).into(),
            });
        }
        let version = c.u32(&|| "the version".into())?;
        if version != 2 && version != 3 {
            let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                " (this looks like a big-endian GGUF; only little-endian files are supported)"
            } else if version == 1 {
                " (version 1 files are obsolete; convert the model again with a current llama.cpp)"
            } else {
                ""
            };
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
                hint,
            });
        }
        let n_tensors = c.count(8 + 4 + 4 + 8, &|| "the tensor count".into())?;
        let n_kv = c.count(8 + 4, &|| "the metadata count".into())?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata value `{key}`");
            let ty = c.u32(&what)?;
            let value = c.value(ty, &what, 0)?;
            index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor info #{i}"))?;
            let what = || format!("tensor info of '{name}'");
            let n_dims = c.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.corrupt(format!(
                    "tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            if dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .is_none()
            {
                return Err(c.corrupt(format!(
                    "tensor '{name}' has impossible dimensions {dims:?}"
                )));
            }
            let ty = GgmlType::from_id(c.u32(&what)?);
            let offset = c.u64(&what)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(c.corrupt(format!("general.alignment {v:?} is not a power of two")))
                }
            },
        };
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let len = map.len() as u64;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(c.corrupt(format!(
                    "tensor '{}' data offset {} is not aligned to {alignment}",
                    t.name, t.offset
                )));
            }
            if let Some(size) = t.byte_size() {
                let end = data_offset + t.offset + size;
                if end > len {
                    return Err(GgufError::Truncated {
                        path: path.to_path_buf(),
                        what: format!("the data of tensor '{}'", t.name),
                        needed: end,
                        len,
                    });
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            index,
            tensors,
            alignment,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn typed<'s, T>(
        &'s self,
        key: &str,
        expected: &'static str,
        f: impl Fn(&'s MetaValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| GgufError::WrongKeyType {
                key: key.into(),
                expected,
                found: v.type_name(),
            }),
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "a non-negative integer", MetaValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, "a number", MetaValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?
            .ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?
            .ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.typed(key, "an array of strings", |v| {
            v.as_array()?.iter().map(MetaValue::as_str).collect()
        })
    }

    /// An array of integers (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        self.typed(key, "an array of integers", |v| {
            v.as_array()?.iter().map(MetaValue::as_i64).collect()
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (an error for types of unknown size).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let size = t
            .byte_size()
            .ok_or_else(|| GgufError::UnsupportedTensorType {
                tensor: t.name.clone(),
                ty: t.ty,
            })?;
        let start = (self.data_offset + t.offset) as usize;
        Ok(&self.map[start..start + size as usize])
    }

    /// Rows `rows` (counted along all but `dims[0]`) of a tensor, dequantized to f32.
    pub fn dequantize_rows(
        &self,
        t: &TensorInfo,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, GgufError> {
        let unsupported = || GgufError::UnsupportedTensorType {
            tensor: t.name.clone(),
            ty: t.ty,
        };
        if !t.ty.is_supported() {
            return Err(unsupported());
        }
        let row_len = t.dims[0] as usize;
        let row_bytes = t.ty.bytes_for(row_len as u64).ok_or_else(unsupported)? as usize;
        let bytes = self.tensor_bytes(t)?;
        let src = bytes
            .get(rows.start * row_bytes..rows.end * row_bytes)
            .ok_or_else(|| GgufError::Corrupt {
                path: self.path.clone(),
                why: format!("rows {rows:?} are outside tensor '{}'", t.name),
            })?;
        let mut out = vec![0f32; rows.len() * row_len];
        dequantize(t.ty, src, &mut out).map_err(|source| GgufError::Dequant {
            tensor: t.name.clone(),
            source,
        })?;
        Ok(out)
    }

    /// A whole tensor dequantized to f32 (GGUF element order).
    pub fn dequantize_tensor(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let rows = (t.n_elements() / t.dims[0].max(1)) as usize;
        self.dequantize_rows(t, 0..rows)
    }
}
