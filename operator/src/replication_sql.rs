//! Replicate-mode sharing inside PostgreSQL: a publication on the provider for exactly the granted
//! tables and columns (PostgreSQL 15 column lists), target tables built from the provider's
//! definitions in the consumer's database, and a subscription there. The connection's role,
//! publication, subscription and replication slot all carry the same name.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::sharing_sql::GrantedTable;
use crate::sql::{Error, ident, literal};

/// A granted table as the provider defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTable {
    pub granted: GrantedTable,
    /// The granted columns that exist, in table order, with their SQL types.
    pub columns: Vec<(String, String)>,
    /// The columns that identify a row for UPDATE and DELETE; `None` when the table has no
    /// usable replica identity (REPLICA IDENTITY NOTHING, or the default without a primary key).
    pub identity: Option<Vec<String>>,
    /// Granted columns whose type is not built into PostgreSQL: a type name the provider
    /// defines must never be spelled into the consumer's database.
    pub foreign_types: Vec<String>,
}

/// The role that owns every table the operator replicates into a consumer's database: NOLOGIN,
/// so the consumer's own roles (which only read) cannot add triggers that the subscription's
/// apply worker, a superuser in PostgreSQL 15, would run.
pub const REPLICA_OWNER: &str = "sectordb_replicas";

/// The comment that marks a consumer table the operator created for the subscription `name`.
fn target_marker(name: &str) -> String {
    format!("sectordb: replicated by {name}")
}

fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// Reads the column types and the replica identity of each granted table from the provider.
pub async fn describe(
    client: &tokio_postgres::Client,
    tables: &[GrantedTable],
) -> Result<Vec<SourceTable>, Error> {
    let mut sources = Vec::new();
    for granted in tables {
        let table = qualified(&granted.schema, &granted.table);
        // Built-in types have OIDs below FirstNormalObjectId (16384).
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid::oid::int8 < 16384 \
                 FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                 AND a.attname = ANY($2) ORDER BY a.attnum",
                &[&table, &granted.columns],
            )
            .await?;
        let columns = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let foreign_types = rows
            .iter()
            .filter(|r| !r.get::<_, bool>(2))
            .map(|r| r.get(0))
            .collect();
        let identity_kind: i8 = client
            .query_one(
                "SELECT relreplident FROM pg_class WHERE oid = $1::text::regclass",
                &[&table],
            )
            .await?
            .get(0);
        let identity = match identity_kind as u8 {
            b'f' => Some(all_columns(client, &table).await?),
            b'd' | b'i' => {
                let index_columns: Vec<String> = client
                    .query(
                        "SELECT a.attname::text FROM pg_index i \
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                         WHERE i.indrelid = $1::text::regclass \
                         AND (i.indisreplident OR (i.indisprimary AND $2))",
                        &[&table, &(identity_kind as u8 == b'd')],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                (!index_columns.is_empty()).then_some(index_columns)
            }
            _ => None,
        };
        sources.push(SourceTable {
            granted: granted.clone(),
            columns,
            identity,
            foreign_types,
        });
    }
    Ok(sources)
}

