//! `portcullis serve`: wires the configuration source, the store, discovery, the data plane
//! and the admin endpoints together, and drains gracefully on SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{StatusCode, header};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{ApplyMode, Compiled, Defaults, Index, Object, Store, compile, defaults};
use crate::discovery::{Discovery, DiscoveryConfig};
use crate::proxy::{self, AppState};
use crate::source::{files, kubernetes};
use crate::telemetry::Metrics;

/// Everything `serve` is told on the command line.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Manifest files and folders; empty means the embedded default.
    pub config: Vec<PathBuf>,
    /// Data-plane address.
    pub listen: SocketAddr,
    /// Admin address (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: SocketAddr,
    /// PEM bundle trusted besides the system roots.
    pub extra_ca_certs: Option<PathBuf>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// Model discovery intervals.
    pub discovery: DiscoveryConfig,
    /// How often files are re-read besides inotify events.
    pub file_poll: Duration,
    /// Interval of SSE keep-alive comments on idle streams; zero disables them.
    pub sse_keepalive: Duration,
    /// Watch the Kubernetes API instead of files (`--kubernetes`).
    pub kubernetes: Option<kubernetes::Settings>,
    /// Limits on client connections of the data plane.
    pub limits: ConnectionLimits,
}

/// The data-plane and admin addresses when none is given: every interface with a
/// configuration (files or a cluster), loopback only for the embedded default, which serves
/// the developer's own provider keys from the environment to anonymous callers.
pub fn default_addresses(embedded: bool) -> (SocketAddr, SocketAddr) {
    let host = if embedded {
        [127, 0, 0, 1]
    } else {
        [0, 0, 0, 0]
    };
    (
        SocketAddr::from((host, 8080)),
        SocketAddr::from((host, 9090)),
    )
}

/// Limits on the data plane's client connections, so a slow or oversized request head cannot
/// hold a connection (and its memory) open.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectionLimits {
    /// Close an HTTP/1 connection whose request head (request line and headers) has not fully
    /// arrived this long after the gateway started waiting for it. This is also how long an
    /// idle kept-alive connection stays open.
    #[arg(long, env = "PORTCULLIS_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Largest request head (request line plus headers), in bytes; a bigger one is answered
    /// 431 and the connection closed. At least 8192.
    #[arg(long, env = "PORTCULLIS_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Most headers in a request; more are answered 431.
    #[arg(long, env = "PORTCULLIS_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

impl ConnectionLimits {
    /// The HTTP/1 and HTTP/2 connection builder with these limits.
    fn builder(&self) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
        use hyper_util::rt::{TokioExecutor, TokioTimer};
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // hyper's smallest read buffer is 8 KiB; the head must fit in the buffer.
        let head = self.max_header_bytes.max(8192);
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Some(self.header_read_timeout).filter(|d| !d.is_zero()))
            .max_headers(self.max_headers.max(1))
            .max_buf_size(head);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(head).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        builder
    }
}

/// Serve the data plane on `listener` until `drain` turns true, then wait for the open
/// connections to finish their requests (the caller bounds that wait).
async fn serve_data(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut drain: watch::Receiver<bool>,
) {
    let builder = limits.builder();
    let drained = async move {
        let _ = drain.wait_for(|d| *d).await;
    };
    tokio::pin!(drained);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut drained => break,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let mut router = router.clone();
                async move { tower_service::Service::call(&mut router, request).await }
            });
        let io = hyper_util::rt::TokioIo::new(tcp);
        let connection = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

pub use crate::net::http_client;

/// `portcullis check --online`: obtain the credential of every provider a compiled proxy
/// routes to, for real (mint a token, ask STS), each within 30 seconds. A static key is only
/// present here; whether the upstream accepts it shows in model discovery.
pub async fn check_credentials_online(
    compiled: &crate::config::Compiled,
    extra_ca_certs: Option<&Path>,
) -> anyhow::Result<Vec<(crate::config::ObjectKey, Result<(), String>)>> {
    let client = http_client(extra_ca_certs)?;
    crate::credentials::azure::install_http_client(client);
    let snapshot = crate::config::Snapshot::new(compiled.proxies.clone(), 0);
    let checks = check_credentials(&snapshot).await;
    Ok(checks
        .into_iter()
        .map(|(key, result)| (key, result.map_err(|e| e.to_string())))
        .collect())
}

/// Compile objects, swap them in, and log what is served and what is wrong.
pub fn apply_objects(
    store: &Store,
    metrics: &Metrics,
    defaults: &Defaults,
    objects: Vec<Object>,
    source: &'static str,
    mode: ApplyMode,
    seen_at: Instant,
) {
    apply_index(
        store,
        metrics,
        defaults,
        &Index::from_objects(objects),
        source,
        mode,
        seen_at,
    );
}

