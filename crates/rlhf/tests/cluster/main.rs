//! End to end over real transport: a private redis-server, generator replicas and the other
//! services as child processes of the `rlhf` binary, on loopback.
//!
//! - `e2e`: the four services run the pipeline; metrics, limits, auth and reflection.
//! - `recovery`: processes killed and restarted mid-run (replica, scorer, learner), SIGTERM.
//! - `cancel`: a generation past its deadline stops using the replica's CPU.
//! - `redis_outage`: Redis killed during PPO and restarted, with and without its data.
//! - `secure`: mutual TLS on every connection and a token per role.
//! - `soak` (ignored; `make soak`): 1,008 rollouts while every kind of process is killed in turn.

#[macro_use]
mod support;

mod cancel;
mod e2e;
mod recovery;
mod redis_outage;
mod secure;
mod soak;
