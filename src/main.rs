//! The `portcullis` command: parses the command line and hands over to the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use portcullis::config::snapshot::ModelPolicy;
use portcullis::config::{Defaults, Index, compile};
use portcullis::discovery::DiscoveryConfig;
use portcullis::server::{ServeOptions, serve};

/// mimalloc: the data plane allocates per request and per streamed event; the system
/// allocator was 14-21 % of the gateway's instructions in bench/ profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use portcullis::source::{files, kubernetes};
use portcullis::telemetry::{LogFormat, init_logging, otel};

/// Portcullis: a Kubernetes-native security gateway in front of LLM providers.
#[derive(Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD into a folder).
    Crds {
        /// Write `<name>.yaml` files into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Validate manifests offline: print the routing table, or every problem (exit 1).
    Check {
        /// Files or folders of YAML manifests.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Also obtain every provider's credential for real (mint a token, ask STS) and
        /// report whether it worked.
        #[arg(long)]
        online: bool,
        /// PEM bundle trusted besides the system roots (with `--online`).
        #[arg(long, env = "PORTCULLIS_EXTRA_CA_CERTS", value_name = "FILE")]
        extra_ca_certs: Option<PathBuf>,
        #[command(flatten)]
        identity: IdentityArgs,
    },
}

/// Where the gateway's own cloud identity may go: process settings, never from a manifest.
#[derive(clap::Args)]
struct IdentityArgs {
    /// Hosts besides the clouds' own service domains (*.googleapis.com, *.openai.azure.com,
    /// *.cognitiveservices.azure.com, *.services.ai.azure.com, *.amazonaws.com) that may receive
    /// a minted cloud credential: private endpoints, proxies, test fakes. `HOST` (any port),
    /// `HOST:PORT`, `*.DOMAIN`; comma-separated.
    #[arg(
        long,
        env = "PORTCULLIS_TRUSTED_IDENTITY_HOSTS",
        value_name = "HOST[:PORT],...",
        value_delimiter = ','
    )]
    trusted_identity_hosts: Vec<String>,
    /// Entra ID scopes that `spec.azure.scope` may name besides
    /// https://cognitiveservices.azure.com/.default and https://ai.azure.com/.default.
    #[arg(
        long,
        env = "PORTCULLIS_ALLOWED_AZURE_SCOPES",
        value_name = "SCOPE,...",
        value_delimiter = ','
    )]
    allowed_azure_scopes: Vec<String>,
}

