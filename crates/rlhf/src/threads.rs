//! The compute thread count, fixed once at start-up.

/// Sets `RAYON_NUM_THREADS` to candle's own default when the user has not set it.
///
/// candle asks for its thread count on every matrix product, and without the variable that
/// means counting physical cores by parsing `/proc/cpuinfo` again: 15% of a decode step's time
/// on the bench model (a `perf` profile), and part of why decoding on two threads measured slower
/// than on one (`RAYON_NUM_THREADS=1` skipped the parse; the rest is `rlhf_model`'s sampling
/// shards' story). With the variable set, candle, gemm and rayon read one number and agree on it.
#[allow(unsafe_code)] // `set_var` is unsafe in edition 2024 because of other threads.
pub fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        // SAFETY: called first thing in `main`, before the process starts any thread (no async
        // runtime, no rayon pool, no candle pool exists yet), so nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}
