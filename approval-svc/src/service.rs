//! The gRPC service: escalations in, decisions and grants out, events to
//! every watching console.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use zt_proto::audit::{Kind, Record};
use zt_proto::flood::RefusalBudget;
use zt_proto::grant::{Grant, MAX_GRANT_TTL_MS};
use zt_proto::pb::approval_server::{Approval, ApprovalServer};
use zt_proto::pb::{
    ApprovalRequest, CancelRequest, DecideRequest, EscalateRequest, Event, EventBatch,
    GetRequestRequest, ListPendingRequest, ListPendingResponse, Operator, PublishAck,
    ReportExecutionRequest, WaitDecisionRequest, WatchEventsRequest, WhoAmIRequest,
};
use zt_proto::pb::{
    IssueSessionRequest, ListRevokedRequest, RefreshSessionRequest, RevokeSessionRequest,
    RevokeTokenReply, RevokeTokenRequest, Revoked, RevokedSessions, SessionToken,
};
use zt_proto::pinned::{PinnedKeys, TrustRoots};
use zt_proto::stack::{Layout, StackInfo};
use zt_proto::store::AuditLog;
use zt_proto::token::{self, Expect, LauncherClaims, OperatorClaims, ServiceClaims, TokenType};

use crate::db::{self, VoteError, VoteOutcome, status};
use crate::detect::{Alert, By, Detector, Rules};
use crate::hub::Hub;
use crate::rules::ApprovalRules;
use crate::setup::{self, AUDIT_CHAIN, Keys};
use zt_proto::db::Location;

/// Longest a broker may block in `WaitDecision` per call.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most events accepted in one `PublishBatch`.
pub const MAX_EVENT_BATCH: usize = 1024;
/// Longest free-text field accepted (reasons, justifications).
pub const MAX_TEXT: usize = 1000;

/// How to run the service.
#[derive(Debug, Clone)]
pub struct Options {
    /// The stack's data directory.
    pub data_dir: PathBuf,
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// How long a request stays pending before it expires; `None` means
    /// the `request_ttl_secs` of the stack's approval rules.
    pub request_ttl: Option<Duration>,
    /// A PostgreSQL URL for the approval state and the audit chain, shared
    /// with other replicas; `None` keeps SQLite files in the data directory.
    pub database: Option<zt_proto::db::DbUrl>,
    /// This replica's name when several serve one stack: its audit chain
    /// is `approval-NAME` and its endpoint `run/approval-NAME.url`.
    pub replica: Option<String>,
    /// TLS on the gRPC port.
    pub tls: Tls,
}

/// Whether and how the gRPC port speaks TLS.
#[derive(Debug, Clone, Default)]
pub enum Tls {
    /// Plaintext: loopback addresses only.
    #[default]
    Off,
    /// A certificate from the stack's CA for these extra names.
    Stack(Vec<String>),
    /// Given certificate (chain) and key files.
    Given {
        /// PEM certificate chain.
        cert: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
}

/// A replica name: short, lowercase letters, digits and dashes.
fn valid_replica(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

struct State {
    stack: StackInfo,
    layout: Layout,
    keys: Keys,
    db: zt_proto::db::Db,
    audit: AuditLog,
    hub: Hub,
    /// Detection rules over the broker's events; held only while feeding
    /// events, never across an await.
    detector: Mutex<Detector>,
    /// Whether a rule needs the humans' refund limits (then they follow
    /// `humans.toml`).
    /// The humans' attributes detection rules read as limits.
    limit_attrs: Vec<String>,
    /// Keys of this stack's token issuer (current and retired): operators, launchers, sessions.
    operator_keys: PinnedKeys,
    /// The brokers' service keys.
    broker_keys: PinnedKeys,
    changed: watch::Sender<u64>,
    /// The approval rules (`approvals.toml`), read at start.
    rules: ApprovalRules,
    request_ttl_ms: i64,
    /// Failed operator logins audited one by one only within this budget
    /// (then in aggregate).
    refusals: RefusalBudget,
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Service(Arc<State>);

fn bearer<T>(req: &Request<T>) -> Result<&str, Status> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "internal error");
    Status::internal("internal error")
}

fn clip(text: &str) -> Result<String, Status> {
    if text.chars().count() > MAX_TEXT {
        return Err(Status::invalid_argument(format!(
            "text longer than {MAX_TEXT} characters"
        )));
    }
    Ok(text
        .chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .collect())
}

impl Service {
    /// Opens the stack's state and keys.
    pub async fn open(opts: &Options) -> anyhow::Result<Service> {
        let layout = Layout::new(&opts.data_dir);
        let (stack, keys) = setup::load(&layout)?;
        // SQLite files in the data directory, or one PostgreSQL database
        // shared by every replica (a schema per store).
        let (db_at, audit_at) = match opts
            .database
            .as_ref()
            .map(zt_proto::db::DbUrl::expose)
            .filter(|u| !u.is_empty())
        {
            Some(url) => {
                let at = Location::parse(url)?;
                (at.clone(), at)
            }
            None => (
                Location::File(layout.private("approval").join("approval.db")),
                Location::File(layout.audit_db()),
            ),
        };
        let db = db::open(&db_at)
            .await
            .with_context(|| format!("opening the approval database {}", db_at.display()))?;
        let audit_pool = zt_proto::store::open_pool(&audit_at).await?;
        // Each replica writes its own chain (same key, pinned under its name).
        let chain = match &opts.replica {
            None => AUDIT_CHAIN.to_owned(),
            Some(name) => {
                anyhow::ensure!(
                    valid_replica(name),
                    "replica name `{name}` must be 1-32 lowercase letters, digits or dashes"
                );
                let chain = format!("{AUDIT_CHAIN}-{name}");
                keys.audit.public().write(&layout.audit_key(&chain))?;
                chain
            }
        };
        let audit = AuditLog::open(audit_pool, &chain, keys.audit.clone()).await?;
        let trust = crate::setup::trust_path(&layout);
        let roots = TrustRoots::ensure(&trust, &layout, &["approval-token"])?;
        roots.publish(&layout.trust_file(), &["approval-token"])?;
        let operator_keys =
            PinnedKeys::load(&layout, "approval-token", roots.get("approval-token"))?;
        let approval_rules = load_approval_rules(&layout.policies())?;
        let request_ttl = opts.request_ttl.unwrap_or(approval_rules.request_ttl());
        tracing::info!(
            request_ttl_secs = request_ttl.as_secs(),
            quorum = approval_rules.quorum,
            quorum_above_cents = approval_rules.quorum_above_cents,
            reason_to_approve_above_cents = approval_rules.reason_to_approve_above_cents,
            "approval rules"
        );
        let rules = load_detections(&layout.policies())?;
        let limit_attrs: Vec<String> = rules.limit_attrs().into_iter().map(str::to_owned).collect();
        let facts = policy_facts(&layout.policies(), &limit_attrs)?;
        let state = State {
            broker_keys: PinnedKeys::on_first_sight(&layout, "broker-service", &trust),
            stack,
            layout,
            keys,
            db,
            audit,
            hub: Hub::new(),
            detector: Mutex::new(Detector::new(rules, facts)),
            limit_attrs,
            operator_keys,
            changed: watch::channel(0).0,
            rules: approval_rules,
            request_ttl_ms: i64::try_from(request_ttl.as_millis()).unwrap_or(i64::MAX),
            refusals: RefusalBudget::default(),
        };
        Ok(Service(Arc::new(state)))
    }

