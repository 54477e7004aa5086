//! # api — the Ambient control plane's REST api
//!
//! Authenticates every caller (TokenReview), authorizes every route (SubjectAccessReview),
//! validates input strictly, publishes signed commands to JetStream and waits for their results,
//! serves reads from watch caches and live status over SSE. See `routes` for the route table.

pub mod auth;
pub mod authz;
pub mod bodies;
pub mod buckets;
pub mod cache;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod errors;
pub mod extract;
pub mod limits;
pub mod messages;
pub mod openapi;
pub mod ops;
pub mod parked;
pub mod pending;
pub mod purge;
pub mod reads;
pub mod routes;
pub mod runners;
pub mod sse;
pub mod state;
pub mod visibility;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{HeaderName, HeaderValue, Method};
use events::sealing::SealingPublicKey;
use events::service::Runtime;
use events::signing::CommandSigner;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::CorsLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::{Authenticator, CacheLimits};
use crate::authz::Authorizer;
use crate::buckets::ensure_bucket;
use crate::commands::Commands;
use crate::config::Config;
use crate::limits::Limits;
use crate::messages::MessageLog;
use crate::reads::{KEY_USAGE_BUCKET, Reads};
use crate::state::AppState;

/// The whole public HTTP application (routes, OpenAPI, layers) over `state`. Health, readiness
/// and metrics are not part of it: they are served on the operations port (`events::service::Runtime::serve_ops`, with `ops::readyz`).
pub fn app(state: Arc<AppState>) -> axum::Router {
    let (router, doc) = routes::api_router();
    // A dangling reference is a bug of the build, caught by `openapi`'s tests.
    ops::set_openapi(&openapi::document(&doc).expect("the OpenAPI document is complete"));
    let request_id = HeaderName::from_static("x-request-id");
    let mut router = router
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        // Before anything else a request costs (authentication included): the client's bucket.
        .layer(axum::middleware::from_fn_with_state(state.clone(), ops::per_address))
        .layer(axum::middleware::from_fn(ops::json_errors))
        .layer(CatchPanicLayer::custom(ops::panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
    let origins: Vec<HeaderValue> =
        state.config.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    if !origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                    HeaderName::from_static("idempotency-key"),
                    HeaderName::from_static("prefer"),
                    HeaderName::from_static("last-event-id"),
                ]),
        );
    }
    router.with_state(state)
}

/// Runs the api until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let rt = Runtime::start("ambient-api", config.log_format);
    let pem = std::fs::read_to_string(&config.signing_key_file)
        .with_context(|| format!("reading {}", config.signing_key_file.display()))?;
    let signer = CommandSigner::from_pem(&pem).context("command signing key")?;
    let reconciler_key = SealingPublicKey::from_base64(&config.reconciler_sealing_public_key)
        .context("--reconciler-sealing-public-key")?;
    let kube = rt.kube_client(config.kubeconfig.as_deref()).await?;
    let nats = rt
        .connect_nats(&config.bus)
        .await
        .with_context(|| format!("connecting to NATS at {}", config.bus.nats_url_redacted()))?;
    let mut js = async_nats::jetstream::new(nats.clone());
    js.set_timeout(Duration::from_secs(5));
    let bus = config.bus.bus_config();
    let Some(report) = rt.retry("stream bootstrap", || events::streams::bootstrap_streams(&js, &bus)).await else {
        return Ok(());
    };
    tracing::info!(created = ?report.created, updated = ?report.updated, "streams ready");
    let key_usage = ensure_bucket(&js, KEY_USAGE_BUCKET, Duration::from_secs(400 * 24 * 3600), bus.replicas).await?;
    let shutdown = rt.shutdown.clone();
    let (session_changes, session_changes_rx) = tokio::sync::mpsc::unbounded_channel();
    let reads = Reads::start(
        kube.clone(),
        Some(key_usage),
        shutdown.clone(),
        Some(session_changes),
        config.project_list_prefilter,
    );
    let messages = MessageLog::new(
        js.clone(),
        messages::Limits {
            max_count: config.messages_max_per_session,
            max_bytes: config.messages_max_bytes_per_session,
            max_message_bytes: config.messages_max_message_bytes,
            store_capacity: (config.messages_store_capacity > 0).then_some(config.messages_store_capacity),
        },
        messages::budget::Budgets::open(&js, config.messages_max_bytes_per_project, bus.replicas).await?,
    );
    let backlog = crate::commands::BacklogLimits {
        max_commands: config.max_pending_commands_per_project,
        max_bytes: config.max_pending_bytes_per_project,
    };
    tokio::spawn(pending::run(nats.clone(), signer.verifier(), reads.pending.clone(), shutdown.clone()));
    let parked = parked::ParkedKeys::open(&js, pem.trim().as_bytes(), bus.replicas).await?;
    let commands =
        Commands::new(nats, js, signer, (config.result_timeout, config.key_result_timeout), parked, backlog, &bus)
            .await?;
    let state = Arc::new(AppState {
        auth: Authenticator::new(
            kube.clone(),
            CacheLimits {
                ttl: config.token_cache_ttl,
                max: config.token_cache_max_entries,
                rejected_ttl: config.rejected_token_cache_ttl,
                rejected_max: config.rejected_token_cache_max_entries,
            },
        ),
        authz: Authorizer::new(kube.clone(), config.authz_cache_ttl),
        limits: Limits::new(&config),
        kube,
        reads,
        commands,
        messages,
        reconciler_key,
        shutdown: shutdown.clone(),
        config: config.clone(),
        ui: Default::default(),
        runner_views: Default::default(),
    });
    // Served from here on: readiness says when the caches have filled.
    let ops = rt
        .serve_ops(config.health_addr, Some(axum::routing::get(ops::readyz).with_state(state.clone())))
        .await
        .with_context(|| format!("binding {}", config.health_addr))?;
    let main =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    if !state.reads.wait_ready().await {
        anyhow::bail!("watch caches did not fill within 60 s (RBAC of the api's ServiceAccount?)");
    }
    tokio::spawn(purge::run_purger(state.clone(), session_changes_rx));
    tokio::spawn(forget_idle_buckets(state.clone()));
    tokio::spawn(routes::ui::discover_cluster(state.clone()));
    tracing::info!(listen = %config.listen, health = %config.health_addr, "api serving");
    serve(main, app(state.clone()), shutdown.clone()).await?;
    let _ = ops.await;
    Ok(())
}

/// Drops idle rate-limit buckets every minute, so their memory follows recent clients only.
async fn forget_idle_buckets(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => state.limits.forget_idle(),
        }
    }
}

/// How long a client may take to send a request's headers before the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most header fields in one request (more: the connection gets 431 and is closed).
pub const MAX_HEADERS: usize = 100;
/// Read buffer bound, which also bounds the size of a request's headers.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves `app` on `listener` until `shutdown`, like `axum::serve` but with the limits it does
/// not set: a header read timeout (a client sending a byte per second is cut off instead of
/// holding a connection forever) and bounds on the number and size of headers.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use tower::ServiceExt as _;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEADER_BYTES);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_BYTES as u32);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // The peer address, for the per-address limit (`ops::per_address`).
        let service = app.clone().map_request(move |r: axum::http::Request<_>| {
            let mut r = r.map(axum::body::Body::new);
            r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            r
        });
        let conn = builder.serve_connection_with_upgrades(
            TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Open SSE streams end on the same shutdown signal; don't wait forever for stragglers.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}
