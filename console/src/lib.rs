//! # zt-console: the operator console
//!
//! Where people meet the control plane: support leads approve or deny
//! escalated actions, on-call watches live agent activity, auditors verify
//! the log. Also the launcher of a local stack (`up`) and of the demo.
//!
//! The console is an operator's client: it holds an operator token, talks to
//! the approval service over gRPC, and reads the audit log read-only. It
//! links no broker code and reads no service's private key; when it runs a
//! stack it starts each service as its own process.
//!
//! - [`client`]: the operator's gRPC client.
//! - [`tui`]: the terminal UI.
//! - [`audit`]: `audit verify` and tallies.
//! - [`stack`]: starting and stopping a local stack.
//! - [`agent`]: the scripted agent (a real MCP client).
//! - [`demo`]: the demo, with or without the TUI.

pub mod agent;
pub mod audit;
pub mod audit_query;
pub mod client;
pub mod demo;
pub mod stack;
pub mod tui;
pub mod users;
