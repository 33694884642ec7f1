//! Bidirectional arrow attention in O(L·w) memory (spec §3.2–§3.4).
//!
//! Query i may attend key j iff `valid(i) ∧ valid(j) ∧ (i = 0 ∨ j = 0 ∨ |i − j| ≤ w)`: [CLS] (token 0)
//! attends to and is attended by every valid token, counted once; every other pair needs to lie in
//! the ±w band. The [CLS] query row is scaled by `ln(N)/ln(512)` (LogN), N the length padded to a
//! multiple of 2w, after the content and relative-position terms are summed.
//!
//! The official code (THUDM/scholar-profiling `sener/modeling_deberta.py`, `Arrow_Attention`) builds
//! the band with Longformer's overlapping chunks (`as_strided`). That has no correct backward in
//! candle, so this port uses the block layout of `shared/notes/banded-attention.md` instead; the
//! numbers are the same (checked against a dense masked reference in the tests):
//!
//! - the sequence is padded to `nb` blocks of `bs = min(w, T)` tokens; query block b sees the keys
//!   of blocks b−1, b, b+1 (`kw = 3·bs` key columns; one block and `kw = bs` when `nb = 1`);
//! - content scores are one batched matmul `[BH, nb, bs, d] × [BH, nb, d, kw]`;
//! - DeBERTa's relative terms come from one small table per layer (`bs + kw` offsets) that a
//!   "skew" (flatten, shift, reshape, narrow) turns into per-cell values: no gather index and no
//!   L×L position matrix;
//! - key 0 is masked out of the band and added back as one global column; the [CLS] row is a
//!   separate `[BH, 1, N]` computation that replaces row 0.
//!
//! Every op used (`pad_with_zeros`, `narrow`, `reshape`, `cat`, `matmul`, `index_select`,
//! `broadcast_*`, composite softmax) has a correct backward in candle.

use candle_core::{DType, Device, Tensor};

use super::relative_position::RelativeIndex;
use crate::nn::ForwardCtx;
use crate::Result;

/// Large negative additive mask: `exp(NEG - max)` is exactly 0 in f32 and f64.
const NEG: f64 = -1e30;

/// Shape of the attention pattern. `window >= sequence length` with `logn = false` is exactly the
/// stock (full) attention of the encoder.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArrowConfig {
    /// One-sided window in subword tokens (w; default 128).
    pub window: usize,
    /// LogN scaling of the [CLS] query row.
    pub logn: bool,
    /// Reference length n₀ of LogN (`ln N / ln n₀`): DeBERTa's pre-training length 512.
    pub logn_base: usize,
    /// [CLS] global in both directions (arrow). `false` gives plain sliding-window attention (the
    /// "w SWA" ablation): key 0 is then an ordinary band key and the row of [CLS] is banded too.
    pub global_cls: bool,
}

impl Default for ArrowConfig {
    fn default() -> Self {
        Self { window: 128, logn: true, logn_base: 512, global_cls: true }
    }
}

impl ArrowConfig {
    /// Full attention: a window no sequence reaches, no LogN.
    pub fn full() -> Self {
        Self { window: usize::MAX / 4, logn: false, logn_base: 512, global_cls: true }
    }

    /// The length N that LogN uses for a batch whose longest sequence has `t` tokens: `t` padded to
    /// a multiple of 2w, as the official code pads inside every layer (spec §3.4).
    pub fn logn_length(&self, t: usize) -> usize {
        let m = 2 * self.window.max(1);
        t.div_ceil(m).max(1) * m
    }

    /// `ln(N)/ln(n₀)` for a batch of longest length `t`, or 1 when LogN is off.
    pub fn logn_factor(&self, t: usize) -> f64 {
        if !self.logn {
            return 1.0;
        }
        (self.logn_length(t) as f64).ln() / (self.logn_base as f64).ln()
    }

    /// Does query i attend key j (both valid)? The rule of spec §3.2, for references and tests.
    pub fn allows(&self, i: usize, j: usize) -> bool {
        (self.global_cls && (i == 0 || j == 0)) || i.abs_diff(j) <= self.window
    }
}

/// DeBERTa's disentangled relative-position terms for one layer.
pub struct RelativeTerms {
    pub index: RelativeIndex,
    /// `key_proj(rel_embeddings)` split by head, `[H, rows, d]`: the c2p term `q_i · Pk[row(i−j)]`.
    pub pos_key: Option<Tensor>,
    /// `query_proj(rel_embeddings)` split by head, `[H, rows, d]`: the p2c term `k_j · Pq[row(i−j)]`.
    pub pos_query: Option<Tensor>,
}

