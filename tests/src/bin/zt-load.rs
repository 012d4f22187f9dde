//! A load generator for MCP servers over Streamable HTTP: N concurrent MCP
//! sessions, each its own rmcp client over its own keep-alive reqwest client
//! (and its own session token when given several), call one tool in a closed
//! loop for a fixed time after a warm-up. Reports calls/s, p50, p99, max and
//! errors per session count, and, for processes named with `--cpu-pid`,
//! the CPU time each spent per call in the measured window (utime + stime
//! of `/proc/PID/stat`, read as the window opens and closes).
//! `scripts/bench-broker` runs it against the broker and against
//! `zt-bare-mcp`; `scripts/bench-upstream` against `zt-bare-mcp` directly
//! and behind the broker as an upstream.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio::sync::Barrier;

/// Load generator: closed-loop MCP `tools/call` over Streamable HTTP.
#[derive(Debug, Parser)]
#[command(name = "zt-load")]
struct Args {
    /// The MCP endpoint (loopback only), e.g. http://127.0.0.1:PORT/mcp.
    #[arg(long)]
    url: String,
    /// A bearer token; repeat to give each session its own (used round-robin).
    /// None for a server without authentication.
    #[arg(long)]
    token: Vec<String>,
    /// A file of bearer tokens, one a line (added to --token).
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// Session counts to measure, in order, e.g. 1,8.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    sessions: Vec<usize>,
    /// Measured time per session count (e.g. 10s, 1500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before measuring, per session count (not counted).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// The tool to call.
    #[arg(long, default_value = "lookup_account")]
    tool: String,
    /// The tool's arguments (a JSON object).
    #[arg(long, default_value = r#"{"account_id":"acct_1001"}"#)]
    args: String,
    /// A field every successful result must carry in its structured content
    /// (a result without it counts as an error); empty to skip.
    #[arg(long, default_value = "account_id")]
    expect_field: String,
    /// Upper bound on calls per session per session count (with --duration).
    #[arg(long, default_value_t = 2_000_000)]
    max_calls: u64,
    /// A label for the server under test.
    #[arg(long, default_value = "server")]
    label: String,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON results to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// A previous run's JSON (`--json-out`) to compare against side by side
    /// (this run / baseline).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// With --baseline: a target for p50 (this / baseline) at every session
    /// count; the verdict is printed.
    #[arg(long)]
    max_p50_ratio: Option<f64>,
    /// A throughput target, SESSIONS=CALLS_PER_SEC (e.g. 8=3000); the
    /// verdict is printed.
    #[arg(long, value_parser = parse_rate_target)]
    min_rate: Vec<(u64, f64)>,
    /// A process whose CPU time per call to report, LABEL=PID (`self`: this
    /// load generator); repeat for several. Linux only (`/proc`).
    #[arg(long, value_parser = parse_cpu_pid)]
    cpu_pid: Vec<(String, u32)>,
}

fn parse_cpu_pid(s: &str) -> Result<(String, u32), String> {
    let (label, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected LABEL=PID"))?;
    let label = label.trim();
    if label.is_empty() {
        return Err(format!("`{s}`: empty label"));
    }
    let pid = match pid.trim() {
        "self" => std::process::id(),
        p => p.parse().map_err(|_| format!("`{s}`: bad pid"))?,
    };
    Ok((label.to_owned(), pid))
}

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User plus system CPU time of every thread of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses, so the
    // fields are counted from after the last `)`; the first there is field
    // 3 (state), so utime (14) and stime (15) are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        let v: u64 = fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: no field {}", i + 3))?;
        Ok(v as f64)
    };
    Ok((tick(11)? + tick(12)?) / clock_ticks())
}

/// What one process spent in a measured window.
struct Cpu {
    label: String,
    pid: u32,
    seconds: f64,
}

