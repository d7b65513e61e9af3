//! Leader election on a Lease: one replica reconciles, the others wait on standby.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Lease timings: a dead leader is replaced within `DURATION` seconds.
const DURATION: u64 = 15;
const GRACE: u64 = 5;

/// A running lease manager: the channel says whether this replica holds the Lease. Dropping the
/// channel releases the Lease.
pub struct Leadership {
    pub holding: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    pub async fn start(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_field_manager(format!("sectordb/leader/{identity}"))
            .with_duration(DURATION)
            .with_grace(GRACE)
            .build()
            .await?;
        let (holding, task) = manager.watch().await;
        Ok(Leadership { holding, task })
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquired(&mut self) {
        let _ = self.holding.wait_for(|held| *held).await;
    }

    /// Resolves when the Lease is lost after having been held.
    pub async fn lost(mut holding: watch::Receiver<bool>) {
        let _ = holding.wait_for(|held| !*held).await;
    }

    /// Gives the Lease up so a standby takes over at once instead of after it expires.
    pub async fn release(self) {
        drop(self.holding);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("leader Lease released"),
            Ok(Err(error)) => tracing::warn!(%error, "releasing the leader Lease failed"),
            Err(error) => tracing::warn!(%error, "the lease manager task ended abnormally"),
        }
    }
}
