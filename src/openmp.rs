//! libtorch's OpenMP team, lent to charrnn's own loops: a loop over rows split among the same threads that
//! run libtorch's matrix products, so that between two products the threads stay busy together (and
//! awake) instead of one working while the others fall asleep and must be woken for the next product.
//!
//! The team is libgomp's, which libtorch loads; its entry points are looked up at run time (`dlsym`), so
//! that charrnn links nothing new and runs its loops on the calling thread alone where they are missing.
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::ops::Range;
use std::sync::OnceLock;

/// libgomp's entry points: `GOMP_parallel` (what `#pragma omp parallel` compiles to: runs a function on
/// every thread of a team, the caller included, and returns when all are done), `omp_get_thread_num` and
/// `omp_get_num_threads`.
struct Team {
    parallel: Parallel,
    thread_num: Query,
    num_threads: Query,
}

/// `GOMP_parallel(fn, data, num_threads, flags)`.
type Parallel = unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
/// `omp_get_thread_num()`, `omp_get_num_threads()`.
type Query = unsafe extern "C" fn() -> c_int;

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// The team's entry points, where libgomp is loaded.
fn team() -> Option<&'static Team> {
    static TEAM: OnceLock<Option<Team>> = OnceLock::new();
    TEAM.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT (null) searches the libraries loaded with the program; each symbol,
        // when found, is libgomp's function of the signature above (its documented ABI).
        unsafe {
            let find = |name: &std::ffi::CStr| {
                let f = dlsym(std::ptr::null_mut(), name.as_ptr());
                (!f.is_null()).then_some(f)
            };
            Some(Team {
                parallel: std::mem::transmute::<*mut c_void, Parallel>(find(c"GOMP_parallel")?),
                thread_num: std::mem::transmute::<*mut c_void, Query>(find(c"omp_get_thread_num")?),
                num_threads: std::mem::transmute::<*mut c_void, Query>(find(c"omp_get_num_threads")?),
            })
        }
    })
    .as_ref()
}

/// Runs `f` over `0..n` split into contiguous ranges, one per thread of libtorch's OpenMP team (as many as
/// `--threads` says), and returns when every range is done; on the calling thread alone where there is no
/// team. `f` must not panic (a panic cannot cross libgomp's frames: it would abort).
pub(crate) fn parallel_rows(n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
    let Some(team) = team().filter(|_| n > 1) else {
        f(0..n);
        return;
    };
    struct Job<'a> {
        f: &'a (dyn Fn(Range<usize>) + Sync),
        n: usize,
        team: &'static Team,
    }
    unsafe extern "C" fn run(data: *mut c_void) {
        // SAFETY: `data` is the `Job` below, alive until GOMP_parallel returns; libgomp's functions are
        // called inside the parallel region they describe.
        let job = unsafe { &*(data as *const Job) };
        let (id, threads) = unsafe { ((job.team.thread_num)() as usize, (job.team.num_threads)().max(1) as usize) };
        let per = job.n.div_ceil(threads);
        let (start, end) = ((id * per).min(job.n), ((id + 1) * per).min(job.n));
        if start < end {
            (job.f)(start..end);
        }
    }
    let job = Job { f, n, team };
    // SAFETY: num_threads 0 asks for the team size the calling thread's settings give (libtorch's
    // `--threads`); `run` only reads `job`, which outlives the call.
    unsafe { (team.parallel)(run, &job as *const Job as *mut c_void, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn every_row_is_visited_once_by_contiguous_ranges() {
        // libtorch (linked into the tests) brings libgomp: the team is there.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        assert!(team().is_some(), "libgomp's entry points are found");
        for n in [0, 1, 2, 3, 31, 32, 1000] {
            let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let ranges = Mutex::new(Vec::new());
            parallel_rows(n, &|r| {
                ranges.lock().unwrap().push(r.clone());
                for i in r {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1), "n = {n}");
            assert!(ranges.lock().unwrap().len() <= tch::get_num_threads().max(1) as usize, "n = {n}");
        }
    }
}
