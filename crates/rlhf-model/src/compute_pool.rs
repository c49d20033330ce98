//! Where compute runs: on a thread of rayon's pool, not beside it.
//!
//! candle's matrix products (gemm) and the fused kernels split their work with rayon. Called from
//! a thread outside rayon's pool, every one of those splits is a hand-off: the job is queued for
//! the pool, the caller sleeps on a lock until a worker has finished it, and the worker sleeps
//! again after. A reward-model step on the bench model does thousands of such products: `perf
//! stat` counted 43,000 context switches per step, and the caller's core sat idle through each
//! product. Run from a pool thread instead, the same split keeps half the work on the caller's
//! thread and lets another worker steal the rest, with no sleeping in between: on a 2-core Xeon
//! the context switches fell 40-fold (433,651 → 10,711 over a bench run) and the step ran 30%
//! faster (14.3 → 18.6 pairs/s; README, "The benchmark").
//!
//! Only pure compute belongs here: work on a pool thread must not wait for another thread that
//! itself needs the pool (with `RAYON_NUM_THREADS=1` that would wait forever), so a training
//! step, a forward pass or a sampling call goes on the pool, never a service loop or a stage that
//! waits for replicas.
//!
//! While such work runs, the pool's other workers are kept awake: each polls for jobs instead of
//! going to sleep between two parallel ops. A worker that finds nothing for a while sleeps on a
//! futex, and the next split has to wake it (a system call, and in a virtual machine an
//! interrupt to a halted virtual CPU): a reward-model step did about 1,100 such sleeps and
//! wake-ups on the bench model, and the woken worker came too late for the shorter ops. Kept
//! awake, the context switches fell from about 11,300 to 3,300 over `bench --only rm --repeats
//! 10`, and the bench's steps ran 2-10% faster (README, "The benchmark"). An idle worker spins
//! briefly, then offers its core to the OS between polls (`sched_yield`), so other processes on a
//! shared machine still get the core, and after `MAX_IDLE` without a job it goes back to rayon's
//! own loop.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Runs `work` on a thread of rayon's global pool and returns its result: right here when this
/// thread already is one, otherwise queued to the pool while this thread waits (once, for the
/// whole of `work`), with the pool's other workers kept awake until it returns.
pub fn on_compute_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return work();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        // One keep-awake task for each other worker, queued before the work forks anything.
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(|_| keep_awake(&done));
        }
        let _busy = Busy::enter();
        let _finish = SetOnDrop(&done);
        work()
    })
}

thread_local! {
    /// Whether this thread is busy with compute that started here: an owner's `work`, or a
    /// `keep_awake` loop. A keep-awake task that lands on such a thread returns at once: spinning
    /// there would sit on top of that compute until another call's work ends.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread busy until dropped (also when the work panics).
struct Busy(bool);

impl Busy {
    fn enter() -> Self {
        Busy(BUSY.replace(true))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.set(self.0);
    }
}

/// Sets the flag when dropped, so the keep-awake tasks end even when `work` panics.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Polls rayon for jobs until `done`: runs any it finds, spins a little when there are none,
/// then yields the core to the OS between polls, and gives up after `MAX_IDLE` without a job.
///
/// Giving up is what keeps this safe on pools of three threads or more. There a worker in the
/// middle of one of the work's jobs can, while that job waits for a part another thread took,
/// pick up a keep-awake task still queued; spinning until `done`, it would sit on top of a job
/// the work needs, and `done` would never come. Idle for `MAX_IDLE` (as it is once nothing but
/// that job is left), it returns and the job goes on. With two threads it cannot happen: the
/// tasks are the oldest in the owner's queue, so the one other worker takes them first.
fn keep_awake(done: &AtomicBool) {
    if BUSY.get() {
        return;
    }
    let _busy = Busy::enter();
    let mut idle_polls = 0u32;
    let mut idle_since = None;
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            idle_polls = 0;
            idle_since = None;
        } else if idle_polls < SPIN_POLLS {
            idle_polls += 1;
            std::hint::spin_loop();
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() < MAX_IDLE {
            std::thread::yield_now();
        } else {
            return;
        }
    }
}

/// Idle polls before a keep-awake worker starts offering its core to the OS between polls.
const SPIN_POLLS: u32 = 64;
/// How long a keep-awake worker waits for a job before it returns to rayon's own loop (which
/// sleeps): longer than the gaps between a step's parallel ops, short enough that a worker
/// stuck on top of a job (above) costs little.
const MAX_IDLE: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use rayon::prelude::*;

    use super::on_compute_pool;

    #[test]
    fn work_runs_on_a_pool_thread_and_returns_its_result() {
        assert!(rayon::current_thread_index().is_none(), "the test harness thread is not rayon's");
        let (index, sum) = on_compute_pool(|| (rayon::current_thread_index(), (1..=10).sum::<u32>()));
        assert!(index.is_some(), "the work ran off the pool");
        assert_eq!(sum, 55);
    }

    #[test]
    fn nested_calls_run_in_place() {
        let (outer, inner) = on_compute_pool(|| {
            let outer = rayon::current_thread_index();
            (outer, on_compute_pool(rayon::current_thread_index))
        });
        assert_eq!(outer, inner, "a nested call moved to another thread");
    }

    /// Runs `f` on a thread of its own and waits at most a minute: a keep-awake task that never
    /// ended would hang `on_compute_pool`, and the test should say so rather than hang.
    fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(f()).unwrap());
        rx.recv_timeout(Duration::from_secs(60)).expect("on_compute_pool did not return within a minute")
    }

    fn parallel_sum(n: u64) -> u64 {
        let (a, b) =
            rayon::join(|| (0..n / 2).into_par_iter().sum::<u64>(), || (n / 2..n).into_par_iter().sum::<u64>());
        a + b
    }

    #[test]
    fn parallel_work_completes_while_workers_are_kept_awake() {
        let sums =
            within_a_minute(|| (0..200).map(|i| on_compute_pool(|| parallel_sum(10_000 + i))).collect::<Vec<_>>());
        for (i, sum) in sums.into_iter().enumerate() {
            let n = 10_000 + i as u64;
            assert_eq!(sum, n * (n - 1) / 2);
        }
    }

    #[test]
    fn callers_on_several_threads_all_finish() {
        let totals = within_a_minute(|| {
            let callers: Vec<_> = (0..4)
                .map(|_| std::thread::spawn(|| (0..50).map(|_| on_compute_pool(|| parallel_sum(100_000))).sum::<u64>()))
                .collect();
            callers.into_iter().map(|c| c.join().unwrap()).collect::<Vec<_>>()
        });
        assert_eq!(totals, vec![50 * (100_000 * 99_999 / 2); 4]);
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller_instead_of_hanging() {
        let outcome = within_a_minute(|| {
            std::panic::catch_unwind(|| {
                on_compute_pool(|| {
                    parallel_sum(1_000);
                    panic!("the work failed")
                })
            })
        });
        let message = outcome.expect_err("the panic was lost");
        assert_eq!(message.downcast_ref::<&str>(), Some(&"the work failed"));
    }
}
