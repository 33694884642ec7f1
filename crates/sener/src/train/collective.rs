//! Data-parallel training: the few collective operations the trainer needs, behind one trait.
//!
//! Every rank holds the whole model, walks the same deterministic batch order and runs the
//! micro-batches of each optimiser step that fall to it (micro-batch `i` of a step to rank
//! `i mod world`); the gradients are then summed across ranks before clipping, so N ranks take
//! exactly the step one process takes with the same effective batch. Only rank 0 writes
//! checkpoints, logs and the model; decisions that depend on the clock (the time budget, a stop
//! request) are taken by rank 0 and broadcast.
//!
//! [`Local`] is the single process. [`Mpi`] (feature `mpi`) runs over MPI: `mpirun -np N sener
//! train …`, rank and world size from MPI (`srun` under Slurm works the same); a rank that dies
//! makes the launcher stop the whole job. [`Nccl`] (feature `nccl`) reduces on the GPUs, one
//! rank per GPU, bootstrapped over MPI: rank 0 makes the NCCL id and broadcasts it, the usual
//! launcher pattern.

#[cfg(feature = "mpi")]
use crate::Error;
use crate::Result;

/// The collective operations of data-parallel training.
pub trait Collective {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Element-wise sum over all ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum over all ranks, in place (f64: losses, counters).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Rank 0's values to every rank, in place.
    fn broadcast(&self, buf: &mut [f32]) -> Result<()>;
    /// Rank 0's values to every rank, in place (f64).
    fn broadcast_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Waits for every rank.
    fn barrier(&self) -> Result<()>;
}

/// One process: every operation is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Whether this process was started by an MPI launcher (`mpirun`/`mpiexec` of Open MPI or
/// MPICH, or Slurm's `srun` with PMI/PMIx).
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"].iter().any(|v| std::env::var_os(v).is_some())
}

/// This process's rank among the ranks on its machine, from the launcher's environment (Open
/// MPI, MPICH/Hydra, Slurm); `None` when no launcher says. One rank per GPU picks its GPU by it.
pub fn local_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PMI_LOCAL_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

#[cfg(feature = "mpi")]
mod ffi {
    use std::os::raw::{c_int, c_long};
    // `mpi_shim.c`, compiled with mpicc by build.rs.
    extern "C" {
        pub fn sener_mpi_init(rank: *mut c_int, size: *mut c_int) -> c_int;
        pub fn sener_mpi_allreduce_sum_f32(buf: *mut f32, n: c_long) -> c_int;
        pub fn sener_mpi_allreduce_sum_f64(buf: *mut f64, n: c_long) -> c_int;
        pub fn sener_mpi_bcast_f32(buf: *mut f32, n: c_long) -> c_int;
        pub fn sener_mpi_bcast_f64(buf: *mut f64, n: c_long) -> c_int;
        pub fn sener_mpi_barrier() -> c_int;
        pub fn sener_mpi_finalize() -> c_int;
    }
}

/// MPI_COMM_WORLD. Initialised once per process ([`Mpi::init`]); finalised on drop.
#[cfg(feature = "mpi")]
#[derive(Debug)]
pub struct Mpi {
    rank: usize,
    world: usize,
}

#[cfg(feature = "mpi")]
impl Mpi {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<Self> {
        static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if STARTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Input("MPI was already initialised in this process".into()));
        }
        let (mut rank, mut size) = (0, 0);
        // SAFETY: plain out-parameters; called once per process.
        let rc = unsafe { ffi::sener_mpi_init(&mut rank, &mut size) };
        if rc != 0 || size < 1 || rank < 0 || rank >= size {
            return Err(Error::Input(format!("MPI_Init failed (code {rc}, rank {rank} of {size})")));
        }
        Ok(Self { rank: rank as usize, world: size as usize })
    }

    fn check(what: &str, rc: std::os::raw::c_int) -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::Input(format!("{what} failed (MPI error {rc})")))
        }
    }
}

#[cfg(feature = "mpi")]
impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        // SAFETY: the shim reads and writes exactly `len` elements of the slice.
        Self::check("MPI_Allreduce", unsafe { ffi::sener_mpi_allreduce_sum_f32(buf.as_mut_ptr(), buf.len() as _) })
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        // SAFETY: as above.
        Self::check("MPI_Allreduce", unsafe { ffi::sener_mpi_allreduce_sum_f64(buf.as_mut_ptr(), buf.len() as _) })
    }
    fn broadcast(&self, buf: &mut [f32]) -> Result<()> {
        // SAFETY: as above.
        Self::check("MPI_Bcast", unsafe { ffi::sener_mpi_bcast_f32(buf.as_mut_ptr(), buf.len() as _) })
    }
    fn broadcast_f64(&self, buf: &mut [f64]) -> Result<()> {
        // SAFETY: as above.
        Self::check("MPI_Bcast", unsafe { ffi::sener_mpi_bcast_f64(buf.as_mut_ptr(), buf.len() as _) })
    }
    fn barrier(&self) -> Result<()> {
        // SAFETY: no arguments.
        Self::check("MPI_Barrier", unsafe { ffi::sener_mpi_barrier() })
    }
}

