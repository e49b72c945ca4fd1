//! Worker threads that split one session's matrix products (`std` only).
//!
//! A decode step is about a hundred matrix-vector products of 10-100 µs
//! each, so waking workers through the OS per product would cost more than
//! it saves. Workers therefore spin on a generation counter for a while
//! after each job (as OpenMP's and llama.cpp's pools do) and only then park;
//! the caller runs its own share of every job and waits for the rest. The
//! pool and each worker's kernel scratch are allocated once, when the pool
//! is made and sized ([`ThreadPool::reserve_scratch`]); a job allocates
//! nothing.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};

/// Most threads (the caller included) a pool runs.
pub const MAX_THREADS: usize = 16;

/// Spin iterations a worker waits for the next job before parking (about
/// 100 µs): longer than the gap between two products of a step.
const SPINS: u32 = if cfg!(miri) { 16 } else { 1 << 16 };

/// A job: called once per thread index `0..threads`.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per job; workers run a job when it differs from the last
    /// one they saw.
    generation: AtomicUsize,
    /// Workers still running the current job.
    remaining: AtomicUsize,
    /// A worker's job panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// The current job, lifetime-erased. Written only by the caller while
    /// no worker runs (remaining == 0), read by workers after they observe
    /// the new generation.
    job: UnsafeCell<Option<Job<'static>>>,
    /// Per worker (index - 1): scratch, as f32 so it is 4-byte aligned.
    scratch: Vec<Mutex<Vec<f32>>>,
}

// SAFETY: `job` is the only non-Sync field; it is written by the caller
// before the Release increment of `generation` and read by workers after
// their Acquire load observes that increment, and never written while a
// worker may read it (the caller waits for `remaining == 0` first).
unsafe impl Sync for Shared {}

/// A fixed set of worker threads for one session at a time.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<(JoinHandle<()>, Thread)>,
    /// Serialises jobs from several callers.
    busy: Mutex<()>,
    min_weights: usize,
}

impl core::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `threads` threads in all: the caller and `threads - 1`
    /// workers (`threads` is clamped to `1..=MAX_THREADS`).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let n = threads.clamp(1, MAX_THREADS);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            scratch: (1..n).map(|_| Mutex::new(Vec::new())).collect(),
        });
        // Workers join the pool as they start, so when one fails to spawn
        // the pool's Drop stops and joins those already running instead of
        // leaving them parked forever.
        let mut pool = Self {
            shared,
            workers: Vec::with_capacity(n - 1),
            busy: Mutex::new(()),
            min_weights: MIN_PARALLEL_WEIGHTS,
        };
        for index in 1..n {
            let sh = Arc::clone(&pool.shared);
            let h = thread::Builder::new()
                .name(format!("taskpath-worker-{index}"))
                .spawn(move || worker(&sh, index))?;
            let t = h.thread().clone();
            pool.workers.push((h, t));
        }
        Ok(pool)
    }

    /// Products of fewer weights than this run on the caller alone (the
    /// hand-off costs more than it saves); default [`MIN_PARALLEL_WEIGHTS`].
    pub fn set_min_parallel_weights(&mut self, n: usize) {
        self.min_weights = n;
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Makes each worker's kernel scratch at least `bytes` (done when a
    /// session is attached, so jobs never allocate).
    pub fn reserve_scratch(&self, bytes: usize) {
        let n = bytes.div_ceil(4);
        for s in &self.shared.scratch {
            let mut v = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
    }

    /// Worker `index`'s scratch (1-based; the caller has its own).
    fn scratch(&self, index: usize) -> Option<std::sync::MutexGuard<'_, Vec<f32>>> {
        let s = self.shared.scratch.get(index.checked_sub(1)?)?;
        Some(s.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Runs `f(i)` for every `i in 0..threads()`, `f(0)` on this thread, and
    /// returns when all have. A panic in any of them is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _one = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sh = &*self.shared;
        // SAFETY: the lifetime is erased only while this call runs: the
        // `Wait` guard below waits for every worker to finish the job before
        // this function returns or unwinds, and the slot is cleared after.
        let job: Job<'static> = unsafe { core::mem::transmute::<Job<'_>, Job<'static>>(f) };
        // SAFETY: no worker runs a job now (remaining == 0 since the last
        // call's wait), so nothing reads the slot while it is written.
        unsafe { *sh.job.get() = Some(job) };
        sh.remaining.store(self.workers.len(), Ordering::Relaxed);
        sh.generation.fetch_add(1, Ordering::Release);
        for (_, t) in &self.workers {
            t.unpark();
        }
        struct Wait<'a>(&'a Shared);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                let mut spins = 0u32;
                while self.0.remaining.load(Ordering::Acquire) != 0 {
                    spins = spins.saturating_add(1);
                    if spins < SPINS {
                        core::hint::spin_loop();
                    } else {
                        thread::yield_now();
                    }
                }
                // SAFETY: every worker is done with the job (remaining == 0).
                unsafe { *self.0.job.get() = None };
            }
        }
        let wait = Wait(sh);
        f(0);
        drop(wait);
        if sh.panicked.swap(false, Ordering::Relaxed) {
            panic!("a taskpath worker thread panicked");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for (h, t) in self.workers.drain(..) {
            t.unpark();
            let _ = h.join();
        }
    }
}

