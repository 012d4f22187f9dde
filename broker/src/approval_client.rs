//! The broker's client of the approval service. It authenticates with a
//! short service token signed by the broker's own key; the agent's session
//! token is never passed upstream.

use std::time::Duration;

use tonic::Request;
use tonic::transport::Channel;
use zt_proto::keys::KeyPair;
use zt_proto::pb::approval_client::ApprovalClient;
use zt_proto::pb::{
    ApprovalRequest, EscalateRequest, Event, EventBatch, ListRevokedRequest,
    ReportExecutionRequest, RevokedSessions, WaitDecisionRequest,
};
use zt_proto::stack::StackInfo;
use zt_proto::token::{self, SERVICE_TTL_SECS, ServiceClaims, TokenType};

/// A failure talking to the approval service. Callers fail closed.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// Not reachable or not configured.
    #[error("approval service unavailable")]
    Unavailable,
    /// It answered with an error.
    #[error("approval service refused: {0}")]
    Refused(String),
}

/// Client of the approval service.
#[derive(Debug, Clone)]
pub struct ApprovalService {
    client: Option<ApprovalClient<Channel>>,
    key: KeyPair,
    stack: StackInfo,
}

impl ApprovalService {
    /// A lazily-connecting client of `url` (none: every escalation is
    /// refused); an `https://` URL is verified against the CA file `ca`.
    pub fn new(
        url: Option<&str>,
        ca: Option<&std::path::Path>,
        key: KeyPair,
        stack: StackInfo,
    ) -> anyhow::Result<ApprovalService> {
        let client = match url {
            Some(url) => {
                let endpoint = zt_proto::grpc::endpoint(url, ca)?;
                Some(ApprovalClient::new(endpoint.connect_lazy()))
            }
            None => None,
        };
        Ok(ApprovalService { client, key, stack })
    }

    fn request<T>(&self, msg: T, timeout: Duration) -> Result<Request<T>, ApprovalError> {
        let now = token::now_secs();
        let claims = ServiceClaims {
            iss: self.stack.broker_audience.clone(),
            aud: self.stack.approval_audience.clone(),
            sub: "zt-broker".into(),
            jti: zt_proto::random_id("svc_"),
            iat: now,
            nbf: now,
            exp: now + SERVICE_TTL_SECS,
        };
        let jwt = token::sign(&self.key, TokenType::Service, &claims)
            .map_err(|_| ApprovalError::Unavailable)?;
        let mut req = Request::new(msg);
        req.set_timeout(timeout);
        let value = format!("Bearer {jwt}")
            .parse()
            .map_err(|_| ApprovalError::Unavailable)?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }

    fn client(&self) -> Result<ApprovalClient<Channel>, ApprovalError> {
        self.client.clone().ok_or(ApprovalError::Unavailable)
    }

    fn map(status: tonic::Status) -> ApprovalError {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                ApprovalError::Unavailable
            }
            _ => ApprovalError::Refused(status.message().to_owned()),
        }
    }

    /// Records an escalation (deduplicated by the service).
    pub async fn escalate(&self, req: EscalateRequest) -> Result<ApprovalRequest, ApprovalError> {
        let r = self.request(req, Duration::from_secs(10))?;
        Ok(self
            .client()?
            .escalate(r)
            .await
            .map_err(Self::map)?
            .into_inner())
    }

    /// Waits up to `wait` for the request to be decided.
    pub async fn wait(&self, id: &str, wait: Duration) -> Result<ApprovalRequest, ApprovalError> {
        let timeout_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let msg = WaitDecisionRequest {
            id: id.to_owned(),
            timeout_ms,
        };
        let r = self.request(msg, wait + Duration::from_secs(5))?;
        Ok(self
            .client()?
            .wait_decision(r)
            .await
            .map_err(Self::map)?
            .into_inner())
    }

    /// Reports an approved request's execution.
    pub async fn report(
        &self,
        id: &str,
        ok: bool,
        outcome: &str,
        grant_id: &str,
    ) -> Result<(), ApprovalError> {
        let msg = ReportExecutionRequest {
            id: id.to_owned(),
            ok,
            outcome: outcome.to_owned(),
            grant_id: grant_id.to_owned(),
        };
        let r = self.request(msg, Duration::from_secs(10))?;
        self.client()?
            .report_execution(r)
            .await
            .map_err(Self::map)?;
        Ok(())
    }

    /// Publishes live events for operators, in order (best effort).
    pub async fn publish(&self, events: Vec<Event>) -> Result<(), ApprovalError> {
        let r = self.request(EventBatch { events }, Duration::from_secs(3))?;
        self.client()?.publish_batch(r).await.map_err(Self::map)?;
        Ok(())
    }

    /// Sessions revoked since `since_ms` (the service's clock).
    pub async fn list_revoked(&self, after_seq: i64) -> Result<RevokedSessions, ApprovalError> {
        let r = self.request(
            ListRevokedRequest {
                after_seq,
                limit: 0,
            },
            Duration::from_secs(5),
        )?;
        Ok(self
            .client()?
            .list_revoked(r)
            .await
            .map_err(Self::map)?
            .into_inner())
    }
}
