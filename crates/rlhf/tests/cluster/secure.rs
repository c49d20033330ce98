//! The services as processes with mutual TLS on every connection (Redis included) and a token
//! per role: PPO runs through them, and a caller without a certificate, without a token, or with another role's
//! token is refused.

use std::path::Path;
use std::time::Duration;

use crate::support::*;
use rlhf_harness::certs::TestCa;
use rlhf_harness::{Child, RedisServer, free_port, wait_for_port};
use rlhf_proto::v1::GeneratorStatusRequest;
use rlhf_proto::v1::policy_generator_client::PolicyGeneratorClient;
use rlhf_rpc::tls::ClientTls;

const LEARNER_TOKEN: &str = "learner-s3cret";
const SCORER_TOKEN: &str = "scorer-s3cret";

/// `--tls-cert/--tls-key/--tls-ca --mtls` for a process whose certificate is `dir/<name>.pem`.
fn tls_args(dir: &Path, name: &str) -> Vec<String> {
    let path = |file: String| dir.join(file).to_str().unwrap().to_string();
    vec![
        "--tls-cert".into(),
        path(format!("{name}.pem")),
        "--tls-key".into(),
        path(format!("{name}.key")),
        "--tls-ca".into(),
        path("ca.pem".into()),
        "--mtls".into(),
    ]
}

fn https(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

fn spawn(name: &str, mut a: Vec<String>, dir: &Path, port: u16) -> Child {
    a.extend(tls_args(dir, name));
    let env = [
        ("RUST_BACKTRACE", "0"),
        ("RUST_LOG", "warn"),
        ("RLHF_LEARNER_TOKEN", LEARNER_TOKEN),
        ("RLHF_SCORER_TOKEN", SCORER_TOKEN),
    ];
    let child = Child::spawn(name, bin(), &a, &env).unwrap();
    wait_for_port(port, Duration::from_secs(30)).unwrap();
    child
}

#[test]
fn ppo_runs_over_mutual_tls_with_role_tokens_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = TestCa::new("rlhf cluster CA");
    let ca_path = ca.write(&certs, "ca.pem");
    for name in ["generator", "scorer", "learner", "caller", "redis"] {
        ca.issue(name).write(&certs, name);
    }
    let run = prepared_run(dir.path());
    // Redis too speaks only TLS, and only to clients with a certificate of the cluster's CA.
    let (redis_cert, redis_key) = (certs.join("redis.pem"), certs.join("redis.key"));
    let redis = RedisServer::start_with_tls(&redis_cert, &redis_key, &ca_path, true).unwrap();
    let (g, s, l) = (free_port(), free_port(), free_port());
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let _generator = spawn("generator", args(&["serve", "generator", "--listen", &listen(g)]), &certs, g);
    let scorer_args =
        args(&["serve", "scorer", "--listen", &listen(s), "--learner", &https(l), "--redis", &redis.tls_url()]);
    let _scorer = spawn("scorer", [scorer_args, args(&["--streams", "secure"])].concat(), &certs, s);
    let learner_args = args(&[
        "serve",
        "learner",
        "--listen",
        &listen(l),
        "--run-dir",
        run.root().to_str().unwrap(),
        "--redis",
        &redis.tls_url(),
        "--streams",
        "secure",
        "--generators",
        &https(g),
        "--prompts-per-request",
        "8",
    ]);
    let mut learner = spawn("learner", learner_args, &certs, l);
    let exit = learner.wait_timeout(Duration::from_secs(300)).expect("the learner finishes");
    assert!(exit.success(), "PPO over mutual TLS failed: {exit:?}");
    // Weights, generation and the judges all went over TLS, with the right tokens.
    assert_every_step_complete(run.root(), 6, 16);

    // Callers of the generator: by certificate, then by token.
    let (cert, key) = (certs.join("caller.pem"), certs.join("caller.key"));
    let with_identity = ClientTls { ca: ca_path.clone(), identity: Some((cert, key)) };
    let anonymous = ClientTls { ca: ca_path, identity: None };
    let rt = runtime();
    let status = |tls: &ClientTls, token: Option<&str>| {
        rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(https(g))
                .unwrap()
                .tls_config(rlhf_rpc::tls::client_config(tls).unwrap())
                .unwrap()
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let request = rlhf_rpc::auth::with_bearer(tonic::Request::new(GeneratorStatusRequest {}), token);
            let reply = PolicyGeneratorClient::new(channel).get_status(request).await;
            reply.map(|r| r.into_inner().serving_version).map_err(|s| format!("{:?}", s.code()))
        })
    };
    assert_eq!(status(&with_identity, Some(LEARNER_TOKEN)), Ok(6), "the learner's token and a cluster certificate");
    // TLS 1.3 lets the client finish its handshake before the server checks its certificate, so
    // the refusal shows as a dead connection, on connect or on the first call, never as an answer.
    let refused = status(&anonymous, Some(LEARNER_TOKEN)).expect_err("no client certificate");
    assert!(refused.starts_with("connect") || ["Unavailable", "Unknown"].contains(&refused.as_str()), "{refused}");
    assert_eq!(status(&with_identity, None), Err("Unauthenticated".into()));
    assert_eq!(status(&with_identity, Some(SCORER_TOKEN)), Err("PermissionDenied".into()));
    // A scorer's token cannot push weights either: only the learner's can.
    let pushed = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(https(g))
            .unwrap()
            .tls_config(rlhf_rpc::tls::client_config(&with_identity).unwrap())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = rlhf_rpc::auth::with_bearer(tonic::Request::new(tokio_stream::iter(vec![])), Some(SCORER_TOKEN));
        PolicyGeneratorClient::new(channel).update_weights(request).await.map(|_| ()).map_err(|s| s.code())
    });
    assert_eq!(pushed, Err(tonic::Code::PermissionDenied));
}
