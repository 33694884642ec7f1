//! bf16 matrix products with f32 accumulation, `y = x·Wᵀ + b`, for the encoder's linear layers
//! under `--dtype bf16` (see [`crate::encoder::MatmulPrecision`]).
//!
//! The weight is rounded to bf16 once and packed ([`PackedBf16`]); each call rounds the
//! activations to bf16 (round to nearest even) and accumulates every dot product in f32, so the
//! only error against f32 is the rounding of the two inputs (8 significant bits each).
//!
//! Two kernels, picked at run time by [`Bf16Kernel::detect`]:
//! - **AMX** (Intel Sapphire Rapids and later): `TDPBF16PS` on 16×32 tiles, four 16×16 f32
//!   accumulator tiles per 32×32 output block. Rust's AMX intrinsics are unstable, so the block is
//!   inline assembly; Linux must grant the process the tile state (`arch_prctl`), which is asked
//!   once.
//! - **AVX512-BF16** (AMD Zen 4 and later, Intel Cooper Lake and later): `VDPBF16PS`, an 8×32
//!   register block of 16 zmm accumulators.
//!
//! Both read the same packing: per block of 16 output columns, `[k/2][16][2]` bf16 (pairs along
//! `k`), which is exactly the AMX "VNNI" layout of the B tile and, for AVX-512, one 64-byte load
//! per pair of `k` for 16 columns. The activations are padded to 32 rows and `k` to a multiple of
//! 32 with zeros; padding contributes nothing.
//!
//! Where neither kernel exists the caller keeps f32 (candle's `gemm`) and says so.

use std::sync::OnceLock;

use rayon::prelude::*;

/// A native bf16 dot-product kernel of this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// Intel AMX tiles (`TDPBF16PS`).
    Amx,
    /// AVX512-BF16 (`VDPBF16PS`).
    Avx512,
}

impl Bf16Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx-bf16",
            Self::Avx512 => "avx512-bf16",
        }
    }

    /// The fastest bf16 kernel this CPU and OS offer (AMX before AVX512-BF16), or `None`.
    pub fn detect() -> Option<Self> {
        static DETECTED: OnceLock<Option<Bf16Kernel>> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            if Self::Amx.available() {
                Some(Self::Amx)
            } else if Self::Avx512.available() {
                Some(Self::Avx512)
            } else {
                None
            }
        })
    }

    /// Whether this kernel runs here (for AMX: CPU support, OS support and the process's
    /// permission, which is requested on the first call).
    pub fn available(self) -> bool {
        match self {
            Self::Avx512 => avx512_bf16_available(),
            Self::Amx => amx_available(),
        }
    }

    /// Every kernel that runs here, fastest first (benchmarks and tests run each).
    pub fn all_available() -> Vec<Self> {
        [Self::Amx, Self::Avx512].into_iter().filter(|k| k.available()).collect()
    }
}

fn avx512_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn amx_available() -> bool {
    static AMX: OnceLock<bool> = OnceLock::new();
    *AMX.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            amx::cpu_and_os_support() && amx::request_permission()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// What a user asks for with `--dtype`: how the encoder's linear layers multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    /// f32 everywhere (the reference; every parity test runs in it).
    #[default]
    F32,
    /// bf16 products with f32 accumulation; an error where the CPU has no bf16 kernel.
    Bf16,
    /// bf16 where it pays: with AMX; f32 elsewhere. (The AVX512-BF16 kernel is not chosen by
    /// `auto`: on the Intel CPU it was measured on it is slower than f32 `gemm`, 93 against 154
    /// GFLOP/s, because Intel runs `VDPBF16PS` at half the FMA rate; ask for it with `bf16`.)
    Auto,
}

