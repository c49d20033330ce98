//! The pipeline's test suite, one binary: the reward-hacking alarm (as a function and on real
//! small runs with and without a planted length bias), resuming a collection, and the run lock.

mod alarms;
mod collect_resume;
mod hacking;
mod run_lock;
mod small;
