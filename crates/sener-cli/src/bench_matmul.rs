//! `sener bench matmul`: GFLOP/s of the matrix products the encoder runs (DeBERTa-v3-base shapes
//! at a 5,120-token segment), in f32, bf16 and f16, through candle's CPU matmul (the `gemm`
//! crate) — how far each dtype is from the machine's limit, and whether a half-precision path
//! would pay — and sener's own bf16 kernels (`sener::gemm_bf16`: AMX, AVX512-BF16) beside them.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;

/// `sener bench matmul`'s flags.
#[derive(Args, Debug)]
pub struct BenchMatmulArgs {
    /// Rows (tokens) of every product.
    #[arg(long, default_value_t = 5120)]
    pub tokens: usize,
    /// Repetitions per shape and dtype (the median is reported; one warm-up run first).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

pub fn run(a: BenchMatmulArgs) -> Result<()> {
    if !(1..=1 << 20).contains(&a.tokens) || !(1..=100).contains(&a.reps) {
        bail!("--tokens must be in 1..=1048576 and --reps in 1..=100");
    }
    let dev = Device::Cpu;
    // (name, k, n): Q/K/V/O projections, FFN up, FFN down of DeBERTa-v3-base.
    let shapes = [("attention projection 768→768", 768, 768), ("FFN up 768→3072", 768, 3072), ("FFN down 3072→768", 3072, 768)];
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = ["avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16", "f16c"].into_iter().filter(|f| cpu.split_whitespace().any(|w| w == *f)).collect();
    println!("matmul [{} × k] · [k × n] on {} threads; CPU flags: {}\n", a.tokens, candle_core::utils::get_num_threads(), flags.join(" "));
    let ours = sener::gemm_bf16::Bf16Kernel::all_available();
    let mut head = "| product | f32 GFLOP/s | bf16 GFLOP/s | f16 GFLOP/s |".to_string();
    for k in &ours {
        head.push_str(&format!(" sener {} GFLOP/s |", k.name()));
    }
    println!("gemm crate (through candle) for f32 / bf16 / f16; then sener's own bf16 kernels (bf16 inputs, f32 accumulation, activations rounded per call){}\n", if ours.is_empty() { ": none on this CPU" } else { "" });
    println!("{head}");
    println!("|---|---:|---:|---:|{}", "---:|".repeat(ours.len()));
    for (name, k, n) in shapes {
        let mut row = format!("| {name} |");
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let x = Tensor::randn(0f32, 1.0, (a.tokens, k), &dev)?.to_dtype(dt)?;
            let w = Tensor::randn(0f32, 0.02, (k, n), &dev)?.to_dtype(dt)?;
            let _ = x.matmul(&w)?;
            let mut t: Vec<f64> = (0..a.reps)
                .map(|_| -> Result<f64> {
                    let s = Instant::now();
                    let y = x.matmul(&w)?;
                    drop(y);
                    Ok(s.elapsed().as_secs_f64())
                })
                .collect::<Result<_>>()?;
            t.sort_by(f64::total_cmp);
            let flops = 2.0 * a.tokens as f64 * k as f64 * n as f64;
            row.push_str(&format!(" {:.0} |", flops / t[t.len() / 2] / 1e9));
        }
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, (a.tokens, k), &dev)?.flatten_all()?.to_vec1()?;
        let w: Vec<f32> = Tensor::randn(0f32, 0.02, (n, k), &dev)?.flatten_all()?.to_vec1()?;
        let packed = sener::gemm_bf16::PackedBf16::pack(&w, n, k);
        let mut out = vec![0f32; a.tokens * n];
        for &kern in &ours {
            sener::gemm_bf16::matmul_t(kern, &x, a.tokens, &packed, None, &mut out);
            let mut t: Vec<f64> = (0..a.reps)
                .map(|_| {
                    let s = Instant::now();
                    sener::gemm_bf16::matmul_t(kern, &x, a.tokens, &packed, None, &mut out);
                    s.elapsed().as_secs_f64()
                })
                .collect();
            t.sort_by(f64::total_cmp);
            let flops = 2.0 * a.tokens as f64 * k as f64 * n as f64;
            row.push_str(&format!(" {:.0} |", flops / t[t.len() / 2] / 1e9));
        }
        println!("{row}");
    }
    Ok(())
}