impl DtypeChoice {
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "auto" => Ok(Self::Auto),
            other => Err(crate::Error::Input(format!("dtype `{other}`: expected f32, bf16 or auto"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Auto => "auto",
        }
    }

    /// [`Self::resolve`] for a model on the CPU (`cpu`) or on another device: the kernels are CPU
    /// kernels, so there `auto` is f32 and `bf16` an error.
    pub fn resolve_on(self, cpu: bool) -> crate::Result<Precision> {
        match (self, cpu) {
            (_, true) | (Self::F32, false) => self.resolve(),
            (Self::Auto, false) => Ok(Precision::F32),
            (Self::Bf16, false) => Err(crate::Error::Input("dtype bf16 runs on the CPU's bf16 kernels; on this device use f32".into())),
        }
    }

    /// The precision this choice gives on this machine.
    pub fn resolve(self) -> crate::Result<Precision> {
        match (self, Bf16Kernel::detect()) {
            (Self::F32, _) | (Self::Auto, None | Some(Bf16Kernel::Avx512)) => Ok(Precision::F32),
            (Self::Bf16 | Self::Auto, Some(k)) => Ok(Precision::Bf16(k)),
            (Self::Bf16, None) => Err(crate::Error::Input(
                "dtype bf16: this CPU has neither AMX nor AVX512-BF16, so bf16 would be emulated and slower than f32; use --dtype f32 or auto".into(),
            )),
        }
    }
}

impl std::str::FromStr for DtypeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s).map_err(|_| format!("dtype must be f32, bf16 or auto, not `{s}`"))
    }
}

/// How the encoder's linear layers multiply, as resolved on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    /// bf16 inputs, f32 accumulation and output, with this kernel.
    Bf16(Bf16Kernel),
}

impl Precision {
    /// `f32` or `bf16 (amx-bf16)`: what logs and benchmarks print.
    pub fn describe(self) -> String {
        match self {
            Self::F32 => "f32".into(),
            Self::Bf16(k) => format!("bf16 ({})", k.name()),
        }
    }

    /// `f32` or `bf16`.
    pub fn dtype_name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16(_) => "bf16",
        }
    }
}

/// f32 → bf16, round to nearest even (NaN stays NaN).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 → f32 (exact).
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Rows of one output block (two AMX tile rows of 16).
const MB: usize = 32;
/// Columns of one packed column block (one AMX tile / one zmm of f32).
const NB: usize = 16;
/// `k` is padded to a multiple of this (one AMX tile row of bf16).
const KB: usize = 32;
/// Rows of output one task computes (its activation rows stay in L2 while it sweeps every
/// column block).
const ROWS_PER_TASK: usize = 64;

/// A weight `W [n, k]` rounded to bf16 and packed for [`matmul_t`].
#[derive(Clone)]
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// `k` rounded up to a multiple of 32.
    kp: usize,
    /// Column blocks of 16 (rounded up to an even count: the kernels take them in pairs), each
    /// `[kp/2][16][2]`.
    data: Vec<u16>,
}

impl std::fmt::Debug for PackedBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedBf16 {{ n: {}, k: {} }}", self.n, self.k)
    }
}

impl PackedBf16 {
    /// Packs `w`, row-major `[n, k]` (a linear layer's `[out, in]` weight).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "PackedBf16::pack: weight of {} values is not {n} × {k}", w.len());
        let kp = k.div_ceil(KB) * KB;
        let blocks = n.div_ceil(NB).div_ceil(2) * 2;
        let per_block = kp / 2 * NB * 2;
        let mut data = vec![0u16; blocks * per_block];
        data.par_chunks_mut(per_block).enumerate().for_each(|(jb, block)| {
            for j in 0..NB {
                let row = jb * NB + j;
                if row >= n {
                    break;
                }
                let wr = &w[row * k..(row + 1) * k];
                for (c, &v) in wr.iter().enumerate() {
                    block[(c / 2) * NB * 2 + j * 2 + (c % 2)] = to_bf16(v);
                }
            }
        });
        Self { n, k, kp, data }
    }

    /// Output features (rows of `W`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (columns of `W`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// `out[m, n] = x[m, k] · Wᵀ (+ bias)`, rows of `x` and `out` contiguous. Runs on rayon's pool.
