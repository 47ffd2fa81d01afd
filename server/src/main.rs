//! udm-server: udm's GraphQL over HTTP and WebSocket (graphql-transport-ws). Stateless: every request is `udm_*` calls in one
//! transaction on a pooled connection; the database enforces everything (tenants, members,
//! row-level security, rules). See README.md, section "udm-server".
//!
//!   udm-server [--config FILE]                        serve (configuration: config.rs)
//!   udm-server setup-role ADMIN_URL ROLE [TENANT...]  make the server's database role
//!   udm-server token TENANT USER [SECONDS]            an HS256 token with the configured secret

mod auth;
mod config;
mod db;
mod error;
mod explorer;
mod feed;
mod http;
mod limit;
mod metrics;
mod rest;
mod watch;
mod ws;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub struct App {
    pub config: config::Config,
    /// true once the server is shutting down (WebSockets close with 1001)
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// open WebSockets (shutdown waits for them to close)
    pub sockets: std::sync::atomic::AtomicUsize,
    pub pool: deadpool_postgres::Pool,
    pub keys: auth::Keys,
    /// `statement_timeout` of every transaction, in milliseconds (text, as `set_config` takes it).
    pub statement_timeout: String,
    /// the one connection that learns of new events (`watch.rs`)
    pub watcher: Arc<watch::Watcher>,
    /// subscriptions reading events, shared by tenant, user and request (`feed.rs`)
    pub feeds: feed::Feeds,
    pub metrics: metrics::Metrics,
    pub per_token: Arc<limit::PerToken>,
}

fn usage() -> ! {
    eprintln!(
        "usage: udm-server [--config FILE]\n       udm-server setup-role ADMIN_DATABASE_URL ROLE [TENANT ...]\n       udm-server token TENANT USER [SECONDS]   (configuration as for serving)"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match args.first().map(String::as_str) {
        Some("setup-role") => {
            let (Some(url), Some(role)) = (args.get(1), args.get(2)) else {
                usage()
            };
            if let Err(e) = rt.block_on(db::setup_role(url, role, &args[3..])) {
                eprintln!("udm-server setup-role: {e}");
                std::process::exit(1);
            }
        }
        Some("token") if (3..=4).contains(&args.len()) => {
            let c = config::Config::load(None).unwrap_or_else(|e| {
                eprintln!("udm-server: {e}");
                std::process::exit(2)
            });
            let Ok(ttl) = args.get(3).map_or(Ok(3600), |s| s.parse::<u64>()) else {
                usage()
            };
            match auth::issue(&c, &args[1], &args[2], ttl) {
                Ok(t) => println!("{t}"),
                Err(e) => {
                    eprintln!("udm-server token: {e}");
                    std::process::exit(2)
                }
            }
        }
        Some("--config") if args.len() == 2 => serve(&rt, Some(PathBuf::from(&args[1]))),
        None => serve(&rt, None),
        _ => usage(),
    }
}

fn serve(rt: &tokio::runtime::Runtime, file: Option<PathBuf>) {
    let c = config::Config::load(file).unwrap_or_else(|e| {
        eprintln!("udm-server: {e}");
        std::process::exit(2)
    });
    let filter = tracing_subscriber::EnvFilter::try_from_env("UDM_SERVER_LOG")
        .unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if c.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let keys = auth::Keys::new(&c).unwrap_or_else(|e| {
        eprintln!("udm-server: {e}");
        std::process::exit(2)
    });
    let pool = db::pool(&c).unwrap_or_else(|e| {
        eprintln!("udm-server: {e}");
        std::process::exit(2)
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = Arc::new(App {
        config: c.clone(),
        shutdown: stop_rx.clone(),
        sockets: Default::default(),
        pool,
        keys,
        statement_timeout: c.statement_timeout_ms.to_string(),
        watcher: watch::Watcher::new(),
        feeds: Default::default(),
        metrics: Default::default(),
        per_token: limit::PerToken::new(c.max_connections_per_token),
    });
    let sockets = app.clone();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&c.listen)
            .await
            .unwrap_or_else(|e| {
                eprintln!("udm-server: cannot listen on {}: {e}", c.listen);
                std::process::exit(2)
            });
        let addr = listener.local_addr().expect("local address");
        let mut watcher_db: tokio_postgres::Config = c
            .database_url
            .parse()
            .expect("database_url was checked by the pool");
        watcher_db.application_name("udm-server watcher");
        tokio::spawn(
            app.watcher
                .clone()
                .run(watcher_db, Duration::from_millis(c.poll_interval_ms)),
        );
        let router = Router::new()
            .route("/graphql", get(http::get).post(http::post))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .nest("/api", rest::router())
            .layer(DefaultBodyLimit::max(c.max_body_bytes))
            .layer(middleware::from_fn_with_state(app.clone(), request_log))
            .with_state(app);
        // the line tests and scripts wait for
        println!("udm-server listening on http://{addr}");
        tracing::info!(%addr, "listening");
        let server = tokio::spawn(async move {
            let mut rx = stop_rx;
            // small writes go out at once: a WebSocket's `next` messages and a response
            // written in parts would otherwise wait for the peer's delayed ACK (Nagle)
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY not set on a connection: {e}");
                }
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = stop_tx.send(true);
        let grace = Duration::from_millis(c.shutdown_grace_ms);
        let until = Instant::now() + grace;
        if tokio::time::timeout(grace, server).await.is_err() {
            tracing::warn!("requests still in flight after the grace period");
        }
        // WebSockets are closed with 1001 by their sessions
        while sockets.sockets.load(std::sync::atomic::Ordering::SeqCst) > 0
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if db::ready(&app.pool).await {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database does not answer",
        )
            .into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(&app),
    )
        .into_response()
}

/// A request id for every request (the `x-request-id` response header and every log line of
/// the request), one log line per request, and the metrics of GraphQL requests.
async fn request_log(State(app): State<Arc<App>>, req: Request<Body>, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path(), op = tracing::field::Empty);
    let start = Instant::now();
    let mut r = next.run(req).instrument(span.clone()).await;
    if let Some(op) = r.extensions().get::<http::Operation>() {
        app.metrics
            .request(op.0, r.status().as_u16(), start.elapsed());
    }
    span.in_scope(|| {
        tracing::info!(
            status = r.status().as_u16(),
            ms = start.elapsed().as_secs_f64() * 1000.0,
            "done"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}
