//! The pipeline's test suite, one binary: the reward-hacking alarm (as a function and on real
//! small runs with and without a planted length bias), resuming a collection, the run lock, preference files in and out, a pretrained model with SFT data of one's own, and the learner's fan-out to real generator replicas.

mod alarms;
mod collect_resume;
mod fanout;
mod fuzz;
mod hacking;
mod human_collection;
mod preference_files;
mod pretrained;
mod recorded_alarms;
mod run_lock;
mod small;
mod validation;