///
/// Panics if the slice lengths do not match `m`, `w.k()`, `w.n()` or the kernel is not
/// [`Bf16Kernel::available`] (callers check once, when they choose the kernel).
pub fn matmul_t(kernel: Bf16Kernel, x: &[f32], m: usize, w: &PackedBf16, bias: Option<&[f32]>, out: &mut [f32]) {
    let (n, k, kp) = (w.n, w.k, w.kp);
    assert_eq!(x.len(), m * k, "matmul_t: x has {} values, not {m} × {k}", x.len());
    assert_eq!(out.len(), m * n, "matmul_t: out has {} values, not {m} × {n}", out.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "matmul_t: bias of {} values for {n} outputs", b.len());
    }
    assert!(kernel.available(), "matmul_t: the {} kernel is not available on this machine", kernel.name());
    if m == 0 || n == 0 {
        return;
    }
    // Activations in bf16, `[mp, kp]`, zero-padded to whole tiles.
    let mp = m.div_ceil(MB) * MB;
    let mut xa = vec![0u16; mp * kp];
    xa.par_chunks_mut(kp * MB).enumerate().for_each(|(bi, rows)| {
        for (r, dst) in rows.chunks_mut(kp).enumerate() {
            let i = bi * MB + r;
            if i >= m {
                break;
            }
            convert_row(&x[i * k..(i + 1) * k], &mut dst[..k]);
        }
    });
    out.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(ti, out_rows)| {
        let row0 = ti * ROWS_PER_TASK;
        let rows = out_rows.len() / n;
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        let _tiles = (kernel == Bf16Kernel::Amx).then(amx::TileConfig::load);
        multiply_rows(kernel, (&xa[row0 * kp..], kp, rows), (&w.data, n), bias, (out_rows, n));
    });
}

/// `out[r, j] = A[r, :] · B[j, :] (+ bias[j])` for `r < rows`, `j < n`: `a` holds the activations
/// in bf16, rows `kp` apart and padded with zeros to whole blocks of 32 rows; `b` packed column
/// blocks of `kp·16` bf16 ([`PackedBf16`]'s layout, an even number of them); `out` rows `ldo`
/// apart. The block loop shared by [`matmul_t`] and [`matmul_t_serial`]; with AMX the caller has
/// loaded this thread's tiles.
fn multiply_rows(kernel: Bf16Kernel, (a, kp, rows): (&[u16], usize, usize), (b, n): (&[u16], usize), bias: Option<&[f32]>, (out, ldo): (&mut [f32], usize)) {
    let per_block = kp * NB;
    let mut tmp = [0f32; MB * 2 * NB];
    for pair in 0..b.len() / per_block / 2 {
        let (b0, b1) = (&b[2 * pair * per_block..][..per_block], &b[(2 * pair + 1) * per_block..][..per_block]);
        let col0 = pair * 2 * NB;
        let cols = (n - col0).min(2 * NB);
        for mb in (0..rows).step_by(MB) {
            block_32x32(kernel, &a[mb * kp..][..MB * kp], kp, b0, b1, &mut tmp);
            for r in 0..(rows - mb).min(MB) {
                let dst = &mut out[(mb + r) * ldo + col0..][..cols];
                let src = &tmp[r * 2 * NB..][..cols];
                match bias {
                    Some(bv) => {
                        for ((d, s), bb) in dst.iter_mut().zip(src).zip(&bv[col0..col0 + cols]) {
                            *d = s + bb;
                        }
                    }
                    None => dst.copy_from_slice(src),
                }
            }
        }
    }
}

