//! # zt-broker: the MCP broker
//!
//! The only component that holds backend credentials. It exposes the narrow
//! tools of its registry (the example domain's, and a team's own) to agents as a real MCP server (Streamable
//! HTTP at `/mcp`) and, for every call, re-verifies the session token,
//! validates the arguments against the tool's strict schema, fetches the
//! attributes the policy needs from the backend, asks the policy engine,
//! escalates to a human when the policy says so, redeems the one-time grant
//! that comes back, executes, and writes its own audit chain.
//!
//! Why a separate process: the agent's own pre-tool hook runs inside the
//! agent's process, and a compromised agent can skip it. The broker is a
//! second, independent check in its own trust domain; only it can reach
//! the backend.
//!
//! - [`server`]: HTTP, bearer authentication, MCP handler.
//! - [`gate`]: the call path.
//! - [`approval`]: escalation, waiting with progress notifications, grant
//!   redemption (exactly once), and the built-in `approval_status` tool.
//! - [`backend`]: the upstreams, declared as data, one module per kind
//!   (MCP, HTTP, SQL).
//! - [`admission`]: admitting an upstream's tool (strict schema, Cedar
//!   action, fingerprint) and telling what changed since.
//! - [`admit`]: the `zt-broker admit` command.
//! - [`redact`]: the screen every tool result passes (the broker's
//!   credentials and configured patterns cut out).
//! - [`quarantine`]: tools whose upstream definition drifted from the
//!   admitted one, refused until re-admitted.
//! - [`approval_client`]: the approval-service client (service token, never the agent's).
//! - [`setup`]: keys and private config.
//! - [`jwks`]: session-token keys from an external identity provider.

pub mod admission;
pub mod admit;
pub mod approval;
pub mod approval_client;
pub mod backend;
pub mod gate;
pub mod jwks;
pub mod ledger;
pub mod quarantine;
pub mod ratelimit;
pub mod redact;
pub mod server;
pub mod setup;
pub mod state;

pub use server::{Options, serve};
