//! A small pool of spinning threads for the short parallel loops of a forward pass.
//!
//! A decode step of Llama-3.2-1B runs ~80 parallel loops (the matvecs and attention) of 0.1-1 ms
//! each, with a few µs to tens of µs of serial work between them. rayon's workers park when
//! they find no work, and on a VM a parked vCPU is woken through the hypervisor: measured on a
//! 2-vCPU KVM guest, a rayon loop called from outside the pool costs 10-17 µs when called back to
//! back and 25-85 µs after 20-200 µs of serial work (this pool: 0.5-6 µs). Like ggml's threads,
//! these workers spin (then yield, then park after [`SPIN_FOR`] without work), so a loop
//! starts on every thread at once. Prefill's loops (matmul blocks, norms, RoPE, SwiGLU,
//! attention rows) run here too ([`for_each_chunk`]), so no rayon worker is woken during a
//! forward pass.
//!
//! [`for_each_mut`] is the entry point. The caller runs tasks too; one caller at a time owns the
//! pool (others, e.g. tensor-parallel ranks, fall back to rayon), and `INFER_CPU_POOL=0` turns
//! it off (rayon everywhere, for A/B timing).

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// Worker states: waiting for work (spinning or yielding), parked, or running a job.
const SPINNING: u8 = 0;
const PARKED: u8 = 1;
const WORK: u8 = 2;
/// Busy-spin this long after a job, then yield until [`SPIN_FOR`], then park.
const BUSY_FOR: Duration = Duration::from_micros(200);
/// How long a worker waits for the next job before it parks.
const SPIN_FOR: Duration = Duration::from_millis(5);
/// Most worker threads (the participant set is a bit mask).
const MAX_WORKERS: usize = 63;

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// The job's closure; valid while any worker is in `WORK`.
    job: UnsafeCell<*const Task>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    panicked: AtomicBool,
    states: Vec<AtomicU8>,
}

// SAFETY: `job` is written only by the thread that holds `Pool::lock` and only while no worker
// is in `WORK` (`run` waits for every participant before returning); a worker reads it only
// between observing `WORK` (Acquire, after the writer's release CAS) and storing `SPINNING`
// (Release). Everything else is atomics.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

struct Pool {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    lock: Mutex<()>,
}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let off = std::env::var("INFER_CPU_POOL").is_ok_and(|v| v.trim() == "0");
        let workers = rayon::current_num_threads().saturating_sub(1).min(MAX_WORKERS);
        if off || workers == 0 {
            return None;
        }
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(std::ptr::null::<fn(usize)>() as *const Task),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            states: (0..workers).map(|_| AtomicU8::new(SPINNING)).collect(),
        });
        let mut threads = Vec::with_capacity(workers);
        for w in 0..workers {
            let s = Arc::clone(&shared);
            let spawned = thread::Builder::new().name(format!("infer-decode-{w}")).spawn(move || worker(&s, w));
            match spawned {
                Ok(h) => threads.push(h.thread().clone()),
                // A worker that never started never leaves SPINNING for WORK on its own, so it
                // must not be counted: give up on the pool (rayon is used instead).
                Err(_) => return None,
            }
        }
        Some(Pool { shared, threads, lock: Mutex::new(()) })
    })
    .as_ref()
}

/// Runs tasks `next..tasks` of the current job.
fn drain(s: &Shared, f: &(dyn Fn(usize) + Sync + '_)) {
    let tasks = s.tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            return;
        }
        f(i);
    }
}

fn worker(s: &Shared, w: usize) {
    let state = &s.states[w];
    let mut idle = Instant::now();
    let mut spins = 0u32;
    loop {
        match state.load(Ordering::Acquire) {
            WORK => {
                // SAFETY: the owner wrote `job` before its release CAS to WORK, which this
                // acquire load observed, and keeps the closure alive until we store SPINNING.
                let f = unsafe { &**s.job.get() };
                if catch_unwind(AssertUnwindSafe(|| drain(s, f))).is_err() {
                    s.panicked.store(true, Ordering::Relaxed);
                }
                state.store(SPINNING, Ordering::Release);
                idle = Instant::now();
            }
            SPINNING => {
                spins = spins.wrapping_add(1);
                if !spins.is_multiple_of(256) {
                    std::hint::spin_loop();
                    continue;
                }
                let waited = idle.elapsed();
                if waited < BUSY_FOR {
                    std::hint::spin_loop();
                } else if waited < SPIN_FOR {
                    thread::yield_now(); // let other runnable threads (rayon's) have the CPU
                } else if state.compare_exchange(SPINNING, PARKED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    thread::park();
                }
            }
            _ => {
                // Parked: only this thread leaves PARKED (the owner assigns work to SPINNING
                // workers only), after an unpark or a spurious wake-up.
                thread::park();
                state.store(SPINNING, Ordering::Release);
                idle = Instant::now();
            }
        }
    }
}