fn parse_rate_target(s: &str) -> Result<(u64, f64), String> {
    let (n, r) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected SESSIONS=CALLS_PER_SEC"))?;
    let n = n
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: bad session count"))?;
    let r = r.trim().parse().map_err(|_| format!("`{s}`: bad rate"))?;
    Ok((n, r))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num.parse().map_err(|_| format!("bad duration `{s}`"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in `{s}` (ms, s or m)")),
    };
    if !(0.0..=3600.0).contains(&secs) {
        return Err(format!("duration `{s}` out of range (at most 1h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

type Client = rmcp::service::RunningService<rmcp::RoleClient, ()>;

async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One keep-alive pooled HTTP client per session.
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4)
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(t) = token {
        config = config.auth_header(t);
    }
    let transport = StreamableHttpClientTransport::with_client(http, config);
    ().serve(transport)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// What one session saw in the measured window.
#[derive(Default)]
struct SessionStats {
    /// Latencies of successful calls, in microseconds.
    latencies_us: Vec<u32>,
    /// Error kind -> count.
    errors: BTreeMap<String, u64>,
    /// A sample message per error kind.
    samples: BTreeMap<String, String>,
}

impl SessionStats {
    fn error(&mut self, kind: String, sample: String) {
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.samples.entry(kind).or_insert(sample);
    }
}

/// Classifies a tool result: `None` when it is a good answer.
fn check_result(r: &CallToolResult, expect_field: &str) -> Option<(String, String)> {
    let text = || {
        r.content
            .first()
            .and_then(|c| c.as_text())
            .map(|t| t.text.chars().take(200).collect::<String>())
            .unwrap_or_default()
    };
    if r.is_error == Some(true) {
        let sc = r.structured_content.as_ref();
        let status = sc
            .and_then(|v| v.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("error");
        let rule = sc
            .and_then(|v| v.get("rules"))
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = if rule.is_empty() {
            format!("tool error: {status}")
        } else {
            format!("tool error: {status} ({rule})")
        };
        return Some((kind, text()));
    }
    if !expect_field.is_empty()
        && r.structured_content
            .as_ref()
            .and_then(|v| v.get(expect_field))
            .is_none()
    {
        return Some((format!("result without `{expect_field}`"), text()));
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn run_session(
    client: Client,
    params: CallToolRequestParams,
    expect_field: Arc<str>,
    barrier: Arc<Barrier>,
    warmup: Duration,
    duration: Duration,
    max_calls: u64,
) -> SessionStats {
    let mut stats = SessionStats::default();
    barrier.wait().await;
    let start = Instant::now();
    let measure_from = start + warmup;
    let measure_to = measure_from + duration;
    let mut calls = 0u64;
    while calls < max_calls {
        let t0 = Instant::now();
        if t0 >= measure_to {
            break;
        }
        calls += 1;
        let outcome = client.call_tool(params.clone()).await;
        let t1 = Instant::now();
        // Only calls that start and finish inside the window count.
        let counted = t0 >= measure_from && t1 <= measure_to;
        match outcome {
            Ok(r) => match check_result(&r, &expect_field) {
                None if counted => {
                    let us = (t1 - t0).as_micros().min(u128::from(u32::MAX));
                    stats.latencies_us.push(us as u32);
                }
                Some((kind, sample)) if counted => stats.error(kind, sample),
                _ => {}
            },
            Err(e) => {
                if counted {
                    stats.error("transport/protocol error".into(), e.to_string());
                }
                // Do not spin on a dead server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let _ = client.cancel().await;
    stats
}

/// Results for one session count.
struct Level {
    sessions: usize,
    calls: u64,
    seconds: f64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    mean_us: f64,
    errors: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
    /// CPU of the `--cpu-pid` processes over the window.
    cpu: Vec<Cpu>,
}

impl Level {
    fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
    /// Calls that started and finished in the window, good or not: what the
    /// window's CPU time is divided by.
    fn completed(&self) -> u64 {
        self.calls + self.error_count()
    }
    fn cpu_us_per_call(&self, c: &Cpu) -> f64 {
        c.seconds * 1e6 / self.completed() as f64
    }
    fn to_json(&self) -> Value {
        let mut v = json!({
            "sessions": self.sessions,
            "calls": self.calls,
            "seconds": self.seconds,
            "calls_per_sec": self.calls_per_sec(),
            "p50_ms": f64::from(self.p50_us) / 1000.0,
            "p99_ms": f64::from(self.p99_us) / 1000.0,
            "max_ms": f64::from(self.max_us) / 1000.0,
            "mean_ms": self.mean_us / 1000.0,
            "errors": self.error_count(),
            "error_kinds": self.errors,
            "error_samples": self.samples,
        });
        if !self.cpu.is_empty() {
            let cpu: serde_json::Map<String, Value> = self
                .cpu
                .iter()
                .map(|c| {
                    (
                        c.label.clone(),
                        json!({
                            "pid": c.pid,
                            "cpu_s": c.seconds,
                            "calls": self.completed(),
                            "us_per_call": self.cpu_us_per_call(c),
                            "cores": c.seconds / self.seconds,
                        }),
                    )
                })
                .collect();
            v["cpu"] = Value::Object(cpu);
        }
        v
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn measure(args: &Args, tokens: &[String], sessions: usize) -> anyhow::Result<Level> {
    let arguments: Value = serde_json::from_str(&args.args).context("--args is not JSON")?;
    let Value::Object(arguments) = arguments else {
        bail!("--args must be a JSON object");
    };
    let params = CallToolRequestParams::new(args.tool.clone()).with_arguments(arguments);
    let mut clients = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let token = (!tokens.is_empty()).then(|| tokens[i % tokens.len()].as_str());
        clients.push(connect(&args.url, token).await?);
    }
    // The sessions and this task start together, so the CPU samples below
    // open and close the same window the sessions count calls in.
    let barrier = Arc::new(Barrier::new(sessions + 1));
    let expect: Arc<str> = Arc::from(args.expect_field.as_str());
    let handles: Vec<_> = clients
        .into_iter()
        .map(|c| {
            tokio::spawn(run_session(
                c,
                params.clone(),
                expect.clone(),
                barrier.clone(),
                args.warmup,
                args.duration,
                args.max_calls,
            ))
        })
        .collect();
    barrier.wait().await;
    let start = tokio::time::Instant::now();
    let mut cpu = Vec::new();
    if !args.cpu_pid.is_empty() {
        tokio::time::sleep_until(start + args.warmup).await;
        let before = args
            .cpu_pid
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        tokio::time::sleep_until(start + args.warmup + args.duration).await;
        for ((label, pid), b) in args.cpu_pid.iter().zip(before) {
            cpu.push(Cpu {
                label: label.clone(),
                pid: *pid,
                seconds: cpu_seconds(*pid)? - b,
            });
        }
    }
    let mut all = SessionStats::default();
    for h in handles {
        let s = h.await.context("a session task failed")?;
        all.latencies_us.extend(s.latencies_us);
        for (k, n) in s.errors {
            *all.errors.entry(k).or_default() += n;
        }
        for (k, v) in s.samples {
            all.samples.entry(k).or_insert(v);
        }
    }
    let mut lat = all.latencies_us;
    lat.sort_unstable();
    let mean_us = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&v| f64::from(v)).sum::<f64>() / lat.len() as f64
    };
    Ok(Level {
        sessions,
        calls: lat.len() as u64,
        seconds: args.duration.as_secs_f64(),
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
        max_us: lat.last().copied().unwrap_or(0),
        mean_us,
        errors: all.errors,
        samples: all.samples,
        cpu,
    })
}

fn print_table(label: &str, levels: &[Level]) {
    println!("{label}");
    println!(
        "{:>8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8}",
        "sessions", "calls", "calls/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for l in levels {
        println!(
            "{:>8} {:>10} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>8}",
            l.sessions,
            l.calls,
            l.calls_per_sec(),
            f64::from(l.p50_us) / 1000.0,
            f64::from(l.p99_us) / 1000.0,
            f64::from(l.max_us) / 1000.0,
            l.error_count()
        );
        for (kind, n) in &l.errors {
            let sample = l.samples.get(kind).map(String::as_str).unwrap_or("");
            println!("{:>8}   {n} x {kind}: {sample}", "");
        }
        for c in &l.cpu {
            println!(
                "{:>8}   cpu {} (pid {}): {:.1} us/call ({:.2} s over {} calls, {:.2} cores)",
                "",
                c.label,
                c.pid,
                l.cpu_us_per_call(c),
                c.seconds,
                l.completed(),
                c.seconds / l.seconds
            );
        }
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn print_comparison(label: &str, results: &Value, baseline: &Value, max_p50_ratio: Option<f64>) {
    let base_label = baseline
        .get("label")
        .and_then(Value::as_str)
        .unwrap_or("baseline");
    let empty = Vec::new();
    let levels = |v: &Value| {
        v.get("levels")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .clone()
    };
    let base = levels(baseline);
    let mut verdicts = Vec::new();
    println!();
    println!("{label} vs {base_label}, same run (ratio = {label} / {base_label})");
    println!(
        "{:>8} | {:>20} | {:>20} | {:>20} | {:>8} | {:>11}",
        "sessions",
        "calls/s (this|base)",
        "p50 ms (this|base)",
        "p99 ms (this|base)",
        "p50 x",
        "calls/s x"
    );
    for l in levels(results) {
        let n = l.get("sessions").and_then(Value::as_u64);
        let Some(b) = base
            .iter()
            .find(|b| b.get("sessions").and_then(Value::as_u64) == n)
        else {
            continue;
        };
        println!(
            "{:>8} | {:>9.0} | {:>8.0} | {:>9.3} | {:>8.3} | {:>9.3} | {:>8.3} | {:>7.2}x | {:>10.2}x",
            n.unwrap_or(0),
            num(&l, "calls_per_sec"),
            num(b, "calls_per_sec"),
            num(&l, "p50_ms"),
            num(b, "p50_ms"),
            num(&l, "p99_ms"),
            num(b, "p99_ms"),
            num(&l, "p50_ms") / num(b, "p50_ms"),
            num(&l, "calls_per_sec") / num(b, "calls_per_sec"),
        );
        if let Some(max) = max_p50_ratio {
            let ratio = num(&l, "p50_ms") / num(b, "p50_ms");
            verdicts.push(format!(
                "target: p50 overhead at most {max:.2}x at {} session(s): {ratio:.2}x, {}",
                n.unwrap_or(0),
                if ratio <= max { "MET" } else { "MISSED" }
            ));
        }
    }
    let cpu_line = |l: &Value| {
        l.get("cpu").and_then(Value::as_object).map(|m| {
            m.iter()
                .map(|(k, c)| format!("{k} {:.1}", num(c, "us_per_call")))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let mut cpu_header = false;
    for l in levels(results) {
        let n = l.get("sessions").and_then(Value::as_u64);
        let base_cpu = base
            .iter()
            .find(|b| b.get("sessions").and_then(Value::as_u64) == n)
            .and_then(cpu_line);
        let Some(this_cpu) = cpu_line(&l) else {
            continue;
        };
        if !cpu_header {
            println!("CPU per call, us (this run; {base_label} run in brackets)");
            cpu_header = true;
        }
        match base_cpu {
            Some(b) => println!("{:>8} | {this_cpu} [{b}]", n.unwrap_or(0)),
            None => println!("{:>8} | {this_cpu}", n.unwrap_or(0)),
        }
    }
    for v in verdicts {
        println!("{v}");
    }
}

fn print_rate_targets(label: &str, levels: &[Level], targets: &[(u64, f64)]) {
    for &(n, min) in targets {
        let got = levels
            .iter()
            .find(|l| l.sessions as u64 == n)
            .map(Level::calls_per_sec);
        match got {
            Some(r) => println!(
                "target: {label} at least {min:.0} calls/s at {n} session(s): {r:.0}, {}",
                if r >= min { "MET" } else { "MISSED" }
            ),
            None => println!("target: {label} at {n} session(s): not measured"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url: reqwest::Url = args.url.parse().context("--url")?;
    match url.host_str() {
        Some("127.0.0.1" | "localhost" | "[::1]") => {}
        other => bail!("zt-load sends traffic to loopback only, not {other:?}"),
    }
    if args.sessions.is_empty() || args.sessions.iter().any(|&n| n == 0 || n > 256) {
        bail!("--sessions: counts between 1 and 256");
    }
    let mut tokens = args.token.clone();
    if let Some(f) = &args.tokens_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut levels = Vec::new();
    for &n in &args.sessions {
        let level = rt.block_on(measure(&args, &tokens, n))?;
        if !args.json {
            eprintln!(
                "{}: {n} session(s): {:.0} calls/s, p50 {:.3} ms",
                args.label,
                level.calls_per_sec(),
                f64::from(level.p50_us) / 1000.0
            );
        }
        levels.push(level);
    }
    let results = json!({
        "label": args.label,
        "url": args.url,
        "tool": args.tool,
        "tokens": tokens.len(),
        "duration_s": args.duration.as_secs_f64(),
        "warmup_s": args.warmup.as_secs_f64(),
        "levels": levels.iter().map(Level::to_json).collect::<Vec<_>>(),
    });
    if let Some(p) = &args.json_out {
        std::fs::write(p, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print_table(&args.label, &levels);
    }
    if let Some(b) = &args.baseline {
        let text =
            std::fs::read_to_string(b).with_context(|| format!("reading {}", b.display()))?;
        let baseline: Value = serde_json::from_str(&text).context("parsing the baseline")?;
        print_comparison(&args.label, &results, &baseline, args.max_p50_ratio);
    }
    print_rate_targets(&args.label, &levels, &args.min_rate);
    let errors: u64 = levels.iter().map(Level::error_count).sum();
    if errors > 0 {
        eprintln!("{}: {errors} call(s) failed", args.label);
        std::process::exit(1);
    }
    Ok(())
}
