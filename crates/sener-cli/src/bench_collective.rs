//! `sener bench collective`: the collective operations of data-parallel training, checked and
//! timed on the ranks of an MPI job (`mpirun -np N sener bench collective`; without a launcher,
//! a one-rank MPI world). On the CPU they run over MPI; with `--device cuda` and a build with
//! `--features nccl`, over NCCL on each rank's GPU (the one-rank run is the NCCL smoke test of
//! `tools/gpu/check.sh`).
//!
//! Every rank fills a buffer with values that depend on its rank; the all-reduced buffer must be
//! the sum over ranks, element by element, and the broadcast one rank 0's. Then the all-reduce
//! is timed on a buffer of the size of a training step's flattened gradients.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchCollectiveArgs {
    /// cpu (MPI) or cuda[:N] (NCCL, needs --features nccl; `cuda` under a launcher: the GPU of the
    /// rank's local rank).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32 elements per all-reduce (default 2²¹ = 8 MiB, about the LoRA and span-side gradients
    /// of DeBERTa-v3-base).
    #[arg(long, default_value_t = 1 << 21)]
    pub elements: usize,
    /// Timed all-reduces (after one untimed).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
}

pub fn run(a: BenchCollectiveArgs) -> Result<()> {
    if a.elements == 0 || a.elements > 1 << 30 || a.reps == 0 || a.reps > 10_000 {
        bail!("--elements must be in 1..=2^30 and --reps in 1..=10000");
    }
    if !cfg!(feature = "mpi") {
        bail!("sener bench collective needs a build with --features mpi (or nccl)");
    }
    let (coll, device) = crate::train::collective(&a.device, true)?;
    let (rank, world) = (coll.rank(), coll.world());
    let backend = if device.is_cuda() { "nccl" } else { "mpi" };
    // Correctness: sum over ranks r of (r + 1)·(i mod 7 + 1) = (i mod 7 + 1)·world(world+1)/2.
    let mut buf: Vec<f32> = (0..a.elements).map(|i| ((rank + 1) * (i % 7 + 1)) as f32).collect();
    coll.all_reduce_sum(&mut buf).context("all-reduce")?;
    let tri = (world * (world + 1) / 2) as f32;
    if let Some(i) = (0..a.elements).find(|&i| buf[i] != (i % 7 + 1) as f32 * tri) {
        bail!("rank {rank}: all-reduced element {i} is {}, expected {}", buf[i], (i % 7 + 1) as f32 * tri);
    }
    let mut small = [rank as f64 + 0.5, 1.0];
    coll.all_reduce_sum_f64(&mut small).context("all-reduce (f64)")?;
    if small != [world as f64 * world as f64 / 2.0, world as f64] {
        bail!("rank {rank}: f64 all-reduce gave {small:?}");
    }
    let mut b: Vec<f32> = (0..1000).map(|i| (i * (rank + 1)) as f32).collect();
    coll.broadcast(&mut b).context("broadcast")?;
    if (0..1000).any(|i| b[i] != i as f32) {
        bail!("rank {rank}: the broadcast buffer is not rank 0's");
    }
    coll.barrier().context("barrier")?;
    let mut times = Vec::with_capacity(a.reps);
    for _ in 0..a.reps {
        let t0 = Instant::now();
        coll.all_reduce_sum(&mut buf)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if rank == 0 {
        let mib = a.elements as f64 * 4.0 / 1048576.0;
        println!("| backend | ranks | device | MiB per all-reduce | median ms | checks |");
        println!("|---|---:|---|---:|---:|---|");
        println!("| {backend} | {world} | {} | {mib:.1} | {:.2} | sum, f64 sum, broadcast, barrier: ok |", a.device, median * 1e3);
        println!("{}", serde_json::json!({"backend": backend, "ranks": world, "device": a.device, "elements": a.elements, "median_ms": median * 1e3, "ok": true}));
    }
    Ok(())
}
