//! The `sectordb.io/v1alpha1` API.

pub mod agency;
pub mod backup;
pub mod common;
pub mod connection;
pub mod database;
pub mod policy;

pub use agency::{Agency, AgencySpec};
pub use backup::{SectorBackup, SectorBackupSpec};
pub use connection::{DataSharingConnection, DataSharingConnectionSpec};
pub use database::{SectorDatabase, SectorDatabaseSpec};
pub use policy::{BackupPolicy, BackupPolicySpec};