/// Compile an index, swap it in, log what is served and what is wrong, and return the
/// compilation (the Kubernetes source derives status from it).
pub fn apply_index(
    store: &Store,
    metrics: &Metrics,
    defaults: &Defaults,
    index: &Index,
    source: &'static str,
    mode: ApplyMode,
    seen_at: Instant,
) -> Compiled {
    let compiled = compile(index, defaults);
    for problem in &compiled.problems {
        tracing::warn!(
            kind = problem.kind,
            object = %problem.object,
            field = %problem.field,
            reason = problem.reason,
            "configuration problem: {}",
            problem.message
        );
    }
    let report = store.apply_with(&compiled, mode);
    if report.rejected {
        tracing::warn!(
            problems = compiled.problems.len(),
            "configuration rejected, the running one keeps serving; fix the problems above"
        );
        metrics.reload(source, "rejected", seen_at.elapsed());
        return compiled;
    }
    for id in &report.kept {
        tracing::warn!(proxy = %id, "proxy has problems; its last good version keeps serving");
    }
    for id in &report.unserved {
        tracing::warn!(proxy = %id, "proxy has problems and is not served");
    }
    let snapshot = store.load();
    for table in snapshot.proxies.values() {
        if table.policy.auth.is_none() {
            tracing::warn!(proxy = %table.key.proxy_id(), "proxy accepts anonymous callers (no spec.clientAuth)");
        }
        for route in &table.routes {
            tracing::info!(
                proxy = %table.key.proxy_id(),
                prefix = %route.prefix,
                provider = %route.upstream.provider,
                r#type = %route.upstream.provider_type,
                upstream = %route.upstream.base_url,
                router = %format!("/v1/model-router/{}/chat/completions", table.key.proxy_id()),
                native = %format!("/v1/{}/{}/", route.prefix, table.key.proxy_id()),
                "serving route"
            );
        }
    }
    // Keyless credentials are obtained for real in the background, so the log says at once
    // whether the pod's identity works (Kubernetes status reports the same as CredentialsReady).
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let snapshot = snapshot.clone();
        runtime.spawn(async move {
            for (provider, result) in check_credentials(&snapshot).await {
                match result {
                    Ok(()) => tracing::info!(provider = %provider, "credentials ready"),
                    Err(e) => {
                        tracing::warn!(provider = %provider, error = %e, "credentials not ready")
                    }
                }
            }
        });
    }
    let result = if compiled.problems.is_empty() {
        "applied"
    } else {
        "partial"
    };
    metrics.reload(source, result, seen_at.elapsed());
    tracing::info!(
        version = report.version,
        proxies = snapshot.proxies.len(),
        problems = compiled.problems.len(),
        "configuration applied"
    );
    compiled
}

/// Obtain every minted credential of a snapshot for real (STS, metadata servers, …), once per
/// provider; static keys are not contacted here (whether they work shows in discovery).
pub async fn check_credentials(
    snapshot: &crate::config::Snapshot,
) -> Vec<(
    crate::config::ObjectKey,
    Result<(), crate::credentials::CredentialError>,
)> {
    let mut upstreams = std::collections::BTreeMap::new();
    for upstream in snapshot.upstreams().into_values() {
        if upstream.credential.mints() {
            upstreams
                .entry(upstream.provider.clone())
                .or_insert(upstream);
        }
    }
    let checks =
        upstreams.into_iter().map(|(key, upstream)| async move {
            let result =
                match tokio::time::timeout(Duration::from_secs(30), upstream.credential.check())
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(crate::credentials::CredentialError::Unavailable {
                        kind: "upstream",
                        detail: "no credential within 30 seconds".to_owned(),
                    }),
                };
            (key, result)
        });
    futures_util::future::join_all(checks).await
}

