//! A small REST/JSON API for the broker's `http` upstream tests, on a free
//! loopback port (prints `api_url=...`). Every route but `/count` wants
//! `Authorization: Bearer api-secret`, else 401.
//!
//! - `GET /v1/items/{id}`: `{id, raw_path}` (the path as it arrived);
//! - `POST /v1/items`: `{received: <the JSON body>}`;
//! - `GET /v1/refuse`: 409 with `{error: {message}}`;
//! - `POST /v1/boom`: 500 (counted);
//! - `GET /v1/big`: 2 MiB of JSON; `GET /v1/redirect`: 302 elsewhere;
//!   `GET /v1/slow`: answers after 30 s; `GET /v1/notjson`: text;
//! - `GET /count`: how many requests reached `/v1/boom`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "Bearer api-secret")
}

fn denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"message": "bad key"}})),
    )
        .into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let booms = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/v1/items/{id}",
            get(
                |headers: HeaderMap, uri: Uri, Path(id): Path<String>| async move {
                    if !authorized(&headers) {
                        return denied();
                    }
                    Json(json!({"id": id, "raw_path": uri.path()})).into_response()
                },
            ),
        )
        .route(
            "/v1/items",
            post(|headers: HeaderMap, Json(body): Json<Value>| async move {
                if !authorized(&headers) {
                    return denied();
                }
                Json(json!({"received": body})).into_response()
            }),
        )
        .route(
            "/v1/refuse",
            get(|headers: HeaderMap| async move {
                if !authorized(&headers) {
                    return denied();
                }
                (
                    StatusCode::CONFLICT,
                    Json(json!({"error": {"message": "item is locked\nby someone"}})),
                )
                    .into_response()
            }),
        )
        .route(
            "/v1/boom",
            post(
                |State(n): State<Arc<AtomicU64>>, headers: HeaderMap| async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    if !authorized(&headers) {
                        return denied();
                    }
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Json(json!({"error": "boom"})),
                    )
                        .into_response()
                },
            ),
        )
        .route(
            "/v1/big",
            get(|| async { Json(json!({"blob": "x".repeat(2 * 1024 * 1024)})) }),
        )
        .route(
            "/v1/redirect",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [("location", "http://127.0.0.1:9/steal")],
                )
                    .into_response()
            }),
        )
        .route(
            "/v1/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                Json(json!({}))
            }),
        )
        .route("/v1/notjson", get(|| async { "hello, not json" }))
        .route(
            "/count",
            get(|State(n): State<Arc<AtomicU64>>| async move {
                Json(json!({"boom": n.load(Ordering::SeqCst)}))
            }),
        )
        .with_state(booms);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("api_url=http://{}", listener.local_addr()?);
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(listener, app).await?;
    Ok(())
}
