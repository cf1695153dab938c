//! `Weights`: a checkpoint's safetensors shards, memory-mapped and read in place.
//!
//! Opening a checkpoint parses and checks every header (data inside the file, no two tensors
//! overlapping, sizes matching dtype × shape) before anything is computed; [`Weights::expect`] is
//! the only way to a tensor, so a missing tensor, a wrong shape or an unsupported dtype fails in
//! one place with an error that names the file and the tensor. Nothing is copied to the heap.

use crate::error::{Error, Result};
use half::{bf16, f16};
use moe_kernels::{Mat, WeightDType, WeightData};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes of one shard: a read-only mmap, or data compiled into the binary.
pub enum Storage {
    Mmap(Mapped),
    /// Read into private memory at load (`LoadOptions::no_mmap`).
    Read(AlignedBytes),
    Static(&'static [u8]),
    /// A GGUF file (mapped), its tensors renamed to the family's Hugging Face names.
    Gguf(crate::gguf::Gguf),
    /// Tensors quantised at load.
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m.bytes(),
            Storage::Read(b) => b.bytes(),
            Storage::Static(s) => s,
            Storage::Gguf(g) => g.bytes(),
            Storage::Owned(v) => v,
        }
    }
}

/// A file mapped read-only, known to the SIGBUS handler (see [`crate::sigbus`]) while mapped.
pub struct Mapped {
    map: memmap2::Mmap,
    _registration: crate::sigbus::Registration,
}

impl Mapped {
    pub fn new(path: &Path, file: &std::fs::File) -> Result<Self> {
        // SAFETY: the map is read-only. A checkpoint rewritten while it is mapped may change
        // under us (as with every mmap-based loader); we only promise not to write to it. One
        // truncated while mapped raises SIGBUS on the next read of a lost page, which the
        // registration below turns into a message naming the file (or use `no_mmap`).
        let map = unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
        // Ask for 2 MiB page-cache folios mapped by one page-table entry each: a decode step
        // streams hundreds of MB, and 4 KiB pages cost a TLB miss and a prefetcher restart
        // every 4 KiB; a cold read also becomes 2 MiB requests instead of fault-sized ones.
        // Only a hint: kernels without file-backed huge pages refuse it, and nothing changes.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let _registration = crate::sigbus::register(path, &map);
        Ok(Mapped { map, _registration })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// 64 bytes aligned to 64: the unit of [`AlignedBytes`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

// SAFETY: a byte array with no padding (size 64 = alignment 64); every bit pattern is valid.
unsafe impl bytemuck::Zeroable for Line {}
unsafe impl bytemuck::Pod for Line {}

/// A whole file read into private memory, 64-byte aligned like a map's page-aligned start, so
/// the tensors inside keep the alignment their element types need.
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// Reads all of `file` (the file at `path`). A file that shrinks while being read is an error
    /// naming it.
    pub fn read(path: &Path, file: &mut std::fs::File) -> Result<Self> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let len = usize::try_from(len)
            .map_err(|_| bad(path, format!("{len} bytes do not fit in memory")))?;
        let mut lines = bytemuck::allocation::zeroed_vec::<Line>(len.div_ceil(64));
        let buf = &mut bytemuck::cast_slice_mut::<Line, u8>(&mut lines)[..len];
        std::io::Read::read_exact(file, buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad(path, "the file shrank while it was being read")
            } else {
                Error::io(path, e)
            }
        })?;
        Ok(AlignedBytes { lines, len })
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Line, u8>(&self.lines)[..self.len]
    }
}

/// One tensor's place in its shard.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// The dtype string of the header (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte range in the shard.
    pub start: usize,
    pub end: usize,
}

struct Shard {
    path: PathBuf,
    storage: Storage,
}

/// A tensor the model holds: its shard stays alive as long as the tensor does.
#[derive(Clone)]
pub struct WeightTensor {
    shard: Arc<Shard>,
    dtype: WeightDType,
    start: usize,
    len: usize,
    pub shape: Vec<usize>,
    bf16_activations: bool,
}

