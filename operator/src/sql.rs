//! Everything the operator does inside PostgreSQL, over TLS that verifies the server against the
//! operator's CA. Each step is idempotent: running it twice changes nothing.

use std::net::IpAddr;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;

use crate::api::database::SectorDatabaseSpec;
use crate::pgconf;
use crate::profile::Observed;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PostgreSQL: {}", explain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("connecting to PostgreSQL timed out")]
    Timeout,
    #[error("{0}")]
    Busy(String),
}

/// The server's own words for an error it reported ("db error" alone says nothing).
fn explain(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// Where and as whom to connect.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The name the server certificate carries (the Service DNS name).
    pub host: &'a str,
    /// The address actually dialled (the Service ClusterIP), so no DNS is needed.
    pub addr: IpAddr,
    pub port: u16,
    pub user: &'a str,
    pub login: Login<'a>,
    pub ca_pem: &'a str,
}

/// How the role proves who it is.
#[derive(Clone, Copy)]
pub enum Login<'a> {
    Password(&'a str),
    /// A client certificate and its key (PEM), for roles that log in only by certificate.
    Certificate(&'a crate::pki::CertifiedKey),
}

/// Opens a TLS connection to `dbname`; the connection task runs until the client is dropped.
pub async fn connect(target: &Target<'_>, dbname: &str) -> Result<tokio_postgres::Client, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(target.ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| Error::Tls(e.to_string()))?)
            .map_err(|e| Error::Tls(e.to_string()))?;
    }
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = tokio_postgres::Config::new();
    let tls = match &target.login {
        Login::Password(password) => {
            config.password(*password);
            tls.with_no_client_auth()
        }
        Login::Certificate(identity) => client_auth(tls, identity)?,
    };
    config
        .host(target.host)
        .hostaddr(target.addr)
        .port(target.port)
        .user(target.user)
        .dbname(dbname)
        .application_name("sectordb-operator")
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(5));
    let connecting = config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls));
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| Error::Timeout)??;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

fn client_auth(
    tls: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    identity: &crate::pki::CertifiedKey,
) -> Result<rustls::ClientConfig, Error> {
    let tls_error = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(&e))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| tls_error(&e))?;
    tls.with_client_auth_cert(chain, key)
        .map_err(|e| tls_error(&e))
}

pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `PASSWORD '<SCRAM verifier>'`: the clear password never reaches the server, so no statement
/// log or audit record can reveal it.
pub fn password_clause(password: &str) -> String {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    format!("PASSWORD {}", literal(&verifier))
}

/// Sets a role's password (as a SCRAM verifier).
pub async fn set_password(
    client: &tokio_postgres::Client,
    role: &str,
    password: &str,
) -> Result<(), Error> {
    client
        .batch_execute(&format!(
            "ALTER ROLE {} {}",
            ident(role),
            password_clause(password)
        ))
        .await?;
    Ok(())
}

/// Whether the SCRAM-SHA-256 verifier PostgreSQL stored for a role (`pg_authid.rolpassword`)
/// accepts `password`: the check a login would make, done here so that the clear password never
/// reaches the server. Anything that is not such a verifier accepts nothing.
pub fn scram_accepts(verifier: &str, password: &str) -> bool {
    use base64::Engine as _;
    use ring::{digest, hmac, pbkdf2};
    let parts = verifier
        .strip_prefix("SCRAM-SHA-256$")
        .and_then(|rest| rest.split_once('$'))
        .and_then(|(params, keys)| Some((params.split_once(':')?, keys.split_once(':')?)));
    let Some(((iterations, salt), (stored_key, _))) = parts else {
        return false;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(iterations), Ok(salt), Ok(stored_key)) = (
        iterations.parse::<std::num::NonZeroU32>(),
        b64.decode(salt),
        b64.decode(stored_key),
    ) else {
        return false;
    };
    // As the server does: SASLprep the password, or take it as it is if that fails.
    let prepared = stringprep::saslprep(password).unwrap_or(password.into());
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        prepared.as_bytes(),
        &mut salted,
    );
    let client_key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &salted), b"Client Key");
    digest::digest(&digest::SHA256, client_key.as_ref()).as_ref() == stored_key.as_slice()
}

