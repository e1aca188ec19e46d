//! A model over a validated `.bd2` file: every weight is a zero-copy view into the file, handed to
//! the kernels as a [`Weight`]. Only the norm vectors are copied (to f32), since they are tiny and read
//! on every token.

use crate::error::{Result, RuntimeError};
use crate::kernels::lut::Lut;
use crate::kernels::{Kernels, Weight, WeightData};
use bd_formats::bd2::{Bd2File, ReadOptions, TensorInfo};
use bd_formats::config::BLOCK_LINEARS;
use bd_formats::quant::{PackedLayout, PackedMatrix};
use bd_formats::{DType, ModelConfig};
use std::path::Path;

/// Where a matrix lives in the file. Kept instead of a `Weight<'_>`, which would borrow the file the
/// model owns; [`Model::weight`] rebuilds the view (a few integer copies, no allocation).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatrixRef {
    /// Index into the file's tensor table.
    index: usize,
    rows: usize,
    cols: usize,
    dtype: DType,
    layout: Option<PackedLayout>,
    len: usize,
}

/// One decoder block. Matrices are `[out, in]`.
pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: MatrixRef,
    pub wk: MatrixRef,
    pub wv: MatrixRef,
    pub wo: MatrixRef,
    pub ffn_norm: Vec<f32>,
    pub w_gate: MatrixRef,
    pub w_up: MatrixRef,
    pub w_down: MatrixRef,
}

pub struct Model {
    file: Bd2File,
    /// Per tensor of the file, its table kernel's repacked copy (`kernels::lut`, NF3; `lut_int`,
    /// INT2 and INT3), made at load where this CPU's kernels use it (decode); prefill keeps reading
    /// the file's layout.
    luts: Vec<Option<Lut>>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) embed: MatrixRef,
    pub(crate) final_norm: Vec<f32>,
    /// `lm_head.weight`, or the embedding table when the embeddings are tied.
    pub(crate) head: MatrixRef,
}

impl Model {
    /// Memory-map and validate `path` (every CRC is checked unless `opts` says otherwise).
    pub fn open(path: &Path, opts: ReadOptions) -> Result<Self> {
        Self::from_file(Bd2File::open(path, opts)?)
    }

    /// A model from a file already in memory (the bytes are copied once into aligned storage).
    pub fn from_bytes(bytes: &[u8], opts: ReadOptions) -> Result<Self> {
        Self::from_file(Bd2File::from_bytes(bytes, opts)?)
    }

    pub fn from_file(file: Bd2File) -> Result<Self> {
        let c = file.config().clone();
        let get = |name: &str| -> Result<&TensorInfo> {
            // The reader guarantees every tensor the config requires; this guards against a reader change.
            file.tensor(name).ok_or_else(|| RuntimeError::BadTensor { tensor: name.into(), problem: "missing".into() })
        };
        let matrix = |name: &str| -> Result<MatrixRef> {
            let t = get(name)?;
            let index = file.tensors().iter().position(|u| u.name == t.name).expect("a tensor of this file");
            matrix_ref(index, t)
        };
        let vector = |name: &str| -> Result<Vec<f32>> {
            let t = get(name)?;
            if t.dtype.quant().is_some() {
                return Err(RuntimeError::BadTensor { tensor: name.into(), problem: "a norm weight cannot be quantized".into() });
            }
            Ok(file.tensor_f32(t))
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let lin = |j: usize| matrix(&format!("{p}.{}.weight", BLOCK_LINEARS[j]));
            layers.push(Layer {
                attn_norm: vector(&format!("{p}.input_layernorm.weight"))?,
                wq: lin(0)?,
                wk: lin(1)?,
                wv: lin(2)?,
                wo: lin(3)?,
                ffn_norm: vector(&format!("{p}.post_attention_layernorm.weight"))?,
                w_gate: lin(4)?,
                w_up: lin(5)?,
                w_down: lin(6)?,
            });
        }
        let embed = matrix("model.embed_tokens.weight")?;
        if embed.layout.is_some() {
            return Err(RuntimeError::BadTensor {
                tensor: "model.embed_tokens.weight".into(),
                problem: "quantized embeddings are not supported".into(),
            });
        }
        let head = if c.tied_embeddings { embed } else { matrix("lm_head.weight")? };
        let final_norm = vector("model.norm.weight")?;
        let mut model = Self { file, luts: Vec::new(), layers, embed, final_norm, head };
        model.repack_for(&Kernels::detect());
        Ok(model)
    }

