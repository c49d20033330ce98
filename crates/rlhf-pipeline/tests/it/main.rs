//! The pipeline's test suite, one binary: the reward-hacking alarm (as a function and on real
//! small runs with and without a planted length bias), resuming a collection, the run lock, and preference files in and out.

mod alarms;
mod collect_resume;
mod hacking;
mod preference_files;
mod run_lock;
mod small;