/// Makes `role`'s password `password` unless its stored verifier already accepts it; returns
/// whether it changed. The Secret is the source of truth: one deleted and made again with a new
/// password, or rotated by its owner, is followed.
pub async fn keep_password(
    client: &tokio_postgres::Client,
    role: &str,
    password: &str,
) -> Result<bool, Error> {
    let stored: Option<String> = client
        .query_opt(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await?
        .and_then(|row| row.get(0));
    if stored.is_some_and(|verifier| scram_accepts(&verifier, password)) {
        return Ok(false);
    }
    set_password(client, role, password).await?;
    Ok(true)
}

/// Creates a role with `attributes` and `password` (stored as a SCRAM verifier, never in clear).
/// An existing role keeps its password: the Secret it came from is kept too.
pub async fn ensure_role(
    client: &tokio_postgres::Client,
    name: &str,
    attributes: &str,
    password: &str,
) -> Result<(), Error> {
    if client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await?
        .is_none()
    {
        client
            .batch_execute(&format!(
                "CREATE ROLE {} {attributes} {}",
                ident(name),
                password_clause(password)
            ))
            .await?;
    }
    Ok(())
}

/// The owner role and the application database of `spec.database`. The password is sent as a
/// SCRAM verifier, never in clear, so no statement log or audit record can reveal it; it is set
/// when the role is created, and again only when the stored one no longer matches it.
pub async fn ensure_database(
    client: &tokio_postgres::Client,
    spec: &SectorDatabaseSpec,
    owner_password: &str,
) -> Result<(), Error> {
    let owner = &spec.database.owner;
    let name = &spec.database.name;
    ensure_role(client, owner, "LOGIN", owner_password).await?;
    keep_password(client, owner, owner_password).await?;
    if client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[name])
        .await?
        .is_none()
    {
        client
            .batch_execute(&format!(
                "CREATE DATABASE {} OWNER {}",
                ident(name),
                ident(owner)
            ))
            .await?;
        // Least privilege: nobody but the owner connects unless a grant says so.
        client
            .batch_execute(&format!(
                "REVOKE ALL ON DATABASE {} FROM PUBLIC",
                ident(name)
            ))
            .await?;
    }
    Ok(())
}

/// Applies the agency's reloadable parameters with ALTER SYSTEM and resets the allowed ones it
/// no longer sets; reloads only when something changed.
pub async fn apply_parameters(
    client: &tokio_postgres::Client,
    spec: &SectorDatabaseSpec,
) -> Result<bool, Error> {
    let wanted = pgconf::reloadable_parameters(spec);
    let rows = client
        .query("SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'", &[])
        .await?;
    let current: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut changed = false;
    for (name, value) in &wanted {
        if !current.iter().any(|(n, v)| n == name && v == value) {
            client
                .batch_execute(&format!("ALTER SYSTEM SET {name} = {}", literal(value)))
                .await?;
            changed = true;
        }
    }
    for (name, _) in &current {
        if !wanted.iter().any(|(n, _)| n == name) && crate::parameters::kind(name).is_some() {
            client
                .batch_execute(&format!("ALTER SYSTEM RESET {name}"))
                .await?;
            changed = true;
        }
    }
    if changed {
        client.batch_execute("SELECT pg_reload_conf()").await?;
    }
    Ok(changed)
}

/// Sets `archive_command` with ALTER SYSTEM (a BackupPolicy covers the database) or resets it to
/// postgresql.conf's, which keeps no WAL (none covers it); reloads only when it changed.
pub async fn set_archive_command(
    client: &tokio_postgres::Client,
    command: Option<&str>,
) -> Result<(), Error> {
    let current: Option<String> = client
        .query_opt(
            "SELECT setting FROM pg_file_settings WHERE name = 'archive_command' \
             AND sourcefile LIKE '%postgresql.auto.conf'",
            &[],
        )
        .await?
        .map(|r| r.get(0));
    let statement = match (command, current.as_deref()) {
        (Some(wanted), current) if current != Some(wanted) => {
            format!("ALTER SYSTEM SET archive_command = {}", literal(wanted))
        }
        (None, Some(_)) => "ALTER SYSTEM RESET archive_command".to_string(),
        _ => return Ok(()),
    };
    client.batch_execute(&statement).await?;
    client.batch_execute("SELECT pg_reload_conf()").await?;
    Ok(())
}

