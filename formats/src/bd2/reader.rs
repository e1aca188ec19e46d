//! Validating, zero-copy `.bd2` reader (docs/FORMAT.md section 1, "What the reader checks").
//!
//! `open` checks everything it can before it hands out a single byte: after it returns, every tensor
//! view is in bounds, aligned, of the length its shape implies, and (unless skipped) has its CRC.

use super::header::{parse_crc, Header};
use super::{Bd2Error, ALIGN, MAGIC, MAX_HEADER_LEN, PREAMBLE_LEN, VERSION};
use crate::config::{ModelConfig, TensorRole};
use crate::dtype::DType;
use crate::quant::{check_group_size, PackedLayout, PackedMatrix};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// Check every blob's CRC-32 (one pass over the file). The header's CRC is always checked.
    pub verify_checksums: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { verify_checksums: true }
    }
}

/// One validated tensor entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub group_size: Option<usize>,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    pub crc32: u32,
    pub role: TensorRole,
}

impl TensorInfo {
    /// The packed layout of a quantized tensor.
    pub fn layout(&self) -> Option<PackedLayout> {
        let q = self.dtype.quant()?;
        PackedLayout::new(q, self.group_size?, self.shape[0], self.shape[1]).ok()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Bytes aligned to 64, for files read into memory rather than mapped.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

enum Storage {
    Mapped(Mmap),
    Owned { lines: Vec<Line>, len: usize },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            // SAFETY: `Line` is 64 plain bytes with no padding, so the vector is `len` initialized bytes.
            Storage::Owned { lines, len } => unsafe { std::slice::from_raw_parts(lines.as_ptr() as *const u8, *len) },
        }
    }
}

/// An open, validated `.bd2` file.
pub struct Bd2File {
    storage: Storage,
    header: Header,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    tokenizer: (usize, usize),
}

impl Bd2File {
    /// Memory-map and validate a file.
    pub fn open(path: &Path, opts: ReadOptions) -> Result<Self, Bd2Error> {
        let file = File::open(path).map_err(|e| Bd2Error::io(path, e))?;
        // SAFETY: the map is read-only; a file truncated underneath us by another process is the
        // documented hazard of every mmap reader, and we never write through the map.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Bd2Error::io(path, e))?;
        Self::validate(Storage::Mapped(map), opts)
    }

    /// Validate a file already in memory (copied into a 64-byte-aligned buffer).
    pub fn from_bytes(bytes: &[u8], opts: ReadOptions) -> Result<Self, Bd2Error> {
        let mut lines = vec![Line([0; 64]); bytes.len().div_ceil(64)];
        for (line, chunk) in lines.iter_mut().zip(bytes.chunks(64)) {
            line.0[..chunk.len()].copy_from_slice(chunk);
        }
        Self::validate(Storage::Owned { lines, len: bytes.len() }, opts)
    }

