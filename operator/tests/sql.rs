//! The operator's SQL against a real PostgreSQL 15 with pgaudit, configured by the operator's own
//! postgresql.conf and pg_hba.conf.

mod support;

use sectordb::sql;
use support::{Postgres, install_crypto, spec};
use tokio_postgres::NoTls;

const APP_PASSWORD: &str = "app-password-for-tests";

async fn count(client: &tokio_postgres::Client, query: &str) -> i64 {
    client.query_one(query, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn ensure_database_creates_owner_and_database_once() {
    install_crypto();
    let pg = Postgres::start(&spec(3, "Required"));
    let su = pg.superuser().await;
    let spec = spec(3, "Required");
    sql::ensure_database(&su, &spec, APP_PASSWORD)
        .await
        .unwrap();
    let verifier: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    sql::ensure_database(&su, &spec, APP_PASSWORD)
        .await
        .unwrap();
    assert_eq!(
        count(&su, "SELECT count(*) FROM pg_roles WHERE rolname = 'app'").await,
        1
    );
    assert_eq!(
        count(
            &su,
            "SELECT count(*) FROM pg_database WHERE datname = 'health'"
        )
        .await,
        1
    );
    let again: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(verifier, again, "a second run must not touch the role");
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    // Nobody but the owner may connect: PUBLIC lost CONNECT.
    let public_connect: bool = su
        .query_one(
            "SELECT has_database_privilege('public', 'health', 'CONNECT')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!public_connect);
    // The password never appears in the server log, audit records included.
    assert!(!pg.log().contains(APP_PASSWORD));
}

#[tokio::test]
async fn the_owner_role_follows_a_new_password_in_its_secret_and_only_then_changes() {
    install_crypto();
    let pg = Postgres::start(&spec(3, "Required"));
    let su = pg.superuser().await;
    let spec = spec(3, "Required");
    let verifier = || async {
        let row = su
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    sql::ensure_database(&su, &spec, APP_PASSWORD)
        .await
        .unwrap();
    let first = verifier().await;
    // The app Secret deleted and made again with a new password.
    let renewed = "a-new-app-password";
    sql::ensure_database(&su, &spec, renewed).await.unwrap();
    let second = verifier().await;
    assert_ne!(first, second, "the role took the new password");
    assert!(
        sql::connect(&pg.target("app", renewed), "health")
            .await
            .is_ok()
    );
    assert!(
        sql::connect(&pg.target("app", APP_PASSWORD), "health")
            .await
            .is_err()
    );
    sql::ensure_database(&su, &spec, renewed).await.unwrap();
    assert_eq!(
        verifier().await,
        second,
        "a matching password is left alone"
    );
    assert!(!pg.log().contains(renewed));
}

#[tokio::test]
async fn the_owner_connects_over_tls_and_plain_connections_are_refused_at_level_three() {
    install_crypto();
    let pg = Postgres::start(&spec(3, "Required"));
    sql::ensure_database(&pg.superuser().await, &spec(3, "Required"), APP_PASSWORD)
        .await
        .unwrap();
    let app = sql::connect(&pg.target("app", APP_PASSWORD), "health")
        .await
        .expect("owner over TLS");
    let tls: bool = app
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tls);

    let plain = format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=health sslmode=disable",
        pg.port
    );
    let refused = tokio_postgres::connect(&plain, NoTls)
        .await
        .err()
        .expect("a plain connection must be refused");
    let message = refused
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("pg_hba.conf rejects connection"),
        "{refused:?}"
    );

    let wrong_ca = sectordb::pki::new_ca().unwrap().key;
    let target = sql::Target {
        ca_pem: &wrong_ca.cert_pem,
        ..pg.target("app", APP_PASSWORD)
    };
    assert!(
        sql::connect(&target, "health").await.is_err(),
        "a server signed by another CA must not be trusted"
    );
}

#[tokio::test]
async fn observe_reads_tls_and_pgaudit_from_the_server() {
    install_crypto();
    let pg = Postgres::start(&spec(3, "Required"));
    let seen = sql::observe(&pg.superuser().await, 3).await.unwrap();
    assert!(seen.tls_enforced && seen.pgaudit_loaded, "{seen:?}");

    let open = Postgres::start(&spec(1, "Optional"));
    let seen = sql::observe(&open.superuser().await, 1).await.unwrap();
    assert!(
        !seen.tls_enforced,
        "level 1 with Optional TLS accepts plain connections"
    );
    sql::ensure_database(&open.superuser().await, &spec(1, "Optional"), APP_PASSWORD)
        .await
        .unwrap();
    let plain = format!(
        "host=127.0.0.1 port={} user=app password={APP_PASSWORD} dbname=health sslmode=disable",
        open.port,
    );
    assert!(tokio_postgres::connect(&plain, NoTls).await.is_ok());
}

#[tokio::test]
async fn pgaudit_records_ddl_and_writes_at_level_three() {
    install_crypto();
    let pg = Postgres::start(&spec(3, "Required"));
    sql::ensure_database(&pg.superuser().await, &spec(3, "Required"), APP_PASSWORD)
        .await
        .unwrap();
    let app = sql::connect(&pg.target("app", APP_PASSWORD), "health")
        .await
        .unwrap();
    for statement in [
        "CREATE TABLE audited_t (id int)",
        "INSERT INTO audited_t VALUES (1)",
        "SELECT * FROM audited_t",
    ] {
        app.batch_execute(statement).await.unwrap();
    }
    let log = pg.log();
    assert!(
        log.contains("AUDIT: SESSION") && log.contains("CREATE TABLE audited_t"),
        "no DDL audit record"
    );
    assert!(
        log.contains("INSERT INTO audited_t"),
        "no write audit record"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("AUDIT") && l.contains("SELECT * FROM audited_t")),
        "reads are not in the classes"
    );
}