#[cfg(feature = "mpi")]
impl Drop for Mpi {
    fn drop(&mut self) {
        // SAFETY: MPI was initialised by `init`; finalised once.
        unsafe { ffi::sener_mpi_finalize() };
    }
}

/// NCCL over the GPUs of every rank, one rank per GPU (feature `nccl`), bootstrapped over MPI.
///
/// The trainer hands [`Collective`] host buffers (the flattened gradients); they are copied to
/// the rank's GPU, reduced by NCCL on the stream candle computes on, and copied back. (LoRA
/// gradients are a few MB, so the copies are cheap; the flattening is the same as over MPI.)
/// Barriers and the f64 scalars also go through NCCL; MPI stays up for the launcher's
/// failure handling and is finalised last.
#[cfg(feature = "nccl")]
pub struct Nccl {
    // Field order is drop order: the communicator before MPI.
    comm: candle_core::cuda_backend::cudarc::nccl::Comm,
    stream: std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    mpi: Mpi,
}

#[cfg(feature = "nccl")]
impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nccl(rank {} of {})", self.mpi.rank, self.mpi.world)
    }
}

#[cfg(feature = "nccl")]
impl Nccl {
    /// Joins the NCCL communicator of every MPI rank, on the CUDA `device` this rank trains on.
    pub fn init(mpi: Mpi, device: &candle_core::Device) -> Result<Self> {
        use candle_core::cuda_backend::cudarc::nccl::{Comm, Id};
        let cuda = match device {
            candle_core::Device::Cuda(d) => d,
            other => return Err(Error::Input(format!("NCCL needs a CUDA device, not {other:?}"))),
        };
        let stream = cuda.cuda_stream();
        // Rank 0 makes the id (128 bytes), MPI carries it to the others as 16 f64 bit patterns.
        let mut words = [0f64; 16];
        if mpi.rank == 0 {
            let id = Id::new().map_err(|e| Error::Input(format!("ncclGetUniqueId failed: {e:?} (is libnccl.so.2 installed?)")))?;
            for (w, chunk) in words.iter_mut().zip(id.internal().chunks(8)) {
                let mut b = [0u8; 8];
                for (x, c) in b.iter_mut().zip(chunk) {
                    *x = *c as u8;
                }
                *w = f64::from_bits(u64::from_le_bytes(b));
            }
        }
        mpi.broadcast_f64(&mut words)?;
        let mut internal = [0 as std::os::raw::c_char; 128];
        for (chunk, w) in internal.chunks_mut(8).zip(words) {
            for (c, x) in chunk.iter_mut().zip(w.to_bits().to_le_bytes()) {
                *c = x as std::os::raw::c_char;
            }
        }
        let comm = Comm::from_rank(stream.clone(), mpi.rank, mpi.world, Id::uninit(internal))
            .map_err(|e| Error::Input(format!("ncclCommInitRank failed on rank {} of {}: {e:?}", mpi.rank, mpi.world)))?;
        Ok(Self { comm, stream, mpi })
    }

    fn reduce_or_broadcast<T>(&self, buf: &mut [T], what: &str, reduce: bool) -> Result<()>
    where
        T: candle_core::cuda_backend::cudarc::nccl::NcclType + candle_core::cuda_backend::cudarc::driver::DeviceRepr + Copy,
    {
        use candle_core::cuda_backend::cudarc::nccl::ReduceOp;
        if buf.is_empty() {
            return Ok(());
        }
        let cuda = |e: candle_core::cuda_backend::cudarc::driver::DriverError| Error::Input(format!("{what}: CUDA copy failed: {e}"));
        let mut dev = self.stream.clone_htod(buf).map_err(cuda)?;
        let r = if reduce { self.comm.all_reduce_in_place(&mut dev, &ReduceOp::Sum) } else { self.comm.broadcast_in_place(&mut dev, 0) };
        r.map_err(|e| Error::Input(format!("{what} failed on rank {}: {e:?}", self.mpi.rank)))?;
        self.stream.memcpy_dtoh(&dev, buf).map_err(cuda)?;
        self.stream.synchronize().map_err(cuda)?;
        Ok(())
    }
}

#[cfg(feature = "nccl")]
impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank
    }
    fn world(&self) -> usize {
        self.mpi.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.reduce_or_broadcast(buf, "ncclAllReduce", true)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_or_broadcast(buf, "ncclAllReduce", true)
    }
    fn broadcast(&self, buf: &mut [f32]) -> Result<()> {
        self.reduce_or_broadcast(buf, "ncclBroadcast", false)
    }
    fn broadcast_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce_or_broadcast(buf, "ncclBroadcast", false)
    }
    fn barrier(&self) -> Result<()> {
        self.reduce_or_broadcast(&mut [0f32], "ncclAllReduce (barrier)", true)
    }
}
