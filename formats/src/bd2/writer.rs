//! Streaming, atomic `.bd2` writer.
//!
//! The caller declares every tensor up front (name, dtype, shape), which fixes every offset and, since
//! CRCs are fixed-width hex, the header's length. Tensors are then streamed one at a time into a
//! temporary file next to the target; `finish` writes the real header, fsyncs and renames. A writer
//! dropped before `finish` removes its temporary file, so a crash never leaves a half-written model
//! under the target name.

use super::header::{crc_hex, BlobEntry, Header, Provenance, QuantRecipe, TensorEntry};
use super::{align_up, Bd2Error, ALIGN, MAGIC, PREAMBLE_LEN, VERSION};
use crate::config::ModelConfig;
use crate::dtype::DType;
use crate::quant::{pack_matrix, PackedLayout};
use half::{bf16, f16};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A tensor to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDecl {
    pub name: String,
    pub dtype: DType,
    /// Required for quantized dtypes, `None` for floats.
    pub group_size: Option<usize>,
    pub shape: Vec<usize>,
}

impl TensorDecl {
    /// Bytes of this tensor in the file.
    pub fn byte_len(&self) -> Result<u64, Bd2Error> {
        let bad = |problem: String| Bd2Error::BadTensor { tensor: self.name.clone(), problem };
        match self.dtype {
            DType::Quant(format) => {
                let [rows, cols] = self.shape[..] else {
                    return Err(bad(format!("a {format} tensor must be 2-D, got shape {:?}", self.shape)));
                };
                let group = self.group_size.ok_or_else(|| bad(format!("a {format} tensor needs a group size")))?;
                let layout = PackedLayout::new(format, group, rows, cols).map_err(|e| bad(e.to_string()))?;
                Ok(layout.len as u64)
            }
            float => {
                let n = self.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
                n.and_then(|n| n.checked_mul(float.float_size().unwrap() as u64))
                    .ok_or_else(|| bad(format!("shape {:?} is too large", self.shape)))
            }
        }
    }
}

/// Encode f32 values as a tensor's bytes in `dtype` (packing quantized formats).
pub fn encode_tensor(decl: &TensorDecl, values: &[f32]) -> Result<Vec<u8>, Bd2Error> {
    let n: usize = decl.shape.iter().product();
    if values.len() != n {
        return Err(Bd2Error::BadTensor {
            tensor: decl.name.clone(),
            problem: format!("shape {:?} needs {n} values, got {}", decl.shape, values.len()),
        });
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Bd2Error::BadTensor {
            tensor: decl.name.clone(),
            problem: format!("value {i} is {} (not finite)", values[i]),
        });
    }
    Ok(match decl.dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        DType::Bf16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        DType::Quant(format) => {
            let group = decl.group_size.unwrap_or(0);
            let (rows, cols) = (decl.shape[0], decl.shape.get(1).copied().unwrap_or(0));
            pack_matrix(format, group, rows, cols, values)
                .map_err(|source| Bd2Error::Quant { tensor: decl.name.clone(), source })?
        }
    })
}

pub struct Bd2Writer {
    target: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    header: Header,
    header_len: u64,
    data_offset: u64,
    file_len: u64,
    /// Index of the next tensor to write.
    next: usize,
    pos: u64,
}