/// Re-read the files whenever the watcher or the poll says they may have changed.
async fn follow_files(
    paths: Vec<PathBuf>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    defaults: Defaults,
    mut rx: mpsc::Receiver<()>,
    mut last: u64,
) {
    while rx.recv().await.is_some() {
        let seen_at = Instant::now();
        // Let a burst of events (an editor's save, a ConfigMap swap) settle.
        tokio::time::sleep(Duration::from_millis(30)).await;
        while rx.try_recv().is_ok() {}
        let read = paths.clone();
        let Ok(loaded) = tokio::task::spawn_blocking(move || files::load(&read)).await else {
            continue;
        };
        match loaded {
            Ok(loaded) if loaded.fingerprint == last => {}
            Ok(loaded) => {
                last = loaded.fingerprint;
                tracing::info!(files = loaded.files.len(), "configuration files changed");
                apply_objects(
                    &store,
                    &metrics,
                    &defaults,
                    loaded.objects,
                    "files",
                    ApplyMode::Whole,
                    seen_at,
                );
            }
            Err(errors) => {
                let fingerprint = files::fingerprint(&paths);
                if fingerprint != last {
                    last = fingerprint;
                    for e in &errors {
                        tracing::error!(
                            "configuration rejected, the running one keeps serving: {e}"
                        );
                    }
                    metrics.reload("files", "rejected", seen_at.elapsed());
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

struct Admin {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    draining: watch::Receiver<bool>,
}

fn admin_router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(a): State<Arc<Admin>>| async move {
                if *a.draining.borrow() {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if a.store.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no configuration applied yet\n",
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(a): State<Arc<Admin>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    a.metrics.encode(),
                )
                    .into_response()
            }),
        )
        .with_state(admin)
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what}"))
}

/// Run the gateway until SIGTERM / Ctrl-C, then drain.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let client = http_client(options.extra_ca_certs.as_deref())?;
    crate::credentials::azure::install_http_client(client.clone());
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(Store::default());
    let discovery = Discovery::new(client.clone(), options.discovery);
    discovery.clone().follow(store.subscribe());
    let defaults = Defaults::from_env();
    let (drain_tx, drain_rx) = watch::channel(false);

    // Configuration: the Kubernetes API, files (watched) or the embedded default.
    let mut lease_task = None;
    let _watcher = if let Some(settings) = &options.kubernetes {
        let client = kubernetes::client().await?;
        kubernetes::check_api(&client, settings).await?;
        tracing::info!(namespaces = ?settings.namespaces, "watching the Kubernetes API server (no namespaces listed = all)");
        lease_task = Some(kubernetes::start(
            client,
            settings.clone(),
            store.clone(),
            metrics.clone(),
            discovery.clone(),
            defaults.clone(),
            drain_rx.clone(),
        ));
        None
    } else if options.config.is_empty() {
        let objects = defaults::objects(|k| std::env::var(k).ok());
        tracing::info!(
            listen = %options.listen,
            "no --config given: serving the embedded default proxy `default` (loopback only unless --listen says otherwise)"
        );
        apply_objects(
            &store,
            &metrics,
            &defaults,
            objects,
            "embedded",
            ApplyMode::Whole,
            Instant::now(),
        );
        None
    } else {
        let started = Instant::now();
        let loaded = files::load(&options.config).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("the configuration cannot be read:\n  {}", list.join("\n  "))
        })?;
        let fingerprint = loaded.fingerprint;
        apply_objects(
            &store,
            &metrics,
            &defaults,
            loaded.objects,
            "files",
            ApplyMode::Whole,
            started,
        );
        let (tx, rx) = mpsc::channel(16);
        let watcher = files::watch(&options.config, tx, options.file_poll)
            .context("watching the configuration files")?;
        tokio::spawn(follow_files(
            options.config.clone(),
            store.clone(),
            metrics.clone(),
            defaults.clone(),
            rx,
            fingerprint,
        ));
        Some(watcher)
    };

    let state = Arc::new(AppState {
        store: store.clone(),
        security: Arc::new(crate::policy::identity::Runtime::new(client.clone())),
        client,
        discovery,
        metrics: metrics.clone(),
        max_body_bytes: options.max_body_bytes,
        sse_keepalive: Some(options.sse_keepalive).filter(|d| !d.is_zero()),
        health: Arc::default(),
    });
    let admin = Arc::new(Admin {
        store,
        metrics,
        draining: drain_rx.clone(),
    });

    let listener = bind(options.listen, "data plane").await?;
    let admin_listener = bind(options.admin_listen, "admin endpoints").await?;
    if options.listen.ip().is_loopback() {
        tracing::info!(listen = %options.listen, admin = %options.admin_listen, "portcullis is listening on loopback only (set --listen to serve other hosts)");
    } else {
        tracing::info!(listen = %options.listen, admin = %options.admin_listen, "portcullis is listening");
    }

    let until_drain = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|d| *d).await;
    };
    let data = serve_data(
        listener,
        proxy::router(state),
        options.limits.clone(),
        drain_rx.clone(),
    );
    let admin_server = axum::serve(admin_listener, admin_router(admin))
        .with_graceful_shutdown(until_drain(drain_rx.clone()));
    let mut data = tokio::spawn(data);
    let admin_task = tokio::spawn(admin_server.into_future());

    tokio::select! {
        () = shutdown_signal() => {}
        result = &mut data => {
            return match result {
                Ok(()) => Ok(()),
                Err(e) => Err(e).context("data plane server panicked"),
            };
        }
    }
    tracing::info!(grace = ?options.shutdown_grace, "shutting down: no new connections, draining in-flight requests");
    let _ = drain_tx.send(true);
    match tokio::time::timeout(options.shutdown_grace, data).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!("grace period over; closing the remaining connections"),
    }
    if let Some(task) = lease_task {
        // Hand the status-writer Lease over before exiting.
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    admin_task.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_listens_on_loopback_only() {
        let (data, admin) = default_addresses(true);
        assert!(data.ip().is_loopback() && admin.ip().is_loopback());
        assert_eq!((data.port(), admin.port()), (8080, 9090));
        let (data, admin) = default_addresses(false);
        assert!(data.ip().is_unspecified() && admin.ip().is_unspecified());
    }
}