impl std::fmt::Debug for WeightTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WeightTensor({:?} {:?} in {})",
            self.dtype,
            self.shape,
            self.shard.path.display()
        )
    }
}

impl WeightTensor {
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    /// The elements, in place.
    pub fn data(&self) -> WeightData<'_> {
        let bytes = &self.shard.storage.bytes()[self.start..self.start + self.bytes()];
        // The casts cannot fail: alignment and length were checked when the tensor was taken.
        match self.dtype {
            WeightDType::F32 => WeightData::F32(bytemuck::cast_slice::<u8, f32>(bytes)),
            WeightDType::BF16 => WeightData::BF16(bytemuck::cast_slice::<u8, bf16>(bytes)),
            WeightDType::F16 => WeightData::F16(bytemuck::cast_slice::<u8, f16>(bytes)),
            WeightDType::Quant(ty) => WeightData::Quant(moe_kernels::QuantData {
                ty,
                bytes,
                len: self.len,
            }),
        }
    }

    /// As a matrix `[shape[0], product of the rest]` (a vector is `[1, n]`).
    pub fn mat(&self) -> Mat<'_> {
        let (rows, cols) = match self.shape.as_slice() {
            [n] => (1, *n),
            [r, rest @ ..] => (*r, rest.iter().product()),
            [] => (1, 1),
        };
        Mat::new(self.data(), rows, cols).with_bf16_activations(self.bf16_activations)
    }

    pub fn bytes(&self) -> usize {
        // Whole blocks: checked when the tensor was taken.
        self.dtype.bytes_for(self.len).unwrap_or(0)
    }
}

pub struct Weights {
    shards: Vec<Arc<Shard>>,
    /// name → (shard index, info)
    tensors: HashMap<String, (usize, TensorInfo)>,
    /// Given to every tensor taken from here: see [`Mat::bf16_activations`].
    bf16_activations: bool,
}

const HEADER_LIMIT: u64 = 100 << 20;

fn bad(file: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        file: file.to_path_buf(),
        message: message.into(),
    }
}

fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Parses and checks one shard's header against the shard's length.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, TensorInfo>> {
    if bytes.len() < 8 {
        return Err(bad(
            path,
            format!(
                "file is {} bytes, too short for a header length (truncated?)",
                bytes.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > HEADER_LIMIT || 8 + n > bytes.len() as u64 {
        return Err(bad(
            path,
            format!(
                "header length {n} runs past the end of the {}-byte file (truncated?)",
                bytes.len()
            ),
        ));
    }
    let data_start = 8 + n as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..data_start])
            .map_err(|e| bad(path, format!("header is not a JSON object: {e}")))?;
    let data_len = bytes.len() - data_start;
    let mut out = BTreeMap::new();
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let entry = |m: String| bad(path, format!("tensor `{name}`: {m}"));
        let dtype = v
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| entry("no dtype".into()))?
            .to_string();
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| entry("no shape".into()))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| entry("shape is not a list of sizes".into()))?;
        let offs: Vec<u64> = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| entry("data_offsets is not [begin, end]".into()))?;
        let (b, e) = (offs[0], offs[1]);
        if b > e || e > data_len as u64 {
            return Err(entry(format!(
                "data_offsets [{b}, {e}] lie outside the {data_len} bytes of data in the file (truncated?)"
            )));
        }
        let size = dtype_size(&dtype).ok_or_else(|| entry(format!("unknown dtype {dtype}")))?;
        let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elems.and_then(|n| n.checked_mul(size)) != Some((e - b) as usize) {
            return Err(entry(format!(
                "{} bytes of data for dtype {dtype} and shape {shape:?}",
                e - b
            )));
        }
        out.insert(
            name,
            TensorInfo {
                dtype,
                shape,
                start: data_start + b as usize,
                end: data_start + e as usize,
            },
        );
    }
    let mut ranges: Vec<(&String, &TensorInfo)> =
        out.iter().filter(|(_, t)| t.end > t.start).collect();
    ranges.sort_by_key(|(_, t)| t.start);
    for w in ranges.windows(2) {
        if w[1].1.start < w[0].1.end {
            return Err(bad(
                path,
                format!("tensors `{}` and `{}` overlap in the file", w[0].0, w[1].0),
            ));
        }
    }
    Ok(out)
}