    /// Writes the failed logins counted beyond the audit budget as one entry.
    async fn summarize_refusals(&self) {
        if let Some(rec) = self.0.refusals.summary() {
            tracing::warn!(detail = %rec.detail, "refusal flood");
            if let Err(e) = self.audit(Kind::Approval, rec).await {
                tracing::error!(error = %e.message(), "audit write failed for a refusal summary");
            }
        }
    }

    async fn audit(&self, kind: Kind, record: Record) -> Result<(), Status> {
        self.0
            .audit
            .append(kind, record)
            .await
            .map(|_| ())
            .map_err(internal)
    }

    /// Verifies the bearer token as a `typ` token for this service from `issuer`.
    fn verify_bearer<T, C: serde::de::DeserializeOwned + token::Lifetime>(
        &self,
        req: &Request<T>,
        keys: &PinnedKeys,
        typ: TokenType,
        issuer: &str,
    ) -> Result<C, Status> {
        let expect = Expect {
            issuer,
            audience: &self.0.stack.approval_audience,
        };
        keys.verify(bearer(req)?, typ, &expect)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// Refuses a credential revoked by its token id.
    async fn not_revoked(&self, jti: &str) -> Result<(), Status> {
        match db::is_token_revoked(&self.0.db, jti).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(Status::unauthenticated("this credential has been revoked")),
            // Fail closed: a credential whose status cannot be read is refused.
            Err(e) => Err(internal(e)),
        }
    }

    async fn operator<T>(&self, req: &Request<T>) -> Result<OperatorClaims, Status> {
        let op: OperatorClaims = self.verify_bearer(
            req,
            &self.0.operator_keys,
            TokenType::Operator,
            &self.0.stack.issuer,
        )?;
        self.not_revoked(&op.jti).await?;
        // One spelling per person: a token naming `Carol` or `carol ` (not
        // minted by this service's issuer, which normalises) is no one.
        if token::identity(&op.sub).as_deref() != Some(op.sub.as_str()) {
            return Err(Status::unauthenticated(
                "the operator token does not name a canonical identity",
            ));
        }
        Ok(op)
    }

    /// A broker, with a service token signed by its own (lazily pinned) key.
    fn service<T>(&self, req: &Request<T>) -> Result<ServiceClaims, Status> {
        self.verify_bearer(
            req,
            &self.0.broker_keys,
            TokenType::Service,
            &self.0.stack.broker_audience,
        )
    }

    async fn launcher<T>(&self, req: &Request<T>) -> Result<LauncherClaims, Status> {
        let l: LauncherClaims = self.verify_bearer(
            req,
            &self.0.operator_keys,
            TokenType::Launcher,
            &self.0.stack.issuer,
        )?;
        self.not_revoked(&l.jti).await?;
        Ok(l)
    }

    async fn operator_audited<T>(
        &self,
        req: &Request<T>,
        action: &str,
    ) -> Result<OperatorClaims, Status> {
        match self.operator(req).await {
            Ok(c) => Ok(c),
            // Beyond the budget a failed login is only counted; a summary
            // entry records the count (a loop of bad logins must not fill
            // the disk or starve real decisions).
            Err(status) if !self.0.refusals.admit("operator_unauthenticated") => Err(status),
            Err(status) => {
                self.audit(
                    Kind::Approval,
                    Record {
                        subject: "unauthenticated".into(),
                        decision: action.into(),
                        status: "refused".into(),
                        detail: status.message().to_owned(),
                        ..Record::default()
                    },
                )
                .await?;
                Err(status)
            }
        }
    }

    fn session_response(token: String, claims: &token::SessionClaims) -> SessionToken {
        SessionToken {
            token,
            session_id: claims.sid.clone(),
            expires_at: claims.exp,
        }
    }

    async fn session_record(
        &self,
        claims: &token::SessionClaims,
        decision: &str,
        by: &str,
    ) -> Result<(), Status> {
        let mut actors = claims.chain();
        actors.pop();
        self.audit(
            Kind::Approval,
            Record {
                session: claims.sid.clone(),
                subject: claims.sub.clone(),
                actors,
                decision: decision.into(),
                status: "ok".into(),
                detail: format!(
                    "{decision} by {by}; token {} expires at {}",
                    claims.jti, claims.exp
                ),
                ..Record::default()
            },
        )
        .await
    }

    async fn get_or_404(&self, id: &str) -> Result<ApprovalRequest, Status> {
        db::get(&self.0.db, id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found("no such request"))
    }

    /// Publishes events a broker sent; this service, not the sender, numbers
    /// and timestamps them. The detection rules see each event, and every
    /// alert they raise is audited and published after the batch. Returns
    /// the last sequence number of the broker's events.
    async fn publish_from_broker(&self, events: Vec<Event>) -> u64 {
        let mut seq = 0;
        let mut alerts = Vec::new();
        {
            let mut detector = lock(&self.0.detector);
            for mut event in events {
                event.seq = 0;
                event.time_ms = zt_proto::now_ms();
                alerts.extend(detector.observe(event.time_ms, &event));
                seq = self.0.hub.publish(event);
            }
        }
        for alert in alerts {
            self.raise(alert).await;
        }
        seq
    }

