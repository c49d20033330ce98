//! The preference store as a gRPC service. Every call (reads too: rankings are the team's data)
//! needs the token of a role allowed to make it ([`ACCESS`]) when tokens are configured, checked
//! from the headers before the body is read, so an unauthenticated client cannot make the server
//! decode anything; a body over
//! [`MAX_REQUEST_BYTES`] is refused unread. An invalid ranking is refused with INVALID_ARGUMENT and
//! nothing is written. Health and reflection stay open.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rlhf_proto::v1::preference_store_server::{PreferenceStore as StoreRpc, PreferenceStoreServer};
use rlhf_proto::v1::{
    ExportPairsRequest, ListPromptsRequest, ListRankingsRequest, PreferencePair, Prompt, Ranking as RankingMessage,
    RegisterPromptsRequest, RegisterPromptsResponse, StatsRequest, StatsResponse, SubmitRankingRequest,
    SubmitRankingResponse,
};
use rlhf_proto::{pair_to_proto, ranking_from_proto, ranking_to_proto};
use rlhf_rpc::auth::Role;
use rlhf_rpc::metrics;
use rlhf_rpc::trace::Hop;
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::{Error, PreferenceStore};

/// Settings of the preference service.
#[derive(Debug, Clone, Default)]
pub struct PreferenceServiceConfig {
    /// TLS and the role tokens ([`ACCESS`]); no tokens leave the service open (loopback use).
    pub security: rlhf_rpc::Security,
}

/// Who may call what on the store: annotators list prompts and submit rankings; the learner
/// (collection with simulated annotators, reward-model training) and admins may call anything.
pub const ACCESS: &[(&str, &[Role])] = &[
    ("/rlhf.v1.PreferenceStore/SubmitRanking", &[Role::Annotator, Role::Learner, Role::Admin]),
    ("/rlhf.v1.PreferenceStore/ListPrompts", &[Role::Annotator, Role::Learner, Role::Admin]),
    ("/rlhf.v1.PreferenceStore/", &[Role::Learner, Role::Admin]),
];

type Store = Arc<Mutex<Box<dyn PreferenceStore>>>;

/// Largest request decoded: a ranking of K long responses, or a few thousand prompts to register.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

struct Service {
    store: Store,
}

fn status(e: Error) -> Status {
    match e {
        Error::Invalid(_) | Error::UnknownPrompt(_) | Error::Rejected(_) => Status::invalid_argument(e.to_string()),
        Error::DuplicateRanking(_) => Status::already_exists(e.to_string()),
        Error::Storage(_) => Status::internal(e.to_string()),
    }
}

/// Runs `f` on the store on a blocking thread.
async fn with_store<R: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&mut dyn PreferenceStore) -> crate::Result<R> + Send + 'static,
) -> Result<R, Status> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = store.lock().map_err(|_| Status::internal("store lock poisoned"))?;
        f(guard.as_mut()).map_err(status)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
}

type Items<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl StoreRpc for Service {
    async fn register_prompts(
        &self,
        request: Request<RegisterPromptsRequest>,
    ) -> Result<Response<RegisterPromptsResponse>, Status> {
        let prompts: Vec<(String, String)> =
            request.into_inner().prompts.into_iter().map(|p| (p.prompt_id, p.text)).collect();
        if prompts.iter().any(|(id, _)| id.is_empty()) {
            return Err(Status::invalid_argument("a prompt without a prompt_id"));
        }
        let registered = prompts.len() as u32;
        with_store(&self.store, move |s| s.register_prompts(&prompts)).await?;
        Ok(Response::new(RegisterPromptsResponse { registered }))
    }

    async fn submit_ranking(
        &self,
        request: Request<SubmitRankingRequest>,
    ) -> Result<Response<SubmitRankingResponse>, Status> {
        let span = Hop::from_metadata("preferences.submit", request.metadata()).span;
        let ranking = request.into_inner().ranking.ok_or_else(|| Status::invalid_argument("ranking is required"))?;
        let ranking = ranking_from_proto(ranking);
        let id = ranking.ranking_id.clone();
        let stored = with_store(&self.store, move |s| span.in_scope(|| s.submit(&ranking))).await;
        let counter = if stored.is_ok() { &metrics::preferences().rankings } else { &metrics::preferences().refused };
        counter.inc();
        stored?;
        Ok(Response::new(SubmitRankingResponse { ranking_id: id }))
    }

    type ListRankingsStream = Items<RankingMessage>;

    async fn list_rankings(
        &self,
        request: Request<ListRankingsRequest>,
    ) -> Result<Response<Self::ListRankingsStream>, Status> {
        let filter = request.into_inner();
        let prompt = filter.prompt_id.clone();
        let rankings = with_store(&self.store, move |s| s.rankings(prompt.as_deref())).await?;
        let items: Vec<Result<RankingMessage, Status>> = rankings
            .into_iter()
            .filter(|r| filter.annotator_id.as_ref().is_none_or(|a| &r.annotator_id == a))
            .map(|r| Ok(ranking_to_proto(r)))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    type ListPromptsStream = Items<Prompt>;

    async fn list_prompts(&self, _: Request<ListPromptsRequest>) -> Result<Response<Self::ListPromptsStream>, Status> {
        let prompts = with_store(&self.store, |s| s.prompts()).await?;
        let items: Vec<Result<Prompt, Status>> =
            prompts.into_iter().map(|(prompt_id, text)| Ok(Prompt { prompt_id, text, token_ids: vec![] })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    type ExportPairsStream = Items<PreferencePair>;

    async fn export_pairs(
        &self,
        request: Request<ExportPairsRequest>,
    ) -> Result<Response<Self::ExportPairsStream>, Status> {
        let annotator = request.into_inner().annotator_id;
        let (rankings, prompts) = with_store(&self.store, |s| Ok((s.rankings(None)?, s.prompts()?))).await?;
        let text: std::collections::HashMap<String, String> = prompts.into_iter().collect();
        let items: Vec<Result<PreferencePair, Status>> = rankings
            .iter()
            .filter(|r| annotator.as_ref().is_none_or(|a| &r.annotator_id == a))
            .flat_map(|r| r.pairs())
            .map(|p| {
                let prompt_text = text.get(&p.prompt_id).cloned().unwrap_or_default();
                Ok(pair_to_proto(p, prompt_text))
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let stats = with_store(&self.store, |s| s.stats()).await?;
        Ok(Response::new(StatsResponse {
            rankings: stats.rankings,
            pairs: stats.pairs,
            prompts: stats.prompts,
            annotators: stats.annotators,
        }))
    }
}

/// Serves `store` on `listener` until `shutdown` resolves.
pub async fn run(
    config: PreferenceServiceConfig,
    store: Box<dyn PreferenceStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = rlhf_rpc::health();
    metrics::preferences();
    rlhf_rpc::set_health::<PreferenceStoreServer<Service>>(&health, true).await;
    let service = PreferenceStoreServer::new(Service { store: Arc::new(Mutex::new(store)) })
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES);
    let names = [<PreferenceStoreServer<Service> as tonic::server::NamedService>::NAME];
    // The access check runs on the request's headers, before its body is read.
    let options = config.security.options(ACCESS, None);
    let routes = Routes::new(health_service).add_service(service);
    rlhf_rpc::serve_with(listener, routes, &names, health.clone(), options, shutdown).await
}
