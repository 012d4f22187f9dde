//! The example backend a stack's broker fronts: a subscription business.
//!
//! - [`db`]: the records database (accounts, orders, refunds, plan changes,
//!   support articles), SQLite through sqlx with migrations and seed data.
//! - [`ledger`]: the only writes of money and plans, each one transaction
//!   re-checking its invariant.
//! - [`billing`]: the billing API (`zt-billing`), which performs those
//!   writes for a caller holding one of its API keys: the broker.
//!
//! Trust: this crate stands for systems the agent must never reach directly.
//! The billing service holds only digests of its API keys; the broker holds
//! a key. The service does its own IO (its database, its socket).

pub mod billing;
pub mod db;
pub mod ledger;