    /// Records an alert in the audit chain, then shows it to operators.
    async fn raise(&self, alert: Alert) {
        tracing::warn!(
            rule = %alert.rule,
            by = alert.by.as_str(),
            subject = %alert.subject,
            count = alert.count,
            "{}",
            alert.summary
        );
        if self.audit(Kind::Alert, alert_record(&alert)).await.is_err() {
            tracing::error!(rule = %alert.rule, "an alert could not be audited");
        }
        self.0.hub.publish(alert_event(&alert));
    }

    /// Follows `humans.toml` and `tools.toml`: when either changes, the
    /// detection rules and the amount check get the new limits and amount
    /// arguments; a directory that does not load keeps the previous ones.
    async fn follow_policy_facts(self) {
        let dir = self.0.layout.policies();
        let files = [
            dir.join(zt_policies::files::HUMANS),
            dir.join(zt_policies::files::TOOLS),
        ];
        let stamp = || files.iter().map(|f| modified(f)).collect::<Vec<_>>();
        let mut seen = stamp();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let now = stamp();
            if now == seen {
                continue;
            }
            seen = now;
            let from = dir.clone();
            let attrs = self.0.limit_attrs.clone();
            match tokio::task::spawn_blocking(move || policy_facts(&from, &attrs)).await {
                Ok(Ok(facts)) => {
                    lock(&self.0.detector).set_facts(facts);
                    tracing::info!(
                        "detection rules and amount checks use the new policy directory"
                    );
                }
                Ok(Err(e)) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "detection rules keep the previous limits and amount arguments"
                ),
                Err(e) => tracing::warn!(error = %e, "reloading the policy directory failed"),
            }
        }
    }

    fn notify(&self) {
        self.0.changed.send_modify(|v| *v += 1);
    }

    fn event(&self, kind: &str, req: &ApprovalRequest, decision: &str, summary: String) {
        self.0.hub.publish(Event {
            kind: kind.into(),
            session_id: req.session_id.clone(),
            human: req.human.clone(),
            agent: req.actors.first().cloned().unwrap_or_default(),
            tool: req.tool.clone(),
            decision: decision.into(),
            summary,
            request_id: req.id.clone(),
            args_json: req.args_json.clone(),
            rules: req.rules.clone(),
            ..Event::default()
        });
    }

    async fn expire_due(&self) -> Result<(), Status> {
        let expired = db::expire_due(&self.0.db, zt_proto::now_ms())
            .await
            .map_err(internal)?;
        for req in &expired {
            let detail = if req.outcome == db::GRANT_UNUSED {
                format!(
                    "approved by {}, but the grant expired unused",
                    req.approvers.join(", ")
                )
            } else if req.approvals_required > 1 {
                format!("nobody decided in time ({})", tally(req))
            } else {
                "nobody decided in time".to_owned()
            };
            self.audit(
                Kind::Approval,
                request_record(req, "expired", "expired", &detail),
            )
            .await?;
            self.event(
                "request_decided",
                req,
                "expired",
                if req.outcome == db::GRANT_UNUSED {
                    format!("{} expired with its grant unused", req.id)
                } else {
                    format!("{} expired unanswered", req.id)
                },
            );
        }
        if !expired.is_empty() {
            self.notify();
        }
        Ok(())
    }

    /// Signs the one-time grant of an approved request for `approvers`.
    fn sign_grant(
        &self,
        req: &ApprovalRequest,
        approvers: &[String],
    ) -> Result<(String, String), zt_proto::grant::GrantError> {
        let now = zt_proto::now_ms();
        let grant = Grant {
            v: 1,
            id: zt_proto::random_id("grant_"),
            request_id: req.id.clone(),
            tool: req.tool.clone(),
            args_hash: req.args_hash.clone(),
            session_id: req.session_id.clone(),
            human: req.human.clone(),
            approvers: approvers.to_vec(),
            nonce: zt_proto::random_id(""),
            iat_ms: now,
            exp_ms: now + MAX_GRANT_TTL_MS,
            kid: self.0.keys.grant.kid().to_owned(),
        };
        let sealed = grant.seal(&self.0.keys.grant)?;
        Ok((grant.id, sealed))
    }

    /// Audits a refusal of `op`'s `action` on `req`, then returns it.
    async fn refuse(
        &self,
        req: &ApprovalRequest,
        op: &OperatorClaims,
        action: &str,
        status: Status,
    ) -> Status {
        let mut rec = request_record(req, action, "refused", status.message());
        rec.subject = op.sub.clone();
        match self.audit(Kind::Approval, rec).await {
            Ok(()) => status,
            Err(e) => e,
        }
    }

    /// Cancels the pending requests of a revoked session, each audited and
    /// published.
    async fn cancel_session_requests(
        &self,
        session_id: &str,
        by: &str,
        reason: &str,
    ) -> Result<(), Status> {
        let why = format!("session revoked by {by}: {reason}");
        let cancelled = db::cancel_session(&self.0.db, session_id, &why, zt_proto::now_ms())
            .await
            .map_err(internal)?;
        for req in &cancelled {
            let mut rec = request_record(req, "cancel", status::CANCELLED, &why);
            rec.subject = by.to_owned();
            self.audit(Kind::Approval, rec).await?;
            self.event(
                "request_decided",
                req,
                status::CANCELLED,
                format!("{} cancelled: {why}", req.id),
            );
        }
        if !cancelled.is_empty() {
            self.notify();
        }
        Ok(())
    }
}

/// "1 of 2 approvals (carol)": how far a request got toward its quorum.
pub fn tally(req: &ApprovalRequest) -> String {
    let mut text = format!(
        "{} of {} approvals",
        req.approvers.len(),
        req.approvals_required.max(1)
    );
    if !req.approvers.is_empty() {
        text.push_str(&format!(" ({})", req.approvers.join(", ")));
    }
    text
}

fn lock(detector: &Mutex<Detector>) -> MutexGuard<'_, Detector> {
    match detector.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The detection rules of a policy directory (`detections.toml`): a missing
/// file means the shipped rules; an unreadable or invalid one is an error
/// naming the file and the problem.
pub fn load_detections(dir: &Path) -> anyhow::Result<Rules> {
    let path = dir.join(zt_policies::files::DETECTIONS);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no detection rules file; using the shipped rules");
            zt_policies::shipped::file(zt_policies::files::DETECTIONS)
                .unwrap_or_default()
                .to_owned()
        }
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot read", path.display()));
        }
    };
    Rules::from_toml(&text).with_context(|| format!("{}: invalid detection rules", path.display()))
}

