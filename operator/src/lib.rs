//! sectordb: a Kubernetes operator for a province's government PostgreSQL databases.

pub mod api;
pub mod crdgen;
pub mod quantity;
pub mod validate;
