//! A minimal GGUF v3 writer, so tests (here and in other crates) can make small model files
//! without shipping binaries.

use super::gguf::MetaValue;
use super::quant::GgmlType;

/// Builds a GGUF image in memory.
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    alignment: usize,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    bytes: Vec<u8>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self {
            alignment: 32,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry (`general.alignment` also changes the layout written).
    pub fn metadata(&mut self, key: &str, value: MetaValue) -> &mut Self {
        if key == "general.alignment" {
            if let Some(a) = value.as_u64().filter(|a| a.is_power_of_two()) {
                self.alignment = a as usize;
            }
        }
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds an f32 tensor; `shape` is row-major, outermost first.
    pub fn tensor_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) -> &mut Self {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor_raw(name, shape, GgmlType::F32, bytes)
    }

    /// Adds a tensor from already-encoded bytes of `ggml_type`.
    pub fn tensor_raw(
        &mut self,
        name: &str,
        shape: &[usize],
        ggml_type: GgmlType,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type,
            bytes,
        });
        self
    }

    /// The file image.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&type_id(value).to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            offsets.push(offset);
            offset = (offset + t.bytes.len()).div_ceil(self.alignment) * self.alignment;
        }
        for (t, off) in self.tensors.iter().zip(&offsets) {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&(*off as u64).to_le_bytes());
        }
        let data_start = out.len().div_ceil(self.alignment) * self.alignment;
        out.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(&offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.bytes);
        }
        out
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn write_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => write_string(out, s),
        MetaValue::Array(items) => {
            // An empty array still needs an element type; u32 is as good as any.
            let elem = items.first().map(type_id).unwrap_or(4);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

impl GgufBuilder {
    /// Writes `tokenizer.ggml.*` metadata for a byte-level BPE vocabulary of `specials`
    /// (control tokens, ids `0..specials.len()`) followed by the 256 single bytes in byte
    /// order (GPT-2 alphabet) and no merges. Any text round-trips through it, one token per
    /// byte: enough for synthetic test models. BOS/EOS are the first two specials when given.
    pub fn byte_level_vocab(&mut self, specials: &[&str]) -> &mut Self {
        let alphabet = gpt2_byte_alphabet();
        let mut tokens: Vec<MetaValue> = specials
            .iter()
            .map(|s| MetaValue::String(s.to_string()))
            .collect();
        tokens.extend(alphabet.iter().map(|c| MetaValue::String(c.to_string())));
        let mut types = vec![MetaValue::I32(3); specials.len()];
        types.extend(std::iter::repeat_n(MetaValue::I32(1), 256));
        self.metadata("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
            .metadata("tokenizer.ggml.pre", MetaValue::String("gpt2".into()))
            .metadata("tokenizer.ggml.tokens", MetaValue::Array(tokens))
            .metadata("tokenizer.ggml.token_type", MetaValue::Array(types))
            .metadata("tokenizer.ggml.merges", MetaValue::Array(Vec::new()));
        if !specials.is_empty() {
            self.metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(0));
        }
        if specials.len() > 1 {
            self.metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(1));
        }
        self
    }
}

/// GPT-2's reversible byte → printable character table, indexed by byte.
pub fn gpt2_byte_alphabet() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next_unprintable = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or(' ')
            } else {
                let c = char::from_u32(next_unprintable).unwrap_or(' ');
                next_unprintable += 1;
                c
            }
        })
        .collect()
}
