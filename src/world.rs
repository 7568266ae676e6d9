//! The processes that train one model together: this process alone, or every rank of an MPI job started by
//! `mpirun` or `srun` (with the `mpi` feature).
//!
//! MPI is one per process, so the world is too: [`World::init`] starts it once, [`world`] returns it
//! everywhere (this process alone until `init` ran), and [`World::finish`] ends it. Collectives are called
//! by every rank at the same point of the same code, from the main thread only.
use crate::error::{Error, Result};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// What the job's launcher says of this process: its rank, the job's size and the ranks on its machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Launch {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
}

/// The first of `names` that is set to a number.
fn env_number(names: &[&str]) -> Option<usize> {
    names.iter().find_map(|n| std::env::var(n).ok()?.trim().parse().ok())
}

impl Launch {
    /// Read from the variables Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`), PMIx (`PMIX_RANK`), MPICH's
    /// Hydra (`PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`, `MPI_LOCALNRANKS`) and Slurm's `srun`
    /// (`SLURM_STEP_NUM_TASKS`, `SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_NTASKS_PER_NODE`) set; `None` when
    /// none says there are several processes. Slurm's job-wide `SLURM_NTASKS` is not read: a batch script
    /// that runs charrnn itself, not through `srun`, runs one process.
    fn from_env() -> Option<Launch> {
        let size = env_number(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"])?;
        let rank = env_number(&["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"]).unwrap_or(0);
        let local_rank = env_number(&["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]).unwrap_or(0);
        let local_size =
            env_number(&["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"]).unwrap_or(1).max(1);
        (size > 1).then_some(Launch { rank, size, local_rank, local_size })
    }
}

/// This process's place among the processes that train together.
pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    #[cfg(feature = "mpi")]
    mpi: Option<mpi_world::Mpi>,
}

static WORLD: OnceLock<World> = OnceLock::new();
/// This process alone, before [`World::init`] (and in a library that never calls it).
static ALONE: World = World::alone();

/// The world this process belongs to: the one [`World::init`] started, else this process alone.
pub fn world() -> &'static World {
    WORLD.get().unwrap_or(&ALONE)
}

impl World {
    const fn alone() -> World {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    /// Joins the MPI job this process was started in (by `mpirun`, `srun` or another MPI launcher), or
    /// stays alone when it was started on its own. Call it once, first thing, from the main thread.
    ///
    /// Fails when a launcher started several processes but this charrnn was built without the `mpi`
    /// feature, or MPI does not start.
    pub fn init() -> Result<&'static World> {
        let world = match Launch::from_env() {
            None => World::alone(),
            Some(launch) => World::join(launch)?,
        };
        Ok(WORLD.get_or_init(|| world))
    }

    #[cfg(not(feature = "mpi"))]
    fn join(launch: Launch) -> Result<World> {
        Err(Error::config(
            "mpirun",
            format!(
                "this charrnn was started as one of {} processes, but it was built without MPI; build it with `cargo build --release --features mpi` (see docs/more-than-one-machine.md)",
                launch.size
            ),
        ))
    }

    #[cfg(feature = "mpi")]
    fn join(launch: Launch) -> Result<World> {
        let mpi = mpi_world::Mpi::start()?;
        let (rank, size) = (mpi.rank(), mpi.size());
        if size != launch.size {
            // The launcher's variables describe another job than the one MPI joined: trust MPI.
            return Ok(World { rank, size, local_rank: 0, local_size: 1, mpi: Some(mpi) });
        }
        Ok(World { rank, size, local_rank: launch.local_rank, local_size: launch.local_size, mpi: Some(mpi) })
    }

    /// Ends MPI after the last collective (a no-op alone); every rank calls it before it exits normally.
    pub fn finish(&self) {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            mpi.finish();
        }
    }

    /// Ends every rank of the job at once with exit status `code` (MPI_Abort), after this rank met an error
    /// the others do not know of; alone, exits with `code`.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            mpi.abort(code);
        }
        std::process::exit(code)
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many processes train together (1 alone).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this is rank 0, which writes the model folder and reports.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// This process's rank among those on its machine, and how many there are (for one GPU per rank and
    /// for sharing the CPU's cores).
    pub fn local(&self) -> (usize, usize) {
        (self.local_rank, self.local_size)
    }

    /// The rows of a minibatch of `batch` rows that this rank computes: an equal share, in rank order.
    /// `batch` must be a multiple of the world's size ([`World::check_batch`]).
    pub fn rows(&self, batch: usize) -> std::ops::Range<usize> {
        let share = batch / self.size;
        self.rank * share..(self.rank + 1) * share
    }

    /// Refuses a global batch of `batch` rows that the ranks cannot share equally.
    pub fn check_batch(&self, batch: usize) -> Result<()> {
        if batch.is_multiple_of(self.size) {
            return Ok(());
        }
        let (down, up) = (batch / self.size * self.size, (batch / self.size + 1) * self.size);
        let down = if down > 0 { format!("--batch {down} or ") } else { String::new() };
        Err(Error::config(
            "--batch",
            format!(
                "{batch} rows cannot be shared equally among {} processes; use {down}--batch {up} (the batch is the global one, split among the processes)",
                self.size
            ),
        ))
    }

    /// Sums `values` over the ranks, in place (every rank gets the same sums).
    pub fn sum_f32(&self, values: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            mpi.sum_f32(values);
        }
        let _ = values;
    }

    /// The largest of each of `values` over the ranks, in place.
    pub fn max_i64(&self, values: &mut [i64]) {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            mpi.max_i64(values);
        }
        let _ = values;
    }

    /// The largest of each of `values` over the ranks (alone: `values`): what any rank says of a clock or
    /// a signal becomes what every rank does.
    pub fn max<const N: usize>(&self, mut values: [i64; N]) -> [i64; N] {
        self.max_i64(&mut values);
        values
    }

    /// Every rank's `bytes`, in rank order (alone: its own).
    pub fn gather_bytes(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            return mpi.all_gather(bytes);
        }
        vec![bytes.to_vec()]
    }

    /// Rank 0's `bytes` on every rank (the others' are ignored).
    pub fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            return mpi.broadcast(bytes);
        }
        bytes
    }

    /// Sums a contiguous Float tensor over the ranks, in place (through host memory on a GPU).
    pub fn sum_tensor(&self, t: &Tensor) {
        if self.size == 1 {
            return;
        }
        with_host_f32(t, |values| self.sum_f32(values));
    }

    /// Overwrites a contiguous Float tensor with rank 0's (through host memory on a GPU).
    pub fn broadcast_tensor(&self, t: &Tensor) {
        if self.size == 1 {
            return;
        }
        with_host_f32(t, |values| {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let root = self.broadcast_bytes(bytes);
            for (v, b) in values.iter_mut().zip(root.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        });
    }

    /// Every rank's rows of `t` (Float, rows along dimension `dim`, the same shape on every rank) joined in
    /// rank order along `dim`.
    pub fn gather_rows(&self, t: &Tensor, dim: i64) -> Tensor {
        if self.size == 1 {
            return t.shallow_clone();
        }
        let mine = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let values = Vec::<f32>::try_from(mine.reshape([-1])).expect("a Float tensor");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let parts: Vec<Tensor> = self
            .gather_bytes(&bytes)
            .iter()
            .map(|b| {
                let v: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Tensor::from_slice(&v).view(t.size().as_slice())
            })
            .collect();
        Tensor::cat(&parts, dim).to_device(t.device())
    }
}

