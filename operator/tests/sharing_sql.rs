//! Sharing grants against a real PostgreSQL 15: a connection's role reads exactly the declared
//! columns and nothing else, changes in place, and loses everything on revocation.

mod support;

use sectordb::sharing_sql::{self, Grant, GrantedTable};
use sectordb::sql;
use support::{Postgres, install_crypto, spec};

const OWNER_PASSWORD: &str = "owner-password";
const ROLE: &str = "dsc_test0001";
const ROLE_PASSWORD: &str = "consumer-password";

fn vaccinations(columns: &[&str]) -> Vec<GrantedTable> {
    vec![GrantedTable {
        schema: "public".into(),
        table: "vaccination_records".into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
    }]
}

/// A provider database with a shared table, a private table and a private schema.
async fn provider() -> (Postgres, tokio_postgres::Client) {
    install_crypto();
    let pg = Postgres::start(&spec(3, "Required"));
    sql::ensure_database(&pg.superuser().await, &spec(3, "Required"), OWNER_PASSWORD)
        .await
        .unwrap();
    let owner = sql::connect(&pg.target("app", OWNER_PASSWORD), "health")
        .await
        .unwrap();
    owner
        .batch_execute(
            "CREATE TABLE vaccination_records (id int, district text, vaccine text, given_on date, patient_name text);
             INSERT INTO vaccination_records VALUES (1, 'Ba Dinh', 'MMR', '2026-01-02', 'Nguyen Van A');
             CREATE TABLE diagnoses (id int, code text);
             CREATE SCHEMA private; CREATE TABLE private.notes (id int);",
        )
        .await
        .unwrap();
    let su = sql::connect(
        &pg.target("postgres", support::SUPERUSER_PASSWORD),
        "health",
    )
    .await
    .unwrap();
    (pg, su)
}

async fn consumer(pg: &Postgres) -> Result<tokio_postgres::Client, sql::Error> {
    sql::connect(&pg.target(ROLE, ROLE_PASSWORD), "health").await
}

fn denied(result: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>) -> bool {
    result
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code() == "42501"))
        .unwrap_or(false)
}

fn grant<'a>(tables: &'a [GrantedTable]) -> Grant<'a> {
    Grant {
        role: ROLE,
        password: ROLE_PASSWORD,
        connection_limit: 2,
        database: "health",
        tables,
        set_password: false,
    }
}

#[tokio::test]
async fn a_grant_reads_exactly_the_declared_columns() {
    let (pg, su) = provider().await;
    let tables = vaccinations(&["id", "district", "vaccine", "given_on"]);
    sharing_sql::grant(&su, &grant(&tables)).await.unwrap();
    let c = consumer(&pg).await.expect("the consumer logs in over TLS");
    let rows = c
        .query(
            "SELECT id, district, vaccine, given_on FROM vaccination_records",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        denied(
            c.query("SELECT patient_name FROM vaccination_records", &[])
                .await
        ),
        "undeclared column"
    );
    assert!(
        denied(c.query("SELECT * FROM vaccination_records", &[]).await),
        "SELECT * includes an undeclared column"
    );
    assert!(
        denied(c.query("SELECT * FROM diagnoses", &[]).await),
        "another table"
    );
    assert!(
        denied(c.query("SELECT * FROM private.notes", &[]).await),
        "another schema"
    );
    assert!(
        denied(
            c.query(
                "INSERT INTO vaccination_records (id) VALUES (2) RETURNING id",
                &[]
            )
            .await
        ),
        "writing"
    );
    assert!(
        denied(c.query("CREATE TABLE public.mine (id int)", &[]).await),
        "creating objects"
    );
    let limit: i32 = su
        .query_one(
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(limit, 2);
    // pgaudit records what the sharing role read.
    assert!(
        pg.log()
            .lines()
            .any(|l| l.contains("AUDIT") && l.contains(ROLE) && l.contains("SELECT id, district")),
        "no audit record of the read"
    );
}

#[tokio::test]
async fn grants_change_in_place_without_new_credentials() {
    let (pg, su) = provider().await;
    let three = vaccinations(&["id", "district", "vaccine"]);
    sharing_sql::grant(&su, &grant(&three)).await.unwrap();
    let verifier: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    sharing_sql::grant(&su, &grant(&three)).await.unwrap();
    let four = vaccinations(&["id", "district", "vaccine", "given_on"]);
    sharing_sql::grant(&su, &grant(&four)).await.unwrap();
    let c = consumer(&pg).await.expect("same password still works");
    c.query("SELECT given_on FROM vaccination_records", &[])
        .await
        .expect("added column is granted");
    let two = vaccinations(&["id", "district"]);
    sharing_sql::grant(&su, &grant(&two)).await.unwrap();
    assert!(
        denied(
            c.query("SELECT vaccine FROM vaccination_records", &[])
                .await
        ),
        "removed column is revoked"
    );
    let again: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(verifier, again);
    // A recreated Secret carries a new password: the role takes it.
    let renewed = Grant {
        password: "a-new-password",
        set_password: true,
        ..grant(&two)
    };
    sharing_sql::grant(&su, &renewed).await.unwrap();
    sql::connect(&pg.target(ROLE, "a-new-password"), "health")
        .await
        .expect("the new password works");
    let roles: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'dsc_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 1);
}

#[tokio::test]
async fn revocation_ends_sessions_refuses_logins_and_keeps_the_role() {
    let (pg, su) = provider().await;
    let tables = vaccinations(&["id", "district"]);
    sharing_sql::grant(&su, &grant(&tables)).await.unwrap();
    let open = consumer(&pg).await.unwrap();
    open.query("SELECT id FROM vaccination_records", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    sharing_sql::revoke(&su, ROLE, "health").await.unwrap();
    assert!(
        open.query("SELECT 1", &[]).await.is_err(),
        "the open session must be terminated"
    );
    assert!(consumer(&pg).await.is_err(), "a new login must fail");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let row = su
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .unwrap();
    assert!(
        !row.get::<_, bool>(0),
        "the role stays, NOLOGIN, for the audit trail"
    );
    let privileges: i64 = su
        .query_one(
            "SELECT count(*) FROM information_schema.column_privileges WHERE grantee = $1",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(privileges, 0);
    let usage: bool = su
        .query_one(
            "SELECT has_schema_privilege($1, 'public', 'USAGE')",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    // public schema USAGE is PUBLIC's in PostgreSQL 15; the explicit grant is gone.
    let explicit: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(explicit, 0, "usage={usage}");
    sharing_sql::revoke(&su, ROLE, "health")
        .await
        .expect("revoking twice is fine");
    sharing_sql::revoke(&su, "dsc_never", "health")
        .await
        .expect("revoking a role that never existed is fine");
}