/// What a non-regular file is, for [`Error::NotRegularFile`].
fn file_kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

fn check_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.file_type().is_file() {
        Ok(())
    } else {
        Err(Error::NotRegularFile {
            path: path.to_path_buf(),
            kind: file_kind(meta.file_type()),
        })
    }
}

/// Opens a model file (checkpoint, index, config, tokenizer, GGUF) for reading, refusing anything
/// but a regular file after symlinks: `open` of a FIFO blocks until a writer appears, and a
/// device such as `/dev/zero` reads without end.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    check_regular(
        path,
        &std::fs::metadata(path).map_err(|e| Error::io(path, e))?,
    )?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    // Should the path be swapped for a FIFO after the check, the open still returns at once;
    // the flag changes nothing for a regular file.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NONBLOCK);
    let file = opts.open(path).map_err(|e| Error::io(path, e))?;
    // What was opened is what gets read: check the open file itself too.
    check_regular(path, &file.metadata().map_err(|e| Error::io(path, e))?)?;
    Ok(file)
}

/// The bytes of a model file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut open_regular(path)?, &mut out)
        .map_err(|e| Error::io(path, e))?;
    Ok(out)
}

/// The text of a model file (see [`open_regular`]); not UTF-8 is an I/O error naming the file.
pub fn read_regular_string(path: &Path) -> Result<String> {
    let mut out = String::new();
    std::io::Read::read_to_string(&mut open_regular(path)?, &mut out)
        .map_err(|e| Error::io(path, e))?;
    Ok(out)
}

/// A name from a file, cut short for an error message (a tensor name may be megabytes).
fn short(name: &str) -> String {
    match name.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_string(),
    }
}

/// `model.safetensors.index.json`'s `weight_map` as (tensor, shard file name) pairs. A file name
/// must stay inside the model directory: relative, with no `..`, so an index cannot point the
/// loader at another file on the machine. The check is on the name, not on the canonical path,
/// because shards may be symlinks out of the directory by the directory owner's choice (the
/// Hugging Face cache links every snapshot file into `../../blobs/`).
fn read_index(index: &Path) -> Result<Vec<(String, String)>> {
    let text = read_regular_string(index)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Json {
            path: index.to_path_buf(),
            message: "no `weight_map` object".into(),
        })?;
    let mut out = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            bad(
                index,
                format!(
                    "weight_map entry for `{}` is not a file name",
                    short(tensor)
                ),
            )
        })?;
        let inside = !file.is_empty()
            && Path::new(file).components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
        if !inside {
            return Err(bad(
                index,
                format!(
                    "weight_map entry for `{}` points outside the model directory",
                    short(tensor)
                ),
            ));
        }
        // `./a.safetensors` and `a.safetensors` are one shard, mapped once.
        let clean: PathBuf = Path::new(file)
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        out.push((tensor.clone(), clean.to_string_lossy().into_owned()));
    }
    Ok(out)
}