/// Runs `f` on a contiguous Float tensor's values as a host slice, writing them back on a GPU.
fn with_host_f32(t: &Tensor, f: impl FnOnce(&mut [f32])) {
    assert!(t.kind() == Kind::Float && t.is_contiguous(), "a contiguous Float tensor");
    let n = t.numel();
    if t.device() == Device::Cpu {
        // SAFETY: a contiguous Float tensor on the host holds `n` f32 values from its data pointer, and
        // nothing else reads or writes it during `f` (the main thread runs the step).
        let values = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) };
        f(values);
    } else {
        let mut values = vec![0f32; n];
        t.to_device(Device::Cpu).copy_data(&mut values, n);
        f(&mut values);
        t.shallow_clone().copy_(&Tensor::from_slice(&values).view(t.size().as_slice()).to_device(t.device()));
    }
}

#[cfg(feature = "mpi")]
mod mpi_world {
    //! The MPI calls, through rsmpi.
    use crate::error::{Error, Result};
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use std::sync::Mutex;

    pub(super) struct Mpi {
        universe: Mutex<Option<mpi::environment::Universe>>,
        world: SimpleCommunicator,
        /// A copy of what [`Mpi::sum_f32`] sends (rsmpi has no in-place all-reduce), kept between steps.
        send: Mutex<Vec<f32>>,
    }

    // SAFETY: the communicator is used from the main thread only (the module's contract); the handle itself
    // is a plain value.
    unsafe impl Sync for Mpi {}
    unsafe impl Send for Mpi {}

    impl Mpi {
        pub(super) fn start() -> Result<Mpi> {
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
                .ok_or_else(|| Error::config("mpirun", "MPI was already started in this process or could not start"))?;
            let world = universe.world();
            Ok(Mpi { universe: Mutex::new(Some(universe)), world, send: Mutex::new(Vec::new()) })
        }

        pub(super) fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        pub(super) fn size(&self) -> usize {
            self.world.size() as usize
        }

        pub(super) fn finish(&self) {
            // Dropping the universe calls MPI_Finalize.
            drop(self.universe.lock().map(|mut u| u.take()));
        }

        pub(super) fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }

        pub(super) fn sum_f32(&self, values: &mut [f32]) {
            let mut send = self.send.lock().unwrap_or_else(|e| e.into_inner());
            send.clear();
            send.extend_from_slice(values);
            self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        }

        pub(super) fn max_i64(&self, values: &mut [i64]) {
            let send = values.to_vec();
            self.world.all_reduce_into(&send[..], values, SystemOperation::max());
        }

        pub(super) fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
            // A leading byte, so that no buffer is empty: an empty slice's pointer is 1, which Open MPI reads
            // as MPI_IN_PLACE.
            let bytes = &[&[1u8][..], bytes].concat()[..];
            let mut lens = vec![0i64; self.size()];
            self.world.all_gather_into(&(bytes.len() as i64), &mut lens[..]);
            let counts: Vec<i32> = lens.iter().map(|&n| n as i32).collect();
            let displs: Vec<i32> = counts.iter().scan(0, |at, &n| Some(std::mem::replace(at, *at + n))).collect();
            let mut all = vec![0u8; counts.iter().map(|&n| n as usize).sum()];
            {
                let mut partition = mpi::datatype::PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                self.world.all_gather_varcount_into(bytes, &mut partition);
            }
            counts.iter().zip(&displs).map(|(&n, &at)| all[at as usize + 1..(at + n) as usize].to_vec()).collect()
        }

        pub(super) fn broadcast(&self, mut bytes: Vec<u8>) -> Vec<u8> {
            let root = self.world.process_at_rank(0);
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            bytes.resize(len as usize, 0);
            if len > 0 {
                root.broadcast_into(&mut bytes[..]);
            }
            bytes
        }
    }
}
