//! Backups with pgBackRest: what the operator writes into a database's pod (configuration),
//! what it runs there (commands through `pods/exec`), when (the policy's schedule), and what it
//! reads back (`pgbackrest info`, the only source of what status reports).

pub mod detached;
pub mod drill;
pub mod exec;
pub mod mirror;
pub mod pgbackrest;
pub mod schedule;
