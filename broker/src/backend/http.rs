//! HTTP upstreams: a REST/JSON API described as data
//! (`kind = "http"` in `upstreams.toml`).
//!
//! Each operation is one request: a method, a path whose `{NAME}`
//! placeholders are arguments percent-encoded as single path segments (so
//! no value can add a segment, climb with `..`, or change the host: the
//! base URL is fixed and the path starts at `/`), query parameters and a
//! JSON body built from templates, and the upstream's own credential header
//! (never the agent's token). Redirects are not followed; a response body
//! is read up to the cap and must be JSON. Outcomes for the model: 2xx →
//! the result; 401/403/407 → unavailable (the API refused the broker's
//! credential: the operator's problem, not the model's); other 4xx → a
//! safe business refusal (the declared message, made one bounded line);
//! 5xx, 3xx, timeouts, unreachable → unavailable.

use futures::future::BoxFuture;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value, json};

use super::upstreams::{Base, HttpSpec, OperationDecl};
use super::{Actor, BackendError, Output, Upstream};

/// What a path segment may carry unencoded (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An HTTP upstream.
#[derive(Debug)]
pub struct Http {
    spec: HttpSpec,
    /// The base URL (`None`: its stack endpoint was not found at start, so
    /// every call fails closed).
    base: Option<String>,
    client: reqwest::Client,
}

impl Http {
    /// The upstream of `spec`; an `endpoint` base is read from
    /// `DIR/run/NAME.url` through `endpoint` now, and `url` (a command-line
    /// override) wins over both.
    pub fn start(
        spec: HttpSpec,
        endpoint: impl Fn(&str) -> Option<String>,
        url: Option<&str>,
    ) -> Result<Http, BackendError> {
        let base = match (url, &spec.base) {
            (Some(u), _) => Some(u.trim_end_matches('/').to_owned()),
            (None, Base::Url(u)) => Some(u.clone()),
            (None, Base::Endpoint(name)) => {
                endpoint(name).map(|u| u.trim_end_matches('/').to_owned())
            }
        };
        if let Some(why) = &spec.unusable {
            tracing::error!(upstream = %spec.name, why, "the upstream is unusable: its calls fail closed");
        }
        if let Some(b) = &base {
            super::upstreams::check_base(b)
                .map_err(|m| BackendError::Unavailable(format!("upstream {}: {m}", spec.name)))?;
        } else {
            tracing::warn!(upstream = %spec.name, "no URL recorded for the upstream: its calls fail closed");
        }
        let client = super::upstream_client(&spec.name)?;
        Ok(Http { spec, base, client })
    }