impl Bd2Writer {
    /// Start writing `path`. The tokenizer bytes are written at once; tensors follow, in the order
    /// given here, through [`Bd2Writer::write_tensor`].
    pub fn create(
        path: &Path,
        config: &ModelConfig,
        quant: QuantRecipe,
        provenance: Provenance,
        tokenizer_json: &[u8],
        tensors: &[TensorDecl],
    ) -> Result<Self, Bd2Error> {
        config.validate().map_err(Bd2Error::BadConfig)?;
        let placeholder = crc_hex(0);
        let mut entries = Vec::with_capacity(tensors.len());
        // Offsets are relative to the data section until its start is known.
        let mut rel = align_up(tokenizer_json.len() as u64).unwrap();
        for t in tensors {
            let len = t.byte_len()?;
            entries.push(TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype.name().to_string(),
                group_size: t.group_size,
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                offset: rel,
                len,
                crc32: placeholder.clone(),
            });
            rel = rel.checked_add(len).and_then(align_up).ok_or_else(|| Bd2Error::Write("model too large".into()))?;
        }
        let mut header = Header {
            config: config.clone(),
            quant,
            provenance,
            tokenizer: BlobEntry { offset: 0, len: tokenizer_json.len() as u64, crc32: placeholder },
            tensors: entries,
        };
        // The header's length depends on the offsets it holds, and they on its length: iterate to the
        // fixed point (it moves only when an offset gains a digit, so this ends within a few rounds).
        let mut data_offset = 0u64;
        let header_len = loop {
            let len = serde_json::to_vec(&header).unwrap().len() as u64;
            let d = align_up(PREAMBLE_LEN as u64 + len).unwrap();
            if d == data_offset {
                break len;
            }
            let shift = d - data_offset;
            header.tokenizer.offset += shift;
            for t in &mut header.tensors {
                t.offset += shift;
            }
            data_offset = d;
        };
        let last_end = header.tensors.last().map_or(header.tokenizer.offset + header.tokenizer.len, |t| t.offset + t.len);
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|e| Bd2Error::io(&tmp, e))?;
        let mut w = Self {
            target: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            header,
            header_len,
            data_offset,
            file_len: last_end,
            next: 0,
            pos: 0,
        };
        // Reserve preamble and header; the real ones are written by `finish`.
        w.write_raw(&vec![0u8; data_offset as usize])?;
        w.header.tokenizer.crc32 = crc_hex(crc32fast::hash(tokenizer_json));
        w.write_raw(tokenizer_json)?;
        Ok(w)
    }

    /// Write the next declared tensor's bytes (see [`encode_tensor`]).
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), Bd2Error> {
        let Some(entry) = self.header.tensors.get(self.next) else {
            return Err(Bd2Error::Write(format!("tensor {name:?} was not declared (all declared tensors are written)")));
        };
        if entry.name != name {
            return Err(Bd2Error::Write(format!("expected tensor {:?} next, got {name:?}", entry.name)));
        }
        if bytes.len() as u64 != entry.len {
            return Err(Bd2Error::LengthMismatch { tensor: name.to_string(), expected: entry.len, got: bytes.len() as u64 });
        }
        let offset = entry.offset;
        self.header.tensors[self.next].crc32 = crc_hex(crc32fast::hash(bytes));
        self.pad_to(offset)?;
        self.write_raw(bytes)?;
        self.next += 1;
        Ok(())
    }

    /// Encode f32 values and write them as the next tensor.
    pub fn write_tensor_f32(&mut self, decl: &TensorDecl, values: &[f32]) -> Result<(), Bd2Error> {
        let bytes = encode_tensor(decl, values)?;
        self.write_tensor(&decl.name, &bytes)
    }

    /// Write the header, flush, fsync and move the file into place.
    pub fn finish(mut self) -> Result<(), Bd2Error> {
        if self.next != self.header.tensors.len() {
            return Err(Bd2Error::Write(format!(
                "only {} of {} declared tensors were written (next: {:?})",
                self.next,
                self.header.tensors.len(),
                self.header.tensors[self.next].name
            )));
        }
        debug_assert_eq!(self.pos, self.file_len);
        let header = serde_json::to_vec(&self.header).unwrap();
        assert_eq!(header.len() as u64, self.header_len, "fixed-width CRCs keep the header length");
        let mut pre = [0u8; PREAMBLE_LEN];
        pre[0..8].copy_from_slice(&MAGIC);
        pre[8..12].copy_from_slice(&VERSION.to_le_bytes());
        pre[12..16].copy_from_slice(&crc32fast::hash(&header).to_le_bytes());
        pre[16..24].copy_from_slice(&self.header_len.to_le_bytes());
        pre[24..32].copy_from_slice(&self.data_offset.to_le_bytes());
        pre[32..40].copy_from_slice(&self.file_len.to_le_bytes());
        let out = self.out.take().unwrap();
        let result = Self::seal(out, &pre, &header, &self.tmp, &self.target);
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }

    fn seal(mut out: BufWriter<File>, pre: &[u8], header: &[u8], tmp: &Path, target: &Path) -> Result<(), Bd2Error> {
        let io = |e| Bd2Error::io(tmp, e);
        out.seek(SeekFrom::Start(0)).map_err(io)?;
        out.write_all(pre).map_err(io)?;
        out.write_all(header).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(tmp, target).map_err(|e| Bd2Error::io(target, e))?;
        // Make the rename itself durable.
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), Bd2Error> {
        let out = self.out.as_mut().expect("writer is open");
        out.write_all(bytes).map_err(|e| Bd2Error::io(&self.tmp, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, offset: u64) -> Result<(), Bd2Error> {
        debug_assert!(offset >= self.pos && offset - self.pos < ALIGN as u64);
        let pad = vec![0u8; (offset - self.pos) as usize];
        self.write_raw(&pad)
    }
}

impl Drop for Bd2Writer {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A temporary name in the target's directory, so the final rename stays on one filesystem.
fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.bd2".into());
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}