    /// Make (or drop) the table kernels' repacked copies for `kernels` (see
    /// [`Kernels::with_tables`]): `open` does this for [`Kernels::detect`]; a program that runs
    /// sessions with other kernels calls it again.
    pub fn repack_for(&mut self, kernels: &Kernels) {
        let mut luts: Vec<Option<Lut>> = (0..self.file.tensors().len()).map(|_| None).collect();
        let mats = self.layers.iter().flat_map(|l| [l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down]).chain([self.head]);
        for m in mats {
            if let WeightData::Quant(p) = self.weight(&m).data {
                if kernels.wants_tables(&p) && luts[m.index].is_none() {
                    luts[m.index] = Lut::new(&p);
                }
            }
        }
        self.luts = luts;
    }

    /// Bytes held by the repacked copies of [`Model::repack_for`].
    pub fn repacked_bytes(&self) -> usize {
        self.luts.iter().flatten().map(Lut::bytes).sum()
    }

    pub fn config(&self) -> &ModelConfig {
        self.file.config()
    }

    /// The validated file underneath (header, tokenizer blob, tensor table).
    pub fn file(&self) -> &Bd2File {
        &self.file
    }

    pub fn tokenizer_json(&self) -> &[u8] {
        self.file.tokenizer_json()
    }

    /// The kernels' view of a matrix.
    pub(crate) fn weight(&self, m: &MatrixRef) -> Weight<'_> {
        let bytes = self.bytes(m);
        let data = match (m.dtype, m.layout) {
            (DType::F32, _) => WeightData::F32(bytes),
            (DType::F16, _) => WeightData::F16(bytes),
            (DType::Bf16, _) => WeightData::Bf16(bytes),
            // The layout was checked against this length at load.
            (DType::Quant(_), Some(l)) => WeightData::Quant(PackedMatrix::new(l, bytes).expect("validated at load")),
            (DType::Quant(_), None) => unreachable!("quantized matrices carry their layout"),
        };
        Weight { rows: m.rows, cols: m.cols, data, lut: self.luts.get(m.index).and_then(Option::as_ref) }
    }

    fn bytes(&self, m: &MatrixRef) -> &[u8] {
        self.file.tensor_bytes(&self.file.tensors()[m.index])
    }

    /// Write the embedding of `token` into `out` (`hidden_size` values).
    pub(crate) fn embed_into(&self, token: u32, out: &mut [f32]) -> Result<()> {
        let c = self.config();
        if token as usize >= c.vocab_size {
            return Err(RuntimeError::BadToken { id: token, vocab: c.vocab_size });
        }
        let h = c.hidden_size;
        let e = &self.embed;
        let size = e.dtype.float_size().expect("float embeddings, checked at load");
        let row = &self.bytes(e)[token as usize * h * size..][..h * size];
        // Float embeddings only: checked at load.
        e.dtype.decode_into(row, out);
        Ok(())
    }

    /// Bytes of weights one decode step streams from memory: every block linear, the final norm, the
    /// head, and one embedding row. The KV cache is left out: it depends on the position.
    pub fn weight_bytes_per_token(&self) -> u64 {
        let c = self.config();
        let m = |m: &MatrixRef| m.len as u64;
        let blocks: u64 = self
            .layers
            .iter()
            .map(|l| m(&l.wq) + m(&l.wk) + m(&l.wv) + m(&l.wo) + m(&l.w_gate) + m(&l.w_up) + m(&l.w_down))
            .sum();
        let norms = 4 * (c.hidden_size as u64) * (2 * c.num_layers as u64 + 1);
        let embed_row = m(&self.embed) / c.vocab_size as u64;
        blocks + norms + m(&self.head) + embed_row
    }
}

fn matrix_ref(index: usize, t: &TensorInfo) -> Result<MatrixRef> {
    let [rows, cols] = t.shape[..] else {
        return Err(RuntimeError::BadTensor {
            tensor: t.name.clone(),
            problem: format!("expected a matrix, shape {:?}", t.shape),
        });
    };
    let layout = match t.dtype {
        DType::Quant(_) => Some(t.layout().ok_or_else(|| RuntimeError::BadTensor {
            tensor: t.name.clone(),
            problem: "quantized tensor without a valid layout".into(),
        })?),
        _ => None,
    };
    Ok(MatrixRef { index, rows, cols, dtype: t.dtype, layout, len: t.len })
}
