//! sectordb: a Kubernetes operator for a province's government PostgreSQL databases.

pub mod api;
pub mod apply;
pub mod backup;
pub mod conditions;
pub mod controllers;
pub mod crdgen;
pub mod dataplane;
pub mod digest;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod parameters;
pub mod pgconf;
pub mod pki;
pub mod profile;
pub mod quantity;
pub mod replication_sql;
pub mod sharing;
pub mod sharing_sql;
pub mod sql;
pub mod startup;
pub mod telemetry;
pub mod tenancy;
pub mod validate;