#[tokio::test]
async fn parameters_are_applied_without_restart_and_reset_when_removed() {
    install_crypto();
    let pg = Postgres::start(&spec(2, "Required"));
    let su = pg.superuser().await;
    let mut with_param = spec(2, "Required");
    with_param
        .postgres
        .parameters
        .insert("work_mem".into(), "8MB".into());
    assert!(sql::apply_parameters(&su, &with_param).await.unwrap());
    assert!(
        !sql::apply_parameters(&su, &with_param).await.unwrap(),
        "second run changes nothing"
    );
    let fresh = pg.superuser().await;
    let work_mem: String = fresh.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(work_mem, "8MB");
    assert!(
        sql::apply_parameters(&su, &spec(2, "Required"))
            .await
            .unwrap()
    );
    let reset = pg.superuser().await;
    let work_mem: String = reset.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(work_mem, "4MB");
}

#[tokio::test]
async fn the_replication_role_streams_only_and_takes_a_new_password_from_its_secret() {
    install_crypto();
    let pg = Postgres::start(&spec(3, "Required"));
    let su = pg.superuser().await;
    let role = sectordb::pgconf::REPLICATION_USER;
    sql::ensure_role(&su, role, "LOGIN REPLICATION", "replication-pw-one")
        .await
        .unwrap();
    sql::ensure_role(&su, role, "LOGIN REPLICATION", "replication-pw-ignored")
        .await
        .unwrap();
    let (replication, superuser): (bool, bool) = su
        .query_one(
            "SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(replication && !superuser);
    // pg_hba admits the role for physical replication only: an ordinary session is refused.
    assert!(
        sql::connect(&pg.target(role, "replication-pw-one"), "postgres")
            .await
            .is_err()
    );
    sql::set_password(&su, role, "replication-pw-two")
        .await
        .unwrap();
    let verifier: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    assert!(!pg.log().contains("replication-pw-two") && !pg.log().contains("replication-pw-one"));
}

/// The certificate the server at `port` presents in its TLS handshake, as PEM.
fn served_certificate(port: u16) -> String {
    let output = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "openssl s_client -starttls postgres -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509"
            ),
        ])
        .output()
        .expect("openssl runs");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_superuser_logs_in_over_tcp_only_with_the_operator_s_certificate() {
    install_crypto();
    let pg = Postgres::start(&spec(1, "Optional"));
    let su = pg.superuser().await;
    // Even a password someone set on the role (a restored database brings its source's) opens
    // nothing over the network.
    su.batch_execute("ALTER ROLE postgres PASSWORD 'known-password'")
        .await
        .unwrap();
    assert!(
        sql::connect(&pg.target("postgres", "known-password"), "postgres")
            .await
            .is_err()
    );
    let plain = format!(
        "host=127.0.0.1 port={} user=postgres password=known-password dbname=postgres sslmode=disable",
        pg.port
    );
    assert!(tokio_postgres::connect(&plain, NoTls).await.is_err());
    // Certificates that are not the operator's superuser certificate.
    let other_ca = sectordb::pki::new_ca().unwrap().key;
    let foreign = sectordb::pki::issue_client(&other_ca, "postgres")
        .unwrap()
        .key;
    let another_user = sectordb::pki::issue_client(&pg.ca, "app").unwrap().key;
    let server = sectordb::pki::issue_server(&pg.ca, "postgres", &["postgres".into()], &[])
        .unwrap()
        .key;
    for (what, identity) in [
        ("another CA's certificate", &foreign),
        ("a certificate for another user", &another_user),
        ("a server certificate", &server),
    ] {
        let target = sql::Target {
            login: sql::Login::Certificate(identity),
            ..pg.superuser_target()
        };
        assert!(
            sql::connect(&target, "postgres").await.is_err(),
            "{what} must not log in as postgres"
        );
    }
}

#[tokio::test]
async fn a_renewed_server_certificate_is_served_after_a_reload_without_a_restart() {
    install_crypto();
    let pg = Postgres::start(&spec(3, "Required"));
    let su = pg.superuser().await;
    // Log every statement, as an agency could ask: the key must still not reach the log.
    for statement in [
        "ALTER SYSTEM SET log_statement = 'all'",
        "SELECT pg_reload_conf()",
    ] {
        su.batch_execute(statement).await.unwrap();
    }
    let started: String = su
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .unwrap()
        .get(0);
    let renewed = sectordb::pki::issue_server(
        &pg.ca,
        "localhost",
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
    )
    .unwrap()
    .key;
    assert_ne!(served_certificate(pg.port).trim(), renewed.cert_pem.trim());
    assert!(
        sql::install_server_certificate(&su, &renewed, &pg.ca.cert_pem)
            .await
            .unwrap()
    );
    assert!(
        !sql::install_server_certificate(&su, &renewed, &pg.ca.cert_pem)
            .await
            .unwrap(),
        "a second pass changes nothing"
    );
    let mut served = String::new();
    for _ in 0..50 {
        served = served_certificate(pg.port);
        if served.trim() == renewed.cert_pem.trim() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(served.trim(), renewed.cert_pem.trim());
    // The session made before the renewal still works; the server did not restart.
    let now: String = su
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(now, started);
    assert!(
        sql::connect(&pg.superuser_target(), "postgres")
            .await
            .is_ok()
    );
    let log = pg.log();
    let key_line = renewed.key_pem.lines().nth(1).unwrap();
    let key_hex: String = key_line.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        log.contains("SELECT pg_postmaster_start_time()::text"),
        "statements are logged"
    );
    assert!(
        !log.contains(key_line) && !log.contains(&key_hex),
        "the key reached the log"
    );
}