    fn validate(storage: Storage, opts: ReadOptions) -> Result<Self, Bd2Error> {
        let bytes = storage.bytes();
        let have = bytes.len() as u64;
        if bytes.len() < PREAMBLE_LEN {
            return Err(Bd2Error::Truncated { what: "preamble".into(), need: PREAMBLE_LEN as u64, have });
        }
        if bytes[0..8] != MAGIC {
            return Err(Bd2Error::BadMagic { found: bytes[0..8].to_vec() });
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(Bd2Error::UnsupportedVersion(version));
        }
        let (header_crc, header_len, data_offset, file_len) = (u32_at(12), u64_at(16), u64_at(24), u64_at(32));
        if bytes[40..64].iter().any(|&b| b != 0) {
            return Err(Bd2Error::ReservedNonZero);
        }
        if header_len > MAX_HEADER_LEN {
            return Err(Bd2Error::HeaderTooLarge(header_len));
        }
        let header_end = PREAMBLE_LEN as u64 + header_len;
        if have < header_end {
            return Err(Bd2Error::Truncated { what: "header".into(), need: header_end, have });
        }
        // One canonical layout: the data section starts at the first aligned offset after the header.
        let canonical = super::align_up(header_end).unwrap();
        if data_offset != canonical {
            return Err(Bd2Error::BadDataOffset { data_offset, min: canonical });
        }
        if file_len != have {
            return Err(if file_len > have {
                Bd2Error::Truncated { what: "data section".into(), need: file_len, have }
            } else {
                Bd2Error::FileLenMismatch { declared: file_len, actual: have }
            });
        }
        if data_offset > file_len {
            return Err(Bd2Error::BadDataOffset { data_offset, min: header_end });
        }
        let header_bytes = &bytes[PREAMBLE_LEN..header_end as usize];
        let computed = crc32fast::hash(header_bytes);
        if computed != header_crc {
            return Err(Bd2Error::HeaderChecksum { stored: header_crc, computed });
        }
        let header: Header = serde_json::from_slice(header_bytes).map_err(|e| Bd2Error::HeaderJson(e.to_string()))?;
        header.config.validate().map_err(Bd2Error::BadConfig)?;

        let check_blob = |what: &str, offset: u64, len: u64| -> Result<(usize, usize), Bd2Error> {
            if !offset.is_multiple_of(ALIGN as u64) {
                return Err(Bd2Error::Misaligned { what: what.into(), offset });
            }
            match offset.checked_add(len) {
                Some(end) if offset >= data_offset && end <= file_len => Ok((offset as usize, len as usize)),
                _ => Err(Bd2Error::OutOfBounds { what: what.into(), offset, len, data_offset, file_len }),
            }
        };
        let tok = &header.tokenizer;
        let tokenizer = check_blob("tokenizer", tok.offset, tok.len)?;
        let tok_crc = parse_crc("tokenizer", &tok.crc32).map_err(Bd2Error::HeaderJson)?;

        let specs: HashMap<String, _> = header.config.tensor_specs().into_iter().map(|s| (s.name.clone(), s)).collect();
        let mut tensors = Vec::with_capacity(header.tensors.len());
        let mut index = HashMap::with_capacity(header.tensors.len());
        for e in &header.tensors {
            let what = format!("tensor {:?}", e.name);
            let bad = |problem: String| Bd2Error::BadTensor { tensor: e.name.clone(), problem };
            if index.insert(e.name.clone(), tensors.len()).is_some() {
                return Err(Bd2Error::DuplicateTensor(e.name.clone()));
            }
            let spec = specs
                .get(&e.name)
                .ok_or_else(|| Bd2Error::UnexpectedTensor(e.name.clone(), header.config.architecture.clone()))?;
            let dtype = DType::parse(&e.dtype)
                .ok_or_else(|| Bd2Error::UnknownDType { tensor: e.name.clone(), dtype: e.dtype.clone() })?;
            let shape: Vec<usize> = e.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
            if shape != spec.shape {
                return Err(bad(format!("shape {:?}, but the config implies {:?}", e.shape, spec.shape)));
            }
            let expected = match dtype {
                DType::Quant(format) => {
                    if spec.role != TensorRole::BlockLinear {
                        return Err(bad(format!("only block linears may be quantized, found {format}")));
                    }
                    let group = e.group_size.ok_or_else(|| bad(format!("a {format} tensor needs a group_size")))?;
                    check_group_size(group).map_err(|err| bad(err.to_string()))?;
                    PackedLayout::new(format, group, shape[0], shape[1]).map_err(|err| bad(err.to_string()))?.len as u64
                }
                float => {
                    if e.group_size.is_some() {
                        return Err(bad(format!("a {float} tensor has no group_size")));
                    }
                    // Spec shapes are bounded by MAX_DIM, so this cannot overflow.
                    shape.iter().product::<usize>() as u64 * float.float_size().unwrap() as u64
                }
            };
            if e.len != expected {
                return Err(Bd2Error::LengthMismatch { tensor: e.name.clone(), expected, got: e.len });
            }
            let (offset, len) = check_blob(&what, e.offset, e.len)?;
            let crc32 = parse_crc(&what, &e.crc32).map_err(Bd2Error::HeaderJson)?;
            tensors.push(TensorInfo {
                name: e.name.clone(),
                dtype,
                group_size: e.group_size,
                shape,
                offset,
                len,
                crc32,
                role: spec.role,
            });
        }
        if let Some(missing) = header.config.tensor_specs().into_iter().find(|s| !index.contains_key(&s.name)) {
            return Err(Bd2Error::MissingTensor(missing.name));
        }

        // Overlap: sort every blob by offset and compare neighbours.
        let mut spans: Vec<(usize, usize, String)> =
            tensors.iter().map(|t| (t.offset, t.len, format!("tensor {:?}", t.name))).collect();
        spans.push((tokenizer.0, tokenizer.1, "tokenizer".into()));
        spans.sort();
        for w in spans.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(Bd2Error::Overlap { a: w[0].2.clone(), b: w[1].2.clone() });
            }
        }
        // Padding must be zero, so that no byte of the file escapes validation (blobs have CRCs,
        // the header has its CRC, the preamble is checked field by field).
        let mut at = header_end as usize;
        for (offset, len, what) in spans.iter().map(|(o, l, w)| (*o, *l, w.as_str())).chain([(bytes.len(), 0, "end of file")]) {
            if bytes[at..offset].iter().any(|&b| b != 0) {
                return Err(Bd2Error::NonZeroPadding { before: what.to_string() });
            }
            at = offset + len;
        }

        if opts.verify_checksums {
            let check = |what: String, (offset, len): (usize, usize), stored: u32| {
                let computed = crc32fast::hash(&bytes[offset..offset + len]);
                if computed == stored {
                    Ok(())
                } else {
                    Err(Bd2Error::Checksum { what, stored, computed })
                }
            };
            check("tokenizer".into(), tokenizer, tok_crc)?;
            for t in &tensors {
                check(format!("tensor {:?}", t.name), (t.offset, t.len), t.crc32)?;
            }
        }
        Ok(Self { storage, header, tensors, index, tokenizer })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn config(&self) -> &ModelConfig {
        &self.header.config
    }

    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    pub fn tokenizer_json(&self) -> &[u8] {
        &self.storage.bytes()[self.tokenizer.0..self.tokenizer.0 + self.tokenizer.1]
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (64-byte aligned in memory).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.storage.bytes()[t.offset..t.offset + t.len]
    }

    /// A zero-copy view of a quantized tensor, `None` for float tensors.
    pub fn packed(&self, t: &TensorInfo) -> Option<PackedMatrix<'_>> {
        PackedMatrix::new(t.layout()?, self.tensor_bytes(t)).ok()
    }

    /// A tensor's values as f32 (converted or dequantized: a copy).
    pub fn tensor_f32(&self, t: &TensorInfo) -> Vec<f32> {
        let b = self.tensor_bytes(t);
        match t.dtype {
            DType::Quant(_) => self.packed(t).expect("validated layout").dequantize(),
            float => float.decode(b),
        }
    }

    /// Bits per weight of the quantized part (docs/FORMAT.md section 5); `None` if nothing is quantized.
    pub fn bits_per_weight(&self) -> Option<f64> {
        let (bits, weights) = self
            .tensors
            .iter()
            .filter_map(|t| t.layout())
            .fold((0u64, 0u64), |(b, w), l| (b + l.payload_bits(), w + (l.rows * l.cols) as u64));
        (weights > 0).then(|| bits as f64 / weights as f64)
    }
}
