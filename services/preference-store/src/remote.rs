//! [`RemoteStore`]: the preference service behind the same [`PreferenceStore`] trait as the
//! embedded SQLite store, so a pipeline stage runs unchanged against either.
//!
//! The trait is synchronous (stages are plain threads), so the client owns a small runtime and
//! blocks on each call. Status codes map back to the store's own errors: a refused ranking is
//! `Error::Invalid`-like on both sides.

use rlhf_proto::v1::preference_store_client::PreferenceStoreClient;
use rlhf_proto::v1::{
    ListPromptsRequest, ListRankingsRequest, Prompt, RegisterPromptsRequest, StatsRequest, SubmitRankingRequest,
};
use rlhf_proto::{ranking_from_proto, ranking_to_proto};
use rlhf_rpc::auth::with_bearer;
use rlhf_types::Ranking;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::{Error, PreferenceStore, Result, Stats};

/// A client of `rlhf serve preferences`.
pub struct RemoteStore {
    runtime: tokio::runtime::Runtime,
    client: PreferenceStoreClient<Channel>,
    token: Option<String>,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore").field("authenticated", &self.token.is_some()).finish_non_exhaustive()
    }
}

fn from_status(status: Status) -> Error {
    match status.code() {
        Code::AlreadyExists => Error::DuplicateRanking(status.message().to_string()),
        Code::InvalidArgument => Error::Rejected(status.message().to_string()),
        _ => Error::Storage(format!("preference service: {status}")),
    }
}

impl RemoteStore {
    /// A client of the service at `url`; `token` is sent as a bearer token with every call.
    pub fn connect(url: &str, token: Option<String>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Storage(format!("runtime: {e}")))?;
        let channel = {
            let _inside = runtime.enter();
            rlhf_rpc::endpoint(url).map_err(|e| Error::Storage(format!("{url}: {e}")))?
        };
        let client = PreferenceStoreClient::new(channel)
            .max_decoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES);
        Ok(RemoteStore { runtime, client, token })
    }

    fn authed<T>(&self, message: T) -> Request<T> {
        with_bearer(Request::new(message), self.token.as_deref())
    }
}

impl PreferenceStore for RemoteStore {
    fn register_prompts(&mut self, prompts: &[(String, String)]) -> Result<()> {
        let request = self.authed(RegisterPromptsRequest {
            prompts: prompts
                .iter()
                .map(|(id, text)| Prompt { prompt_id: id.clone(), text: text.clone(), token_ids: vec![] })
                .collect(),
        });
        let mut client = self.client.clone();
        self.runtime.block_on(client.register_prompts(request)).map_err(from_status)?;
        Ok(())
    }

    fn submit(&mut self, ranking: &Ranking) -> Result<()> {
        // Check here too, so a bad ranking fails with the same error as the embedded store.
        ranking.validate()?;
        let request = self.authed(SubmitRankingRequest { ranking: Some(ranking_to_proto(ranking.clone())) });
        let mut client = self.client.clone();
        self.runtime.block_on(client.submit_ranking(request)).map_err(from_status)?;
        Ok(())
    }

    fn prompts(&self) -> Result<Vec<(String, String)>> {
        let mut client = self.client.clone();
        self.runtime.block_on(async {
            let mut stream =
                client.list_prompts(self.authed(ListPromptsRequest {})).await.map_err(from_status)?.into_inner();
            let mut out = vec![];
            while let Some(p) = stream.message().await.map_err(from_status)? {
                out.push((p.prompt_id, p.text));
            }
            Ok(out)
        })
    }

    fn rankings(&self, prompt_id: Option<&str>) -> Result<Vec<Ranking>> {
        let mut client = self.client.clone();
        let request = ListRankingsRequest { prompt_id: prompt_id.map(str::to_string), annotator_id: None };
        self.runtime.block_on(async {
            let mut stream = client.list_rankings(self.authed(request)).await.map_err(from_status)?.into_inner();
            let mut out = vec![];
            while let Some(r) = stream.message().await.map_err(from_status)? {
                out.push(ranking_from_proto(r));
            }
            Ok(out)
        })
    }

    fn stats(&self) -> Result<Stats> {
        let mut client = self.client.clone();
        let s = self.runtime.block_on(client.stats(self.authed(StatsRequest {}))).map_err(from_status)?.into_inner();
        Ok(Stats { rankings: s.rankings, pairs: s.pairs, prompts: s.prompts, annotators: s.annotators })
    }
}
