//! What the broker knows about a call beyond its arguments and resource:
//! the budgets it consumes over time (`budgets.toml`) and whether its
//! session has received outsiders' content (taint). Both live in the
//! broker's state database — on PostgreSQL shared by every replica — and
//! reach the policy as context (`context.budgets.NAME`,
//! `context.session.tainted`).
//!
//! A budget is measured and consumed in one step with the decision: the
//! keys a call touches are locked (in this process by a striped mutex; on
//! PostgreSQL also by transaction-scoped advisory locks, so replicas queue
//! too), the consumption within each window is summed, the policy decides,
//! and a call that may run records its share before the lock is released
//! and before anything runs. Two concurrent refunds can therefore never
//! both be decided on the same total. A call that the upstream then
//! refuses outright gives its share back; one whose outcome is unknown
//! (a timeout) keeps it consumed.

use std::collections::{BTreeMap, HashSet};
use std::sync::RwLock;

use zt_policies::budgets::{Budget, Per, Sum};
use zt_policies::{Decision, DecisionRequest, Effect, PolicyBundle};
use zt_proto::db::Db;

/// Why a call's budgets could not be measured or consumed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database failed.
    #[error("the budget ledger failed: {0}")]
    Db(#[from] sqlx::Error),
    /// The call does not say what it consumes.
    #[error("{0}")]
    Unmeasurable(String),
}

/// Who makes a call, as budgets count it.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// The human acted for.
    pub human: &'a str,
    /// The agent.
    pub agent: &'a str,
    /// The session.
    pub session: &'a str,
}

/// The rows a call consumed, to give back if it did not run.
#[derive(Debug, Default)]
pub struct Reservation {
    ids: Vec<String>,
}

