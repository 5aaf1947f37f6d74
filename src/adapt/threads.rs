//! The CPU backend's worker threads: a small team that the caller hands one job at a time and
//! that spins briefly between jobs before it sleeps.
//!
//! Training hands the team a few jobs per mini-batch (two matrix products, one AdamW step), each
//! a fraction of a millisecond, with short serial work in between. A pool whose threads sleep
//! at once (or threads started per job) pays a wake-up per job: tens of µs on a bare board and
//! several hundred in a virtual machine, which ate most of the gain on two cores. Spinning for
//! a millisecond before sleeping, as OpenMP runtimes do, removes that cost while training runs
//! and leaves the cores idle a millisecond after it stops.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper spins waiting for the next job before it sleeps.
const SPIN: Duration = Duration::from_millis(1);

/// A job: called once on every member of the team with the member's index (0 is the caller).
type Job<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// Bumped by the caller to post a job.
    generation: AtomicU64,
    /// The posted job; written only while no helper is running one.
    job: UnsafeCell<Option<*const Job<'static>>>,
    /// Helpers that have not finished the posted job.
    pending: AtomicUsize,
    /// Whether a helper's share of the job panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written by the caller before it publishes a generation (release) and read by
// helpers after they observe it (acquire), and the caller does not touch it again until every
// helper has reported back through `pending`; the job itself is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    turn: Mutex<()>,
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _guard = self.shared.sleep.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

fn helper(shared: Arc<Shared>, index: usize) {
    let mut seen = 0u64;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        let mut current = shared.generation.load(Ordering::Acquire);
        while current == seen && !shared.stop.load(Ordering::Acquire) {
            if started.elapsed() > SPIN {
                let guard = shared.sleep.lock().unwrap_or_else(|p| p.into_inner());
                // Checked under the lock the caller takes to notify, so no post is missed.
                if shared.generation.load(Ordering::Acquire) == seen && !shared.stop.load(Ordering::Acquire) {
                    drop(shared.wake.wait(guard).unwrap_or_else(|p| p.into_inner()));
                }
            } else {
                spins += 1;
                if spins.is_multiple_of(64) {
                    // Lets a task of this core's own run, which matters on a loaded board.
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            current = shared.generation.load(Ordering::Acquire);
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        seen = current;
        // SAFETY: see `Shared`: the job was set before this generation was published and stays
        // alive until this helper decrements `pending`.
        let job = unsafe { (*shared.job.get()).expect("a posted job") };
        // SAFETY: the pointer came from a live `&Job` that the caller keeps borrowed until
        // `pending` reaches zero.
        let run = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) }));
        if run.is_err() {
            shared.panicked.store(true, Ordering::Release);
        }
        shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until every helper has finished the posted job, also when the caller's own share
/// unwinds, so the job outlives every use of it.
struct WaitForHelpers<'a>(&'a Shared);

impl Drop for WaitForHelpers<'_> {
    fn drop(&mut self) {
        let mut spins = 0u32;
        while self.0.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Worker threads of the CPU backend. The helpers are started by, and so inherit the
/// scheduling priority of, the thread that calls [`Threads::new`] (the node's adaptation worker
/// runs under SCHED_IDLE); they stop when the last clone is dropped.
#[derive(Clone, Default)]
pub struct Threads(Option<Arc<Team>>);

impl Threads {
    /// `n` threads: the caller and `n - 1` helpers (the caller alone when `n` is 1, or when no
    /// helper can be started).
    pub fn new(n: usize) -> Threads {
        if n <= 1 {
            return Threads(None);
        }
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut helpers = Vec::new();
        for index in 1..n {
            let s = shared.clone();
            match std::thread::Builder::new().name(format!("skillgraft-fit-{index}")).spawn(move || helper(s, index)) {
                Ok(h) => helpers.push(h),
                Err(e) => {
                    tracing::warn!("cannot start fitting thread {index} of {n} ({e}); fitting on one");
                    // Dropping the team stops the helpers already started.
                    drop(Team { shared, helpers, turn: Mutex::new(()) });
                    return Threads(None);
                }
            }
        }
        Threads(Some(Arc::new(Team { shared, helpers, turn: Mutex::new(()) })))
    }

    /// How many threads work, the caller included.
    pub fn count(&self) -> usize {
        self.0.as_ref().map_or(1, |t| t.helpers.len() + 1)
    }

    /// Runs `job(i)` for every member `i` in `0..count()`, member 0 on the calling thread;
    /// returns when all are done.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let Some(team) = &self.0 else {
            job(0);
            return;
        };
        let _turn = team.turn.lock().unwrap_or_else(|p| p.into_inner());
        let s = &*team.shared;
        // SAFETY: no helper is running a job (the previous call waited for all of them), so
        // nothing reads `job` now. The lifetime is erased only for the duration of this call:
        // `WaitForHelpers` keeps `job` borrowed until every helper is done with it.
        unsafe {
            let erased: *const Job<'_> = job;
            *s.job.get() = Some(std::mem::transmute::<*const Job<'_>, *const Job<'static>>(erased));
        }
        s.pending.store(team.helpers.len(), Ordering::Release);
        s.generation.fetch_add(1, Ordering::AcqRel);
        {
            let _guard = s.sleep.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        {
            let _wait = WaitForHelpers(s);
            job(0);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a fitting thread panicked");
        }
    }

    /// Runs `f` on every item, spread over the threads (item `i` on member `i % count()`);
    /// returns when all are done.
    pub fn each<W: Send>(&self, items: impl Iterator<Item = W>, f: impl Fn(W) + Sync) {
        let n = self.count();
        if n == 1 {
            items.for_each(f);
            return;
        }
        let slots: Vec<Mutex<Option<W>>> = items.map(|w| Mutex::new(Some(w))).collect();
        self.run(&|member| {
            for slot in slots.iter().skip(member).step_by(n) {
                if let Some(w) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    f(w);
                }
            }
        });
    }
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Threads({})", self.count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_whatever_the_team_size() {
        for n in [1, 2, 3] {
            let t = Threads::new(n);
            assert_eq!(t.count(), n);
            for round in 0..200 {
                let items: Vec<usize> = (0..(round % 7)).collect();
                let seen: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();
                t.each(items.into_iter(), |i| {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                });
                for (i, s) in seen.iter().enumerate() {
                    assert_eq!(s.load(Ordering::Relaxed), usize::from(i < round % 7), "n={n} round={round} item {i}");
                }
                if round == 100 {
                    // Long enough for the helpers to go to sleep: the next job must wake them.
                    std::thread::sleep(SPIN * 5);
                }
            }
        }
    }

    #[test]
    fn a_panic_in_a_helper_reaches_the_caller_and_the_team_still_works() {
        let t = Threads::new(2);
        let hit = std::panic::catch_unwind(AssertUnwindSafe(|| {
            t.run(&|member| {
                if member == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(hit.is_err(), "the helper's panic is the caller's");
        let count = AtomicUsize::new(0);
        t.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
