//! A small zero-copy reader for GGUF files (llama.cpp's container), versions 2 and 3, little-endian.
//!
//! ```text
//! u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//! n_kv      × { string key, u32 value_type, value }
//! n_tensors × { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//! padding to `general.alignment` (default 32) | data section (tensor i at data_start + offset_i)
//! string = u64 length + UTF-8 bytes
//! ```
//!
//! The file is memory-mapped; metadata is parsed into owned [`Value`]s (small), tensor data is never
//! copied: [`Gguf::tensor_data`] is a slice of the map. Every malformed input is an
//! [`Error::Checkpoint`] whose message names what is wrong and where; nothing here panics on bad
//! input. Checked: magic, version, every length and count against the bytes left, value and ggml type
//! ids, UTF-8 of keys/names/strings, duplicate keys and tensor names, dims (at most 4, each row a whole
//! number of blocks, sizes that overflow), alignment (a power of two), each tensor's offset aligned,
//! its bytes inside the file and not overlapping another tensor's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moe_kernels::quant::{dequantize_row, ggml_type_name, GgmlType};

use crate::error::{Error, Result};

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted (arrays of arrays of ...).
const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value type id (`enum gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Smallest encoded size of one value of this type (for count checks).
    fn min_size(self) -> usize {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// A typed array: every item has type `elem` (items of a nested array are `Value::Array`s).
    Array {
        elem: ValueType,
        items: Vec<Value>,
    },
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array { .. } => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value (of any width or signedness) that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// An F32 value, or an F64 one narrowed to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array { items, .. } => Some(items),
            _ => None,
        }
    }
}

/// One tensor's header entry, with its checked absolute byte range in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (innermost) dimension, the row length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the data section, as stored.
    pub offset: u64,
    start: usize,
    len: usize,
}

impl GgufTensor {
    /// Row-major (HF / numpy) shape: `dims` reversed, so a matrix is `[rows, cols]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Values in the tensor.
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// Values per row (`dims[0]`; 1 for a 0-dimensional tensor).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.row_len() / self.ggml_type.block_size() * self.ggml_type.block_bytes()
    }

    /// Bytes of the whole tensor.
    pub fn n_bytes(&self) -> usize {
        self.len
    }

    /// Absolute byte range in the file.
    pub fn file_range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

enum Storage {
    Mmap(crate::weights::Mapped),
    Read(crate::weights::AlignedBytes),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m.bytes(),
            Storage::Read(b) => b.bytes(),
            Storage::Owned(v) => v,
        }
    }
}

