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
//! makes the launcher stop the whole job.

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