impl IdentityArgs {
    /// Install the policy for this process (compile and send-time checks).
    fn install(&self) -> Result<(), String> {
        let policy = portcullis::credentials::trust::IdentityPolicy::new(
            &self.trusted_identity_hosts,
            &self.allowed_azure_scopes,
        )
        .map_err(|e| format!("--trusted-identity-hosts / --allowed-azure-scopes: {e}"))?;
        portcullis::credentials::trust::install(policy);
        Ok(())
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Files or folders of YAML manifests (LlmProvider, LlmProxy, Secret), watched and
    /// hot-reloaded. Without any, the embedded default configuration is served.
    #[arg(long = "config", value_name = "PATH")]
    config: Vec<PathBuf>,
    /// Watch the Kubernetes API server instead of files (the default in a pod, i.e. when
    /// KUBERNETES_SERVICE_HOST is set and no --config is given).
    #[arg(long, conflicts_with = "config")]
    kubernetes: bool,
    /// Limit what is watched in Kubernetes to these namespaces (default: all).
    #[arg(long = "namespace", value_name = "NS", conflicts_with = "config")]
    namespaces: Vec<String>,
    /// Data-plane address [default: 0.0.0.0:8080; 127.0.0.1:8080 for the embedded default
    /// configuration (no --config, no cluster)].
    #[arg(long, env = "PORTCULLIS_LISTEN")]
    listen: Option<SocketAddr>,
    /// Admin address: /metrics, /healthz, /readyz [default: 0.0.0.0:9090; 127.0.0.1:9090 for
    /// the embedded default configuration].
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    limits: portcullis::server::ConnectionLimits,
    /// PEM bundle trusted besides the system roots, for upstreams and identity endpoints.
    #[arg(long, env = "PORTCULLIS_EXTRA_CA_CERTS", value_name = "FILE")]
    extra_ca_certs: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "PORTCULLIS_MAX_BODY_BYTES", default_value_t = portcullis::proxy::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// How long in-flight requests and streams may run after SIGTERM.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Send an SSE comment (`: keep-alive`) on a stream idle this long, between events only,
    /// so load balancers and client watchdogs do not cut it; `0` disables.
    #[arg(long, env = "PORTCULLIS_SSE_KEEPALIVE", default_value = "10s", value_parser = humantime::parse_duration)]
    sse_keepalive: Duration,
    /// Interval between model-list refreshes.
    #[arg(long, env = "PORTCULLIS_MODEL_REFRESH", default_value = "5m", value_parser = humantime::parse_duration)]
    model_refresh: Duration,
    /// Log format.
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Crds { dir: None } => match portcullis::crd::crds_yaml() {
            Ok(yaml) => write_out(&yaml),
            Err(e) => fail(&format!("cannot render the CRDs: {e}")),
        },
        Command::Crds { dir: Some(dir) } => write_crds(&dir),
        Command::Check {
            paths,
            online,
            extra_ca_certs,
            identity,
        } => match identity.install() {
            Ok(()) => check(&paths, online.then_some(extra_ca_certs)),
            Err(e) => fail(&e),
        },
    }
}

fn write_crds(dir: &std::path::Path) -> ExitCode {
    let files = match portcullis::crd::crd_files() {
        Ok(files) => files,
        Err(e) => return fail(&format!("cannot render the CRDs: {e}")),
    };
    for (name, yaml) in files {
        let path = dir.join(name);
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, yaml)) {
            return fail(&format!("cannot write {}: {e}", path.display()));
        }
        let _ = writeln!(std::io::stderr(), "wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

fn write_out(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {message}");
    ExitCode::FAILURE
}

fn run_serve(args: ServeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let traces = match otel::wanted() {
        Ok(false) => None,
        Ok(true) => {
            match otel::pipeline(runtime.handle().clone(), args.extra_ca_certs.as_deref()) {
                Ok(pipeline) => Some(pipeline),
                Err(e) => return fail(&format!("cannot start the OTLP trace exporter: {e:#}")),
            }
        }
        Err(e) => return fail(&e),
    };
    init_logging(args.log_format, traces.as_ref());
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
    let kubernetes = if args.kubernetes || (args.config.is_empty() && in_pod) {
        match kubernetes::Settings::from_env(args.namespaces) {
            Ok(settings) => Some(settings),
            Err(e) => return fail(&format!("{e:#}")),
        }
    } else if !args.namespaces.is_empty() {
        return fail("--namespace needs --kubernetes (or running in a pod without --config)");
    } else {
        None
    };
    if let Err(e) = args.identity.install() {
        return fail(&e);
    }
    // The embedded default serves the developer's own keys anonymously: loopback only,
    // unless an address is given.
    let embedded = kubernetes.is_none() && args.config.is_empty();
    let (listen, admin_listen) = portcullis::server::default_addresses(embedded);
    let options = ServeOptions {
        config: args.config,
        listen: args.listen.unwrap_or(listen),
        admin_listen: args.admin_listen.unwrap_or(admin_listen),
        limits: args.limits,
        extra_ca_certs: args.extra_ca_certs,
        max_body_bytes: args.max_body_bytes,
        shutdown_grace: args.shutdown_grace,
        discovery: DiscoveryConfig {
            refresh: args.model_refresh,
            ..DiscoveryConfig::default()
        },
        file_poll: Duration::from_millis(500),
        sse_keepalive: args.sse_keepalive,
        kubernetes,
    };
    let result = runtime.block_on(serve(options));
    // Export the spans still queued, while the runtime that sends them still runs.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            fail(&format!("{e:#}"))
        }
    }
}

