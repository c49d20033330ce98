//! A generation whose deadline passes stops using the replica's CPU: measured on a replica
//! process from its own CPU time (`/proc/<pid>/stat`), not from what it says about itself.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rlhf_harness::free_port;
use rlhf_model::{Config, seeded_var_builder};
use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;

/// User plus system CPU time `pid` has used, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_generation_past_its_deadline_stops_using_the_replicas_cpu() {
    let port = free_port();
    let replica = generator("gen-cancel", port, &[]);
    let pid = replica.pid().unwrap();
    let rt = runtime();
    let cfg = Config::tiny(64, 32, 2, 4, 2);
    let varmap = VarMap::new();
    rlhf_model::Llama::new(&cfg, seeded_var_builder(&varmap, 1, DType::F32, &Device::Cpu)).unwrap();
    let tensors: HashMap<String, Tensor> =
        varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let chunks = rlhf_proto::weights::encode(1, &tensors, &cfg, 0).unwrap();
    rt.block_on(async {
        let mut client = PolicyGeneratorClient::connect(url(port)).await.unwrap();
        client.update_weights(tokio_stream::iter(chunks)).await.unwrap();
        // 1,024 sequences of 1,500 new tokens: minutes of decoding, cut off after 300 ms.
        let mut request = tonic::Request::new(rlhf_proto::v1::GenerateRequest {
            request_id: "too-slow".into(),
            prompts: vec![rlhf_proto::v1::Prompt { prompt_id: "p".into(), text: String::new(), token_ids: vec![1, 2] }],
            sampling: Some(rlhf_proto::v1::SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                max_new_tokens: 1_500,
                seed: 3,
                ..Default::default()
            }),
            samples_per_prompt: 1_024,
            min_policy_version: 0,
        });
        request.set_timeout(Duration::from_millis(300));
        let busy_from = cpu_ticks(pid);
        let err = client.generate(request).await.unwrap_err();
        assert!(matches!(err.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{err}");
        let busy = cpu_ticks(pid) - busy_from;
        // One decode step to notice, then idle: over the next second the replica uses a few
        // ticks at most, where a replica still decoding would use about 100 per core.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle_from = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = cpu_ticks(pid) - idle_from;
        eprintln!("replica CPU: {busy} ticks until the deadline, {after} ticks in the second after it");
        assert!(busy > 0, "the replica never started decoding: the test proves nothing");
        assert!(after <= 10, "the replica used {after} ticks (1/100 s) of CPU in the second after the deadline");
    });
}