/// An open GGUF file.
pub struct Gguf {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<GgufTensor>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        Self::open_with(path, true)
    }

    /// Parses `path`, mapped, or with `mmap` false read into private memory (see
    /// [`crate::weights::Weights::open_dir_with`]).
    pub fn open_with(path: impl AsRef<Path>, mmap: bool) -> Result<Gguf> {
        let path = path.as_ref().to_path_buf();
        let mut file = crate::weights::open_regular(&path)?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else if mmap {
            Storage::Mmap(crate::weights::Mapped::new(&path, &file)?)
        } else {
            Storage::Read(crate::weights::AlignedBytes::read(&path, &mut file)?)
        };
        Self::parse(path, storage)
    }

    /// Parses a GGUF image held in memory; `name` only labels errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Gguf> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Gguf> {
        let h = parse_header(storage.bytes()).map_err(|message| Error::Checkpoint {
            file: path.clone(),
            message: format!("GGUF: {message}"),
        })?;
        Ok(Gguf {
            path,
            storage,
            version: h.version,
            alignment: h.alignment,
            data_start: h.data_start,
            meta_index: h
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            metadata: h.metadata,
            tensor_index: h
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: h.tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> usize {
        self.data_start
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// An integer value that fits a u32 (any stored integer type).
    pub fn u32(&self, key: &str) -> Option<u32> {
        self.u64(key).and_then(|v| u32::try_from(v).ok())
    }

    /// A non-negative integer value (any stored integer type).
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// An F32 (or F64, narrowed) value.
    pub fn f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn array(&self, key: &str) -> Option<&[Value]> {
        self.get(key)?.as_array()
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's raw (possibly quantised) bytes, borrowed from the map.
    pub fn tensor_data(&self, t: &GgufTensor) -> &[u8] {
        &self.storage.bytes()[t.file_range()]
    }

    /// Dequantizes a whole tensor to f32, row-major in [`GgufTensor::shape`] order.
    pub fn dequantize(&self, t: &GgufTensor) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; t.n_elements()];
        dequantize_row(t.ggml_type, self.tensor_data(t), &mut out)?;
        Ok(out)
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Vec<(String, Value)>,
    tensors: Vec<GgufTensor>,
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "truncated: {} needs {n} bytes at offset {}, but the file ends at {}",
                what(),
                self.pos,
                self.b.len()
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, String> {
        self.arr::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, String> {
        self.arr::<8>(what).map(u64::from_le_bytes)
    }

    /// A u64 count of items at least `min_size` bytes each, checked against the bytes left.
    fn count(
        &mut self,
        min_size: usize,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<usize, String> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > (self.left() / min_size.max(1)) as u64 {
            return Err(format!(
                "{} is {n} (at offset {at}), more than the {} bytes left can hold (truncated file or corrupt count)",
                what(),
                self.left()
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<String, String> {
        let at = self.pos;
        let n = self.u64(&|| format!("the length of {}", what()))?;
        if n > self.left() as u64 {
            return Err(format!(
                "truncated: {} has length {n} (at offset {at}), past the end of the file ({} bytes left)",
                what(),
                self.left()
            ));
        }
        let s = self.take(n as usize, what)?;
        String::from_utf8(s.to_vec())
            .map_err(|e| format!("{} (at offset {at}) is not valid UTF-8: {e}", what()))
    }

    fn value(
        &mut self,
        t: ValueType,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<Value, String> {
        Ok(match t {
            ValueType::U8 => Value::U8(self.arr::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.arr::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.arr(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.arr(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.arr::<1>(what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(format!(
                            "{} (at offset {at}) is a bool of value {b}, not 0 or 1",
                            what()
                        ))
                    }
                }
            }
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "{} nests arrays more than {MAX_ARRAY_DEPTH} deep",
                        what()
                    ));
                }
                let at = self.pos;
                let id = self.u32(&|| format!("the element type of {}", what()))?;
                let elem = ValueType::from_id(id).ok_or_else(|| {
                    format!(
                        "{} (at offset {at}) has unknown array element type {id} (known: 0..=12)",
                        what()
                    )
                })?;
                let n = self.count(elem.min_size(), &|| {
                    format!("the element count of {}", what())
                })?;
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    items.push(self.value(elem, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                Value::Array { elem, items }
            }
        })
    }
}

fn parse_header(b: &[u8]) -> std::result::Result<Header, String> {
    let mut c = Cursor { b, pos: 0 };
    let magic = c.u32(&|| "the magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(format!(
            "bad magic {:02x?} (expected \"GGUF\" = 47 47 55 46)",
            magic.to_le_bytes()
        ));
    }
    let version = c.u32(&|| "the version".into())?;
    match version {
        2 | 3 => {}
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(format!(
                "unsupported GGUF version {v}: this is a big-endian GGUF (version {}); only little-endian files are supported",
                v.swap_bytes()
            ))
        }
        1 => return Err("unsupported GGUF version 1 (32-bit counts; supported: 2, 3)".into()),
        v => return Err(format!("unsupported GGUF version {v} (supported: 2, 3)")),
    }
    // Each tensor info is at least 8 (name length) + 4 + 4 + 8 bytes; each KV at least 8 + 4 + 1.
    let n_tensors = c.count(24, &|| "the tensor count".into())?;
    let n_kv = c.count(13, &|| "the metadata KV count".into())?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv);
    let mut keys = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&|| format!("the key of metadata entry {i}"))?;
        let at = c.pos;
        let id = c.u32(&|| format!("the value type of metadata `{key}`"))?;
        let t = ValueType::from_id(id).ok_or_else(|| {
            format!("metadata `{key}` (at offset {at}) has unknown value type {id} (known: 0..=12)")
        })?;
        let v = c.value(t, 0, &|| format!("metadata `{key}`"))?;
        if keys.insert(key.clone(), i).is_some() {
            return Err(format!("duplicate metadata key `{key}`"));
        }
        metadata.push((key, v));
    }

    let alignment = match keys.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => *a as u64,
        Some(v) => {
            return Err(format!(
                "`general.alignment` must be a u32 power of two, found {v:?}"
            ))
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut names = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("the name of tensor {i}"))?;
        let at = c.pos;
        let n_dims = c.u32(&|| format!("n_dims of tensor `{name}`"))? as usize;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` (at offset {at}) has {n_dims} dimensions, more than ggml's {MAX_DIMS}"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
        }
        let at = c.pos;
        let id = c.u32(&|| format!("the ggml type of tensor `{name}`"))?;
        let ggml_type = GgmlType::from_id(id).ok_or_else(|| match ggml_type_name(id) {
            Some(n) => format!(
                "tensor `{name}` (at offset {at}) has ggml type {id} ({n}), which is not supported"
            ),
            None => format!("tensor `{name}` (at offset {at}) has unknown ggml type {id}"),
        })?;
        let offset = c.u64(&|| format!("the data offset of tensor `{name}`"))?;
        if names.insert(name.clone(), i).is_some() {
            return Err(format!("duplicate tensor name `{name}`"));
        }
        tensors.push((name, dims, ggml_type, offset));
    }

    let data_start = (c.pos as u64)
        .checked_next_multiple_of(alignment)
        // A file without tensors may end right after its header, unpadded.
        .map(|s| if n_tensors == 0 { s.min(b.len() as u64) } else { s })
        .filter(|&s| s <= b.len() as u64)
        .ok_or_else(|| {
            format!(
                "truncated: the data section would start at offset {} (header end {} aligned to {alignment}), past the end of the file ({} bytes)",
                (c.pos as u64).div_ceil(alignment) * alignment,
                c.pos,
                b.len()
            )
        })? as usize;
    let data_len = (b.len() - data_start) as u64;

    let mut out = Vec::with_capacity(tensors.len());
    for (name, dims, ggml_type, offset) in tensors {
        let row = dims.first().copied().unwrap_or(1);
        let bs = ggml_type.block_size() as u64;
        if row % bs != 0 {
            return Err(format!(
                "tensor `{name}` ({ggml_type}, dims {dims:?}): row length {row} is not a multiple of the block size {bs}"
            ));
        }
        let n_bytes = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| (n / bs).checked_mul(ggml_type.block_bytes() as u64))
            .filter(|&n| n <= isize::MAX as u64)
            .ok_or_else(|| {
                format!("tensor `{name}` ({ggml_type}): dims {dims:?} overflow a byte size")
            })?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        if offset > data_len || n_bytes > data_len - offset {
            return Err(format!(
                "tensor `{name}` ({ggml_type}, dims {dims:?}): data [{offset}, {}) relative to the data section at {data_start} is out of range: the data section has {data_len} bytes",
                offset as u128 + n_bytes as u128
            ));
        }
        out.push(GgufTensor {
            name,
            dims,
            ggml_type,
            offset,
            start: data_start + offset as usize,
            len: n_bytes as usize,
        });
    }

    let mut order: Vec<&GgufTensor> = out.iter().filter(|t| t.len > 0).collect();
    order.sort_by_key(|t| t.start);
    for w in order.windows(2) {
        if w[0].start + w[0].len > w[1].start {
            return Err(format!(
                "tensors `{}` (bytes {:?}) and `{}` (bytes {:?}) overlap",
                w[0].name,
                w[0].file_range(),
                w[1].name,
                w[1].file_range()
            ));
        }
    }

    Ok(Header {
        version,
        alignment,
        data_start,
        metadata,
        tensors: out,
    })
}