    async fn request(
        &self,
        op: &OperationDecl,
        args: &Value,
        actor: &Actor<'_>,
    ) -> Result<Value, BackendError> {
        let name = &self.spec.name;
        let unavailable =
            |why: String| BackendError::Unavailable(format!("upstream {name}: {why}"));
        if let Some(why) = &self.spec.unusable {
            return Err(unavailable(why.clone()));
        }
        let Some(base) = &self.base else {
            return Err(unavailable("no URL".into()));
        };
        let path = render_path(&op.path, args).map_err(&unavailable)?;
        let method = reqwest::Method::from_bytes(op.method.as_bytes())
            .map_err(|e| unavailable(e.to_string()))?;
        let mut query = Vec::new();
        for (key, template) in &op.query {
            match render(template, args, actor) {
                None => {}
                Some(Value::String(s)) => query.push((key.as_str(), s)),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                    query.push((key.as_str(), v.to_string()))
                }
                Some(_) => return Err(unavailable(format!("query `{key}` is not a scalar"))),
            }
        }
        let mut url = reqwest::Url::parse(&format!("{base}{path}"))
            .map_err(|e| unavailable(format!("url: {e}")))?;
        // Belt and braces: whatever the arguments, the request goes to the
        // declared origin.
        let origin = reqwest::Url::parse(base)
            .map_err(|e| unavailable(format!("url: {e}")))?
            .origin();
        if url.origin() != origin {
            return Err(unavailable(
                "the request would leave the declared origin".into(),
            ));
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(&query);
        }
        let mut req = self
            .client
            .request(method, url)
            .timeout(self.spec.timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = &op.body {
            req = req.json(&render(body, args, actor).unwrap_or(Value::Null));
        }
        if let Some(c) = &self.spec.credential {
            let mut value = reqwest::header::HeaderValue::from_str(
                secrecy::ExposeSecret::expose_secret(&c.value),
            )
            .map_err(|_| unavailable("unusable credential".into()))?;
            value.set_sensitive(true);
            req = req.header(c.header.as_str(), value);
        }
        let mut response = req
            .send()
            .await
            .map_err(|e| unavailable(format!("{} {}: {e}", op.method, op.path)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| unavailable(format!("reading the response: {e}")))?
        {
            if body.len() + chunk.len() > self.spec.max_response_bytes {
                return Err(BackendError::TooLarge(format!(
                    "upstream {name}: the response is over {} bytes",
                    self.spec.max_response_bytes
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| unavailable(format!("{status}: not JSON ({e})")))?
        };
        if status.is_success() {
            let result = match op.result.as_deref() {
                None | Some("") => value,
                Some(pointer) => value.pointer(pointer).cloned().ok_or_else(|| {
                    unavailable(format!("the response has nothing at `{pointer}`"))
                })?,
            };
            return Ok(result);
        }
        match status.as_u16() {
            401 | 403 | 407 => Err(unavailable(format!(
                "the API refused the broker's credential ({status})"
            ))),
            400..=499 => {
                let message = op
                    .error_message
                    .as_deref()
                    .and_then(|p| value.pointer(p))
                    .and_then(Value::as_str)
                    .map(super::safe_message)
                    .filter(|m| !m.trim().is_empty())
                    .unwrap_or_else(|| "the request was refused".to_owned());
                Err(BackendError::Refused(message))
            }
            _ => Err(unavailable(format!("{} {}: {status}", op.method, op.path))),
        }
    }
}

impl Upstream for Http {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn call<'a>(
        &'a self,
        operation: &'a str,
        args: &'a Value,
        actor: &'a Actor<'a>,
    ) -> BoxFuture<'a, Result<Output, BackendError>> {
        Box::pin(async move {
            let Some(op) = self.spec.operations.get(operation) else {
                return Err(BackendError::Unavailable(format!(
                    "upstream {} declares no operation `{operation}`",
                    self.spec.name
                )));
            };
            self.request(op, args, actor).await.map(Output::Json)
        })
    }

    fn resumable(&self, operation: &str) -> bool {
        self.spec
            .operations
            .get(operation)
            .is_some_and(|op| op.resumable)
    }

    fn read_only(&self, operation: &str) -> bool {
        self.spec
            .operations
            .get(operation)
            .is_some_and(|op| op.method == "GET")
    }
}

/// Checks a path template: from `/`, no query or fragment, no empty, `.`
/// or `..` segment, `{NAME}` placeholders of letters, digits and `_`.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path `{path}` must start with /"));
    }
    if path.contains(['?', '#', '\\']) || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "path `{path}` must hold no query, fragment, backslash or space"
        ));
    }
    for segment in path[1..].split('/') {
        if segment == "." || segment == ".." || (segment.is_empty() && path != "/") {
            return Err(format!("path `{path}` has an empty, `.` or `..` segment"));
        }
    }
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("path `{path}`: unclosed {{"));
        };
        let name = &rest[open + 1..open + close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "path `{path}`: `{{{name}}}` is not an argument name"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("path `{path}`: stray }}"));
    }
    Ok(())
}