/// The masks of one batch, built once per forward and shared by every layer.
pub struct ArrowMask {
    b: usize,
    t: usize,
    g: Geometry,
    global_cls: bool,
    logn_factor: f64,
    /// `[B, 1, nb, bs, kw]` additive
    band: Tensor,
    /// `[B, 1, np, 1]` additive, global column (key 0)
    col: Tensor,
    /// `[B, 1, 1, np]` additive, global row (query 0)
    row: Tensor,
    /// `[B, 1, np, 1]` 1/0, valid queries
    query: Tensor,
    /// `B·T` valid tokens (row-major), for the fused CPU kernel
    valid: Vec<bool>,
}

impl ArrowMask {
    /// `valid`: `B·T` booleans (row-major) marking real tokens.
    pub fn new(valid: &[bool], b: usize, t: usize, cfg: &ArrowConfig, dtype: DType, dev: &Device) -> Result<Self> {
        if valid.len() != b * t || t == 0 {
            return Err(crate::Error::Input(format!("mask has {} entries for a [{b}, {t}] batch", valid.len())));
        }
        let g = Geometry::new(t, cfg.window);
        let np = g.np;
        let band = g.band_bias(b, valid, cfg, dtype, dev)?;
        let col = bias_tensor(
            (0..b).flat_map(|bi| (0..np).map(move |i| i < t && valid[bi * t + i] && valid[bi * t])),
            (b, 1, np, 1),
            dtype,
            dev,
        )?;
        let row = bias_tensor(
            (0..b).flat_map(|bi| (0..np).map(move |j| j < t && valid[bi * t + j] && valid[bi * t])),
            (b, 1, 1, np),
            dtype,
            dev,
        )?;
        let query = bias_free_mask(
            (0..b).flat_map(|bi| (0..np).map(move |i| i < t && valid[bi * t + i])),
            (b, 1, np, 1),
            dtype,
            dev,
        )?;
        Ok(Self { b, t, g, global_cls: cfg.global_cls, logn_factor: cfg.logn_factor(t), band, col, row, query, valid: valid.to_vec() })
    }

    /// An error unless the mask was built for a `[b, t]` batch.
    pub fn check(&self, b: usize, t: usize) -> Result<()> {
        if (b, t) != (self.b, self.t) {
            return Err(crate::Error::Input(format!("mask is for [{}, {}], inputs are [{b}, {t}]", self.b, self.t)));
        }
        Ok(())
    }

    /// One-sided window w.
    pub fn window(&self) -> usize {
        self.g.window
    }

    pub fn global_cls(&self) -> bool {
        self.global_cls
    }

    /// LogN factor of the [CLS] row for this batch.
    pub fn logn_factor(&self) -> f64 {
        self.logn_factor
    }

    /// `B·T` valid tokens, row-major.
    pub fn valid(&self) -> &[bool] {
        &self.valid
    }
}

/// Arrow attention of one layer.
///
/// `q`, `k`, `v`: `[B, H, T, d]`; `mask`: the batch's [`ArrowMask`] (built with the same config);
/// `scale`: the factor applied to the summed scores (1/√(d·(1+#rel terms)) for DeBERTa, 1/√d for
/// BERT); `dropout`: attention-probability dropout. Returns `[B, H, T, d]`, zero on padding rows.
#[allow(clippy::too_many_arguments)]
pub fn arrow_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &ArrowMask,
    rel: Option<&RelativeTerms>,
    scale: f64,
    dropout: f32,
    ctx: &mut ForwardCtx,
) -> Result<Tensor> {
    if ctx.fused(q) {
        if !ctx.grad && !ctx.train {
            return super::arrow_attention_cpu::arrow_attention_cpu(q, k, v, mask, rel, scale);
        }
        let dropout = if ctx.train { dropout } else { 0.0 };
        let seed = if dropout > 0.0 { ctx.next_seed() } else { 0 };
        return super::arrow_attention_cpu::arrow_attention_fused(q, k, v, mask, rel, scale, dropout, seed);
    }
    arrow_attention_composite(q, k, v, mask, rel, scale, dropout, ctx)
}

