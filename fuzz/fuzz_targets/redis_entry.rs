//! Any bytes as the fields of a stream entry (anyone with access to Redis can write one): an
//! item, or a reason to bury the entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rlhf_types::{ScoredRollout, ScoringRequest};

fuzz_target!(|bytes: &[u8]| {
    // The first byte splits the input into the data and traceparent fields.
    let Some((&split, rest)) = bytes.split_first() else { return };
    let (data, traceparent) = rest.split_at((split as usize).min(rest.len()));
    let scored = rlhf_queue::parse_entry::<ScoredRollout>(Some(traceparent), Some(data), 1 << 20);
    let raw = rlhf_queue::parse_entry::<ScoringRequest>(Some(data), Some(traceparent), 1 << 20);
    if let Err(reason) = scored.map(|_| ()).and(raw.map(|_| ())) {
        assert!(!reason.is_empty());
    }
});
