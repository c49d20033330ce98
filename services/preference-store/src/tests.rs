//! The store keeps rankings whole, derives pairs, and refuses bad input without writing.

use rlhf_types::{RankedResponse, Ranking};

use crate::*;

fn ranking(id: &str, prompt: &str, order: Vec<usize>, k: usize) -> Ranking {
    Ranking {
        ranking_id: id.into(),
        prompt_id: prompt.into(),
        responses: (0..k)
            .map(|i| RankedResponse {
                response_id: format!("{id}-{i}"),
                text: format!("answer {i}"),
                tokens: vec![i as u32, 7],
            })
            .collect(),
        order,
        annotator_id: "annotator-1".into(),
        created_unix_ms: 1_700_000_000_000,
    }
}

fn store() -> SqliteStore {
    let mut s = SqliteStore::in_memory().unwrap();
    s.register_prompts(&[("p1".into(), "what is 1 plus 1 ?".into()), ("p2".into(), "hi".into())]).unwrap();
    s
}

#[test]
fn rankings_round_trip_whole_and_expand_to_pairs() {
    let mut s = store();
    let a = ranking("r1", "p1", vec![2, 0, 3, 1], 4);
    let b = ranking("r2", "p2", vec![1, 0], 2);
    s.submit(&a).unwrap();
    s.submit(&b).unwrap();
    assert_eq!(s.rankings(None).unwrap(), vec![a.clone(), b]);
    assert_eq!(s.rankings(Some("p1")).unwrap(), vec![a]);
    let pairs = s.pairs().unwrap();
    assert_eq!(pairs.len(), 6 + 1);
    assert_eq!((pairs[0].chosen.text.as_str(), pairs[0].rejected.text.as_str()), ("answer 2", "answer 0"));
    assert_eq!(s.stats().unwrap(), Stats { rankings: 2, pairs: 7, prompts: 2, annotators: 1 });
    let prompts = vec![("p1".to_string(), "what is 1 plus 1 ?".to_string()), ("p2".to_string(), "hi".to_string())];
    assert_eq!(s.prompts().unwrap(), prompts);
}

#[test]
fn bad_rankings_are_refused_and_nothing_is_stored() {
    let mut s = store();
    s.submit(&ranking("ok", "p1", vec![0, 1], 2)).unwrap();
    let refused = [
        ranking("dup-pos", "p1", vec![0, 0, 1], 3),
        ranking("missing-pos", "p1", vec![0, 1], 3),
        ranking("k1", "p1", vec![0], 1),
        ranking("unknown", "nope", vec![0, 1], 2),
        ranking("ok", "p1", vec![1, 0], 2),
    ];
    let messages: Vec<String> = refused.iter().map(|r| s.submit(r).unwrap_err().to_string()).collect();
    assert!(messages[0].contains("more than once"), "{}", messages[0]);
    assert!(messages[1].contains("3 were shown"), "{}", messages[1]);
    assert!(messages[2].contains("at least 2"), "{}", messages[2]);
    assert!(messages[3].contains("unknown prompt"), "{}", messages[3]);
    assert!(messages[4].contains("already stored"), "{}", messages[4]);
    assert_eq!(s.stats().unwrap().rankings, 1);
    assert_eq!(s.rankings(None).unwrap()[0].order, vec![0, 1]);
}

#[test]
fn the_file_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prefs.sqlite");
    {
        let mut s = SqliteStore::open(&path).unwrap();
        s.register_prompts(&[("p1".into(), "x".into())]).unwrap();
        s.submit(&ranking("r1", "p1", vec![1, 0], 2)).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.stats().unwrap().rankings, 1);
}

/// The gRPC service and its client behave like the embedded store they wrap.
mod over_grpc {
    use super::*;
    use rlhf_rpc::auth::{Role, RoleTokens};

    /// Serves `store` on a free port from a thread of its own; returns the URL.
    fn serve(store: SqliteStore, tokens: RoleTokens) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = PreferenceServiceConfig { security: rlhf_rpc::Security { tls: None, tokens } };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                run(config, Box::new(store), listener, std::future::pending()).await.unwrap();
            });
        });
        url
    }

    #[test]
    fn the_remote_store_stores_refuses_and_counts_like_the_embedded_one() {
        let tokens = RoleTokens::default().with(Role::Admin, "s3cret").with(Role::Annotator, "n0te");
        let url = serve(SqliteStore::in_memory().unwrap(), tokens);
        let mut remote = RemoteStore::connect(&url, Some("s3cret".into())).unwrap();
        remote.register_prompts(&[("p1".into(), "what is 1 plus 1 ?".into()), ("p2".into(), "hi".into())]).unwrap();
        let a = ranking("r1", "p1", vec![2, 0, 3, 1], 4);
        remote.submit(&a).unwrap();
        assert_eq!(remote.rankings(None).unwrap(), vec![a.clone()]);
        assert!(matches!(remote.submit(&a), Err(Error::DuplicateRanking(_))));
        assert!(matches!(remote.submit(&ranking("r2", "p1", vec![0, 0], 2)), Err(Error::Invalid(_))));
        assert!(matches!(remote.submit(&ranking("r3", "nope", vec![1, 0], 2)), Err(Error::Rejected(_))));
        let stats = remote.stats().unwrap();
        assert_eq!((stats.rankings, stats.pairs), (1, 6));
        assert_eq!(remote.prompts().unwrap()[0], ("p1".to_string(), "what is 1 plus 1 ?".to_string()));

        // Exported pairs carry their prompt's text (TRL's format needs it).
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let pairs: Vec<rlhf_proto::v1::PreferencePair> = rt.block_on(async {
            let mut client =
                rlhf_proto::v1::preference_store_client::PreferenceStoreClient::connect(url.clone()).await.unwrap();
            let request = rlhf_rpc::auth::with_bearer(
                tonic::Request::new(rlhf_proto::v1::ExportPairsRequest { annotator_id: None }),
                Some("s3cret"),
            );
            let mut stream = client.export_pairs(request).await.unwrap().into_inner();
            let mut out = vec![];
            while let Some(p) = stream.message().await.unwrap() {
                out.push(p);
            }
            out
        });
        assert_eq!(pairs.len(), 6);
        assert!(pairs.iter().all(|p| p.prompt_text == "what is 1 plus 1 ?"), "{:?}", pairs[0]);

        // Without the token, writes and reads are refused and nothing is stored.
        let mut anonymous = RemoteStore::connect(&url, None).unwrap();
        let err = anonymous.submit(&ranking("r4", "p2", vec![1, 0], 2)).unwrap_err().to_string();
        assert!(err.contains("Bearer"), "{err}");
        assert!(anonymous.register_prompts(&[("p3".into(), "x".into())]).is_err());
        assert!(anonymous.rankings(None).is_err() && anonymous.stats().is_err());
        assert_eq!(remote.stats().unwrap().rankings, 1);

        // An annotator lists prompts and submits rankings, and may not read others' rankings,
        // register prompts or export.
        let mut annotator = RemoteStore::connect(&url, Some("n0te".into())).unwrap();
        assert_eq!(annotator.prompts().unwrap().len(), 2);
        annotator.submit(&ranking("r5", "p2", vec![1, 0], 2)).unwrap();
        let denied = annotator.rankings(None).unwrap_err().to_string();
        assert!(denied.contains("may not call"), "{denied}");
        assert!(annotator.register_prompts(&[("p9".into(), "x".into())]).is_err() && annotator.stats().is_err());
        assert_eq!(remote.stats().unwrap().rankings, 2);
    }
}