async fn all_columns(client: &tokio_postgres::Client, table: &str) -> Result<Vec<String>, Error> {
    Ok(client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attnum > 0 AND NOT attisdropped",
            &[&table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Why these tables cannot be published as granted, or `None` when they can. A PostgreSQL 15
/// column list must cover the table's replica identity, otherwise UPDATE and DELETE fail on the
/// provider itself once the table is published: such a grant is refused, never half-made. Pure.
pub fn unpublishable(sources: &[SourceTable]) -> Option<String> {
    let problems: Vec<String> = sources
        .iter()
        .filter_map(|s| {
            let name = format!("{}.{}", s.granted.schema, s.granted.table);
            let granted: BTreeSet<&str> = s.columns.iter().map(|(c, _)| c.as_str()).collect();
            let missing: Vec<&str> = s
                .granted
                .columns
                .iter()
                .map(String::as_str)
                .filter(|c| !granted.contains(c))
                .collect();
            if !missing.is_empty() {
                return Some(format!("{name} has no column {}", missing.join(", ")));
            }
            if !s.foreign_types.is_empty() {
                return Some(format!(
                    "{name}: column(s) {} have types that are not built into PostgreSQL, which are not replicated",
                    s.foreign_types.join(", ")
                ));
            }
            let Some(identity) = &s.identity else {
                return Some(format!(
                    "{name} has no primary key or replica identity, so its updates cannot be replicated"
                ));
            };
            let uncovered: Vec<&str> = identity
                .iter()
                .map(String::as_str)
                .filter(|c| !granted.contains(c))
                .collect();
            (!uncovered.is_empty()).then(|| {
                format!(
                    "{name}: its replica identity column(s) {} are not in the dataset, so rows cannot be replicated",
                    uncovered.join(", ")
                )
            })
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// `schema.table (a, b)` list of a publication, in a stable order.
fn publication_tables(sources: &[SourceTable]) -> String {
    sources
        .iter()
        .map(|s| {
            let columns: Vec<String> = s.columns.iter().map(|(c, _)| ident(c)).collect();
            format!(
                "{} ({})",
                qualified(&s.granted.schema, &s.granted.table),
                columns.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes the publication `name` publish exactly these tables and columns. Connect as a superuser
/// to the provider's application database.
pub async fn publish(
    client: &tokio_postgres::Client,
    name: &str,
    sources: &[SourceTable],
) -> Result<(), Error> {
    let wanted: BTreeSet<(String, String, Vec<String>)> = sources
        .iter()
        .map(|s| {
            let mut columns: Vec<String> = s.columns.iter().map(|(c, _)| c.clone()).collect();
            columns.sort();
            (s.granted.schema.clone(), s.granted.table.clone(), columns)
        })
        .collect();
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                ident(name),
                publication_tables(sources)
            ))
            .await?;
        return Ok(());
    }
    let current: BTreeSet<(String, String, Vec<String>)> = client
        .query(
            "SELECT schemaname::text, tablename::text, \
             ARRAY(SELECT unnest(attnames)::text ORDER BY 1) FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if current != wanted {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} SET TABLE {}",
                ident(name),
                publication_tables(sources)
            ))
            .await?;
    }
    Ok(())
}

/// Creates, in the consumer's database, a table for each source with the granted columns and the
/// provider's types and replica identity as primary key, owned by `REPLICA_OWNER` and readable by
/// `reader`; adds columns granted later. Tables the operator made for this subscription keep
/// their rows. `Ok(Err)` names a table of that name the operator did not make: it is never
/// written into.
pub async fn ensure_targets(
    client: &tokio_postgres::Client,
    name: &str,
    sources: &[SourceTable],
    reader: &str,
) -> Result<std::result::Result<(), String>, Error> {
    let owner = ident(REPLICA_OWNER);
    let marker = target_marker(name);
    client
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN CREATE ROLE {owner} NOLOGIN; END IF; END $$",
            literal(REPLICA_OWNER)
        ))
        .await?;
    for s in sources {
        let schema = ident(&s.granted.schema);
        let table = qualified(&s.granted.schema, &s.granted.table);
        let existing = client
            .query_opt(
                "SELECT obj_description(c.oid, 'pg_class'), pg_get_userbyid(c.relowner)::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&s.granted.schema, &s.granted.table],
            )
            .await?;
        if let Some(row) = existing {
            let (comment, table_owner): (Option<String>, String) = (row.get(0), row.get(1));
            if comment.as_deref() != Some(marker.as_str()) || table_owner != REPLICA_OWNER {
                return Ok(Err(format!(
                    "the consumer database already has a table {}.{} that sectordb did not create for this connection; rename it or replicate into another database",
                    s.granted.schema, s.granted.table
                )));
            }
        }
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {}; GRANT USAGE ON SCHEMA {schema} TO {owner}, {}",
                ident(reader),
                ident(reader)
            ))
            .await?;
        let mut definition: Vec<String> = s
            .columns
            .iter()
            .map(|(c, t)| format!("{} {t}", ident(c)))
            .collect();
        if let Some(identity) = &s.identity {
            let key: Vec<String> = identity.iter().map(|c| ident(c)).collect();
            definition.push(format!("PRIMARY KEY ({})", key.join(", ")));
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} ({}); COMMENT ON TABLE {table} IS {}",
                definition.join(", "),
                literal(&marker)
            ))
            .await?;
        for (column, kind) in &s.columns {
            client
                .batch_execute(&format!(
                    "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {kind}",
                    ident(column)
                ))
                .await?;
        }
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} OWNER TO {owner}; REVOKE ALL ON {table} FROM {}; GRANT SELECT ON {table} TO {}",
                ident(reader),
                ident(reader)
            ))
            .await?;
    }
    Ok(Ok(()))
}