/// One row of activations to bf16 (also used by the bf16 band convolution): `VCVTNE2PS2BF16` (32 values an instruction, round to nearest
/// even, as [`to_bf16`]) where the CPU has AVX512-BF16 (every CPU with a kernel here has it), the
/// scalar [`to_bf16`] for the tail and elsewhere.
pub(crate) fn convert_row(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if avx512_bf16_available() {
        // SAFETY: AVX512F and AVX512-BF16 are present (checked just above).
        unsafe { avx512::convert(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = to_bf16(s);
    }
}

/// `tmp[32, 32] = A[32 rows, kp] · [B0 | B1]` for one pair of packed column blocks.
fn block_32x32(kernel: Bf16Kernel, a: &[u16], kp: usize, b0: &[u16], b1: &[u16], tmp: &mut [f32; MB * 2 * NB]) {
    debug_assert!(a.len() == MB * kp && b0.len() == kp * NB && b1.len() == kp * NB);
    match kernel {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        // SAFETY: the kernel is available (checked by `matmul_t`), this thread loaded the tile
        // configuration (`TileConfig::load` in `matmul_t`, or the caller's `TileGuard` checked by
        // `matmul_t_serial`), and the slices have the asserted sizes.
        Bf16Kernel::Amx => unsafe { amx::block(a.as_ptr(), kp, b0.as_ptr(), b1.as_ptr(), kp / KB, tmp.as_mut_ptr()) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX512-BF16 is available (checked by `matmul_t`); the slices have the sizes
        // asserted above.
        Bf16Kernel::Avx512 => unsafe { avx512::block(a, kp, b0, b1, tmp) },
        #[allow(unreachable_patterns)]
        _ => unreachable!("no bf16 kernel on this target"),
    }
}

/// Reusable buffers of [`matmul_t_serial`].
#[derive(Default)]
pub(crate) struct SerialScratch {
    a: Vec<u16>,
    b: Vec<u16>,
}

/// Single-threaded `out[i, j] = Σ_t a[i·a_rs + t·a_cs] · b[j·b_rs + t·b_cs]` for `i < m`,
/// `j < n`, `t < k` (`out` row stride `ldo`, overwritten): the inputs rounded to bf16, products
/// accumulated in f32. For small products inside loops that are already parallel (the BiSPA row
/// attention). With AMX the caller holds this thread's tiles: `tiles` from [`amx_tiles`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_t_serial(
    kernel: Bf16Kernel,
    tiles: Option<&TileGuard>,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
    ldo: usize,
    scratch: &mut SerialScratch,
) {
    assert!(kernel != Bf16Kernel::Amx || tiles.is_some(), "matmul_t_serial: AMX needs the thread's tiles");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k > 0 && a.len() > (m - 1) * a_rs + (k - 1) * a_cs && b.len() > (n - 1) * b_rs + (k - 1) * b_cs && out.len() >= (m - 1) * ldo + n,
        "matmul_t_serial: operands too short"
    );
    let kp = k.div_ceil(KB) * KB;
    let mp = m.div_ceil(MB) * MB;
    let blocks = n.div_ceil(NB).div_ceil(2) * 2;
    scratch.a.clear();
    scratch.a.resize(mp * kp, 0);
    if a_cs == 1 {
        for i in 0..m {
            convert_row(&a[i * a_rs..][..k], &mut scratch.a[i * kp..][..k]);
        }
    } else {
        // a transposed view: read it row by row of the source (contiguous when a_rs is 1)
        for t in 0..k {
            for i in 0..m {
                scratch.a[i * kp + t] = to_bf16(a[i * a_rs + t * a_cs]);
            }
        }
    }
    let per_block = kp * NB;
    scratch.b.clear();
    scratch.b.resize(blocks * per_block, 0);
    for j in 0..n {
        let (jb, jj) = (j / NB, j % NB);
        let block = &mut scratch.b[jb * per_block..][..per_block];
        for t in 0..k {
            block[(t / 2) * NB * 2 + jj * 2 + (t % 2)] = to_bf16(b[j * b_rs + t * b_cs]);
        }
    }
    multiply_rows(kernel, (&scratch.a, kp, m), (&scratch.b, n), None, (out, ldo));
}

/// For kernels built on AMX tiles elsewhere (the bf16 band convolution): loads this thread's
/// tile configuration (eight 16×64-byte tiles) for as long as the guard lives. `None` where AMX
/// is not available.
pub(crate) fn amx_tiles() -> Option<TileGuard> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if Bf16Kernel::Amx.available() {
        return Some(TileGuard { _cfg: amx::TileConfig::load() });
    }
    None
}

/// Holds this thread's AMX tile configuration (released on drop).
pub(crate) struct TileGuard {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    _cfg: amx::TileConfig,
}