/// The approval rules of a policy directory (`approvals.toml`): a missing
/// file means the shipped rules; an unreadable or invalid one is an error
/// naming the file and the problem.
pub fn load_approval_rules(dir: &Path) -> anyhow::Result<ApprovalRules> {
    let path = dir.join(zt_policies::files::APPROVALS);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "no approval rules file; using the shipped rules");
            zt_policies::shipped::file(zt_policies::files::APPROVALS)
                .unwrap_or_default()
                .to_owned()
        }
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot read", path.display()));
        }
    };
    ApprovalRules::from_toml(&text)
        .with_context(|| format!("{}: invalid approval rules", path.display()))
}

/// What detection rules and the amount check need from the policy
/// directory: each money-moving tool's amount argument, and each human's
/// value of every attribute a rule reads as a limit; read through the
/// policy engine so the directory means what it means there.
fn policy_facts(dir: &Path, limit_attrs: &[String]) -> anyhow::Result<crate::detect::Facts> {
    let bundle = zt_policies::PolicyBundle::load(dir).with_context(|| {
        format!(
            "loading the registry and the humans' limits from {}",
            dir.display()
        )
    })?;
    Ok(crate::detect::Facts {
        amount_args: bundle
            .tools()
            .filter_map(|t| Some((t.name.clone(), t.amount_arg.clone()?)))
            .collect(),
        limits: limit_attrs
            .iter()
            .map(|attr| {
                let per_human = bundle
                    .humans()
                    .filter_map(|h| Some((h.id.clone(), h.int(attr)?)))
                    .collect();
                (attr.clone(), per_human)
            })
            .collect(),
    })
}

/// An alert as an audit entry: the rule in `rules`, the subject in
/// `session` (a session) or `subject` (an agent or a human).
fn alert_record(a: &Alert) -> Record {
    Record {
        session: a.session.clone(),
        subject: match a.by {
            By::Agent => a.agent.clone(),
            By::Session | By::Human => a.human.clone(),
            By::Tool => a.subject.clone(),
        },
        actors: if a.agent.is_empty() {
            Vec::new()
        } else {
            vec![a.agent.clone()]
        },
        decision: "alert".into(),
        rules: vec![a.rule.clone()],
        status: "raised".into(),
        detail: a.summary.clone(),
        ..Record::default()
    }
}

/// An alert as an event for operators' live view.
fn alert_event(a: &Alert) -> Event {
    Event {
        kind: "alert".into(),
        time_ms: a.at_ms,
        session_id: a.session.clone(),
        human: a.human.clone(),
        agent: a.agent.clone(),
        decision: "alert".into(),
        summary: a.summary.clone(),
        rules: vec![a.rule.clone()],
        ..Event::default()
    }
}

fn request_record(req: &ApprovalRequest, decision: &str, status: &str, detail: &str) -> Record {
    Record {
        session: req.session_id.clone(),
        subject: req.human.clone(),
        actors: req.actors.clone(),
        tool: req.tool.clone(),
        args: serde_json::from_str(&req.args_json).unwrap_or_default(),
        args_hash: req.args_hash.clone(),
        decision: decision.into(),
        rules: req.rules.clone(),
        request_id: req.id.clone(),
        status: status.into(),
        detail: detail.into(),
        ..Record::default()
    }
}

/// Operators never see grants; only the broker redeems them.
fn redacted(mut req: ApprovalRequest) -> ApprovalRequest {
    req.grant.clear();
    req
}

#[tonic::async_trait]
impl Approval for Service {
    async fn escalate(
        &self,
        request: Request<EscalateRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        let caller = self.service(&request)?;
        let mut req = request.into_inner();
        // The broker computed the hash; recompute so a request can never carry
        // arguments other than the ones its grant will bind.
        let args: serde_json::Value = serde_json::from_str(&req.args_json)
            .map_err(|_| Status::invalid_argument("args_json is not JSON"))?;
        let hash = zt_proto::canonical::args_hash(&req.tool, &args)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if hash != req.args_hash {
            return Err(Status::invalid_argument(
                "args_hash does not match args_json",
            ));
        }
        req.args_json = zt_proto::canonical::to_canonical_string(&args).map_err(internal)?;
        req.justification = clip(&req.justification)?;
        req.reason = clip(&req.reason)?;
        if req.tool.is_empty() || req.session_id.is_empty() || req.human.is_empty() {
            return Err(Status::invalid_argument(
                "tool, session_id and human are required",
            ));
        }
        // The amount drives the approvers' limits and the quorum: derive it
        // from the arguments the grant will bind, as the registry says, and
        // refuse a request whose stated amount differs.
        let amount_arg = lock(&self.0.detector)
            .facts()
            .amount_args
            .get(&req.tool)
            .cloned();
        let derived = match &amount_arg {
            Some(arg) => args
                .get(arg)
                .and_then(serde_json::Value::as_i64)
                .filter(|a| *a >= 0),
            None => Some(0),
        };
        if derived != Some(req.amount_cents) {
            return Err(Status::invalid_argument(match amount_arg {
                Some(arg) => format!(
                    "amount_cents must be the call's `{arg}` argument, a non-negative integer"
                ),
                None => format!("`{}` moves no money, so amount_cents must be 0", req.tool),
            }));
        }
        self.expire_due().await?;
        // A revoked session's requests are cancelled; it makes no new ones
        // (the broker learns of a revocation within a second or so).
        if db::is_revoked(&self.0.db, &req.session_id)
            .await
            .map_err(internal)?
        {
            let refused = Status::permission_denied("the session has been revoked");
            let rec = Record {
                session: req.session_id.clone(),
                subject: req.human.clone(),
                actors: req.actors.clone(),
                tool: req.tool.clone(),
                args,
                args_hash: req.args_hash.clone(),
                decision: "escalate".into(),
                rules: req.rules.clone(),
                status: "refused".into(),
                detail: format!("escalated by {}: {}", caller.sub, refused.message()),
                ..Record::default()
            };
            self.audit(Kind::Escalation, rec).await?;
            return Err(refused);
        }
        if let Some(existing) =
            db::find_open(&self.0.db, &req.session_id, &req.tool, &req.args_hash)
                .await
                .map_err(internal)?
        {
            return Ok(Response::new(existing));
        }
        let id = zt_proto::random_id("req_");
        let needs = self.0.rules.for_amount(req.amount_cents);
        db::insert(
            &self.0.db,
            &id,
            &req,
            zt_proto::now_ms(),
            self.0.request_ttl_ms,
            needs,
        )
        .await
        .map_err(internal)?;
        let created = self.get_or_404(&id).await?;
        self.audit(
            Kind::Escalation,
            request_record(
                &created,
                "escalate",
                status::PENDING,
                &if created.approvals_required > 1 {
                    format!(
                        "escalated by {}: {}; needs {} approvals",
                        caller.sub, created.reason, created.approvals_required
                    )
                } else {
                    format!("escalated by {}: {}", caller.sub, created.reason)
                },
            ),
        )
        .await?;
        self.event(
            "request_pending",
            &created,
            "escalate",
            format!(
                "{} {} for {} awaits approval",
                created.tool, created.args_json, created.human
            ),
        );
        self.notify();
        Ok(Response::new(created))
    }