/// How the consumer's server reaches the provider.
pub struct Source<'a> {
    /// The name the provider's certificate carries.
    pub host: &'a str,
    /// The address dialled, so no DNS is needed.
    pub addr: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    /// The CA file on the consumer's server that verifies the provider (sslmode=verify-full).
    pub ca_file: &'a str,
}

fn conninfo(source: &Source) -> String {
    let value = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "host={} hostaddr={} port={} dbname={} user={} password={} sslmode=verify-full sslrootcert={}",
        value(source.host),
        value(source.addr),
        source.port,
        value(source.dbname),
        value(source.user),
        value(source.password),
        value(source.ca_file)
    )
}

/// Whether the subscription `name` exists in the consumer's database.
pub async fn subscribed(client: &tokio_postgres::Client, name: &str) -> Result<bool, Error> {
    Ok(client
        .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&name])
        .await?
        .is_some())
}

/// Runs `statement` (which carries a password) so that neither pgaudit nor the server's error log
/// records its text, then restores the session's settings.
async fn unlogged(client: &tokio_postgres::Client, statement: &str) -> Result<(), Error> {
    client
        .batch_execute("SET pgaudit.log = 'none'; SET log_min_error_statement = 'panic'")
        .await?;
    let result = client.batch_execute(statement).await;
    client
        .batch_execute("RESET pgaudit.log; RESET log_min_error_statement")
        .await?;
    Ok(result?)
}

/// Creates the subscription `name` to the publication of the same name (copying the rows that
/// exist), or, when it exists, enables it and picks up tables added to the publication. Each
/// statement runs on its own: none of them may run inside a transaction block.
pub async fn subscribe(
    client: &tokio_postgres::Client,
    name: &str,
    source: &Source<'_>,
) -> Result<(), Error> {
    let sub = ident(name);
    if !subscribed(client, name).await? {
        return unlogged(
            client,
            &format!(
                "CREATE SUBSCRIPTION {sub} CONNECTION {} PUBLICATION {sub}",
                literal(&conninfo(source))
            ),
        )
        .await;
    }
    let enabled: bool = client
        .query_one(
            "SELECT subenabled FROM pg_subscription WHERE subname = $1",
            &[&name],
        )
        .await?
        .get(0);
    if !enabled {
        client
            .batch_execute(&format!("ALTER SUBSCRIPTION {sub} ENABLE"))
            .await?;
    }
    Ok(())
}

/// Makes the subscription pick up tables added to its publication since it was created.
pub async fn refresh_if_tables_changed(
    client: &tokio_postgres::Client,
    name: &str,
    sources: &[SourceTable],
) -> Result<(), Error> {
    let wanted: BTreeSet<String> = sources
        .iter()
        .map(|s| format!("{}.{}", s.granted.schema, s.granted.table))
        .collect();
    let current: BTreeSet<String> = client
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_subscription_rel r \
             JOIN pg_subscription s ON s.oid = r.srsubid JOIN pg_class c ON c.oid = r.srrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE s.subname = $1",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if current != wanted {
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} REFRESH PUBLICATION",
                ident(name)
            ))
            .await?;
    }
    Ok(())
}

/// Drops the subscription `name` and keeps the rows it copied. The replication slot on the
/// provider is detached first, so this works when the provider is unreachable or already revoked;
/// `drop_publication` removes the slot there.
pub async fn unsubscribe(client: &tokio_postgres::Client, name: &str) -> Result<(), Error> {
    if !subscribed(client, name).await? {
        return Ok(());
    }
    let sub = ident(name);
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION {sub} DISABLE"))
        .await?;
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"))
        .await?;
    client
        .batch_execute(&format!("DROP SUBSCRIPTION {sub}"))
        .await?;
    Ok(())
}

