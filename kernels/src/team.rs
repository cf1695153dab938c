//! Fork/join for the CPU kernels: [`parallel_for`], and [`with_team`] to make the fork/joins of
//! one forward pass cheap.
//!
//! A decode step is ≈ 40 short parallel regions (tens of µs each). With plain rayon, a worker that
//! finds no work between two regions soon goes to sleep, and the next region waits for it to be
//! woken (a cross-core wake-up, dearer still in a virtual machine). Inside [`with_team`] every
//! other rayon worker instead spins on the team's region number for the whole pass, so a region
//! starts on all cores at once; the cores are the pass's anyway. The members stay a short while
//! after a pass, so the next pass of a generation loop on the same thread starts with them
//! already there instead of spawning and waking them again. Outside a team, [`parallel_for`] is
//! rayon's `for_each`.
//!
//! A team region hands each thread a contiguous run of the items (thread `t` of `T` owns
//! `[t·n/T, (t+1)·n/T)`), which it takes one at a time from the front; a thread whose run is
//! done takes items one at a time from the back of the others', so no core idles while items
//! remain. Items are row blocks of a matrix in memory order, so a thread streams one contiguous
//! range and the prefetch that runs past the end of its block reads its own next block; handed
//! out from one shared counter, consecutive blocks alternated between the threads, and every
//! block started a cold stream while the prefetch past its end read a block another thread had
//! already read (batch-1 bf16 decode ×1.04 in one process, 11 of 12 rounds faster).

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Job<'a> = &'a (dyn Fn(usize) + Sync + 'a);
type Panic = Box<dyn std::any::Any + Send>;

/// Items per region at most, and the width of an item index in the packed words below.
const IDX_BITS: u32 = 20;
const MAX_ITEMS: u64 = (1 << IDX_BITS) - 1;
/// Regions are numbered modulo 2^24: a generation tells a word of the current region from a
/// stale one.
const GEN_SHIFT: u32 = 2 * IDX_BITS;
const GEN_MASK: u64 = (1 << 24) - 1;

/// A thread's run of items: `(generation, front, back)` in one word, so one compare-and-swap
/// both checks the region and claims the item at either end.
fn pack_run(gen: u64, front: u64, back: u64) -> u64 {
    (gen & GEN_MASK) << GEN_SHIFT | front << IDX_BITS | back
}

fn unpack_run(s: u64) -> (u64, u64, u64) {
    (s >> GEN_SHIFT, (s >> IDX_BITS) & MAX_ITEMS, s & MAX_ITEMS)
}

/// How long a member stays with its team after a pass ends, waiting for the next pass, before it
/// hands its worker back to the pool. A generation loop starts its next pass within tens of µs
/// (sampling, stop checks); a member still there spares that pass a spawn and the cross-core
/// wake-up of a sleeping worker, and joins its first region from the start.
const LINGER: Duration = Duration::from_micros(500);

/// A member slot's states: no thread serves it, or one does (or has been spawned to).
const ABSENT: u8 = 0;
const PRESENT: u8 = 1;

/// A value on a cache line of its own (128 bytes: adjacent-line prefetchers pair 64-byte lines),
/// so one thread's writes do not take the line from a thread reading its neighbour.
#[repr(align(128))]
struct Padded<T>(T);

struct Team {
    /// The current region's generation (the members watch it for a new region).
    gen: AtomicU64,
    /// Each thread's run of the current region's items; index 0 is the thread that runs the
    /// pass, 1.. the members. An owner claims from its own run on every item, so each run has its
    /// own line; shared, every claim took the line from the other threads.
    runs: Vec<Padded<AtomicU64>>,
    /// The current region's job, on the stack of the thread that started it; read only by a
    /// thread holding a claimed item, and the region does not end before every item is done.
    job: AtomicPtr<()>,
    /// Items of the current region done, added by each thread once its share is done (not per
    /// item: the thread that started the region spins on this line).
    done: Padded<AtomicUsize>,
    /// Set while a pass runs on the team; members leave only after [`LINGER`] without one.
    active: AtomicBool,
    /// Member slot `me` (1..; index 0, the pass's thread, unused): [`ABSENT`] or [`PRESENT`].
    members: Vec<Padded<AtomicU8>>,
    /// Members spawned so far (a pass that found its members waiting spawns none).
    spawned: AtomicUsize,
    panic: Mutex<Option<Panic>>,
}

thread_local! {
    /// The team of the pass this thread runs, if any.
    static TEAM: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
    /// Set while this thread runs an item of a team region: a nested region runs inline.
    static IN_ITEM: Cell<bool> = const { Cell::new(false) };
    /// The team of this thread's last pass, whose members may still be waiting for the next.
    static LAST_TEAM: RefCell<Option<Arc<Team>>> = const { RefCell::new(None) };
}

impl Team {
    fn new(threads: usize) -> Self {
        Team {
            gen: AtomicU64::new(0),
            runs: (0..threads).map(|_| Padded(AtomicU64::new(0))).collect(),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: Padded(AtomicUsize::new(0)),
            active: AtomicBool::new(false),
            members: (0..threads)
                .map(|_| Padded(AtomicU8::new(ABSENT)))
                .collect(),
            spawned: AtomicUsize::new(0),
            panic: Mutex::new(None),
        }
    }

    /// Claims one item of generation `gen` from run `r`: its front when `own`, else its back.
    fn claim(&self, gen: u64, r: usize, own: bool) -> Option<u64> {
        let run = &self.runs[r].0;
        loop {
            let s = run.load(Ordering::Acquire);
            let (g, front, back) = unpack_run(s);
            if g != gen || front >= back {
                return None;
            }
            let (item, claimed) = if own {
                (front, pack_run(g, front + 1, back))
            } else {
                (back - 1, pack_run(g, front, back - 1))
            };
            if run
                .compare_exchange_weak(s, claimed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(item);
            }
        }
    }

    /// Runs thread `me`'s items of generation `gen`, then those left in the other runs.
    fn work(&self, gen: u64, me: usize) {
        let threads = self.runs.len();
        let mut ran = 0;
        for k in 0..threads {
            let r = (me + k) % threads;
            while let Some(item) = self.claim(gen, r, k == 0) {
                self.run_item(item as usize);
                ran += 1;
            }
        }
        if ran > 0 {
            self.done.0.fetch_add(ran, Ordering::Release);
        }
    }

    fn run_item(&self, item: usize) {
        // SAFETY: the item is claimed, so its region has not ended and `job` points to its live
        // job (stored before the region's runs were published).
        let job: Job = unsafe { *(self.job.load(Ordering::Acquire) as *const Job) };
        IN_ITEM.set(true);
        let r = catch_unwind(AssertUnwindSafe(|| job(item)));
        IN_ITEM.set(false);
        if let Err(p) = r {
            self.panic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(p);
        }
    }

    /// Member `me`'s loop: help with every region, from the one under way when it starts, until
    /// no pass has run on the team for [`LINGER`].
    fn serve(&self, me: usize) {
        let mut seen = self.gen.load(Ordering::Acquire);
        self.work(seen, me);
        let mut idle = 0u32;
        let mut ended_at: Option<Instant> = None;
        loop {
            let gen = self.gen.load(Ordering::Acquire);
            if gen != seen {
                seen = gen;
                self.work(gen, me);
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            if idle < 1 << 16 {
                std::hint::spin_loop();
            } else {
                // A long serial stretch, or the pass's thread lost its core: give it back.
                std::thread::yield_now();
            }
            // Every 64 spins, and on every yield (the count stops at its maximum there).
            if idle % 64 == 0 || idle >= 1 << 16 {
                if self.active.load(Ordering::SeqCst) {
                    ended_at = None;
                } else if ended_at.get_or_insert_with(Instant::now).elapsed() > LINGER
                    && self.leave(me)
                {
                    return;
                }
            }
        }
    }

    /// Member `me` gives up its slot; false if a pass started meanwhile and counts on it (it
    /// stays). Both sides use sequentially consistent order: the pass's thread sets `active`
    /// before it looks at a slot, the member frees its slot before it looks at `active`, so
    /// either the member sees the pass or the pass sees the free slot (and spawns a member).
    fn leave(&self, me: usize) -> bool {
        let slot = &self.members[me].0;
        slot.store(ABSENT, Ordering::SeqCst);
        if !self.active.load(Ordering::SeqCst) {
            return true;
        }
        // Taken back unless the pass's thread already filled the slot with a new member.
        slot.compare_exchange(ABSENT, PRESENT, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
    }

    /// Starts a region of `n` items (its job already stored): cuts them into the threads' runs,
    /// then announces the new generation, which it returns.
    fn publish(&self, n: usize) -> u64 {
        let gen = (self.gen.load(Ordering::Relaxed) + 1) & GEN_MASK;
        let (threads, items) = (self.runs.len() as u64, n as u64);
        for (t, run) in (0..).zip(&self.runs) {
            run.0.store(
                pack_run(gen, t * items / threads, (t + 1) * items / threads),
                Ordering::Release,
            );
        }
        self.gen.store(gen, Ordering::Release);
        gen
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let job: Job = f;
        self.job
            .store(&job as *const Job as *mut (), Ordering::Relaxed);
        self.done.0.store(0, Ordering::Relaxed);
        let gen = self.publish(n);
        self.work(gen, 0);
        while self.done.0.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        if let Some(p) = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(p);
        }
    }
}

/// Runs `f(i)` for every `i < n`, in parallel: on the current team if this thread runs one, inline
/// inside a team item, else on rayon.
pub fn parallel_for(n: usize, f: impl Fn(usize) + Sync + Send) {
    if n <= 1 || IN_ITEM.get() {
        (0..n).for_each(f);
        return;
    }
    let team = TEAM.get();
    if team.is_null() || n as u64 > MAX_ITEMS {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
        return;
    }
    // SAFETY: TEAM is set only for the duration of `with_team`, whose team outlives it.
    unsafe { &*team }.run(n, &f);
}

/// Runs `f(r, row)` for every row `r` of `out` (rows of `width` elements), in parallel as
/// [`parallel_for`]; each row is handed to exactly one call.
pub fn parallel_for_rows(
    out: &mut [f32],
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    assert!(
        width > 0 && out.len() % width == 0,
        "rows of {width} do not tile {}",
        out.len()
    );
    let rows = crate::SendPtr(out.as_mut_ptr());
    parallel_for(out.len() / width, |r| {
        // SAFETY: row r lies inside `out` (it holds whole rows) and item r is its only writer.
        f(r, unsafe {
            std::slice::from_raw_parts_mut(rows.at(r * width), width)
        })
    });
}

/// Runs `f` on a rayon worker with every other worker of the pool spinning as its team until `f`
/// returns, so the regions `f` starts with [`parallel_for`] start on all threads at once. The
/// members stay [`LINGER`] after `f` returns, and this thread's next call finds them waiting.
pub fn with_team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if !TEAM.get().is_null() || IN_ITEM.get() {
        return f();
    }
    if rayon::current_thread_index().is_none() {
        // Not a worker of a pool: the pass runs on one (as rayon runs any work from outside).
        return rayon::scope(|_| with_team(f));
    }
    let threads = rayon::current_num_threads().max(1);
    let team = LAST_TEAM.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some(t) if t.runs.len() == threads => t.clone(),
            _ => last.insert(Arc::new(Team::new(threads))).clone(),
        }
    });
    team.active.store(true, Ordering::SeqCst);
    for me in 1..threads {
        let slot = &team.members[me].0;
        if slot
            .compare_exchange(ABSENT, PRESENT, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            team.spawned.fetch_add(1, Ordering::Relaxed);
            let team = team.clone();
            rayon::spawn(move || team.serve(me));
        }
    }
    struct Leave<'a>(&'a Team);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            TEAM.set(std::ptr::null());
            self.0.active.store(false, Ordering::SeqCst);
        }
    }
    TEAM.set(Arc::as_ptr(&team));
    let _leave = Leave(&team);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn each_run_is_taken_from_its_front_by_its_owner_and_from_its_back_by_others() {
        let team = Team::new(3);
        let gen = team.publish(10);
        // Runs of 10 items over 3 threads: [0, 3), [3, 6), [6, 10).
        let take = |r, own| std::iter::from_fn(|| team.claim(gen, r, own)).collect::<Vec<_>>();
        assert_eq!(take(0, true), [0, 1, 2]);
        assert_eq!(take(1, false), [5, 4, 3]);
        assert_eq!(team.claim(gen, 2, true), Some(6));
        assert_eq!(team.claim(gen, 2, false), Some(9));
        // A stale generation claims nothing; the next region's runs start afresh.
        let next = team.publish(2);
        assert_eq!(team.claim(gen, 2, true), None);
        assert_eq!(take(0, true), Vec::<u64>::new());
        assert_eq!(team.claim(next, 0, true), None);
        assert_eq!(team.claim(next, 1, true), Some(0));
        assert_eq!(team.claim(next, 2, true), Some(1));
    }

    #[test]
    fn every_item_runs_once_in_and_out_of_a_team() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            for teamed in [false, true] {
                let body = || {
                    for n in [0usize, 1, 2, 7, 64, 1000] {
                        let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                        parallel_for(n, |i| {
                            // A nested region inside an item runs inline.
                            parallel_for(3, |_| {
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            });
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 3), "n {n}");
                    }
                };
                if teamed {
                    with_team(body)
                } else {
                    body()
                }
            }
        });
    }

    #[test]
    fn every_row_is_handed_once_with_its_index() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            with_team(|| {
                let mut out = vec![0f32; 37 * 5];
                parallel_for_rows(&mut out, 5, |r, row| {
                    assert_eq!(row.len(), 5);
                    for (c, v) in row.iter_mut().enumerate() {
                        *v += (r * 5 + c) as f32;
                    }
                });
                assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32));
            })
        });
    }

    #[test]
    fn the_next_pass_finds_its_members_waiting_and_they_leave_when_no_pass_comes() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let total = AtomicUsize::new(0);
        let passes = 50;
        let team = pool.install(|| {
            for _ in 0..passes {
                with_team(|| {
                    parallel_for(16, |_| {
                        total.fetch_add(1, Ordering::Relaxed);
                    })
                });
            }
            LAST_TEAM.with(|t| t.borrow().clone()).unwrap()
        });
        assert_eq!(total.load(Ordering::Relaxed), passes * 16);
        // Back-to-back passes reuse the member (a pass stalled past LINGER may spawn anew).
        let spawned = team.spawned.load(Ordering::Relaxed);
        assert!(
            (1..passes / 2).contains(&spawned),
            "{spawned} members spawned for {passes} passes"
        );
        // With no pass coming, the member hands its worker back.
        let t = Instant::now();
        while team.members[1].0.load(Ordering::SeqCst) != ABSENT {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the member never left"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The worker is the pool's again: the two halves of a join run at the same time (each
        // waits up to a second for the other to arrive; one thread alone would run them in turn).
        let arrived = AtomicUsize::new(0);
        let meet = || {
            arrived.fetch_add(1, Ordering::SeqCst);
            let t = Instant::now();
            while arrived.load(Ordering::SeqCst) < 2 && t.elapsed() < Duration::from_secs(1) {
                std::hint::spin_loop();
            }
            arrived.load(Ordering::SeqCst) == 2
        };
        let (a, b) = pool.install(|| rayon::join(meet, meet));
        assert!(a && b, "the join ran on one thread");
    }

    #[test]
    fn concurrent_passes_each_finish() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    pool.install(|| {
                        with_team(|| {
                            for _ in 0..200 {
                                parallel_for(16, |_| {
                                    total.fetch_add(1, Ordering::Relaxed);
                                });
                            }
                        })
                    })
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 6 * 200 * 16);
    }

    #[test]
    fn a_panicking_item_reaches_the_caller_and_the_team_still_ends() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                with_team(|| {
                    parallel_for(8, |i| {
                        if i == 5 {
                            panic!("item 5");
                        }
                    })
                })
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        pool.install(|| {
            with_team(|| {
                parallel_for(8, |_| {
                    n.fetch_add(1, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }
}
