//! GGUF v2/v3 container parser.
//!
//! The file is memory-mapped; metadata is parsed eagerly (it is small), tensor data stays in
//! the mapping until a tensor is dequantized. Every count and length read from the file is
//! checked against the bytes that remain before anything is allocated, so a corrupt or
//! truncated file yields a [`LoadError`] instead of a panic or a huge allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use rayon::prelude::*;

use super::quant::{self, GgmlType};
use super::LoadError;
use crate::weights::Tensor;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value. Arrays hold values of a single type (nested arrays are allowed).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer type widened to u64 (negative values give `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// Any numeric type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
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
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// The key/value metadata of a GGUF file, with typed accessors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    pub entries: BTreeMap<String, MetaValue>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.get(key)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }
    /// An array of strings; `None` when absent or when any element is not a string.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(MetaValue::as_str)
            .collect()
    }
    /// An array of integers; `None` when absent or when any element is not an integer.
    pub fn get_i64_array(&self, key: &str) -> Option<Vec<i64>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(MetaValue::as_i64)
            .collect()
    }
}

/// Where one tensor lives in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: innermost (contiguous) dimension first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte range in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        // Validated at parse time not to overflow.
        self.dims.iter().product::<u64>() as usize
    }
    /// Row-major shape, outermost first (the reverse of the GGUF dims).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file.
pub struct GgufFile {
    bytes: Bytes,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.entries.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = File::open(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the mapping is read-only. As with any mmap, another process truncating the
        // file while it is mapped would fault; model files are not rewritten in place.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(Bytes::Mapped(map)).map_err(|e| e.in_file(path))
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, LoadError> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Self, LoadError> {
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
        };
        if r.take(4).ok() != Some(MAGIC.as_slice()) {
            return Err(LoadError::NotGguf);
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(LoadError::corrupt(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;
        // Each tensor info needs at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset);
        // each key/value at least 8 (key len) + 4 (type) + 1.
        r.check_count(tensor_count, 24, "tensor count")?;
        r.check_count(kv_count, 13, "metadata count")?;

        let mut entries = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let value_type = r.u32()?;
            let value = r.value(value_type, 0)?;
            entries.insert(key, value);
        }
        let metadata = Metadata { entries };

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(LoadError::corrupt(format!(
                        "general.alignment {v:?} is not a positive power of two"
                    )))
                }
            },
        };

        let mut raw_infos = Vec::with_capacity((tensor_count as usize).min(1 << 16));
        for _ in 0..tensor_count {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > 4 {
                return Err(LoadError::corrupt(format!(
                    "tensor {name} claims {n_dims} dimensions (at most 4)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let type_id = r.u32()?;
            let offset = r.u64()?;
            raw_infos.push((name, dims, type_id, offset));
        }

        let data_start = align_up(r.pos as u64, alignment);
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(raw_infos.len());
        let mut by_name = BTreeMap::new();
        for (name, dims, type_id, offset) in raw_infos {
            let ggml_type =
                GgmlType::from_id(type_id).ok_or_else(|| LoadError::UnsupportedTensorType {
                    tensor: name.clone(),
                    ggml_type: format!("unknown type id {type_id}"),
                })?;
            let numel = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= file_len.saturating_mul(8))
                .ok_or_else(|| {
                    LoadError::corrupt(format!("tensor {name} has absurd dimensions {dims:?}"))
                })?;
            let (block, block_bytes) = ggml_type.block_layout();
            let row = dims.first().copied().unwrap_or(1);
            if row % block as u64 != 0 {
                return Err(LoadError::corrupt(format!(
                    "tensor {name}: row length {row} is not a multiple of the {} block size {block}",
                    ggml_type.name()
                )));
            }
            let len = numel / block as u64 * block_bytes as u64;
            if offset % alignment != 0 {
                return Err(LoadError::corrupt(format!(
                    "tensor {name}: data offset {offset} is not aligned to {alignment}"
                )));
            }
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(len));
            let (start, end) = match (start, end) {
                (Some(s), Some(e)) if e <= file_len => (s, e),
                _ => {
                    return Err(LoadError::Truncated(format!(
                        "tensor {name} needs bytes {}..{} but the file has {file_len}",
                        data_start.saturating_add(offset),
                        data_start.saturating_add(offset).saturating_add(len)
                    )))
                }
            };
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(LoadError::corrupt(format!("tensor {name} appears twice")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                start: start as usize,
                len: (end - start) as usize,
            });
        }
        Ok(Self {
            bytes,
            version,
            metadata,
            tensors,
            by_name,
        })
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw (possibly quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        // In range: checked against the file length at parse time.
        &self.bytes[info.start..info.start + info.len]
    }

    /// Dequantizes a tensor to f32 in row-major shape (outermost first); `None` when absent.
    pub fn dequantize(&self, name: &str) -> Result<Option<Tensor>, LoadError> {
        let Some(info) = self.tensor_info(name) else {
            return Ok(None);
        };
        let shape = info.shape();
        let row_len = shape.last().copied().unwrap_or(1).max(1);
        let data = dequantize_rows(info.ggml_type, self.tensor_bytes(info), row_len, name)?;
        Ok(Some(Tensor::new(shape, data)))
    }
}

/// Dequantizes row by row in parallel (rows are whole blocks: checked at parse time).
fn dequantize_rows(
    ggml_type: GgmlType,
    bytes: &[u8],
    row_len: usize,
    name: &str,
) -> Result<Vec<f32>, LoadError> {
    let (block, block_bytes) = ggml_type.block_layout();
    let row_bytes = row_len / block * block_bytes;
    let rows = bytes.len().checked_div(row_bytes).unwrap_or(0);
    let mut out = vec![0f32; rows * row_len];
    // Large chunks keep rayon's overhead small for the many tiny rows of norm vectors.
    let rows_per_chunk = (16384 / row_len.max(1)).max(1);
    out.par_chunks_mut(rows_per_chunk * row_len)
        .zip(bytes.par_chunks(rows_per_chunk * row_bytes.max(1)))
        .try_for_each(|(dst, src)| quant::dequantize_into(ggml_type, src, dst))
        .map_err(|unsupported| LoadError::UnsupportedTensorType {
            tensor: name.to_string(),
            ggml_type: unsupported.0.to_string(),
        })?;
    Ok(out)
}

fn align_up(pos: u64, alignment: u64) -> u64 {
    pos.div_ceil(alignment) * alignment
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const MAX_ARRAY_NESTING: u32 = 8;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], LoadError> {
        if n > self.remaining() {
            return Err(LoadError::Truncated(format!(
                "needed {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LoadError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Rejects a count whose elements could not fit in the remaining bytes.
    fn check_count(&self, count: u64, min_elem_bytes: u64, what: &str) -> Result<(), LoadError> {
        match count.checked_mul(min_elem_bytes) {
            Some(n) if n <= self.remaining() as u64 => Ok(()),
            _ => Err(LoadError::Truncated(format!(
                "{what} {count} at offset {} cannot fit in the {} bytes left",
                self.pos,
                self.remaining()
            ))),
        }
    }

    fn string(&mut self) -> Result<String, LoadError> {
        let len = self.u64()?;
        self.check_count(len, 1, "string length")?;
        let at = self.pos;
        let raw = self.take(len as usize)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| LoadError::corrupt(format!("string at offset {at} is not UTF-8")))
    }

    fn value(&mut self, value_type: u32, depth: u32) -> Result<MetaValue, LoadError> {
        Ok(match value_type {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array()?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(LoadError::corrupt(format!(
                        "bool byte {b} at offset {}",
                        self.pos - 1
                    )))
                }
            },
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(LoadError::corrupt("metadata arrays nested too deeply"));
                }
                let elem_type = self.u32()?;
                let len = self.u64()?;
                self.check_count(len, min_value_bytes(elem_type)?, "array length")?;
                // Grow as elements actually parse: a value takes more memory than its bytes.
                let mut items = Vec::with_capacity((len as usize).min(1 << 16));
                for _ in 0..len {
                    items.push(self.value(elem_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            t => {
                return Err(LoadError::corrupt(format!(
                    "unknown metadata value type {t} at offset {}",
                    self.pos
                )))
            }
        })
    }
}

fn min_value_bytes(value_type: u32) -> Result<u64, LoadError> {
    Ok(match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        t => {
            return Err(LoadError::corrupt(format!(
                "unknown array element type {t}"
            )))
        }
    })
}