    async fn wait_decision(
        &self,
        request: Request<WaitDecisionRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        self.service(&request)?;
        let req = request.into_inner();
        let wait = Duration::from_millis(u64::from(req.timeout_ms)).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let mut changed = self.0.changed.subscribe();
        loop {
            self.expire_due().await?;
            let current = self.get_or_404(&req.id).await?;
            if current.status != status::PENDING || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(current));
            }
            // Wake on any change, or at the deadline, or every second to expire.
            let tick = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            let _ = tokio::time::timeout_at(tick, changed.changed()).await;
        }
    }

    async fn report_execution(
        &self,
        request: Request<ReportExecutionRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        self.service(&request)?;
        let req = request.into_inner();
        let outcome = clip(&req.outcome)?;
        let moved = db::report_execution(&self.0.db, &req.id, req.ok, &outcome)
            .await
            .map_err(internal)?;
        let current = self.get_or_404(&req.id).await?;
        if moved {
            let st = if req.ok {
                status::EXECUTED
            } else {
                status::FAILED
            };
            let mut rec = request_record(&current, st, st, &outcome);
            rec.grant_id = req.grant_id.clone();
            self.audit(Kind::Result, rec).await?;
            self.event(
                "request_executed",
                &current,
                st,
                format!("{} {}: {}", current.id, st, outcome),
            );
            self.notify();
        }
        Ok(Response::new(redacted(current)))
    }

    async fn publish(&self, request: Request<Event>) -> Result<Response<PublishAck>, Status> {
        self.service(&request)?;
        let seq = self.publish_from_broker(vec![request.into_inner()]).await;
        Ok(Response::new(PublishAck { seq }))
    }

    async fn publish_batch(
        &self,
        request: Request<EventBatch>,
    ) -> Result<Response<PublishAck>, Status> {
        self.service(&request)?;
        let events = request.into_inner().events;
        if events.len() > MAX_EVENT_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_EVENT_BATCH} events per batch"
            )));
        }
        let seq = self.publish_from_broker(events).await;
        Ok(Response::new(PublishAck { seq }))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<Operator>, Status> {
        let op = self.operator_audited(&request, "who_am_i").await?;
        Ok(Response::new(Operator {
            name: op.sub,
            role: op.role.as_str().into(),
            limit_cents: op.limit,
        }))
    }

    async fn list_pending(
        &self,
        request: Request<ListPendingRequest>,
    ) -> Result<Response<ListPendingResponse>, Status> {
        self.operator_audited(&request, "list_pending").await?;
        self.expire_due().await?;
        let requests = db::pending(&self.0.db).await.map_err(internal)?;
        Ok(Response::new(ListPendingResponse {
            requests: requests.into_iter().map(redacted).collect(),
        }))
    }

    async fn get_request(
        &self,
        request: Request<GetRequestRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        self.operator_audited(&request, "get_request").await?;
        let id = request.into_inner().id;
        Ok(Response::new(redacted(self.get_or_404(&id).await?)))
    }

    async fn decide(
        &self,
        request: Request<DecideRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        let op = self.operator_audited(&request, "decide").await?;
        let DecideRequest {
            id,
            approve,
            reason,
        } = request.into_inner();
        let verb = if approve { "approve" } else { "deny" };
        let reason = clip(reason.trim())?;
        self.expire_due().await?;
        let req = self.get_or_404(&id).await?;

        // Every refusal below is audited with the operator and the reason.
        let refusal = match () {
            _ if !op.role.may_decide() => Some(Status::permission_denied(format!(
                "role {} may not approve or deny",
                op.role.as_str()
            ))),
            _ if req.status != status::PENDING => Some(Status::failed_precondition(format!(
                "request is already {}",
                req.status
            ))),
            _ if op.sub == req.human || req.actors.iter().any(|a| a == &op.sub) => Some(
                Status::permission_denied("you cannot decide a request made on your own behalf"),
            ),
            _ if !approve && reason.is_empty() => {
                Some(Status::invalid_argument("a reason is required to deny"))
            }
            _ if approve && req.approve_reason_required && reason.is_empty() => {
                Some(Status::invalid_argument(format!(
                    "a reason is required to approve an amount above {}",
                    zt_proto::money::dollars(self.0.rules.reason_to_approve_above_cents)
                )))
            }
            _ if approve && op.role == token::Role::Approver && req.amount_cents > op.limit => {
                Some(Status::permission_denied(format!(
                    "amount {} exceeds your approval limit {}",
                    zt_proto::money::dollars(req.amount_cents),
                    zt_proto::money::dollars(op.limit)
                )))
            }
            _ => None,
        };
        if let Some(status) = refusal {
            return Err(self.refuse(&req, &op, verb, status).await);
        }

        let outcome = db::vote(
            &self.0.db,
            &id,
            &op.sub,
            approve,
            &reason,
            zt_proto::now_ms(),
            |approvers| self.sign_grant(&req, approvers),
        )
        .await;
        // The status this vote left the request in (by the time it is read
        // back, the broker may already have run an approved one).
        let (grant_id, new_status) = match outcome {
            Ok(VoteOutcome::Decided { grant_id }) => {
                let st = if approve {
                    status::APPROVED
                } else {
                    status::DENIED
                };
                (grant_id, st)
            }
            Ok(VoteOutcome::Counted) => (None, status::PENDING),
            Ok(VoteOutcome::NotPending) => {
                let status = Status::failed_precondition("request is no longer pending");
                return Err(self.refuse(&req, &op, verb, status).await);
            }
            Ok(VoteOutcome::AlreadyVoted) => {
                let status = Status::already_exists("you already voted on this request");
                return Err(self.refuse(&req, &op, verb, status).await);
            }
            Err(VoteError::Db(e)) => return Err(internal(e)),
            Err(VoteError::Seal(e)) => return Err(internal(e)),
        };
        let decided = self.get_or_404(&id).await?;
        let detail = if decided.approvals_required > 1 && approve {
            if reason.is_empty() {
                tally(&decided)
            } else {
                format!("{}: {reason}", tally(&decided))
            }
        } else {
            reason.clone()
        };
        let mut rec = request_record(&decided, verb, new_status, &detail);
        rec.subject = op.sub.clone();
        if let Some(gid) = &grant_id {
            rec.grant_id = gid.clone();
        }
        self.audit(Kind::Approval, rec).await?;
        if new_status == status::PENDING {
            self.event(
                "request_voted",
                &decided,
                "voted",
                format!("{} {verb} by {}: {detail}", decided.id, op.sub),
            );
        } else {
            self.event(
                "request_decided",
                &decided,
                new_status,
                format!("{} {new_status} by {}: {detail}", decided.id, op.sub),
            );
        }
        self.notify();
        Ok(Response::new(redacted(decided)))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<ApprovalRequest>, Status> {
        let op = self.operator_audited(&request, "cancel").await?;
        let CancelRequest { id, reason } = request.into_inner();
        let reason = clip(reason.trim())?;
        self.expire_due().await?;
        let req = self.get_or_404(&id).await?;

        // Every refusal below is audited with the operator and the reason.
        let refusal = match () {
            _ if op.role != token::Role::Admin => Some(Status::permission_denied(format!(
                "role {} may not cancel requests (admin only)",
                op.role.as_str()
            ))),
            _ if req.status != status::PENDING => Some(Status::failed_precondition(format!(
                "request is already {}",
                req.status
            ))),
            _ if reason.is_empty() => {
                Some(Status::invalid_argument("a reason is required to cancel"))
            }
            _ => None,
        };
        if let Some(status) = refusal {
            return Err(self.refuse(&req, &op, "cancel", status).await);
        }
        let why = format!("cancelled by {}: {reason}", op.sub);
        let moved = db::cancel(&self.0.db, &id, &why, zt_proto::now_ms())
            .await
            .map_err(internal)?;
        if !moved {
            let status = Status::failed_precondition("request is no longer pending");
            return Err(self.refuse(&req, &op, "cancel", status).await);
        }
        let cancelled = self.get_or_404(&id).await?;
        let mut rec = request_record(&cancelled, "cancel", status::CANCELLED, &reason);
        rec.subject = op.sub.clone();
        self.audit(Kind::Approval, rec).await?;
        self.event(
            "request_decided",
            &cancelled,
            status::CANCELLED,
            format!("{} {why}", cancelled.id),
        );
        self.notify();
        Ok(Response::new(redacted(cancelled)))
    }

    async fn list_revoked(
        &self,
        request: Request<ListRevokedRequest>,
    ) -> Result<Response<RevokedSessions>, Status> {
        self.service(&request)?;
        let now_ms = zt_proto::now_ms();
        let req = request.into_inner();
        let limit = match i64::from(req.limit) {
            0 => db::REVOCATION_PAGE,
            n => n.min(db::REVOCATION_PAGE),
        };
        let after = req.after_seq.max(0);
        let rows = db::revoked_after(&self.0.db, after, limit)
            .await
            .map_err(internal)?;
        let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit;
        let last_seq = rows.last().map_or(after, |r| r.0);
        Ok(Response::new(RevokedSessions {
            sessions: rows
                .into_iter()
                .map(|(seq, session_id, at_ms, reason)| Revoked {
                    session_id,
                    at_ms,
                    reason,
                    seq,
                })
                .collect(),
            now_ms,
            more,
            last_seq,
        }))
    }

    async fn issue_session(
        &self,
        request: Request<IssueSessionRequest>,
    ) -> Result<Response<SessionToken>, Status> {
        let launcher = self.launcher(&request).await?;
        let req = request.into_inner();
        let ttl = if req.ttl_secs == 0 {
            token::DEFAULT_SESSION_TTL_SECS.min(launcher.max_session_ttl)
        } else {
            i64::from(req.ttl_secs)
        };
        // A launcher bound to a scope issues sessions within it; asked for
        // none, it gets exactly that scope.
        let scope = if req.scope.is_empty() {
            launcher.scope.clone()
        } else {
            req.scope
        };
        launcher
            .may_issue(&req.human, &req.agent, &scope, ttl)
            .map_err(Status::permission_denied)?;
        let (agent, human) = (req.agent, req.human);
        let session = setup::SessionRequest {
            agent: agent.clone(),
            human: human.clone(),
            ttl_secs: Some(ttl),
            scope,
            launcher: Some(launcher.sub.clone()),
            continues: None,
        };
        let (token, claims) =
            setup::issue_session(&self.0.layout, &self.0.stack, &self.0.keys, &session)
                .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        db::record_launch(
            &self.0.db,
            &claims.sid,
            &launcher.sub,
            &human,
            &agent,
            zt_proto::now_ms(),
        )
        .await
        .map_err(internal)?;
        self.session_record(
            &claims,
            "session_issued",
            &format!("launcher:{}", launcher.sub),
        )
        .await?;
        Ok(Response::new(Self::session_response(token, &claims)))
    }

    async fn refresh_session(
        &self,
        request: Request<RefreshSessionRequest>,
    ) -> Result<Response<SessionToken>, Status> {
        let launcher = self.launcher(&request).await?;
        let req = request.into_inner();
        let expect = Expect {
            issuer: &self.0.stack.issuer,
            audience: &self.0.stack.broker_audience,
        };
        let old: token::SessionClaims = self
            .0
            .operator_keys
            .verify(&req.token, TokenType::Session, &expect)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let mine = format!("launcher:{}", launcher.sub);
        if !old.chain().contains(&mine) {
            return Err(Status::permission_denied(
                "this session was not started by this launcher",
            ));
        }
        if db::is_revoked(&self.0.db, &old.sid)
            .await
            .map_err(internal)?
        {
            return Err(Status::permission_denied(
                token::TokenError::Revoked.to_string(),
            ));
        }
        let ttl = if req.ttl_secs == 0 {
            token::DEFAULT_SESSION_TTL_SECS.min(launcher.max_session_ttl)
        } else {
            i64::from(req.ttl_secs)
        };
        let scope: Vec<String> = old.scope.split_whitespace().map(str::to_owned).collect();
        // The launcher presenting it must still be allowed to issue it.
        launcher
            .may_issue(&old.sub, old.agent(), &scope, ttl)
            .map_err(Status::permission_denied)?;
        let session = setup::SessionRequest {
            agent: old.agent().to_owned(),
            human: old.sub.clone(),
            ttl_secs: Some(ttl),
            scope,
            launcher: Some(launcher.sub.clone()),
            continues: Some((
                old.sid.clone(),
                if old.auth_time > 0 {
                    old.auth_time
                } else {
                    old.iat
                },
            )),
        };
        let (token, claims) =
            setup::issue_session(&self.0.layout, &self.0.stack, &self.0.keys, &session)
                .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        self.session_record(&claims, "session_refreshed", &mine)
            .await?;
        Ok(Response::new(Self::session_response(token, &claims)))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenReply>, Status> {
        let op = self.operator_audited(&request, "token_revoked").await?;
        if op.role != token::Role::Admin {
            return Err(Status::permission_denied(format!(
                "role {} may not revoke credentials",
                op.role.as_str()
            )));
        }
        let req = request.into_inner();
        let jti = req.jti.trim();
        if jti.is_empty() || jti.len() > 128 || !jti.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Status::invalid_argument(
                "jti must be 1 to 128 printable characters",
            ));
        }
        let reason = clip(req.reason.trim())?;
        let newly = db::revoke_token(&self.0.db, jti, &reason, &op.sub, zt_proto::now_ms())
            .await
            .map_err(internal)?;
        self.audit(
            Kind::Approval,
            Record {
                subject: op.sub.clone(),
                decision: "token_revoked".into(),
                status: "ok".into(),
                detail: format!("credential {jti} revoked: {reason}"),
                ..Record::default()
            },
        )
        .await?;
        Ok(Response::new(RevokeTokenReply {
            jti: jti.to_owned(),
            newly_revoked: newly,
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokedSessions>, Status> {
        // Admin operators may revoke any session; a launcher only the
        // sessions it started (revoking another's would let it cut off any
        // run, and cancel its pending approvals).
        let (by, launcher) = match (self.operator(&request).await, self.launcher(&request).await) {
            (Ok(op), _) if op.role == token::Role::Admin => (format!("operator:{}", op.sub), None),
            (Ok(op), _) => {
                return Err(Status::permission_denied(format!(
                    "role {} may not revoke sessions",
                    op.role.as_str()
                )));
            }
            (_, Ok(l)) => (format!("launcher:{}", l.sub), Some(l.sub)),
            (Err(e), Err(_)) => return Err(e),
        };
        let req = request.into_inner();
        if req.session_id.is_empty() || req.session_id.len() > 128 {
            return Err(Status::invalid_argument(
                "session_id must be 1 to 128 characters",
            ));
        }
        if let Some(name) = &launcher {
            let started_by = db::launcher_of(&self.0.db, &req.session_id)
                .await
                .map_err(internal)?;
            if started_by.as_deref() != Some(name.as_str()) {
                return Err(Status::permission_denied(
                    "this session was not started by this launcher",
                ));
            }
        }
        let reason = clip(req.reason.trim())?;
        let now_ms = zt_proto::now_ms();
        db::revoke(&self.0.db, &req.session_id, &reason, now_ms)
            .await
            .map_err(internal)?;
        self.audit(
            Kind::Approval,
            Record {
                session: req.session_id.clone(),
                subject: by.clone(),
                decision: "session_revoked".into(),
                status: "ok".into(),
                detail: reason.clone(),
                ..Record::default()
            },
        )
        .await?;
        self.0.hub.publish(Event {
            kind: "session_revoked".into(),
            session_id: req.session_id.clone(),
            decision: "revoked".into(),
            summary: format!("session {} revoked by {by}: {reason}", req.session_id),
            ..Event::default()
        });
        // Nothing a revoked session asked for may still be approved.
        self.cancel_session_requests(&req.session_id, &by, &reason)
            .await?;
        Ok(Response::new(RevokedSessions {
            sessions: vec![Revoked {
                session_id: req.session_id,
                at_ms: now_ms,
                reason,
                ..Revoked::default()
            }],
            now_ms,
            ..RevokedSessions::default()
        }))
    }

    type WatchEventsStream = ReceiverStream<Result<Event, Status>>;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.operator_audited(&request, "watch_events").await?;
        let from = request.into_inner().from_seq;
        let (backlog, mut rx) = self.0.hub.subscribe(from);
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut last = from;
            for e in backlog {
                last = e.seq;
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                match rx.recv().await {
                    Ok(e) if e.seq <= last => {}
                    Ok(e) => {
                        last = e.seq;
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "watcher fell {n} events behind; resume from seq {last}"
                            ))))
                            .await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

/// Runs the service until `shutdown` resolves. Prints `approval_url=...`
/// once listening and records it in the stack's `run/` directory.
pub async fn serve(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let identity = match &opts.tls {
        Tls::Off => {
            crate::tls::check_plaintext(opts.listen)?;
            None
        }
        Tls::Stack(names) => {
            let layout = Layout::new(&opts.data_dir);
            Some(crate::tls::server_identity(
                &layout,
                &layout.stack()?,
                names,
            )?)
        }
        Tls::Given { cert, key } => Some(crate::tls::given_identity(cert, key)?),
    };
    let service = Service::open(&opts).await?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let mut addr = listener.local_addr()?;
    // A wildcard listener is reached on loopback from this machine.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if identity.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}");
    match &opts.replica {
        None => service.0.layout.write_endpoint("approval", &url)?,
        Some(name) => service
            .0
            .layout
            .write_endpoint(&format!("approval-{name}"), &url)?,
    }

    let expirer = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if let Err(e) = expirer.expire_due().await {
                tracing::warn!(error = %e.message(), "expiring requests failed");
            }
        }
    });

    let summarizer = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            summarizer.summarize_refusals().await;
        }
    });

    tokio::spawn(service.clone().follow_policy_facts());
    if let zt_proto::db::Db::Postgres(pool) = &service.0.db {
        replicate_events(service.clone(), pool.clone()).await?;
    }

    println!("approval_url={url}");
    tracing::info!(%url, "approval service listening");
    let audit = service.clone();
    // Bounds against slow and greedy peers: connections capped and given
    // 10 s to start (crate::incoming), messages of at most 4 MiB each way,
    // at most 256 requests at once per connection, and a connection whose
    // peer stops answering HTTP/2 pings for 10 s is closed.
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = identity {
        server = server
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .context("the gRPC port's TLS certificate")?;
    }
    let served = server
        .concurrency_limit_per_connection(256)
        .max_concurrent_streams(Some(256))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .add_service(
            ApprovalServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(crate::incoming::bounded(listener), shutdown)
        .await
        .context("serving gRPC");
    // The refusals counted since the last summary, then sign the audit
    // chain's head before exiting.
    audit.summarize_refusals().await;
    audit.0.audit.close().await;
    served
}