impl Reservation {
    /// Whether nothing was consumed.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One budget as a call touches it.
struct Touch {
    budget: String,
    key: String,
    since_ms: i64,
    prune_before_ms: i64,
    amount: i64,
}

const STRIPES: usize = 64;

/// The ledger of budgets and taint.
pub struct Ledger {
    db: Db,
    tainted: RwLock<HashSet<String>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Ledger {
    /// A ledger over the broker's state database.
    pub fn new(db: Db) -> Ledger {
        Ledger {
            db,
            tainted: RwLock::new(HashSet::new()),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// Whether `session` has received outsiders' content. Taint only ever
    /// grows, so this replica's own knowledge answers yes at once; with
    /// `shared`, a no is checked against what every replica recorded.
    pub async fn tainted(&self, session: &str, shared: bool) -> Result<bool, LedgerError> {
        if self
            .tainted
            .read()
            .map(|s| s.contains(session))
            .unwrap_or(true)
        {
            return Ok(true);
        }
        if !shared {
            return Ok(false);
        }
        let found: Option<String> = zt_proto::with_db!(&self.db, p => {
            sqlx::query_scalar("SELECT tool FROM session_taint WHERE session_id = $1")
                .bind(session)
                .fetch_optional(p)
                .await?
        });
        if found.is_some() {
            self.remember(session);
        }
        Ok(found.is_some())
    }

    fn remember(&self, session: &str) {
        if let Ok(mut s) = self.tainted.write() {
            s.insert(session.to_owned());
        }
    }

    /// Records that `session` received outsiders' content from `tool`,
    /// durably, before the content is released to the agent.
    pub async fn taint(&self, session: &str, tool: &str) -> Result<(), LedgerError> {
        if self
            .tainted
            .read()
            .map(|s| s.contains(session))
            .unwrap_or(false)
        {
            return Ok(());
        }
        zt_proto::with_db!(&self.db, p => {
            sqlx::query(
                "INSERT INTO session_taint (session_id, tool, at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (session_id) DO NOTHING",
            )
            .bind(session)
            .bind(tool)
            .bind(zt_proto::now_ms())
            .execute(p)
            .await
            .map(|_| ())?
        });
        self.remember(session);
        Ok(())
    }

    /// Decides `req` with its budgets measured into its context, and, when
    /// the decision lets the call run, consumes them — in one step per key
    /// (see the module docs).
    pub async fn decide(
        &self,
        bundle: &PolicyBundle,
        req: &mut DecisionRequest,
        who: Who<'_>,
    ) -> Result<(Decision, Reservation), LedgerError> {
        let tool = req.tool.clone();
        let budgets: Vec<&Budget> = bundle.budgets_of(&tool).collect();
        if budgets.is_empty() {
            return Ok((bundle.decide(req), Reservation::default()));
        }
        let mut touches = touches(bundle, &budgets, &tool, &req.args, who)?;
        let _guards = self.lock(&touches).await;
        let mut decided = None;
        let ids = self
            .step(&mut touches, who.session, &tool, |sums| {
                req.context.budgets = sums;
                let d = bundle.decide(req);
                let runs = matches!(d.effect, Effect::Allow | Effect::Constrain);
                let amounts = if runs {
                    Some(amounts(bundle, &budgets, &tool, &d.args))
                } else {
                    None
                };
                decided = Some(d);
                amounts.transpose()
            })
            .await?;
        let decision = decided
            .ok_or_else(|| LedgerError::Unmeasurable("the call was not decided".to_owned()))?;
        Ok((decision, Reservation { ids }))
    }

    /// Consumes the budgets of a call that runs without the policy's leave
    /// (an operator approved it).
    pub async fn consume(
        &self,
        bundle: &PolicyBundle,
        tool: &str,
        args: &serde_json::Value,
        who: Who<'_>,
    ) -> Result<Reservation, LedgerError> {
        let budgets: Vec<&Budget> = bundle.budgets_of(tool).collect();
        if budgets.is_empty() {
            return Ok(Reservation::default());
        }
        let mut touches = touches(bundle, &budgets, tool, args, who)?;
        let _guards = self.lock(&touches).await;
        let ids = self
            .step(&mut touches, who.session, tool, |_| {
                amounts(bundle, &budgets, tool, args).map(Some)
            })
            .await?;
        Ok(Reservation { ids })
    }

    /// Gives back what a call consumed (it did not run).
    pub async fn release(&self, r: Reservation) {
        for id in r.ids {
            let done: Result<_, sqlx::Error> = zt_proto::with_db!(&self.db, p => {
                sqlx::query("DELETE FROM budget_uses WHERE id = $1")
                    .bind(&id)
                    .execute(p)
                    .await
                    .map(|_| ())
            });
            if let Err(e) = done {
                tracing::error!(error = %e, "could not give back a budget share; it stays consumed");
            }
        }
    }

    async fn lock(&self, touches: &[Touch]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = touches.iter().map(|t| stripe(&t.budget, &t.key)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }

    /// Sums each touched budget's window, asks `decide` how much each
    /// consumes (`None`: nothing), and records that — on PostgreSQL in one
    /// transaction holding each key's advisory lock.
    async fn step(
        &self,
        touches: &mut [Touch],
        session: &str,
        tool: &str,
        decide: impl FnOnce(BTreeMap<String, i64>) -> Result<Option<Vec<i64>>, LedgerError>,
    ) -> Result<Vec<String>, LedgerError> {
        const SUM: &str = "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM budget_uses \
                           WHERE budget = $1 AND key = $2 AND at_ms > $3";
        const PRUNE: &str = "DELETE FROM budget_uses WHERE budget = $1 AND key = $2 AND at_ms < $3";
        const INSERT: &str = "INSERT INTO budget_uses (id, budget, key, at_ms, amount, session_id, tool) \
                              VALUES ($1, $2, $3, $4, $5, $6, $7)";
        let now = zt_proto::now_ms();
        let mut ids = Vec::new();
        macro_rules! run {
            ($conn:expr) => {{
                let mut sums = BTreeMap::new();
                for t in touches.iter() {
                    let used: i64 = sqlx::query_scalar(SUM)
                        .bind(&t.budget)
                        .bind(&t.key)
                        .bind(t.since_ms)
                        .fetch_one(&mut *$conn)
                        .await?;
                    sums.insert(t.budget.clone(), used);
                }
                if let Some(amounts) = decide(sums)? {
                    for (t, amount) in touches.iter_mut().zip(amounts) {
                        t.amount = amount;
                        let id = zt_proto::random_id("use");
                        sqlx::query(PRUNE)
                            .bind(&t.budget)
                            .bind(&t.key)
                            .bind(t.prune_before_ms)
                            .execute(&mut *$conn)
                            .await?;
                        sqlx::query(INSERT)
                            .bind(&id)
                            .bind(&t.budget)
                            .bind(&t.key)
                            .bind(now)
                            .bind(t.amount)
                            .bind(session)
                            .bind(tool)
                            .execute(&mut *$conn)
                            .await?;
                        ids.push(id);
                    }
                }
            }};
        }
        match &self.db {
            Db::Sqlite(pool) => {
                // One broker process per SQLite file: the stripes serialise.
                let mut conn = pool.acquire().await?;
                run!(conn);
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let mut locks: Vec<String> = touches
                    .iter()
                    .map(|t| format!("{}|{}", t.budget, t.key))
                    .collect();
                locks.sort();
                for l in &locks {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                        .bind(l)
                        .execute(&mut *tx)
                        .await?;
                }
                run!(tx);
                tx.commit().await?;
            }
        }
        Ok(ids)
    }
}

fn stripe(budget: &str, key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (budget, key).hash(&mut h);
    (h.finish() % STRIPES as u64) as usize
}

/// The budget keys a call touches.
fn touches(
    bundle: &PolicyBundle,
    budgets: &[&Budget],
    tool: &str,
    args: &serde_json::Value,
    who: Who<'_>,
) -> Result<Vec<Touch>, LedgerError> {
    let now = zt_proto::now_ms();
    budgets
        .iter()
        .map(|b| {
            let window = b.window().map_err(LedgerError::Unmeasurable)?.as_millis();
            let window = i64::try_from(window).unwrap_or(i64::MAX);
            let key = match b.per {
                Per::Human => format!("human:{}", who.human),
                Per::Agent => format!("agent:{}", who.agent),
                Per::Session => format!("session:{}", who.session),
                Per::Resource => match bundle.resource_id(tool, args) {
                    Some(id) => format!("resource:{id}"),
                    None => {
                        return Err(LedgerError::Unmeasurable(format!(
                            "budget `{}` counts per resource, but the call names none",
                            b.name
                        )));
                    }
                },
            };
            Ok(Touch {
                budget: b.name.clone(),
                key,
                since_ms: now.saturating_sub(window),
                // Kept for twice the window, so a longer window set later
                // still finds recent history.
                prune_before_ms: now.saturating_sub(window.saturating_mul(2)),
                amount: 0,
            })
        })
        .collect()
}

/// What a call with `args` consumes of each budget, in order.
fn amounts(
    bundle: &PolicyBundle,
    budgets: &[&Budget],
    tool: &str,
    args: &serde_json::Value,
) -> Result<Vec<i64>, LedgerError> {
    budgets
        .iter()
        .map(|b| match b.sum {
            Sum::Calls => Ok(1),
            Sum::Amount => {
                let spec = bundle.tool(tool).ok_or_else(|| {
                    LedgerError::Unmeasurable(format!("`{tool}` is not in the registry"))
                })?;
                match spec.amount(args) {
                    Ok(Some(cents)) => Ok(cents),
                    Ok(None) => Err(LedgerError::Unmeasurable(format!(
                        "budget `{}` sums amounts, but `{tool}` declares none",
                        b.name
                    ))),
                    Err(why) => Err(LedgerError::Unmeasurable(why)),
                }
            }
        })
        .collect()
}