/// `online`: `Some(extra CA bundle)` to also obtain each provider's credential.
fn check(paths: &[PathBuf], online: Option<Option<PathBuf>>) -> ExitCode {
    let loaded = match files::load(paths) {
        Ok(loaded) => loaded,
        Err(errors) => {
            let mut err = std::io::stderr().lock();
            for e in &errors {
                let _ = writeln!(err, "error: {e}");
            }
            let _ = writeln!(err, "{} problem(s)", errors.len());
            return ExitCode::FAILURE;
        }
    };
    let compiled = compile(&Index::from_objects(loaded.objects), &Defaults::from_env());
    let mut out = String::new();
    for (key, table) in &compiled.proxies {
        out.push_str(&format!(
            "LlmProxy {key}: router /v1/model-router/{}/chat/completions\n",
            key.proxy_id()
        ));
        out.push_str(&format!(
            "  client auth: {}\n",
            table.policy.describe_auth()
        ));
        for (route, u) in table
            .routes
            .iter()
            .flat_map(|r| r.pool.iter().map(move |u| (r, u)))
        {
            let models = match &u.models {
                ModelPolicy::Any => "discovered".to_owned(),
                ModelPolicy::Static(list) => format!("static [{}]", list.join(", ")),
                ModelPolicy::Allow { patterns, .. } => {
                    format!("discovered, allow [{}]", patterns.join(", "))
                }
            };
            out.push_str(&format!(
                "  {prefix:<16} {provider:<28} {ty:<18} {url}  native /v1/{prefix}/{id}/  models: {models}\n",
                prefix = route.prefix,
                provider = format!("LlmProvider {}", u.provider),
                ty = u.provider_type.as_str(),
                url = u.base_url,
                id = key.proxy_id(),
            ));
        }
        for vm in table.failover.models.values() {
            let targets: Vec<String> = vm
                .targets
                .iter()
                .map(|t| format!("{} (weight {})", t.model, t.weight))
                .collect();
            let fallbacks: Vec<String> = vm.fallbacks.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "  model {:<10} targets: {}; fallbacks: [{}]; attempts {}\n",
                vm.name,
                targets.join(", "),
                fallbacks.join(", "),
                vm.retry.attempts
            ));
        }
    }
    for budget in compiled.budgets.good.values() {
        out.push_str(&portcullis::budget::describe(budget));
    }
    let mut credentials_failed = 0;
    if let Some(extra_ca_certs) = online {
        let results = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(portcullis::server::check_credentials_online(
                    &compiled,
                    extra_ca_certs.as_deref(),
                ))
            });
        match results {
            Ok(results) => {
                for (provider, result) in results {
                    match result {
                        Ok(()) => {
                            out.push_str(&format!("credentials LlmProvider {provider}: obtained\n"))
                        }
                        Err(e) => {
                            credentials_failed += 1;
                            let _ = writeln!(
                                std::io::stderr(),
                                "problem: LlmProvider {provider}: credentials: {e} (CredentialsNotReady)"
                            );
                        }
                    }
                }
            }
            Err(e) => return fail(&format!("{e:#}")),
        }
    }
    let code = if compiled.problems.is_empty() && credentials_failed == 0 {
        out.push_str(&format!(
            "ok: {} proxy(ies), no problems\n",
            compiled.proxies.len()
        ));
        ExitCode::SUCCESS
    } else {
        let mut err = std::io::stderr().lock();
        for p in &compiled.problems {
            let _ = writeln!(err, "problem: {p}");
        }
        let _ = writeln!(err, "{} problem(s)", compiled.problems.len());
        if credentials_failed > 0 {
            let _ = writeln!(err, "{credentials_failed} provider(s) without credentials");
        }
        ExitCode::FAILURE
    };
    let _ = write_out(&out);
    code
}