/// [`arrow_attention`] from candle ops only (records a backward; any device and dtype).
#[allow(clippy::too_many_arguments)]
pub fn arrow_attention_composite(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &ArrowMask,
    rel: Option<&RelativeTerms>,
    scale: f64,
    dropout: f32,
    ctx: &mut ForwardCtx,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    mask.check(b, t)?;
    let dev = q.device().clone();
    let g = &mask.g;
    let (bs, nb, np, kw) = (g.bs, g.nb, g.np, g.kw);
    let bh = b * h;

    let pad = |x: &Tensor| -> Result<Tensor> {
        let x = if np > t { x.pad_with_zeros(2, 0, np - t)? } else { x.clone() };
        Ok(x.reshape((bh, np, d))?)
    };
    let (q3, k3, v3) = (pad(q)?, pad(k)?, pad(v)?);
    let blocks = |x3: &Tensor| -> Result<Tensor> {
        let x4 = x3.reshape((bh, nb, bs, d))?;
        if nb == 1 {
            return Ok(x4);
        }
        let prev = x4.pad_with_zeros(1, 1, 0)?.narrow(1, 0, nb)?;
        let next = x4.pad_with_zeros(1, 0, 1)?.narrow(1, 1, nb)?;
        Ok(Tensor::cat(&[&prev, &x4, &next], 2)?.contiguous()?)
    };
    let qb = q3.reshape((bh, nb, bs, d))?;
    let kb = blocks(&k3)?;
    let vb = blocks(&v3)?;

    // ---- local band: [BH, nb, bs, kw] ----
    let mut scores = qb.matmul(&kb.t()?)?;
    if let Some(rel) = rel {
        let wt = bs + kw; // table columns (the last one is never read; it keeps the skew in range)
        if let Some(pk) = &rel.pos_key {
            // c2p. Table column m ↔ offset (omax − m); row rr of the skewed view starts at column
            // bs−1−rr, so cell (rr, c) reads offset rr − c + key_off = i − j.
            let omax = bs as i64 - 1 + g.key_off;
            let tab = select_rows(pk, (0..wt).map(|m| rel.index.row(omax - m as i64)), &dev)?;
            let a = crate::nn::broadcast_matmul(&q3.reshape((b, h, np, d))?, &tab.t()?.unsqueeze(0)?)?;
            let a = a
                .reshape((bh, nb, bs * wt))?
                .narrow(2, bs - 1, bs * (wt - 1))?
                .reshape((bh, nb, bs, wt - 1))?
                .narrow(3, 0, kw)?;
            scores = (scores + a)?;
        }
        if let Some(pq) = &rel.pos_query {
            // p2c, computed with keys as rows. Table column m ↔ offset (omin + m); key row c of the
            // skewed view starts at column kw−1−c, so (c, rr) reads offset rr − c + key_off.
            let omin = g.key_off - kw as i64 + 1;
            let tab = select_rows(pq, (0..wt).map(|m| rel.index.row(omin + m as i64)), &dev)?;
            let p = crate::nn::broadcast_matmul(&kb.reshape((b, h, nb * kw, d))?, &tab.t()?.unsqueeze(0)?)?;
            let p = p
                .reshape((bh, nb, kw * wt))?
                .narrow(2, kw - 1, kw * (wt - 1))?
                .reshape((bh, nb, kw, wt - 1))?
                .narrow(3, 0, bs)?
                .transpose(2, 3)?;
            scores = (scores + p)?;
        }
    }
    let scores = (scores * scale)?;
    let mut scores = scores.reshape((b, h, nb, bs, kw))?.broadcast_add(&mask.band)?.reshape((bh, nb, bs, kw))?;

    // ---- global column: every query scores key 0 ----
    let positions = |f: &dyn Fn(i64) -> i64| -> Vec<u32> {
        (0..np as i64).map(|x| rel.map(|r| r.index.row(f(x))).unwrap_or(0)).collect()
    };
    if mask.global_cls {
        let k0 = k3.narrow(1, 0, 1)?; // [BH, 1, d]
        let mut col = q3.matmul(&k0.t()?)?; // [BH, np, 1]
        if let Some(rel) = rel {
            let rows = positions(&|i| i); // offset i − 0
            if let Some(pk) = &rel.pos_key {
                let pk_i = select_rows(pk, rows.iter().copied(), &dev)?; // [H, np, d]
                let c2p = q3.reshape((b, h, np, d))?.broadcast_mul(&pk_i.unsqueeze(0)?)?.sum_keepdim(3)?;
                col = (col + c2p.reshape((bh, np, 1))?)?;
            }
            if let Some(pq) = &rel.pos_query {
                let t0 = crate::nn::broadcast_matmul(&k0.reshape((b, h, 1, d))?, &pq.t()?.unsqueeze(0)?)?; // [B,H,1,rows]
                let idx = Tensor::from_vec(rows, np, &dev)?;
                let p2c = t0.index_select(&idx, 3)?.reshape((bh, np, 1))?;
                col = (col + p2c)?;
            }
        }
        let col = (col * scale)?;
        let col = col.reshape((b, h, np, 1))?.broadcast_add(&mask.col)?.reshape((bh, nb, bs, 1))?;
        scores = Tensor::cat(&[&scores, &col], 3)?;
    }

    let probs = ctx.softmax_last(&scores)?;
    let probs = ctx.dropout(&probs, dropout)?;
    let mut out = if mask.global_cls {
        let local = probs.narrow(3, 0, kw)?.contiguous()?.matmul(&vb)?;
        let v0 = v3.narrow(1, 0, 1)?.reshape((bh, 1, 1, d))?;
        (local + probs.narrow(3, kw, 1)?.broadcast_mul(&v0)?)?
    } else {
        probs.matmul(&vb)?
    }
    .reshape((bh, np, d))?;

    // ---- global row: [CLS] scores every key, LogN-scaled, replaces row 0 ----
    if mask.global_cls {
        let q0 = q3.narrow(1, 0, 1)?; // [BH, 1, d]
        let mut row = q0.matmul(&k3.t()?)?; // [BH, 1, np]
        if let Some(rel) = rel {
            let rows = positions(&|j| -j); // offset 0 − j
            if let Some(pk) = &rel.pos_key {
                let t0 = crate::nn::broadcast_matmul(&q0.reshape((b, h, 1, d))?, &pk.t()?.unsqueeze(0)?)?; // [B,H,1,rows]
                let idx = Tensor::from_vec(rows.clone(), np, &dev)?;
                row = (row + t0.index_select(&idx, 3)?.reshape((bh, 1, np))?)?;
            }
            if let Some(pq) = &rel.pos_query {
                let pq_j = select_rows(pq, rows.iter().copied(), &dev)?; // [H, np, d]
                let p2c = k3.reshape((b, h, np, d))?.broadcast_mul(&pq_j.unsqueeze(0)?)?.sum_keepdim(3)?;
                row = (row + p2c.reshape((bh, 1, np))?)?;
            }
        }
        let row = (row * (scale * mask.logn_factor))?;
        let row = row.reshape((b, h, 1, np))?.broadcast_add(&mask.row)?.reshape((bh, 1, np))?;
        let p0 = ctx.softmax_last(&row)?;
        let p0 = ctx.dropout(&p0, dropout)?;
        let out0 = p0.matmul(&v3)?; // [BH, 1, d]
        out = if np > 1 { Tensor::cat(&[&out0, &out.narrow(1, 1, np - 1)?], 1)? } else { out0 };
    }

    // Padding queries attend nothing: their output rows are 0.
    let out = out.reshape((b, h, np, d))?.broadcast_mul(&mask.query)?;
    Ok(if np > t { out.narrow(2, 0, t)? } else { out })
}