impl Pool {
    /// Runs `f(0..tasks)` on the caller and every spinning worker; returns when all are done.
    /// The caller must hold `self.lock`.
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync + '_)) {
        let s = &*self.shared;
        // SAFETY: only the extent of the borrow is erased; `run` does not return before every
        // participant has stopped using the pointer (see `Shared`).
        let erased = unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Task>(f) };
        // SAFETY: no worker is in WORK (the previous run waited for its participants), so no
        // one reads `job` while it is written.
        unsafe { *s.job.get() = erased };
        s.tasks.store(tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        let mut joined = 0u64;
        for (w, state) in s.states.iter().enumerate() {
            if state.compare_exchange(SPINNING, WORK, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                joined |= 1 << w;
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| drain(s, f)));
        for (w, state) in s.states.iter().enumerate() {
            if joined & (1 << w) != 0 {
                while state.load(Ordering::Acquire) == WORK {
                    std::hint::spin_loop();
                }
            } else if state.load(Ordering::Acquire) == PARKED {
                self.threads[w].unpark(); // spinning again by the next loop
            }
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a task of the decode thread pool panicked");
        }
    }
}

/// `f(i, &mut items[i])` for every item, in parallel over the decode pool (the caller takes
/// part); on rayon when the pool is off or another caller holds it. One item runs inline.
pub(crate) fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    if items.len() <= 1 {
        items.iter_mut().enumerate().for_each(|(i, t)| f(i, t));
        return;
    }
    let guard = pool().and_then(|p| p.lock.try_lock().ok().map(|g| (p, g)));
    let Some((pool, _held)) = guard else {
        items.par_iter_mut().enumerate().for_each(|(i, t)| f(i, t));
        return;
    };
    // Each task takes its own item: the locks are never contended.
    let cells: Vec<Mutex<&mut T>> = items.iter_mut().map(Mutex::new).collect();
    pool.run(cells.len(), &|i| {
        let mut item = cells[i].lock().unwrap_or_else(|e| e.into_inner());
        f(i, &mut item);
    });
}

/// `f(i, chunk_i)` for every `chunk`-sized piece of `data` (the last may be shorter), in
/// parallel: on this pool (unless [`Knob::PrefillOnPool`](super::tuning::Knob) is 0: rayon);
/// a single chunk runs inline. For the row-wise loops of a forward pass (norms, RoPE, SwiGLU,
/// attention rows).
pub(crate) fn for_each_chunk<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    if data.is_empty() {
        return; // no chunks, as `chunks_mut` gives none
    }
    if data.len() <= chunk {
        // One chunk (a decode step's row): inline, no hand-off to any thread.
        f(0, data);
    } else if super::tuning::Knob::PrefillOnPool.get() != 0 {
        let mut chunks: Vec<&mut [T]> = data.chunks_mut(chunk).collect();
        for_each_mut(&mut chunks, |i, c| f(i, c));
    } else {
        data.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_once_none_when_empty() {
        for n in [0usize, 1, 5, 16, 17, 1000] {
            let mut v = vec![0usize; n];
            for_each_chunk(&mut v, 4, |i, c| c.iter_mut().for_each(|x| *x += i + 1));
            assert!(v.iter().enumerate().all(|(j, &x)| x == j / 4 + 1), "n={n}");
        }
    }

    #[test]
    fn every_item_once_in_any_order_of_threads() {
        for n in [0usize, 1, 2, 3, 7, 64, 1000] {
            for _round in 0..50 {
                let mut v: Vec<usize> = vec![0; n];
                for_each_mut(&mut v, |i, x| *x += i + 1);
                assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1), "n={n}");
            }
        }
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_still_works() {
        let mut v = vec![0u32; 16];
        let r = catch_unwind(AssertUnwindSafe(|| {
            for_each_mut(&mut v, |i, _| assert!(i != 5, "task 5 fails"));
        }));
        assert!(r.is_err());
        for_each_mut(&mut v, |_, x| *x = 7);
        assert!(v.iter().all(|&x| x == 7));
    }
}