impl Weights {
    /// The shards of a HuggingFace model directory: those listed by
    /// `model.safetensors.index.json`, else `model.safetensors`, else every `*.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        Self::open_dir_with(dir, true)
    }

    /// [`Weights::open_dir`], with `mmap` false reading every shard into private memory instead
    /// of mapping it: the checkpoint may then change or vanish on disk without affecting the
    /// process, at the cost of reading it all at load and holding it in RAM.
    pub fn open_dir_with(dir: &Path, mmap: bool) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let index = if index_path.exists() {
            Some(read_index(&index_path)?)
        } else {
            None
        };
        let files: Vec<PathBuf> = if let Some(index) = &index {
            let mut names: Vec<&str> = index.iter().map(|(_, f)| f.as_str()).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            v.sort();
            v
        };
        if files.is_empty() {
            return Err(bad(dir, "no *.safetensors files in the model directory"));
        }
        let mut shards = Vec::new();
        for path in files {
            let mut file = open_regular(&path)?;
            let storage = if mmap {
                Storage::Mmap(Mapped::new(&path, &file)?)
            } else {
                Storage::Read(AlignedBytes::read(&path, &mut file)?)
            };
            shards.push((path, storage));
        }
        let w = Self::from_storages(shards)?;
        if let Some(index) = &index {
            w.check_index(&index_path, index)?;
        }
        Ok(w)
    }

    /// Shards held in memory for the life of the process (the embedded model).
    pub fn from_static(files: &[(&str, &'static [u8])]) -> Result<Self> {
        Self::from_storages(
            files
                .iter()
                .map(|(name, bytes)| (PathBuf::from(name), Storage::Static(bytes)))
                .collect(),
        )
    }

    fn from_storages(files: Vec<(PathBuf, Storage)>) -> Result<Self> {
        let mut shards = Vec::new();
        let mut tensors = HashMap::new();
        for (i, (path, storage)) in files.into_iter().enumerate() {
            let infos = parse_header(&path, storage.bytes())?;
            for (name, info) in infos {
                if let Some((other, _)) = tensors.get(&name) {
                    let other: &Arc<Shard> = &shards[*other];
                    return Err(bad(
                        &path,
                        format!("tensor `{name}` is also in {}", other.path.display()),
                    ));
                }
                tensors.insert(name, (i, info));
            }
            shards.push(Arc::new(Shard { path, storage }));
        }
        Ok(Weights {
            shards,
            tensors,
            bf16_activations: false,
        })
    }

    /// The tensors of a GGUF file under the names `entries` give them (each a byte range of the
    /// file, checked inside it), read in place from the file's map.
    pub fn from_gguf(g: crate::gguf::Gguf, entries: Vec<(String, TensorInfo)>) -> Result<Self> {
        let path = g.path().to_path_buf();
        let len = g.bytes().len();
        let mut tensors = HashMap::new();
        for (name, info) in entries {
            if info.start > info.end || info.end > len {
                return Err(bad(
                    &path,
                    format!(
                        "tensor `{name}` at bytes {}..{} runs past the {len}-byte file",
                        info.start, info.end
                    ),
                ));
            }
            if tensors.insert(name.clone(), (0, info)).is_some() {
                return Err(bad(&path, format!("tensor `{name}` appears twice")));
            }
        }
        Ok(Weights {
            shards: vec![Arc::new(Shard {
                path,
                storage: Storage::Gguf(g),
            })],
            tensors,
            bf16_activations: false,
        })
    }

    /// Quantises every float matrix whose name `select` accepts (rows a whole number of blocks)
    /// to `ty`, in memory: later [`Weights::expect`] calls return the quantised tensor. Returns
    /// how many tensors and bytes (before, after) it quantised.
    pub fn quantize(
        &mut self,
        ty: moe_kernels::quant::GgmlType,
        select: impl Fn(&str) -> bool,
    ) -> Result<(usize, usize, usize)> {
        let mut names: Vec<String> = self
            .tensors
            .iter()
            .filter(|(name, (_, info))| {
                select(name)
                    && matches!(info.dtype.as_str(), "F32" | "BF16" | "F16")
                    && info.shape.len() == 2
                    && info.shape[1] % ty.block_size() == 0
            })
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(names.len());
        let (mut before, mut row) = (0, Vec::new());
        for name in &names {
            let shape = self.tensors[name].1.shape.clone();
            let t = self.expect(name, &shape)?;
            before += t.bytes();
            let data = t.data();
            let start = buf.len();
            row.resize(shape[1], 0f32);
            for r in 0..shape[0] {
                data.to_f32_into(r * shape[1], &mut row);
                moe_kernels::quant::quantize_row(ty, &row, &mut buf)?;
            }
            placed.push((name.clone(), shape, start, buf.len()));
        }
        let after = buf.len();
        let shard = self.shards.len();
        self.shards.push(Arc::new(Shard {
            path: PathBuf::from(format!("(quantised to {ty} at load)")),
            storage: Storage::Owned(buf),
        }));
        for (name, shape, start, end) in placed {
            self.tensors.insert(
                name,
                (
                    shard,
                    TensorInfo {
                        dtype: ty.name().to_string(),
                        shape,
                        start,
                        end,
                    },
                ),
            );
        }
        Ok((names.len(), before, after))
    }

    fn check_index(&self, index: &Path, entries: &[(String, String)]) -> Result<()> {
        for (name, file) in entries {
            match self.tensors.get(name) {
                None => {
                    return Err(Error::MissingTensor {
                        name: name.clone(),
                        searched: format!("{file} (listed by {})", index.display()),
                    })
                }
                Some((s, _)) => {
                    let actual = &self.shards[*s].path;
                    if !actual.ends_with(file) {
                        return Err(bad(
                            actual,
                            format!("tensor `{name}` is here, but the index puts it in {file}"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|(_, i)| i)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Whether CPU products with the bf16 tensors taken from here round the activations to bf16
    /// (see [`Mat::bf16_activations`]).
    pub fn set_bf16_activations(&mut self, on: bool) {
        self.bf16_activations = on;
    }

    /// Whether any tensor is stored in bf16.
    pub fn has_bf16(&self) -> bool {
        self.tensors.values().any(|(_, t)| t.dtype == "BF16")
    }

    /// Total bytes of tensor data over all shards.
    pub fn data_bytes(&self) -> usize {
        self.tensors.values().map(|(_, t)| t.end - t.start).sum()
    }

    fn searched(&self) -> String {
        self.shards
            .iter()
            .map(|s| s.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The tensor `name` with exactly `shape`, in a supported dtype (F32, BF16, F16).
    pub fn expect(&self, name: &str, shape: &[usize]) -> Result<WeightTensor> {
        let (si, info) = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            searched: self.searched(),
        })?;
        let shard = &self.shards[*si];
        if info.shape != shape {
            return Err(Error::ShapeMismatch {
                file: shard.path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let dtype = match info.dtype.as_str() {
            "F32" => WeightDType::F32,
            "BF16" => WeightDType::BF16,
            "F16" => WeightDType::F16,
            other => match moe_kernels::quant::ALL_TYPES
                .iter()
                .find(|t| t.is_quantized() && t.name() == other)
            {
                Some(&t) => WeightDType::Quant(t),
                None => {
                    return Err(Error::UnsupportedDtype {
                        file: shard.path.clone(),
                        name: name.into(),
                        found: other.into(),
                    })
                }
            },
        };
        let elements: usize = shape.iter().product();
        let row = shape.last().copied().unwrap_or(1);
        if row % dtype.block_size() != 0 || dtype.bytes_for(elements) != Some(info.end - info.start)
        {
            return Err(Error::BadTensorData {
                file: shard.path.clone(),
                name: name.into(),
                message: format!(
                    "{} bytes do not hold {shape:?} as {}",
                    info.end - info.start,
                    info.dtype
                ),
            });
        }
        let ptr = shard.storage.bytes()[info.start..].as_ptr() as usize;
        if dtype.block_size() == 1 && ptr % dtype.size() != 0 {
            return Err(Error::BadTensorData {
                file: shard.path.clone(),
                name: name.into(),
                message: format!(
                    "data at byte {} is not aligned to its {}-byte elements",
                    info.start,
                    dtype.size()
                ),
            });
        }
        Ok(WeightTensor {
            shard: shard.clone(),
            dtype,
            start: info.start,
            len: elements,
            shape: shape.to_vec(),
            bf16_activations: self.bf16_activations,
        })
    }
}
