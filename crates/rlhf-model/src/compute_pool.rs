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

/// Runs `work` on a thread of rayon's global pool and returns its result: right here when this
/// thread already is one, otherwise queued to the pool while this thread waits (once, for the
/// whole of `work`).
pub fn on_compute_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() { work() } else { rayon::scope(|_| work()) }
}

#[cfg(test)]
mod tests {
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
}
