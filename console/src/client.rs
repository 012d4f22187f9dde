//! The console's client of the approval service, authenticated as an
//! operator. The console holds an operator token and nothing else: it links
//! no broker code and reads no private key.

use std::path::Path;

use anyhow::bail;
use tonic::transport::Channel;
use tonic::{Request, Streaming};
use zt_proto::pb::approval_client::ApprovalClient;
use zt_proto::pb::{
    ApprovalRequest, CancelRequest, DecideRequest, Event, GetRequestRequest, ListPendingRequest,
    Operator, WatchEventsRequest, WhoAmIRequest,
};
use zt_proto::stack::Layout;

/// An operator's connection to the approval service.
#[derive(Debug, Clone)]
pub struct OperatorClient {
    inner: ApprovalClient<Channel>,
    /// Never in `Debug`.
    token: secrecy::SecretString,
    url: String,
}

/// Finds the approval service: an explicit URL, else the one recorded by the
/// stack running in `data_dir`.
pub fn resolve_url(approval: Option<&str>, data_dir: Option<&Path>) -> anyhow::Result<String> {
    if let Some(url) = approval {
        return Ok(url.to_owned());
    }
    if let Some(dir) = data_dir {
        if let Some(url) = Layout::new(dir).endpoint("approval") {
            return Ok(url);
        }
        bail!(
            "no running approval service recorded in {} (start one with `zt-console up --data-dir {}`)",
            dir.display(),
            dir.display()
        );
    }
    bail!("say where the approval service is: --approval URL or --data-dir DIR")
}

impl OperatorClient {
    /// A client of `url` presenting `token`; an `https://` URL is verified
    /// against the CA file `ca`. Connects lazily.
    pub fn new(url: &str, token: &str, ca: Option<&Path>) -> anyhow::Result<OperatorClient> {
        if token.trim().is_empty() {
            bail!(
                "no operator token: set ZT_OPERATOR_TOKEN or pass --token (issue one with `zt-approval token operator`)"
            );
        }
        let endpoint = zt_proto::grpc::endpoint(url, ca)?;
        Ok(OperatorClient {
            inner: ApprovalClient::new(endpoint.connect_lazy()),
            token: token.trim().into(),
            url: url.to_owned(),
        })
    }

    /// The service URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn req<T>(&self, msg: T) -> anyhow::Result<Request<T>> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!(
                "Bearer {}",
                secrecy::ExposeSecret::expose_secret(&self.token)
            )
            .parse()?,
        );
        Ok(r)
    }

    /// Who the token says we are.
    pub async fn who_am_i(&self) -> anyhow::Result<Operator> {
        let r = self.req(WhoAmIRequest {})?;
        Ok(self
            .inner
            .clone()
            .who_am_i(r)
            .await
            .map_err(status)?
            .into_inner())
    }

    /// Pending requests, oldest first.
    pub async fn pending(&self) -> anyhow::Result<Vec<ApprovalRequest>> {
        let r = self.req(ListPendingRequest {})?;
        Ok(self
            .inner
            .clone()
            .list_pending(r)
            .await
            .map_err(status)?
            .into_inner()
            .requests)
    }

    /// One request.
    pub async fn get(&self, id: &str) -> anyhow::Result<ApprovalRequest> {
        let r = self.req(GetRequestRequest { id: id.to_owned() })?;
        Ok(self
            .inner
            .clone()
            .get_request(r)
            .await
            .map_err(status)?
            .into_inner())
    }

    /// Approves or denies a request.
    pub async fn decide(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
    ) -> anyhow::Result<ApprovalRequest> {
        let r = self.req(DecideRequest {
            id: id.to_owned(),
            approve,
            reason: reason.to_owned(),
        })?;
        Ok(self
            .inner
            .clone()
            .decide(r)
            .await
            .map_err(status)?
            .into_inner())
    }

    /// Cancels a pending request (admins only; a reason is required).
    pub async fn cancel(&self, id: &str, reason: &str) -> anyhow::Result<ApprovalRequest> {
        let r = self.req(CancelRequest {
            id: id.to_owned(),
            reason: reason.to_owned(),
        })?;
        Ok(self
            .inner
            .clone()
            .cancel(r)
            .await
            .map_err(status)?
            .into_inner())
    }

    /// Events after `from_seq` (0: recent history), then live.
    pub async fn watch(&self, from_seq: u64) -> anyhow::Result<Streaming<Event>> {
        let r = self.req(WatchEventsRequest { from_seq })?;
        Ok(self
            .inner
            .clone()
            .watch_events(r)
            .await
            .map_err(status)?
            .into_inner())
    }
}

/// A gRPC status as an operator-readable error.
fn status(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => {
            anyhow::anyhow!("approval service unavailable: {}", s.message())
        }
        tonic::Code::Unauthenticated => anyhow::anyhow!("not authenticated: {}", s.message()),
        tonic::Code::PermissionDenied => anyhow::anyhow!("not allowed: {}", s.message()),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

/// How far a request is toward its approvals: "1 of 2 (carol)", "0 of 1".
pub fn approvals(req: &ApprovalRequest) -> String {
    let mut text = format!(
        "{} of {}",
        req.approvers.len(),
        req.approvals_required.max(1)
    );
    if !req.approvers.is_empty() {
        text.push_str(&format!(" ({})", req.approvers.join(", ")));
    }
    text
}

pub use zt_proto::money::dollars;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_operator_token_never_reaches_debug() {
        let client =
            OperatorClient::new("http://127.0.0.1:9", "eyJsecret.token.value", None).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("eyJsecret"), "{shown}");
    }

    #[test]
    fn approvals_read_as_n_of_m_with_names() {
        let mut req = ApprovalRequest {
            approvals_required: 2,
            ..ApprovalRequest::default()
        };
        assert_eq!(approvals(&req), "0 of 2");
        req.approvers.push("carol".into());
        assert_eq!(approvals(&req), "1 of 2 (carol)");
        req.approvers.push("erin".into());
        assert_eq!(approvals(&req), "2 of 2 (carol, erin)");
        // A request from before quorums existed needs one approval.
        assert_eq!(approvals(&ApprovalRequest::default()), "0 of 1");
    }
}