/// Drops the publication `name` and its replication slot on the provider. Call after the role's
/// sessions were ended: a slot still in use is waited for a few seconds, then reported.
pub async fn drop_publication(client: &tokio_postgres::Client, name: &str) -> Result<(), Error> {
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(name)))
        .await?;
    for _ in 0..40 {
        let slot = client
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await?;
        match slot {
            None => return Ok(()),
            Some(row) if !row.get::<_, bool>(0) => {
                client
                    .query("SELECT pg_drop_replication_slot($1)", &[&name])
                    .await?;
                return Ok(());
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    Err(Error::Busy(format!(
        "replication slot {name} is still in use after its sessions were ended"
    )))
}

/// What the provider sees of a subscription's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    /// The walsender streams to the subscription now.
    pub streaming: bool,
    /// Whole seconds between a commit on the provider and its replay by the consumer; 0 when the
    /// consumer has caught up.
    pub lag_seconds: i64,
}

/// The stream of the subscription `name`, read on the provider.
pub async fn stream(client: &tokio_postgres::Client, name: &str) -> Result<Stream, Error> {
    let row = client
        .query_opt(
            "SELECT state = 'streaming', COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)::float8 \
             FROM pg_stat_replication WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1",
            &[&name],
        )
        .await?;
    Ok(match row {
        Some(row) => Stream {
            streaming: row.get(0),
            lag_seconds: row.get::<_, f64>(1).floor() as i64,
        },
        None => Stream {
            streaming: false,
            lag_seconds: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(columns: &[&str], identity: Option<&[&str]>) -> SourceTable {
        SourceTable {
            granted: GrantedTable {
                schema: "public".into(),
                table: "v".into(),
                columns: columns.iter().map(|c| c.to_string()).collect(),
            },
            columns: columns
                .iter()
                .map(|c| (c.to_string(), "integer".to_string()))
                .collect(),
            identity: identity.map(|i| i.iter().map(|c| c.to_string()).collect()),
            foreign_types: vec![],
        }
    }

    #[test]
    fn a_column_of_a_type_the_provider_defined_is_not_replicated() {
        let mut s = source(&["id", "mood"], Some(&["id"]));
        s.foreign_types.push("mood".into());
        let why = unpublishable(&[s]).unwrap();
        assert!(
            why.contains("mood") && why.contains("not built into PostgreSQL"),
            "{why}"
        );
    }

    #[test]
    fn a_table_is_publishable_only_when_the_grant_covers_its_replica_identity() {
        assert_eq!(
            unpublishable(&[source(&["id", "district"], Some(&["id"]))]),
            None
        );
        let uncovered = unpublishable(&[source(&["district"], Some(&["id"]))]).unwrap();
        assert!(
            uncovered.contains("public.v") && uncovered.contains("id"),
            "{uncovered}"
        );
        let keyless = unpublishable(&[source(&["id"], None)]).unwrap();
        assert!(keyless.contains("no primary key"), "{keyless}");
    }

    #[test]
    fn a_declared_column_the_table_lacks_is_named() {
        let mut s = source(&["id"], Some(&["id"]));
        s.granted.columns.push("district".into());
        assert_eq!(
            unpublishable(&[s]).as_deref(),
            Some("public.v has no column district")
        );
    }

    #[test]
    fn the_conninfo_verifies_the_provider_and_quotes_every_value() {
        let info = conninfo(&Source {
            host: "records-rw.p.svc",
            addr: "10.96.0.9",
            port: 5432,
            dbname: "health",
            user: "dsc_1",
            password: "it's",
            ca_file: "/var/lib/sectordb/tls/ca.crt",
        });
        assert!(info.contains("sslmode=verify-full"));
        assert!(info.contains("password='it\\'s'"));
        assert!(info.contains("hostaddr='10.96.0.9'"));
    }

    #[test]
    fn publication_lists_name_the_columns() {
        assert_eq!(
            publication_tables(&[source(&["id", "district"], Some(&["id"]))]),
            "\"public\".\"v\" (\"id\", \"district\")"
        );
    }
}
