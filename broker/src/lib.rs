//! # zt-broker: the MCP broker
//!
//! The only component that holds backend credentials. It exposes the narrow
//! tools of the example domain to agents as a real MCP server (Streamable
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
//! - [`backend`]: backends as adapters: the records database (sqlx) and the
//!   billing API (HTTP, with the API key).
//! - [`approval_client`]: the approval-service client (service token, never the agent's).
//! - [`setup`]: keys and private config.
//! - [`jwks`]: session-token keys from an external identity provider.

pub mod approval;
pub mod approval_client;
pub mod backend;
pub mod gate;
pub mod jwks;
pub mod ratelimit;
pub mod server;
pub mod setup;
pub mod state;

pub use server::{Options, serve};
