//! Contract tests: the generated types carry what the services rely on.

use super::v1::*;
use prost::Message;

#[test]
fn rollout_round_trips_through_the_wire_format() {
    let rollout = Rollout {
        rollout_id: "r-1".into(),
        prompt_id: "p-7".into(),
        prompt_token_ids: vec![1, 2, 3],
        response_token_ids: vec![9, 8],
        behaviour_logprobs: vec![-0.5, -1.25],
        policy_version: 4,
        finished: true,
        generator_id: "gen-0".into(),
    };
    let bytes = rollout.encode_to_vec();
    let decoded = Rollout::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded, rollout);
}

#[test]
fn optional_fields_distinguish_unset_from_zero() {
    let chunk = WeightChunk { crc32c: Some(0), ..Default::default() };
    let decoded = WeightChunk::decode(chunk.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.crc32c, Some(0));
    assert_eq!(WeightChunk::default().crc32c, None);
}
