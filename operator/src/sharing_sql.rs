//! Grants and revocations of DataSharingConnections inside the provider's PostgreSQL: one role per
//! connection, column-level SELECT on exactly the declared columns, nothing else.

use std::collections::BTreeSet;

use crate::pgconf::SHARING_GROUP;
use crate::sql::{Error, ident, literal, password_clause, set_password};

/// A table and the columns a grant covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GrantedTable {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
}

impl GrantedTable {
    /// `schema.table(a,b)`, as status lists it.
    pub fn describe(&self) -> String {
        format!("{}.{}({})", self.schema, self.table, self.columns.join(","))
    }
}

/// What a grant asks for.
pub struct Grant<'a> {
    pub role: &'a str,
    pub password: &'a str,
    pub connection_limit: i32,
    pub database: &'a str,
    pub tables: &'a [GrantedTable],
    /// Set the password even if the role exists: its Secret was (re)created with a new one.
    pub set_password: bool,
    /// Replicate mode: the role also streams the publication to the consumer's subscription.
    pub replication: bool,
    /// The connection's `validUntil`: PostgreSQL itself refuses the role's logins from then on,
    /// whether or not the operator is running.
    pub valid_until: jiff::Timestamp,
}

/// The role name for a connection: derived from its UID, so a re-created connection of the same
/// name gets a new role and the old one stays (NOLOGIN) in the audit trail.
pub fn role_name(uid: &str) -> String {
    let compact: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(24)
        .collect();
    format!("dsc_{}", compact.to_lowercase())
}

/// Column privileges the role holds now, as (schema, table, column).
async fn held(
    client: &tokio_postgres::Client,
    role: &str,
) -> Result<BTreeSet<(String, String, String)>, Error> {
    let rows = client
        .query(
            "SELECT table_schema, table_name, column_name FROM information_schema.column_privileges \
             WHERE grantee = $1 AND privilege_type = 'SELECT'",
            &[&role],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Makes the role hold exactly the grant: creates it (password as a SCRAM verifier), sets LOGIN,
/// REPLICATION as the mode asks and the connection limit, audits everything it does, grants CONNECT, USAGE on each schema and
/// SELECT on each column, and revokes columns no longer granted. Running it twice changes nothing.
/// Connect as a superuser to the provider's application database.
pub async fn grant(client: &tokio_postgres::Client, grant: &Grant<'_>) -> Result<(), Error> {
    let role = ident(grant.role);
    let replication = if grant.replication {
        "REPLICATION"
    } else {
        "NOREPLICATION"
    };
    let until = format!("VALID UNTIL {}", literal(&grant.valid_until.to_string()));
    client
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN CREATE ROLE {} NOLOGIN; END IF; END $$",
            literal(SHARING_GROUP),
            ident(SHARING_GROUP)
        ))
        .await?;
    let exists = client
        .query_opt(
            "SELECT rolcanlogin, rolconnlimit, rolreplication,              extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = $1",
            &[&grant.role],
        )
        .await?;
    match exists {
        None => {
            client
                .batch_execute(&format!(
                    "CREATE ROLE {role} LOGIN NOINHERIT {replication} CONNECTION LIMIT {} {until} {}",
                    grant.connection_limit,
                    password_clause(grant.password)
                ))
                .await?;
            // pgaudit logs every statement of this role, reads included.
            client
                .batch_execute(&format!("ALTER ROLE {role} SET pgaudit.log = 'all'"))
                .await?;
            client
                .batch_execute(&format!("ALTER ROLE {role} SET pgaudit.log_relation = on"))
                .await?;
        }
        Some(row) => {
            let (login, limit, streams, expires): (bool, i32, bool, Option<i64>) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if !login
                || limit != grant.connection_limit
                || streams != grant.replication
                || expires != Some(grant.valid_until.as_second())
            {
                client
                    .batch_execute(&format!(
                        "ALTER ROLE {role} LOGIN {replication} CONNECTION LIMIT {} {until}",
                        grant.connection_limit
                    ))
                    .await?;
            }
            if grant.set_password {
                set_password(client, grant.role, grant.password).await?;
            }
        }
    }
    client
        .batch_execute(&format!(
            "GRANT {} TO {role}; GRANT CONNECT ON DATABASE {} TO {role}",
            ident(SHARING_GROUP),
            ident(grant.database)
        ))
        .await?;
    let wanted: BTreeSet<(String, String, String)> = grant
        .tables
        .iter()
        .flat_map(|t| {
            t.columns
                .iter()
                .map(move |c| (t.schema.clone(), t.table.clone(), c.clone()))
        })
        .collect();
    let schemas: BTreeSet<&str> = grant.tables.iter().map(|t| t.schema.as_str()).collect();
    for schema in schemas {
        client
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA {} TO {role}",
                ident(schema)
            ))
            .await?;
    }
    let current = held(client, grant.role).await?;
    for (schema, table, column) in current.difference(&wanted) {
        client
            .batch_execute(&format!(
                "REVOKE SELECT ({}) ON {}.{} FROM {role}",
                ident(column),
                ident(schema),
                ident(table)
            ))
            .await?;
    }
    for (schema, table, column) in wanted.difference(&current) {
        client
            .batch_execute(&format!(
                "GRANT SELECT ({}) ON {}.{} TO {role}",
                ident(column),
                ident(schema),
                ident(table)
            ))
            .await?;
    }
    Ok(())
}

/// Revokes everything the role was granted, makes it NOLOGIN and ends its open sessions. The role
/// itself is kept for the audit trail. A role that never existed is fine.
pub async fn revoke(
    client: &tokio_postgres::Client,
    role: &str,
    database: &str,
) -> Result<(), Error> {
    if client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .is_none()
    {
        return Ok(());
    }
    let quoted = ident(role);
    client
        .batch_execute(&format!("ALTER ROLE {quoted} NOLOGIN NOREPLICATION"))
        .await?;
    client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await?;
    for (schema, table, column) in held(client, role).await? {
        client
            .batch_execute(&format!(
                "REVOKE SELECT ({}) ON {}.{} FROM {quoted}",
                ident(&column),
                ident(&schema),
                ident(&table)
            ))
            .await?;
    }
    let schemas = client
        .query(
            "SELECT n.nspname FROM pg_namespace n, aclexplode(n.nspacl) a \
             WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1) AND a.privilege_type = 'USAGE'",
            &[&role],
        )
        .await?;
    for row in schemas {
        let schema: String = row.get(0);
        client
            .batch_execute(&format!(
                "REVOKE USAGE ON SCHEMA {} FROM {quoted}",
                ident(&schema)
            ))
            .await?;
    }
    client
        .batch_execute(&format!(
            "REVOKE CONNECT ON DATABASE {} FROM {quoted}",
            ident(database)
        ))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_come_from_the_uid_and_are_valid_identifiers() {
        let name = role_name("1f0e2a3b-4c5d-6e7f-8091-a2b3c4d5e6f7");
        assert_eq!(name, "dsc_1f0e2a3b4c5d6e7f8091a2b3");
        assert!(
            name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }
}