/// `c[32, 32] = Σ_s A_s · [B_s0 | B_s1]` over steps `s`: A_s is 32 rows of 32 bf16 starting at
/// `a[s]`, rows `a_stride` bf16 apart; `b` holds per step the two packed 16-column blocks of 32
/// values of `k` (512 bf16 each: `[16 pairs][16 columns][2]`); `c` is row-major, 32 f32 a row.
/// A gathered sum of 32×32×32 products, for shifted-window kernels (a convolution's taps).
///
/// # Safety
/// [`amx_tiles`] must have returned `Some` on this thread and its guard must be alive; every
/// `a[s]` must point at 32 readable rows of 32 bf16, `a_stride` apart.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) unsafe fn amx_gather_32x32(a: &[*const u16], a_stride: usize, b: &[u16], c: &mut [f32; 1024]) {
    assert!(!a.is_empty() && b.len() == a.len() * 1024, "amx_gather_32x32: {} steps, {} packed values", a.len(), b.len());
    amx::gather(a.as_ptr(), a.len(), a_stride, b.as_ptr(), c.as_mut_ptr());
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MB, NB};

    /// Rows per register block: 8 rows × 2 zmm = 16 accumulators.
    const MR: usize = 8;

    /// `dst[i] = bf16(src[i])` (round to nearest even), 32 at a time.
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert(src: &[f32], dst: &mut [u16]) {
        let n = src.len().min(dst.len());
        let whole = n / 32 * 32;
        for i in (0..whole).step_by(32) {
            let lo = _mm512_loadu_ps(src.as_ptr().add(i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i) as *mut __m512i, packed);
        }
        for i in whole..n {
            dst[i] = super::to_bf16(src[i]);
        }
    }

    /// # Safety
    /// The CPU must have AVX512F and AVX512-BF16; `a` is `[32, kp]`, `b0`, `b1` `[kp/2, 16, 2]`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block(a: &[u16], kp: usize, b0: &[u16], b1: &[u16], tmp: &mut [f32; MB * 2 * NB]) {
        let pairs = kp / 2;
        for r0 in (0..MB).step_by(MR) {
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            let arow = a.as_ptr().add(r0 * kp);
            for p in 0..pairs {
                let bv0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.as_ptr().add(p * 2 * NB) as *const __m512i));
                let bv1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.as_ptr().add(p * 2 * NB) as *const __m512i));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let pair = (arow.add(r * kp + 2 * p) as *const i32).read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    acc_r[0] = _mm512_dpbf16_ps(acc_r[0], av, bv0);
                    acc_r[1] = _mm512_dpbf16_ps(acc_r[1], av, bv1);
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let dst = tmp.as_mut_ptr().add((r0 + r) * 2 * NB);
                _mm512_storeu_ps(dst, acc_r[0]);
                _mm512_storeu_ps(dst.add(NB), acc_r[1]);
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;

    use super::{MB, NB};

    /// CPUID: AMX-TILE and AMX-BF16 (leaf 7, EDX bits 24 and 22), and the OS saves the tile
    /// state (XCR0 bits 17 and 18, read through XGETBV once OSXSAVE says it may be).
    pub(super) fn cpu_and_os_support() -> bool {
        let leaf0 = std::arch::x86_64::__cpuid(0);
        if leaf0.eax < 7 {
            return false;
        }
        let l7 = std::arch::x86_64::__cpuid_count(7, 0);
        let amx_bf16 = l7.edx & (1 << 22) != 0;
        let amx_tile = l7.edx & (1 << 24) != 0;
        let l1 = std::arch::x86_64::__cpuid(1);
        let osxsave = l1.ecx & (1 << 27) != 0;
        if !(amx_bf16 && amx_tile && osxsave) {
            return false;
        }
        // SAFETY: OSXSAVE is set, so XGETBV may be executed.
        let xcr0 = unsafe { xgetbv0() };
        xcr0 & (0b11 << 17) == (0b11 << 17)
    }

    unsafe fn xgetbv0() -> u64 {
        let (lo, hi): (u32, u32);
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
        ((hi as u64) << 32) | lo as u64
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux (5.16+) gives a process the
    /// AMX tile data state only when asked. Process-wide, so once is enough.
    pub(super) fn request_permission() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a plain Linux system call with integer arguments; it touches no memory of ours.
        unsafe {
            asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM, in("rsi") XFEATURE_XTILEDATA,
                 lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret == 0
    }

    /// The tile configuration of the kernel, loaded on the current thread for as long as it
    /// lives (eight tiles of 16 rows × 64 bytes: C00, C01, C10, C11, A0, A1, B0, B1).
    pub(super) struct TileConfig(());

    impl TileConfig {
        pub(super) fn load() -> Self {
            #[repr(C, align(64))]
            struct Cfg([u8; 64]);
            let mut cfg = Cfg([0; 64]);
            cfg.0[0] = 1; // palette 1
            for t in 0..8 {
                cfg.0[16 + 2 * t] = 64; // bytes per row
                cfg.0[48 + t] = 16; // rows
            }
            // SAFETY: AMX is available and permitted (checked before any kernel runs); the
            // configuration is a valid palette-1 layout.
            unsafe { asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
            Self(())
        }
    }

    impl Drop for TileConfig {
        fn drop(&mut self) {
            // SAFETY: releases the tile state this thread configured.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// `c[32, 32] = A[32, 32·kb] · [B0 | B1]`: `a` rows `kp` bf16 apart, `b0`/`b1` packed
    /// column blocks (1 KiB per 32 of `k`), `c` row-major with 32 f32 per row.
    ///
    /// # Safety
    /// AMX must be available and this thread's tiles configured by [`TileConfig::load`]; `a`
    /// holds 32 rows of `32·kb` bf16, `b0` and `b1` `32·kb·16` bf16 each, `c` 1,024 f32; `kb ≥ 1`.
    pub(super) unsafe fn block(a: *const u16, kp: usize, b0: *const u16, b1: *const u16, kb: usize, c: *mut f32) {
        debug_assert!(kb >= 1 && MB == 32 && NB == 16);
        let a1 = a.add(16 * kp);
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {s128}*1], tmm0",
            "tilestored [{c} + {s128}*1 + 64], tmm1",
            "tilestored [{c} + {s128}*1 + 2048], tmm2",
            "tilestored [{c} + {s128}*1 + 2112], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) kb => _,
            sa = in(reg) kp * 2,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            c = in(reg) c,
            options(nostack)
        );
    }

    /// See [`super::amx_gather_32x32`]: `steps` A pointers from `list`, B blocks of 2 KiB one
    /// after another from `b`.
    ///
    /// # Safety
    /// As [`super::amx_gather_32x32`]; `steps ≥ 1`.
    pub(super) unsafe fn gather(list: *const *const u16, steps: usize, a_stride: usize, b: *const u16, c: *mut f32) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "mov {a}, [{list}]",
            "tileloadd tmm4, [{a} + {sa}*1]",
            "add {a}, {sa16}",
            "tileloadd tmm5, [{a} + {sa}*1]",
            "tileloadd tmm6, [{b} + {s64}*1]",
            "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {list}, 8",
            "add {b}, 2048",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {s128}*1], tmm0",
            "tilestored [{c} + {s128}*1 + 64], tmm1",
            "tilestored [{c} + {s128}*1 + 2048], tmm2",
            "tilestored [{c} + {s128}*1 + 2112], tmm3",
            list = inout(reg) list => _,
            a = out(reg) _,
            b = inout(reg) b => _,
            n = inout(reg) steps => _,
            sa = in(reg) a_stride * 2,
            sa16 = in(reg) a_stride * 32,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            c = in(reg) c,
            options(nostack)
        );
    }
}