/// Largest gRPC message the service accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The channel replicas of one stack tell each other about events on.
const EVENTS_CHANNEL: &str = "zt_events";
/// Largest NOTIFY payload PostgreSQL accepts is 8,000 bytes; events larger
/// than this are sent without their arguments.
const MAX_NOTIFY: usize = 7_000;

/// With PostgreSQL, replicas share their events: each event published here
/// goes out with `pg_notify` (tagged with this replica's id), and events
/// from the others are published to this replica's watchers and wake its
/// waiting `WaitDecision` calls. A console connected to any replica sees
/// every event; a decision on one replica reaches a broker waiting on
/// another at once (and within a second without notifications, since
/// waiters re-read the database).
async fn replicate_events(service: Service, pool: sqlx::PgPool) -> anyhow::Result<()> {
    use base64::Engine as _;
    use prost::Message as _;
    let me = zt_proto::random_id("replica_");
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .context("listening for other replicas' events")?;
    listener.listen(EVENTS_CHANNEL).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    service.0.hub.replicate_to(tx);
    let origin = me.clone();
    tokio::spawn(async move {
        while let Some(mut event) = rx.recv().await {
            let mut payload = encode_event(&origin, &event);
            if payload.len() > MAX_NOTIFY {
                event.args_json.clear();
                event.summary.truncate(200);
                payload = encode_event(&origin, &event);
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(&payload)
                .execute(&pool)
                .await
            {
                tracing::warn!(error = %e, "event not shared with other replicas");
            }
        }
    });
    tokio::spawn(async move {
        loop {
            match listener.recv().await {
                Ok(note) => {
                    let Some((from, body)) = note.payload().split_once(' ') else {
                        continue;
                    };
                    if from == me {
                        continue;
                    }
                    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(body) else {
                        continue;
                    };
                    let Ok(mut event) = Event::decode(bytes.as_slice()) else {
                        continue;
                    };
                    event.seq = 0;
                    service.0.hub.publish_local(event);
                    // A vote or decision elsewhere: wake this replica's waiters.
                    service.notify();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening to other replicas failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}

fn encode_event(origin: &str, event: &Event) -> String {
    use base64::Engine as _;
    use prost::Message as _;
    format!(
        "{origin} {}",
        base64::engine::general_purpose::STANDARD.encode(event.encode_to_vec())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "zt-approval-{tag}-{}-{}",
            std::process::id(),
            zt_proto::random_id("")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_missing_rule_file_means_the_shipped_rules() {
        let dir = temp_dir("no-detections");
        let rules = load_detections(&dir).expect("shipped rules");
        assert_eq!(rules.rule.len(), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_invalid_rule_file_is_an_error_naming_it_and_the_problem() {
        let dir = temp_dir("bad-detections");
        let path = dir.join(zt_policies::files::DETECTIONS);
        std::fs::write(
            &path,
            "[[rule]]\nid = \"x\"\nkind = \"denial_spike\"\nseverity = \"urgent\"\n",
        )
        .expect("write");
        let err = format!("{:#}", load_detections(&dir).expect_err("invalid"));
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("unknown variant `urgent`"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_approval_rules_file_means_the_shipped_rules() {
        let dir = temp_dir("no-approvals");
        let rules = load_approval_rules(&dir).expect("shipped rules");
        assert_eq!(rules, ApprovalRules::default());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_invalid_approval_rules_file_is_an_error_naming_it_and_the_problem() {
        let dir = temp_dir("bad-approvals");
        let path = dir.join(zt_policies::files::APPROVALS);
        std::fs::write(&path, "request_ttl_secs = 60\nquorum = 0\n").expect("write");
        let err = format!("{:#}", load_approval_rules(&dir).expect_err("invalid"));
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("`quorum`: must be between 1 and 5"), "{err}");
        std::fs::write(&path, "request_ttl_secs = 3\n").expect("write");
        assert_eq!(
            load_approval_rules(&dir).expect("valid").request_ttl(),
            Duration::from_secs(3)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tally_names_the_approvers_so_far() {
        let mut req = ApprovalRequest {
            approvals_required: 2,
            ..ApprovalRequest::default()
        };
        assert_eq!(tally(&req), "0 of 2 approvals");
        req.approvers = vec!["carol".into()];
        assert_eq!(tally(&req), "1 of 2 approvals (carol)");
    }

    #[test]
    fn alerts_become_audit_entries_and_events() {
        let alert = Alert {
            rule: "denial-spike".into(),
            kind: crate::detect::RuleKind::DenialSpike,
            severity: crate::detect::Severity::High,
            by: By::Session,
            subject: "sess_1".into(),
            count: 10,
            window_secs: 60,
            at_ms: 42,
            agent: "agent:x".into(),
            session: "sess_1".into(),
            human: "alice".into(),
            summary: "high denial-spike: session sess_1 had 10 denials within 1m".into(),
        };
        let rec = alert_record(&alert);
        assert_eq!(
            (rec.session.as_str(), rec.subject.as_str()),
            ("sess_1", "alice")
        );
        assert_eq!(rec.actors, ["agent:x"]);
        assert_eq!(rec.rules, ["denial-spike"]);
        assert_eq!(rec.decision, "alert");
        assert_eq!(rec.detail, alert.summary);
        let ev = alert_event(&alert);
        assert_eq!(ev.kind, "alert");
        assert_eq!((ev.time_ms, ev.agent.as_str()), (42, "agent:x"));
        assert_eq!(ev.rules, ["denial-spike"]);
    }
}