fn worker(sh: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        let g = loop {
            let g = sh.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            if sh.stop.load(Ordering::Acquire) {
                return;
            }
            spins = spins.saturating_add(1);
            if spins < SPINS {
                core::hint::spin_loop();
            } else {
                thread::park();
            }
        };
        seen = g;
        // SAFETY: the Acquire load above saw the generation the caller
        // published after writing the slot; the caller keeps the job alive
        // until `remaining` reaches 0, which happens after this use.
        let job = unsafe { *sh.job.get() };
        if let Some(job) = job {
            if catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
                sh.panicked.store(true, Ordering::Relaxed);
            }
        }
        sh.remaining.fetch_sub(1, Ordering::Release);
    }
}

/// Default of [`ThreadPool::set_min_parallel_weights`].
pub const MIN_PARALLEL_WEIGHTS: usize = 1 << 15;

/// A piece of a job's output (or scratch), handed to one thread.
type Piece<'a, T> = Mutex<Option<&'a mut [T]>>;

/// Splits `units` work units across the pool: thread `i` gets units
/// `[units i / t, units (i + 1) / t)`, the stretch of `out` that
/// `out_len(lo, hi)` says they write (consecutive stretches, in unit
/// order), and scratch (the caller's `scratch` for thread 0, the worker's
/// own, reserved at attach, for the others). `f(lo, hi, out, scratch)`
/// returns false on a shape it cannot handle; so does this.
pub(crate) fn split<F, L>(
    pool: &ThreadPool,
    units: usize,
    out: &mut [f32],
    out_len: L,
    scratch: &mut [f32],
    f: F,
) -> bool
where
    F: Fn(usize, usize, &mut [f32], &mut [f32]) -> bool + Sync,
    L: Fn(usize, usize) -> usize,
{
    let t = pool.threads();
    let span = |i: usize| (units * i / t, units * (i + 1) / t);
    let mut pieces: [Piece<'_, f32>; MAX_THREADS] = core::array::from_fn(|_| Mutex::new(None));
    let mut rest = out;
    for (i, piece) in pieces.iter_mut().enumerate().take(t) {
        let (lo, hi) = span(i);
        let len = out_len(lo, hi);
        if len > rest.len() {
            return false;
        }
        let (mine, tail) = core::mem::take(&mut rest).split_at_mut(len);
        if let Ok(p) = piece.get_mut() {
            *p = Some(mine);
        }
        rest = tail;
    }
    let caller: Piece<'_, f32> = Mutex::new(Some(scratch));
    let failed = AtomicBool::new(false);
    pool.run(&|i| {
        let (lo, hi) = span(i);
        let out = pieces[i].lock().ok().and_then(|mut p| p.take());
        let mut own = if i == 0 { None } else { pool.scratch(i) };
        let mut mine = if i == 0 {
            caller.lock().ok().and_then(|mut p| p.take())
        } else {
            None
        };
        let scratch: Option<&mut [f32]> = match (&mut own, &mut mine) {
            (Some(g), _) => Some(g.as_mut_slice()),
            (None, Some(c)) => Some(c),
            _ => None,
        };
        let ok = match (out, scratch) {
            (Some(out), Some(scratch)) => f(lo, hi, out, scratch),
            _ => false,
        };
        if !ok {
            failed.store(true, Ordering::Relaxed);
        }
    });
    !failed.load(Ordering::Relaxed)
}

/// [`crate::cpu::linear`] for dense (not low-rank) weights, split across
/// the pool: one token's product by row tiles (each thread a run of whole
/// tiles of the packed matrix and its stretch of the output), several
/// tokens' by tokens (each thread the whole matrix for its tokens). Every
/// output value is computed by the same kernel on the same inputs as
/// without the pool, so results are bit-identical. `q` is the caller's
/// kernel scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_parallel(
    pool: &ThreadPool,
    kernels: &taskpath_cpu::qmatvec::Kernels,
    w: &crate::TensorView<'_>,
    x: &[f32],
    b: Option<&[f32]>,
    rows: usize,
    q: &mut [f32],
    y: &mut [f32],
) -> Option<()> {
    use taskpath_format::WeightFormat;
    let (n_out, n_in) = (w.rows, w.cols);
    let x = x.get(..rows * n_in)?;
    let y = y.get_mut(..rows * n_out)?;
    let t = pool.threads();
    let fmt = WeightFormat::from_u16(w.format)?;
    let tile = fmt.row_tile();
    let tiles = n_out.div_ceil(tile);
    if n_out * n_in < pool.min_weights || (rows == 1 && tiles < 2 * t) || (rows > 1 && rows < t) {
        return crate::cpu::linear(
            kernels,
            w,
            x,
            b,
            rows,
            &mut [],
            bytemuck::cast_slice_mut::<f32, u8>(q),
            y,
        );
    }
    let kern = (!w.is_f32()).then(|| kernels.kernel(fmt).ok()).flatten();
    if !w.is_f32() && kern.is_none() {
        return None;
    }
    let tb = fmt.tile_bytes(n_in);
    let ok = if rows == 1 {
        let r = |u: usize| (u * tile).min(n_out);
        split(
            pool,
            tiles,
            y,
            |lo, hi| r(hi) - r(lo),
            q,
            |lo, hi, y, q| {
                let (r0, r1) = (r(lo), r(hi));
                let bias = b.map(|b| &b[r0..r1]);
                match kern {
                    None => {
                        kernels.matmul_f32(&w.a[r0 * n_in..r1 * n_in], x, bias, 1, y);
                        true
                    }
                    Some(k) => {
                        let q: &mut [u8] = bytemuck::cast_slice_mut(q);
                        let packed = &w.raw_a[lo * tb..(hi * tb).min(w.raw_a.len())];
                        if q.len() < fmt.scratch_bytes(n_in) {
                            return false;
                        }
                        k.run_batch(r1 - r0, n_in, packed, 1, x, bias, y, q);
                        true
                    }
                }
            },
        )
    } else {
        split(
            pool,
            rows,
            y,
            |lo, hi| (hi - lo) * n_out,
            q,
            |lo, hi, y, q| {
                let xs = &x[lo * n_in..hi * n_in];
                crate::cpu::linear(
                    kernels,
                    w,
                    xs,
                    b,
                    hi - lo,
                    &mut [],
                    bytemuck::cast_slice_mut::<f32, u8>(q),
                    y,
                )
                .is_some()
            },
        )
    };
    ok.then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_job_and_results_are_visible() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            assert_eq!(pool.threads(), threads);
            let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            let jobs = if cfg!(miri) { 5 } else { 200 };
            for _ in 0..jobs {
                pool.run(&|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), jobs);
            }
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_still_works() {
        let pool = ThreadPool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i| assert!(i != 1, "boom"));
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn workers_park_when_idle_and_wake_for_the_next_job() {
        let pool = ThreadPool::new(2).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(if cfg!(miri) {
            1
        } else {
            50
        }));
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
