//! PyTorch's legacy (pre-1.6, non-zip) `torch.save` format, which transformers still
//! loads: `torch.save(obj, f, _use_new_zipfile_serialization=False)`.
//!
//! The file is a sequence of pickles followed by raw storage bytes:
//! 1. the magic number `0x1950a86a20f9469cfc6c` (a pickled int),
//! 2. the protocol version (1001),
//! 3. `sys_info` (`little_endian`, type sizes),
//! 4. the object itself (here a state dict), whose storages are persistent ids
//!    `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`,
//! 5. the list of storage keys, in the order their bytes follow,
//! 6. for each key: the element count (8 bytes, little endian) and the raw bytes.
//!
//! Pickles are parsed with candle's interpreter ([`candle_core::pickle::Stack`]); the
//! tensors' `_rebuild_tensor_v2` arguments with candle's `into_tensor_info`, as its zip
//! loader does. Several tensors may view one storage (tied weights, slices) at any
//! offset and stride; each tensor is read with positioned reads of only its own bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

/// The first pickle of every legacy file: PROTO 2, LONG1 of 10 bytes (the magic number,
/// little endian), STOP.
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];
const PROTOCOL_VERSION: i64 = 1001;

/// Whether `head` (the first bytes of a file) starts a legacy checkpoint.
pub fn is_legacy(head: &[u8]) -> bool {
    head.starts_with(&MAGIC_PICKLE)
}

/// One storage's bytes in the file.
#[derive(Debug, Clone, Copy)]
struct Storage {
    /// Absolute offset of its first byte.
    start: u64,
    /// Element count as written before the bytes.
    numel: u64,
    elem_size: usize,
}

/// One tensor: a view into a storage.
#[derive(Debug, Clone)]
pub struct LegacyTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    stride: Vec<usize>,
    /// In elements.
    offset: usize,
    storage: String,
}

pub struct LegacyPth {
    path: PathBuf,
    file: File,
    storages: HashMap<String, Storage>,
    tensors: HashMap<String, LegacyTensor>,
}

/// Element size of a storage class; `None` for classes torch never saves tensors in.
fn storage_elem_size(class_name: &str) -> Option<usize> {
    Some(match class_name {
        "DoubleStorage" | "LongStorage" | "ComplexFloatStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
        "ComplexDoubleStorage" => 16,
        _ => return None,
    })
}

/// Storage key -> element size, for every persistent id in `obj`.
fn collect_storage_types(obj: &Object, out: &mut HashMap<String, usize>) -> Result<()> {
    match obj {
        Object::PersistentLoad(id) => {
            let Object::Tuple(fields) = id.as_ref() else {
                bail!("persistent id is not a tuple: {id:?}");
            };
            match fields.as_slice() {
                [Object::Unicode(kind), Object::Class { class_name, .. }, Object::Unicode(key), ..]
                    if kind == "storage" =>
                {
                    let size = storage_elem_size(class_name)
                        .with_context(|| format!("unsupported storage type {class_name}"))?;
                    out.insert(key.clone(), size);
                }
                _ => bail!("unexpected persistent id {id:?}"),
            }
        }
        Object::Tuple(items) | Object::List(items) => {
            for item in items {
                collect_storage_types(item, out)?;
            }
        }
        Object::Dict(items) => {
            for (k, v) in items {
                collect_storage_types(k, out)?;
                collect_storage_types(v, out)?;
            }
        }
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storage_types(callable, out)?;
            collect_storage_types(args, out)?;
        }
        _ => {}
    }
    Ok(())
}

fn read_pickle(r: &mut BufReader<File>, what: &str) -> Result<Object> {
    let mut stack = Stack::empty();
    stack
        .read_loop(r)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("parsing the {what} pickle"))?;
    stack
        .finalize()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("the {what} pickle is empty"))
}

