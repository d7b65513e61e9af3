use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;

use sectordb::controllers::{self, Context};
use sectordb::http::Health;
use sectordb::leader::Leadership;
use sectordb::metrics::Metrics;
use sectordb::profile::SecurityProfile;
use sectordb::{crdgen, startup, telemetry};

#[derive(Parser)]
#[command(
    name = "sectordb-operator",
    version,
    about = "Kubernetes operator for a province's government PostgreSQL databases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write the project's generated files.
    Crd {
        /// Write crds/ and the chart's CRD templates under this repository root instead.
        #[arg(long, value_name = "REPO_ROOT")]
        write: Option<PathBuf>,
    },
    /// Run the controllers.
    Run(RunArgs),
}

#[derive(Parser)]
struct RunArgs {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "sectordb-operator")]
    lease_name: String,
    /// The operator's own namespace (the Lease and the backup Secrets live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sectordb-system")]
    namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "sectordb-operator")]
    identity: String,
    /// A YAML security profile replacing the built-in one.
    #[arg(long, env = "SECURITY_PROFILE")]
    security_profile: Option<PathBuf>,
    /// The PostgreSQL image every database runs.
    #[arg(
        long,
        env = "POSTGRES_IMAGE",
        default_value = "local/sectordb-postgres:15"
    )]
    postgres_image: String,
    /// Pull policy of the PostgreSQL image (Never for images imported without a registry).
    #[arg(
        long,
        env = "POSTGRES_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    postgres_image_pull_policy: String,
    /// Address ranges (CIDR, comma-separated) besides the agency's own pods and the operator
    /// that may open connections to every database, e.g. the platform's monitoring. Set by the
    /// platform, never by an agency.
    #[arg(long, env = "TRUSTED_INGRESS_CIDRS", value_delimiter = ',', value_parser = cidr)]
    trusted_ingress_cidrs: Vec<String>,
}

/// An IPv4 or IPv6 network in CIDR notation, as a NetworkPolicy's ipBlock takes it.
fn cidr(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a CIDR such as 10.0.0.0/8");
    let (addr, bits) = s.trim().split_once('/').ok_or_else(bad)?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let bits: u8 = bits.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(bad());
    }
    Ok(format!("{addr}/{bits}"))
}

fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    match Cli::parse().command {
        Command::Crd { write: None } => {
            for crd in crdgen::all() {
                print!("---\n{}", crdgen::to_yaml(&crd));
            }
            Ok(())
        }
        Command::Crd { write: Some(root) } => {
            for (path, text) in crdgen::files() {
                let path = root.join(path);
                std::fs::create_dir_all(path.parent().expect("generated files live in folders"))?;
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Run(args) => {
            telemetry::init();
            tokio::runtime::Runtime::new()?.block_on(run(args))
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let profile = match &args.security_profile {
        Some(path) => serde_saphyr::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("reading the security profile {}", path.display()))?,
        None => SecurityProfile::default(),
    };
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Metrics::default();
    let health = Arc::new(Health::default());

    // One shutdown signal for everything: SIGTERM, or losing the Lease.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("SIGTERM received: shutting down");
        let _ = stop_on_signal.send(true);
    });

    let server = tokio::spawn(sectordb::http::serve(
        args.http_addr,
        health.clone(),
        metrics.clone(),
        stopped(),
    ));
    tracing::info!(addr = %args.http_addr, "serving /metrics, /healthz, /readyz");

    tokio::select! {
        _ = startup::wait_for_crds(client.clone()) => health.crds_established.store(true, Ordering::Relaxed),
        _ = stopped() => return Ok(()),
    }
    let mut leadership = Leadership::start(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &args.identity,
    )
    .await
    .context("starting leader election")?;
    tracing::info!(lease = %args.lease_name, identity = %args.identity, "waiting for the leader Lease");
    tokio::select! {
        _ = leadership.acquired() => {}
        _ = stopped() => {
            leadership.release().await;
            return Ok(());
        }
    }
    tracing::info!(identity = %args.identity, "holding the leader Lease: starting controllers");
    health.leading.store(true, Ordering::Relaxed);
    metrics.leader.set(1);

    let lost = Leadership::lost(leadership.holding.clone());
    let lost_flag = tokio::spawn({
        let stop = stop_tx.clone();
        async move {
            lost.await;
            tracing::error!("lost the leader Lease: stopping so a fresh process can stand by");
            let _ = stop.send(true);
        }
    });

    let reporter = Reporter {
        controller: "sectordb-operator".into(),
        instance: Some(args.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        profile,
        namespace: args.namespace.clone(),
        postgres_image: args.postgres_image.clone(),
        postgres_image_pull_policy: args.postgres_image_pull_policy.clone(),
        trusted_ingress_cidrs: args.trusted_ingress_cidrs.clone(),
        disruption_budget_api: startup::disruption_budget_api(&client).await,
        ca: tokio::sync::Mutex::new(None),
        ca_changes: Default::default(),
        superuser: tokio::sync::Mutex::new(None),
        mirror_passes: Default::default(),
        mirror_runs: Default::default(),
        namespace_labels: Default::default(),
        installed: Default::default(),
        checked: Default::default(),
        failures: Default::default(),
    });
    tokio::join!(
        controllers::database::run(ctx.clone(), stopped()),
        controllers::connection::run(ctx.clone(), stopped()),
        controllers::policy::run(ctx.clone(), stopped()),
        controllers::agency::run(ctx.clone(), stopped()),
    );
    let lease_lost = lost_flag.is_finished();
    lost_flag.abort();
    health.leading.store(false, Ordering::Relaxed);
    metrics.leader.set(0);
    leadership.release().await;
    let _ = server.await;
    if lease_lost {
        anyhow::bail!("the leader Lease was lost");
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cidr;

    #[test]
    fn a_trusted_range_must_be_a_network_in_cidr_notation() {
        assert_eq!(cidr("10.200.0.1/32").as_deref(), Ok("10.200.0.1/32"));
        assert_eq!(cidr(" fd00:10::/64").as_deref(), Ok("fd00:10::/64"));
        for bad in [
            "10.200.0.1",
            "10.0.0.0/33",
            "fd00::/129",
            "0.0.0.0/x",
            "host/8",
            "",
        ] {
            assert!(cidr(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