/// The path with each `{NAME}` replaced by the argument, encoded as one
/// segment. A missing, empty, `.`/`..` or non-scalar value is refused.
fn render_path(template: &str, args: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| "unclosed {".to_owned())?;
        let name = &rest[open + 1..open + close];
        let value = match args.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => {
                return Err(format!(
                    "path argument `{name}` is missing or not a string or integer"
                ));
            }
        };
        if value.is_empty() || value == "." || value == ".." {
            return Err(format!(
                "path argument `{name}` may not be empty, `.` or `..`"
            ));
        }
        out.push_str(&utf8_percent_encode(&value, SEGMENT).to_string());
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a query or body template (see [`super::upstreams::OperationDecl`]).
pub(crate) fn check_template(template: &Value) -> Result<(), String> {
    match template {
        Value::String(s) if s.starts_with('$') && !s.starts_with("$$") => {
            let known = matches!(
                s.as_str(),
                "$actor" | "$actor.session" | "$actor.human" | "$actor.grant_id"
            ) || s.strip_prefix("$args.").is_some_and(|n| {
                !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if known {
                Ok(())
            } else {
                Err(format!(
                    "`{s}`: expected $args.NAME, $actor, $actor.session, $actor.human or $actor.grant_id ($$ for a literal $)"
                ))
            }
        }
        Value::Array(items) => items.iter().try_for_each(check_template),
        Value::Object(map) => map.values().try_for_each(check_template),
        _ => Ok(()),
    }
}

/// A template filled in; `None`: an argument the call does not have (the
/// field is left out).
pub(crate) fn render(template: &Value, args: &Value, actor: &Actor<'_>) -> Option<Value> {
    match template {
        Value::String(s) if s.starts_with("$$") => Some(Value::String(s[1..].to_owned())),
        Value::String(s) if s.starts_with('$') => {
            if let Some(name) = s.strip_prefix("$args.") {
                return args.get(name).cloned();
            }
            let mut who = json!({ "session": actor.session, "human": actor.human });
            if let (Some(g), Value::Object(m)) = (actor.grant_id, &mut who) {
                m.insert("grant_id".into(), json!(g));
            }
            match s.as_str() {
                "$actor" => Some(who),
                "$actor.session" => Some(json!(actor.session)),
                "$actor.human" => Some(json!(actor.human)),
                "$actor.grant_id" => actor.grant_id.map(|g| json!(g)),
                _ => None,
            }
        }
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter_map(|v| render(v, args, actor))
                .collect(),
        )),
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .filter_map(|(k, v)| render(v, args, actor).map(|v| (k.clone(), v)))
                .collect::<Map<String, Value>>(),
        )),
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_arguments_stay_one_segment() {
        let args = json!({"id": "a b/../c?x#y", "n": 42, "dot": "..", "empty": ""});
        assert_eq!(
            render_path("/v1/items/{id}", &args).unwrap(),
            "/v1/items/a%20b%2F..%2Fc%3Fx%23y"
        );
        assert_eq!(render_path("/v1/{n}/x", &args).unwrap(), "/v1/42/x");
        for bad in ["/v1/{dot}", "/v1/{empty}", "/v1/{missing}"] {
            assert!(render_path(bad, &args).is_err(), "{bad}");
        }
        assert!(check_path("/v1/items/{id}").is_ok());
        for bad in [
            "v1",
            "/v1/../x",
            "/v1//x",
            "/v1?q=1",
            "/v1/{a-b}",
            "/v1/{x",
            "/v1/x}",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_take_arguments_and_the_actor() {
        let actor = Actor {
            session: "s1",
            human: "alice",
            grant_id: Some("g1"),
            progress: None,
        };
        let t = json!({"order": "$args.order_id", "key": "$args.idempotency_key", "who": "$actor",
                       "h": "$actor.human", "lit": "$$args.x", "n": 3});
        let v = render(&t, &json!({"order_id": "ord_1"}), &actor).unwrap();
        assert_eq!(
            v,
            json!({"order": "ord_1", "who": {"session": "s1", "human": "alice", "grant_id": "g1"},
                   "h": "alice", "lit": "$args.x", "n": 3})
        );
        assert!(check_template(&t).is_ok());
        assert!(check_template(&json!({"x": "$env.HOME"})).is_err());
        assert!(check_template(&json!(["$args."])).is_err());
    }
}
