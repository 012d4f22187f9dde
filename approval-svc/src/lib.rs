//! # zt-approval: the approval service
//!
//! A separate trust domain that holds the stack's identity keys. It:
//!
//! - issues short-lived **session tokens** for agent runs and **operator
//!   tokens** for people at the console ([`setup`]);
//! - receives **escalations** from the broker when the policy says a human
//!   must decide, keeps them pending until operators approve (a quorum of
//!   distinct approvers above a threshold) or deny, an admin cancels them,
//!   their session is revoked, or they expire ([`service`], [`db`]), under
//!   approval rules kept as data ([`rules`]);
//! - on approval signs a **one-time grant** bound to the exact call, listing
//!   its approvers, which only the broker receives and redeems;
//! - fans **events** out to every watching console ([`hub`]);
//! - runs **detection rules** over the broker's events and raises alerts
//!   ([`detect`]);
//! - writes its own signed **audit chain**: every escalation, vote, refusal,
//!   cancellation, expiry, reported execution and alert.
//!
//! It never holds backend credentials and never executes a tool call.

pub mod db;
pub mod detect;
pub mod hub;
pub mod incoming;
pub mod rules;
pub mod service;
pub mod setup;
pub mod tls;

pub use service::{Options, serve};
