//! Any bytes as a stream of weight chunks (length-delimited, as the corpus holds a real one)
//! through the assembler a replica runs: refused, or a checked set of tensors; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rlhf_proto::v1::{JudgesChunk, WeightChunk};
use rlhf_proto::weights::Assembler;

fuzz_target!(|bytes: &[u8]| {
    let mut rest = bytes;
    let mut assembler = Assembler::default();
    let mut ok = true;
    while !rest.is_empty() && ok {
        match WeightChunk::decode_length_delimited(&mut rest) {
            Ok(chunk) => ok = assembler.push(chunk).is_ok(),
            Err(_) => break,
        }
    }
    if ok {
        let _ = assembler.finish();
    }
    let mut judges = rlhf_proto::judges::JudgesAssembler::default();
    let mut rest = bytes;
    while let Ok(chunk) = JudgesChunk::decode_length_delimited(&mut rest) {
        if judges.push(chunk).is_err() {
            return;
        }
    }
    let _ = judges.finish();
});
