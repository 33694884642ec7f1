//! The word-embedding table, read in place from the weight file.
//!
//! The table is the largest single tensor of a small encoder (DeBERTa-v3's 128,100 × 768 f32 rows
//! are 393 MB, a fifth of a 5,120-token forward's peak), and a forward reads only the rows of the
//! ids it embeds. For a frozen table on the CPU ([`WordTable::InFile`]) each lookup reads its rows
//! from the safetensors file (`pread`, served from the page cache; f32, or f16/bf16 widened to f32
//! as loading would), so the table is not held in the process's memory at all. (Reading through a
//! memory mapping instead kept the peak where it was: the kernel maps 64 KB around every faulted
//! page, and the ids of a long document touch most of the table.) Elsewhere (GPU, full
//! fine-tuning, pickle or random weights) it is an ordinary tensor.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::nn::ForwardCtx;
use crate::{Error, Result};

/// The rows of `[vocab, width]` word embeddings.
pub enum WordTable {
    Owned(Tensor),
    InFile(FileRows),
}

impl WordTable {
    /// `[B, T]` ids → `[B, T, width]` embeddings.
    pub fn embed(&self, ids: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        match self {
            Self::Owned(t) => crate::nn::embed(&ctx.weight(t), ids),
            Self::InFile(m) => m.embed(ids),
        }
    }

    /// Number of rows (the vocabulary).
    pub fn rows(&self) -> Result<usize> {
        Ok(match self {
            Self::Owned(t) => t.dim(0)?,
            Self::InFile(m) => m.rows,
        })
    }
}

/// Element types the table may have in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F32,
    F16,
    Bf16,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// A `[rows, cols]` tensor of a safetensors file, read row by row.
pub struct FileRows {
    file: Arc<std::fs::File>,
    /// Byte offset of row 0 in the file.
    start: u64,
    rows: usize,
    cols: usize,
    elem: Elem,
    path: PathBuf,
}

impl std::fmt::Debug for FileRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileRows({} × {} {:?} in {})", self.rows, self.cols, self.elem, self.path.display())
    }
}

impl FileRows {
    /// Finds tensor `name` in the safetensors `files` when one holds it as a `[rows, cols]` f32,
    /// f16 or bf16 tensor; `Ok(None)` when none does (or in another type), so that the caller
    /// loads it as usual. A file that cannot be read or parsed is an error naming it. (The file
    /// is mapped to parse its header, which touches the header's pages only.)
    pub fn find(files: &[PathBuf], name: &str, rows: usize, cols: usize) -> Result<Option<Self>> {
        for path in files {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: mapped read-only; like every mmap user (candle's loader included) we assume
            // no other process truncates the weight file while the model is in use.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map[..])
                .map_err(|e| Error::Weight { path: path.clone(), name: name.into(), message: e.to_string() })?;
            let Some(info) = meta.info(name) else { continue };
            let elem = match info.dtype {
                safetensors::Dtype::F32 => Elem::F32,
                safetensors::Dtype::F16 => Elem::F16,
                safetensors::Dtype::BF16 => Elem::Bf16,
                _ => return Ok(None),
            };
            if info.shape != [rows, cols] {
                return Err(Error::Weight {
                    path: path.clone(),
                    name: name.into(),
                    message: format!("shape {:?}, the config says [{rows}, {cols}]", info.shape),
                });
            }
            let start = 8 + header_len + info.data_offsets.0;
            let end = 8 + header_len + info.data_offsets.1;
            if end > map.len() || end - start != rows * cols * elem.size() {
                return Err(Error::Weight { path: path.clone(), name: name.into(), message: "data offsets outside the file or of the wrong length".into() });
            }
            return Ok(Some(Self { file: Arc::new(file), start: start as u64, rows, cols, elem, path: path.clone() }));
        }
        Ok(None)
    }

    /// `[B, T]` ids (any integer type) → `[B, T, cols]` f32 on the CPU; an id past the table is
    /// an error.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let ids: Vec<u32> = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
        let row_bytes = self.cols * self.elem.size();
        let mut out = vec![0f32; ids.len() * self.cols];
        let mut src = vec![0u8; row_bytes];
        for (dst, &id) in out.chunks_exact_mut(self.cols).zip(&ids) {
            let id = id as usize;
            if id >= self.rows {
                return Err(Error::Input(format!("token id {id} is past the {} rows of the word embeddings in {}", self.rows, self.path.display())));
            }
            read_at(&self.file, &mut src, self.start + (id * row_bytes) as u64).map_err(|e| Error::io(&self.path, e))?;
            match self.elem {
                Elem::F32 => dst.iter_mut().zip(src.chunks_exact(4)).for_each(|(d, s)| *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]])),
                Elem::F16 => dst.iter_mut().zip(src.chunks_exact(2)).for_each(|(d, s)| *d = half::f16::from_le_bytes([s[0], s[1]]).to_f32()),
                Elem::Bf16 => dst.iter_mut().zip(src.chunks_exact(2)).for_each(|(d, s)| *d = half::bf16::from_le_bytes([s[0], s[1]]).to_f32()),
            }
        }
        Ok(Tensor::from_vec(out, (b, t, self.cols), &candle_core::Device::Cpu)?)
    }

    /// The file the table is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Fills `buf` from `file` at byte `offset` (`pread`; no shared file position, so concurrent
/// lookups from several threads are safe).
#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(windows)]
fn read_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Rows read from the file equal `index_select` on the loaded table, for f32, f16 and bf16
    /// files (the widened values, as candle loads them); a wrong shape and an id past the table
    /// are errors; a tensor of another type or name is left to the ordinary loader.
    #[test]
    fn rows_read_from_the_file_equal_the_loaded_table() {
        let dir = std::env::temp_dir().join(format!("sener-wordtable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = Tensor::randn(0f32, 1.0, (50, 12), &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[3u32, 0, 49, 7], [7, 7, 1, 2]], &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let path = dir.join(format!("{dtype:?}.safetensors"));
            let other = Tensor::zeros((2, 2), DType::I64, &Device::Cpu).unwrap();
            let map = std::collections::HashMap::from([("emb.weight".to_string(), table.to_dtype(dtype).unwrap()), ("ints".to_string(), other)]);
            candle_core::safetensors::save(&map, &path).unwrap();
            let m = FileRows::find(std::slice::from_ref(&path), "emb.weight", 50, 12).unwrap().expect("found");
            let got = m.embed(&ids).unwrap();
            let want = table.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap().index_select(&ids.flatten_all().unwrap(), 0).unwrap().reshape((2, 4, 12)).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{dtype:?}");
            let bad = Tensor::new(&[[50u32]], &Device::Cpu).unwrap();
            assert!(m.embed(&bad).unwrap_err().to_string().contains("past the 50 rows"));
            assert!(FileRows::find(std::slice::from_ref(&path), "emb.weight", 50, 13).is_err());
            assert!(FileRows::find(std::slice::from_ref(&path), "ints", 2, 2).unwrap().is_none());
            assert!(FileRows::find(std::slice::from_ref(&path), "missing", 50, 12).unwrap().is_none());
        }
        std::fs::remove_dir_all(dir).ok();
    }
}