impl LegacyPth {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path).with_context(|| {
            format!(
                "reading {} as a legacy (non-zip) PyTorch checkpoint",
                path.display()
            )
        })
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut head = [0u8; MAGIC_PICKLE.len()];
        file.read_exact_at(&mut head, 0)
            .context("file too short for the magic number")?;
        ensure!(is_legacy(&head), "no legacy magic number");
        let mut r = BufReader::new(file.try_clone()?);
        r.seek(std::io::SeekFrom::Start(MAGIC_PICKLE.len() as u64))?;

        let version = read_pickle(&mut r, "protocol version")?;
        match version {
            Object::Int(v) if v as i64 == PROTOCOL_VERSION => {}
            Object::Long(v) if v == PROTOCOL_VERSION => {}
            other => bail!("unsupported protocol version {other:?}"),
        }
        let sys_info = read_pickle(&mut r, "sys_info")?;
        if let Object::Dict(items) = &sys_info {
            let big_endian = items.iter().any(|(k, v)| {
                *k == Object::Unicode("little_endian".into()) && *v == Object::Bool(false)
            });
            ensure!(!big_endian, "saved on a big-endian machine");
        }
        let main = read_pickle(&mut r, "state dict")?;
        let keys = read_pickle(&mut r, "storage keys")?;
        let Object::List(keys) = keys else {
            bail!("the storage key list is not a list");
        };

        let mut elem_sizes = HashMap::new();
        collect_storage_types(&main, &mut elem_sizes)?;
        let mut pos = r.stream_position()?;
        let mut storages = HashMap::new();
        for key in keys {
            let key = key
                .unicode()
                .map_err(|k| anyhow::anyhow!("storage key {k:?} is not a string"))?;
            let elem_size = *elem_sizes
                .get(&key)
                .with_context(|| format!("storage `{key}` is listed but used by nothing"))?;
            let mut count = [0u8; 8];
            file.read_exact_at(&mut count, pos)
                .with_context(|| format!("truncated before storage `{key}`"))?;
            let numel = u64::from_le_bytes(count);
            let start = pos + 8;
            let end = numel
                .checked_mul(elem_size as u64)
                .and_then(|n| n.checked_add(start))
                .filter(|&end| end <= file_len)
                .with_context(|| format!("storage `{key}` ({numel} elements) runs past the end"))?;
            storages.insert(
                key,
                Storage {
                    start,
                    numel,
                    elem_size,
                },
            );
            pos = end;
        }

        let mut tensors = HashMap::new();
        let Object::Dict(entries) = main else {
            bail!("the saved object is not a state dict");
        };
        for (name, value) in entries {
            let Object::Unicode(name_str) = &name else {
                continue;
            };
            let name_str = name_str.clone();
            // Non-tensor entries (`_metadata`, ...) and dtypes candle has no type for
            // (bool, int32) are left out, as candle's zip loader does.
            let info = match value.into_tensor_info(name, Path::new("")) {
                Ok(Some(info)) => info,
                Ok(None) | Err(_) => continue,
            };
            let storage = info.path.trim_start_matches('/').to_string();
            let stored = storages
                .get(&storage)
                .with_context(|| format!("tensor `{name_str}`: storage `{storage}` is missing"))?;
            ensure!(
                stored.elem_size == info.dtype.size_in_bytes(),
                "tensor `{name_str}`: dtype {:?} does not match its storage",
                info.dtype
            );
            let t = LegacyTensor {
                dtype: info.dtype,
                shape: info.layout.shape().dims().to_vec(),
                stride: info.layout.stride().to_vec(),
                offset: info.layout.start_offset() / info.dtype.size_in_bytes(),
                storage,
            };
            t.check_bounds(stored.numel)
                .with_context(|| format!("tensor `{name_str}`"))?;
            tensors.insert(name_str, t);
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            storages,
            tensors,
        })
    }

    pub fn tensors(&self) -> &HashMap<String, LegacyTensor> {
        &self.tensors
    }

    /// The tensor `name`, contiguous, on the CPU.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("tensor `{name}` vanished"))?;
        let storage = &self.storages[&t.storage];
        let size = storage.elem_size;
        let Some((first, end)) = t.span() else {
            return Ok(Tensor::zeros(t.shape.as_slice(), t.dtype, &Device::Cpu)?);
        };
        let mut span = vec![0u8; (end - first) * size];
        self.file
            .read_exact_at(&mut span, storage.start + (first * size) as u64)
            .with_context(|| format!("reading tensor `{name}` from {}", self.path.display()))?;
        let bytes = if t.is_row_major() {
            span
        } else {
            t.gather(&span, first, size)
        };
        Ok(Tensor::from_raw_buffer(
            &bytes,
            t.dtype,
            &t.shape,
            &Device::Cpu,
        )?)
    }
}

impl LegacyTensor {
    /// Storage elements `[first, end)` the view touches; `None` when it has no elements.
    /// Only called after [`Self::check_bounds`], so the arithmetic cannot overflow.
    fn span(&self) -> Option<(usize, usize)> {
        if self.shape.contains(&0) {
            return None;
        }
        let last: usize = self
            .shape
            .iter()
            .zip(&self.stride)
            .map(|(d, s)| (d - 1) * s)
            .sum();
        Some((self.offset, self.offset + last + 1))
    }

    /// The view stays inside a storage of `numel` elements and has no more elements than
    /// it (so a hostile stride-0 view cannot ask for an unbounded allocation).
    fn check_bounds(&self, numel: u64) -> Result<()> {
        ensure!(
            self.shape.len() == self.stride.len(),
            "size and stride have different ranks"
        );
        if self.shape.contains(&0) {
            return Ok(());
        }
        let overflow = || anyhow::anyhow!("size or stride out of range");
        let mut count: u64 = 1;
        let mut end = self.offset as u64 + 1;
        for (&d, &s) in self.shape.iter().zip(&self.stride) {
            count = count.checked_mul(d as u64).ok_or_else(overflow)?;
            let reach = ((d - 1) as u64)
                .checked_mul(s as u64)
                .ok_or_else(overflow)?;
            end = end.checked_add(reach).ok_or_else(overflow)?;
        }
        ensure!(
            end <= numel && count <= numel,
            "the view (offset {}, size {:?}, stride {:?}) does not fit its storage of {numel} elements",
            self.offset,
            self.shape,
            self.stride
        );
        Ok(())
    }

    fn is_row_major(&self) -> bool {
        let mut expected = 1;
        for (d, s) in self.shape.iter().zip(&self.stride).rev() {
            if *d != 1 && *s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// The view's elements in row-major order, copied out of `span` (which starts at
    /// storage element `first`).
    fn gather(&self, span: &[u8], first: usize, size: usize) -> Vec<u8> {
        let count: usize = self.shape.iter().product();
        let mut out = Vec::with_capacity(count * size);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..count {
            let at: usize = self.offset - first
                + index
                    .iter()
                    .zip(&self.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            out.extend_from_slice(&span[at * size..(at + 1) * size]);
            // Advance the multi-index, last dimension fastest.
            for dim in (0..index.len()).rev() {
                index[dim] += 1;
                if index[dim] < self.shape[dim] {
                    break;
                }
                index[dim] = 0;
            }
        }
        out
    }
}