/// Puts `certificate` and the CAs to trust (`trust_pem`, for client certificates and, on a
/// standby, for its primary) where the running server reads its TLS files and reloads it,
/// unless the server already has them: a renewed certificate takes effect with no restart and
/// no dropped session. The certificate is written last, so a failure part way leaves one that
/// differs and is written again on the next pass; a reload only ever sees a matching pair or
/// keeps the pair it had.
pub async fn install_server_certificate(
    client: &tokio_postgres::Client,
    certificate: &crate::pki::CertifiedKey,
    trust_pem: &str,
) -> Result<bool, Error> {
    let files = client
        .query_one(
            "SELECT current_setting('ssl_key_file'), current_setting('ssl_cert_file'), \
             current_setting('ssl_ca_file'), pg_read_file(current_setting('ssl_cert_file')), \
             pg_read_file(current_setting('ssl_ca_file'))",
            &[],
        )
        .await?;
    let (key_file, cert_file, ca_file): (String, String, String) =
        (files.get(0), files.get(1), files.get(2));
    let (served, trusted): (String, String) = (files.get(3), files.get(4));
    if served.trim_end() == certificate.cert_pem.trim_end()
        && trusted.trim_end() == trust_pem.trim_end()
    {
        return Ok(false);
    }
    // The key travels inside the statement (COPY takes no parameters): no log may keep it. The
    // settings go first, in a round trip of their own: the server decides whether to log a query
    // string before running any statement in it.
    client
        .batch_execute(
            "BEGIN; SET LOCAL log_statement = 'none'; SET LOCAL log_min_duration_statement = -1; \
             SET LOCAL log_min_error_statement = 'panic'; SET LOCAL pgaudit.log = 'none'",
        )
        .await?;
    let mut script = String::new();
    for (text, file) in [
        (trust_pem, ca_file),
        (certificate.key_pem.as_str(), key_file),
        (certificate.cert_pem.as_str(), cert_file),
    ] {
        script.push_str(&write_lines_statement(text, &file));
    }
    client.batch_execute(&script).await?;
    client
        .batch_execute("COMMIT; SELECT pg_reload_conf()")
        .await?;
    Ok(true)
}

/// `COPY ... TO` writing `text` to `file` line by line (COPY's text format leaves PEM's
/// characters as they are), the text hex-encoded so nothing in it can end the literal.
fn write_lines_statement(text: &str, file: &str) -> String {
    let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
    format!(
        "COPY (SELECT line FROM regexp_split_to_table(convert_from(decode('{hex}', 'hex'), 'UTF8'), \
         E'\\n') WITH ORDINALITY AS t(line, n) WHERE line <> '' ORDER BY n) TO {};\n",
        literal(file)
    )
}

/// What the running server enforces, read from the server itself.
pub async fn observe(client: &tokio_postgres::Client, level: i32) -> Result<Observed, Error> {
    let plain_accepted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_hba_file_rules WHERE type IN ('host', 'hostnossl') AND auth_method <> 'reject'",
            &[],
        )
        .await?
        .get(0);
    let this_is_tls: bool = client
        .query_opt(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .is_some_and(|r| r.get(0));
    let preload: String = client
        .query_one("SELECT current_setting('shared_preload_libraries')", &[])
        .await?
        .get(0);
    let audit: Option<String> = client
        .query_one("SELECT current_setting('pgaudit.log', true)", &[])
        .await?
        .get(0);
    let audit_classes_set = level < 3 || audit.as_deref() == Some(pgconf::PGAUDIT_CLASSES);
    let streaming: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await?
        .get(0);
    let archiver = client
        .query_one(
            "SELECT extract(epoch FROM last_archived_time)::float8, \
             coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) FROM pg_stat_archiver",
            &[],
        )
        .await?;
    Ok(Observed {
        last_archived: archiver.get::<_, Option<f64>>(0).map(|s| s as i64),
        archiving_fails: archiver.get(1),
        tls_enforced: plain_accepted == 0 && this_is_tls,
        pgaudit_loaded: preload.split(',').any(|l| l.trim() == "pgaudit") && audit_classes_set,
        streaming_standbys: i32::try_from(streaming).unwrap_or(i32::MAX),
        ..Observed::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scram_verifier_accepts_its_password_only() {
        for password in ["app-password", "mật khẩu ñ", ""] {
            let clause = password_clause(password);
            let verifier = clause
                .trim_start_matches("PASSWORD '")
                .trim_end_matches('\'');
            assert!(scram_accepts(verifier, password), "{password:?}");
            assert!(!scram_accepts(verifier, "another"), "{password:?}");
        }
        for garbage in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:y$z:w",
            "SCRAM-SHA-256$4096:@@$a:b",
        ] {
            assert!(!scram_accepts(garbage, ""), "{garbage:?}");
        }
    }
}
