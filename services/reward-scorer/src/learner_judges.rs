//! Where a scorer gets its judges: from the learner, over gRPC (`PpoLearner.GetJudges`), in the
//! same versioned, chunked, checksummed form the generators get policy weights in.

use rlhf_proto::judges::{Judges, JudgesAssembler};
use rlhf_proto::v1::GetJudgesRequest;
use rlhf_proto::v1::ppo_learner_client::PpoLearnerClient;

/// A source of judges.
pub trait FetchJudges: Send + Sync {
    /// The judges of `version` (0: whichever are current) with their version; `Ok(None)` when
    /// the source does not know that version (rollouts of an earlier learner), `Err` when it
    /// cannot be asked now (the learner is not up, or has not announced judges yet).
    fn fetch(&self, version: u64) -> Result<Option<(u64, Judges)>, String>;
}

/// The learner at `url`, asked from a worker thread through `handle`'s runtime.
#[derive(Debug, Clone)]
pub struct LearnerJudges {
    pub url: String,
    pub handle: tokio::runtime::Handle,
    /// The scorer's bearer token (the learner gives its judges only to scorers).
    pub token: Option<String>,
}

impl FetchJudges for LearnerJudges {
    fn fetch(&self, version: u64) -> Result<Option<(u64, Judges)>, String> {
        self.handle.block_on(async {
            let channel = rlhf_rpc::endpoint(&self.url).map_err(|e| format!("learner {}: {e}", self.url))?;
            let mut client = PpoLearnerClient::new(channel).max_decoding_message_size(rlhf_rpc::MAX_MESSAGE_BYTES);
            let request = rlhf_rpc::auth::with_bearer(
                tonic::Request::new(GetJudgesRequest { judges_version: version }),
                self.token.as_deref(),
            );
            let mut stream = match client.get_judges(request).await {
                Ok(reply) => reply.into_inner(),
                Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
                Err(status) => return Err(format!("learner {}: {}", self.url, status.message())),
            };
            let mut assembler = JudgesAssembler::default();
            while let Some(chunk) = stream.message().await.map_err(|s| format!("judges stream: {}", s.message()))? {
                assembler.push(chunk).map_err(|e| e.to_string())?;
            }
            assembler.finish().map(Some).map_err(|e| e.to_string())
        })
    }
}
