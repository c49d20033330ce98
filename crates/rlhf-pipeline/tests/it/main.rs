//! The pipeline's test suite, one binary: the reward-hacking alarm (as a function and on real
//! small runs with and without a planted length bias), and resuming a collection.

mod alarms;
mod collect_resume;
mod hacking;
mod small;