/// A frozen linear layer's product `x·Wᵀ` in bf16, as a candle op on CPU f32 tensors: the
/// forward multiplies by the packed weight; the backward gives the input gradient `dy·W` with the
/// same kernel (the transposed packing is made on the first backward pass), and none for `W`,
/// which is frozen (LoRA trains beside it in f32).
#[derive(Clone)]
pub struct Bf16Linear {
    kernel: Bf16Kernel,
    packed: std::sync::Arc<PackedBf16>,
    /// The f32 weight `[n, k]`, kept for the transposed packing (None once released for
    /// inference, [`Self::release_f32_weight`]).
    weight: Option<candle_core::Tensor>,
    transposed: std::sync::Arc<OnceLock<PackedBf16>>,
}

impl std::fmt::Debug for Bf16Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Linear {{ {}, {:?} }}", self.kernel.name(), self.packed)
    }
}

impl Bf16Linear {
    /// Packs `weight` (`[out, in]`, f32, on the CPU).
    pub fn new(weight: &candle_core::Tensor, kernel: Bf16Kernel) -> crate::Result<Self> {
        if !weight.device().is_cpu() || weight.dtype() != candle_core::DType::F32 {
            return Err(crate::Error::Input(format!(
                "bf16 kernels take f32 CPU weights, not {:?} on {:?}",
                weight.dtype(),
                weight.device().location()
            )));
        }
        if !kernel.available() {
            return Err(crate::Error::Input(format!("the {} kernel is not available on this CPU", kernel.name())));
        }
        let (n, k) = weight.dims2()?;
        let w: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        Ok(Self { kernel, packed: std::sync::Arc::new(PackedBf16::pack(&w, n, k)), weight: Some(weight.clone()), transposed: Default::default() })
    }

    pub fn kernel(&self) -> Bf16Kernel {
        self.kernel
    }

    /// Inference only: drop this op's reference to the f32 weight (the backward pass then fails
    /// with a message instead of running).
    pub fn release_f32_weight(&mut self) {
        self.weight = None;
    }

