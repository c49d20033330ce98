//! The compute thread count, fixed once at start-up.

/// Sets `RAYON_NUM_THREADS` to candle's own default, and `CANDLE_NUM_THREADS` to 1, where the
/// user has set neither.
///
/// candle asks for its thread count on every matrix product, and without `RAYON_NUM_THREADS`
/// that means counting physical cores by parsing `/proc/cpuinfo` again: 15% of a decode step's
/// time on the bench model (a `perf` profile), and part of why decoding on two threads measured
/// slower than on one (`RAYON_NUM_THREADS=1` skipped the parse; the rest is `rlhf_model`'s
/// sampling shards' story). With the variable set, candle, gemm and rayon read one number and
/// agree on it.
///
/// `CANDLE_NUM_THREADS` sizes a second pool that candle 0.11 keeps for element-wise ops, beside
/// rayon's: its threads spin for up to 25,000 rounds after each op before they sleep, on the same
/// cores rayon's threads (gemm, the fused kernels) need next. A profile of training on two cores
/// put 10% of the samples in that pool's spinning thread; with the pool off (element-wise ops on
/// the calling thread) the training step ran 12–26% faster, the reward-model step 10% and a PPO
/// iteration 15% (README, "The benchmark").
#[allow(unsafe_code)] // `set_var` is unsafe in edition 2024 because of other threads.
pub fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        // SAFETY: called first thing in `main`, before the process starts any thread (no async
        // runtime, no rayon pool, no candle pool exists yet), so nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: as above; candle reads it when its pool is first used, later.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
