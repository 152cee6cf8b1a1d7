//! safetensors files (one or several shards) read tensor by tensor.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Metadata;

/// One tensor's place in a safetensors file.
pub struct Entry {
    file: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// safetensors files read tensor by tensor with positioned reads. Unlike a memory map,
/// pages of the file don't stay resident next to the loaded copy, so peak memory while
/// loading is the weights plus one tensor, not twice the weights.
pub struct SafetensorsFiles {
    files: Vec<File>,
    pub entries: HashMap<String, Entry>,
}

impl SafetensorsFiles {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let file_len = file.metadata()?.len();
            let mut len = [0u8; 8];
            file.read_exact_at(&mut len, 0)
                .with_context(|| format!("{} is not a safetensors file", path.display()))?;
            let header_len = u64::from_le_bytes(len);
            if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
                bail!("{} has a corrupt safetensors header", path.display());
            }
            let mut header = vec![0u8; header_len as usize];
            file.read_exact_at(&mut header, 8)?;
            // safetensors' own header type checks that the byte ranges tile the data
            // and match each shape and dtype.
            let header: Metadata = serde_json::from_slice(&header)
                .with_context(|| format!("parsing the safetensors header of {}", path.display()))?;
            let data_start = 8 + header_len;
            for (name, info) in header.tensors() {
                let dtype = match info.dtype {
                    // Stored one byte per value, like U8.
                    safetensors::Dtype::BOOL => DType::U8,
                    other => DType::try_from(other)
                        .with_context(|| format!("tensor `{name}` in {}", path.display()))?,
                };
                let (start, end) = info.data_offsets;
                let entry = Entry {
                    file: index,
                    dtype,
                    shape: info.shape.clone(),
                    start: data_start + start as u64,
                    end: data_start + end as u64,
                };
                if entry.end > file_len {
                    bail!("{} is truncated (tensor `{name}`)", path.display());
                }
                entries.insert(name, entry);
            }
            files.push(file);
        }
        Ok(Self { files, entries })
    }

    pub fn load(&self, name: &str) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .with_context(|| format!("tensor `{name}` vanished"))?;
        let file = &self.files[e.file];
        let len = (e.end - e.start) as usize;
        // f32, the common case, is read straight into the tensor's own buffer: going
        // through a byte buffer copied the weights once more (a tenth of load time).
        if e.dtype == DType::F32 && cfg!(target_endian = "little") && len.is_multiple_of(4) {
            let mut values = vec![0f32; len / 4];
            // SAFETY: any bytes are a valid f32, and the byte view covers exactly the
            // vector's initialised elements.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len) };
            file.read_exact_at(bytes, e.start)?;
            return Ok(Tensor::from_vec(values, e.shape.clone(), &Device::Cpu)?);
        }
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, e.start)?;
        Ok(Tensor::from_raw_buffer(
            &bytes,
            e.dtype,
            &e.shape,
            &Device::Cpu,
        )?)
    }
}