/// Block geometry of one call.
struct Geometry {
    t: usize,
    window: usize,
    /// block size
    bs: usize,
    /// number of blocks
    nb: usize,
    /// padded length nb·bs
    np: usize,
    /// key columns per query block
    kw: usize,
    /// key column c of block b is token b·bs + c − key_off
    key_off: i64,
}

impl Geometry {
    fn new(t: usize, window: usize) -> Self {
        let bs = window.max(1).min(t.max(1));
        let nb = t.max(1).div_ceil(bs);
        let (kw, key_off) = if nb > 1 { (3 * bs, bs as i64) } else { (bs, 0) };
        Self { t, window: window.max(1), bs, nb, np: nb * bs, kw, key_off }
    }

    /// Additive mask of the band cells, `[B, 1, nb, bs, kw]`.
    fn band_bias(&self, b: usize, valid: &[bool], cfg: &ArrowConfig, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.t;
        let cells = (0..b).flat_map(move |bi| {
            (0..self.nb).flat_map(move |blk| {
                (0..self.bs).flat_map(move |rr| {
                    (0..self.kw).map(move |c| {
                        let i = blk * self.bs + rr;
                        let j = (blk * self.bs + c) as i64 - self.key_off;
                        if i >= t || j < 0 || j as usize >= t {
                            return false;
                        }
                        let j = j as usize;
                        valid[bi * t + i]
                            && valid[bi * t + j]
                            && i.abs_diff(j) <= self.window
                            && !(cfg.global_cls && j == 0)
                    })
                })
            })
        });
        bias_tensor(cells, (b, 1, self.nb, self.bs, self.kw), dtype, dev)
    }
}

/// `index_select` of rows of a `[H, rows, d]` table.
fn select_rows(table: &Tensor, rows: impl Iterator<Item = u32>, dev: &Device) -> Result<Tensor> {
    let rows: Vec<u32> = rows.collect();
    let n = rows.len();
    Ok(table.index_select(&Tensor::from_vec(rows, n, dev)?, 1)?)
}

/// 0 where allowed, `NEG` elsewhere.
fn bias_tensor<S: Into<candle_core::Shape>>(
    allowed: impl Iterator<Item = bool>,
    shape: S,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let v: Vec<f32> = allowed.map(|a| if a { 0.0 } else { NEG as f32 }).collect();
    Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?)
}

/// 1 where allowed, 0 elsewhere.
fn bias_free_mask<S: Into<candle_core::Shape>>(
    allowed: impl Iterator<Item = bool>,
    shape: S,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let v: Vec<f32> = allowed.map(|a| if a { 1.0 } else { 0.0 }).collect();
    Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?)
}