    /// `[…, k] → […, n]`.
    pub fn forward(&self, xs: &candle_core::Tensor) -> crate::Result<candle_core::Tensor> {
        let dims = xs.dims();
        let k = *dims.last().ok_or_else(|| crate::Error::Input("linear on a scalar".into()))?;
        if k != self.packed.k {
            return Err(crate::Error::Input(format!("bf16 linear: input has {k} features, the weight takes {}", self.packed.k)));
        }
        let rows = xs.elem_count() / k.max(1);
        let y = xs.reshape((rows, k))?.contiguous()?.apply_op1(self.clone())?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.packed.n;
        }
        Ok(y.reshape(out_dims)?)
    }
}

impl candle_core::CustomOp1 for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = crate::nn::cpu_f32(s, l, "bf16-linear")?;
        let (m, k) = l.shape().dims2()?;
        if k != self.packed.k {
            candle_core::bail!("bf16-linear: {k} input features for a weight of {}", self.packed.k)
        }
        let mut out = crate::nn::uninit_f32(m * self.packed.n); // matmul_t stores every element
        matmul_t(self.kernel, x, m, &self.packed, None, &mut out);
        Ok((candle_core::CpuStorage::F32(out), candle_core::Shape::from((m, self.packed.n))))
    }

    fn bwd(&self, _arg: &candle_core::Tensor, _res: &candle_core::Tensor, grad: &candle_core::Tensor) -> candle_core::Result<Option<candle_core::Tensor>> {
        if self.transposed.get().is_none() {
            let Some(w) = &self.weight else { candle_core::bail!("bf16-linear: the f32 weight was released for inference; no backward pass") };
            let wt: Vec<f32> = w.t()?.contiguous()?.flatten_all()?.to_vec1()?;
            let _ = self.transposed.set(PackedBf16::pack(&wt, self.packed.k, self.packed.n));
        }
        let Some(t) = self.transposed.get() else { candle_core::bail!("bf16-linear: transposed weight missing") };
        let (m, n) = grad.dims2()?;
        let g: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let mut dx = crate::nn::uninit_f32(m * t.n); // matmul_t stores every element
        debug_assert_eq!(n, t.k);
        matmul_t(self.kernel, &g, m, t, None, &mut dx);
        Ok(Some(candle_core::Tensor::from_vec(dx, (m, t.n), grad.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Σ bf16(x)·bf16(w) in f64: what a bf16 product with exact accumulation gives.
    fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Vec<f64> {
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |b| b[j] as f64);
                for c in 0..k {
                    s += r(x[i * k + c]) * r(w[j * k + c]);
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    #[test]
    fn vector_conversion_equals_scalar_rounding() {
        let mut x = data(1000, 5);
        x.extend([0.0, -0.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::INFINITY, -f32::INFINITY, 1e-40, -3.4e38]);
        let mut got = vec![0u16; x.len()];
        convert_row(&x, &mut got);
        let want: Vec<u16> = x.iter().map(|&v| to_bf16(v)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is exactly half way between two bf16 values: ties go to the even one (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is half way between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn every_kernel_matches_bf16_reference_on_ragged_shapes() {
        let kernels = Bf16Kernel::all_available();
        if kernels.is_empty() {
            eprintln!("no bf16 kernel on this CPU: nothing to check");
            return;
        }
        // Shapes off every block size: m not a multiple of 32 or 64, n not of 16 or 32, k not of 32.
        for &(m, n, k) in &[(1, 1, 1), (5, 17, 33), (33, 48, 64), (70, 50, 100), (129, 96, 384), (64, 32, 31)] {
            let x = data(m * k, 1 + m as u64);
            let w = data(n * k, 2 + n as u64);
            let b = data(n, 3);
            let want = reference(&x, m, &w, n, k, Some(&b));
            let packed = PackedBf16::pack(&w, n, k);
            for &kern in &kernels {
                let mut out = vec![f32::NAN; m * n];
                matmul_t(kern, &x, m, &packed, Some(&b), &mut out);
                for (i, (&g, &r)) in out.iter().zip(&want).enumerate() {
                    // f32 accumulation of k exact products: error ≪ 1e-5 · k.
                    assert!((g as f64 - r).abs() <= 1e-5 * (k as f64).max(1.0), "{} ({m}×{n}×{k}) at {i}: {g} vs {r}", kern.name());
                }
            }
        }
    }

    #[test]
    fn linear_op_forward_and_input_gradient_match_f32_on_rounded_inputs() {
        use candle_core::{Device, Tensor, Var};
        let Some(kern) = Bf16Kernel::detect() else { return };
        let r = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| from_bf16(to_bf16(x))).collect() };
        let (m, n, k) = (37, 24, 40);
        let dev = Device::Cpu;
        let w = r(data(n * k, 11));
        let x = r(data(m * k, 12));
        let g = r(data(m * n, 13));
        let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
        let gt = Tensor::from_vec(g, (m, n), &dev).unwrap();
        let lin = Bf16Linear::new(&w, kern).unwrap();
        let xv = Var::from_tensor(&Tensor::from_vec(x, (1, m, k), &dev).unwrap()).unwrap();
        let y = lin.forward(xv.as_tensor()).unwrap();
        assert_eq!(y.dims(), &[1, m, n]);
        // Inputs already bf16-exact: the f32 product is the same sum up to f32 summation order.
        let want = xv.as_tensor().reshape((m, k)).unwrap().matmul(&w.t().unwrap()).unwrap();
        let diff = (y.reshape((m, n)).unwrap() - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "forward {diff}");
        // d(Σ y·g)/dx = g·W (g, W bf16-exact too).
        let loss = (y.reshape((m, n)).unwrap() * &gt).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let dx = grads.get(xv.as_tensor()).unwrap().reshape((m, k)).unwrap();
        let want_dx = gt.matmul(&w).unwrap();
        let diff = (dx - want_dx).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "input gradient {diff}");
    }

    #[test]
    fn serial_product_with_strides_matches_reference() {
        for kern in Bf16Kernel::all_available() {
            let tiles = amx_tiles();
            let (m, n, k) = (45, 19, 37);
            // a row-major with row stride 40, and a transposed view (a[i][t] at i + t·48)
            for (a_rs, a_cs) in [(40usize, 1usize), (1, 48)] {
                let a = data((m - 1) * a_rs + (k - 1) * a_cs + 1, 21);
                let b = data(k * 3 * n, 22); // b[j][t] at j + t·3n (a transposed, strided view)
                let mut out = vec![f32::NAN; m * 50];
                let mut scratch = SerialScratch::default();
                matmul_t_serial(kern, tiles.as_ref(), (&a, a_rs, a_cs), (&b, 1, 3 * n), (m, n, k), &mut out, 50, &mut scratch);
                let r = |v: f32| from_bf16(to_bf16(v)) as f64;
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|t| r(a[i * a_rs + t * a_cs]) * r(b[j + t * 3 * n])).sum();
                        assert!((out[i * 50 + j] as f64 - want).abs() < 1e-4, "{} ({i}, {j}), a strides ({a_rs}, {a_cs})", kern.name());
                    }
                }
            }
        }
    }

    #[test]
    fn dtype_choice_parses_and_resolves() {
        assert_eq!(DtypeChoice::parse("auto").unwrap(), DtypeChoice::Auto);
        assert!(DtypeChoice::parse("fp16").is_err());
        assert_eq!(DtypeChoice::F32.resolve().unwrap(), Precision::F32);
        match Bf16Kernel::detect() {
            Some(k) => {
                let auto = if k == Bf16Kernel::Amx { Precision::Bf16(k) } else { Precision::F32 };
                assert_eq!(DtypeChoice::Auto.resolve().unwrap(), auto);
                assert_eq!(DtypeChoice::Bf16.resolve().unwrap(), Precision::Bf16(k));
            }
            None => {
                assert_eq!(DtypeChoice::Auto.resolve().unwrap(), Precision::F32);
                assert!(DtypeChoice::Bf16.resolve().is_err());
            }
        }
    }

    #[test]
    fn kernels_agree_with_each_other_and_without_bias() {
        let kernels = Bf16Kernel::all_available();
        let (m, n, k) = (100, 64, 96);
        let x = data(m * k, 7);
        let w = data(n * k, 8);
        let packed = PackedBf16::pack(&w, n, k);
        let want = reference(&x, m, &w, n, k, None);
        for &kern in &kernels {
            let mut out = vec![0f32; m * n];
            matmul_t(kern, &x, m, &packed, None, &mut out);
            let worst = out.iter().zip(&want).map(|(&g, &r)| (g as f64 - r).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-4, "{}: {worst}", kern.name());
        }
    }
}
