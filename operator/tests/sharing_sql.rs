//! Sharing against a real PostgreSQL 15: a connection's role reads exactly the declared columns and
//! nothing else, changes in place, and loses everything on revocation; in Replicate mode a second
//! server subscribes to exactly those columns and keeps its copy after revocation.

mod support;

use sectordb::replication_sql;
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

/// A server with the application database and its owner, and a superuser session on that
/// database.
async fn server_with_database() -> (Postgres, tokio_postgres::Client) {
    install_crypto();
    let pg = Postgres::start(&spec(3, "Required"));
    sql::ensure_database(&pg.superuser().await, &spec(3, "Required"), OWNER_PASSWORD)
        .await
        .unwrap();
    let su = pg.superuser_on("health").await;
    (pg, su)
}

/// A provider database with a shared table, a private table and a private schema.
async fn provider() -> (Postgres, tokio_postgres::Client) {
    let (pg, su) = server_with_database().await;
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
        replication: false,
        valid_until: "2099-01-01T00:00:00Z".parse().unwrap(),
    }
}

/// SQLSTATE of a failed login, e.g. 28000 (pg_hba.conf rejects) or 28P01 (password refused).
fn login_refused(result: Result<tokio_postgres::Client, sql::Error>) -> String {
    match result {
        Ok(_) => "logged in".into(),
        Err(e) => format!("{e}"),
    }
}

#[tokio::test]
async fn a_grant_s_role_reaches_only_the_application_database() {
    let (pg, su) = provider().await;
    let tables = vaccinations(&["id", "district"]);
    sharing_sql::grant(&su, &grant(&tables)).await.unwrap();
    consumer(&pg)
        .await
        .expect("the application database admits the role");
    for other in ["postgres", "template1"] {
        let refused = login_refused(sql::connect(&pg.target(ROLE, ROLE_PASSWORD), other).await);
        assert!(refused.contains("pg_hba.conf"), "{other}: {refused}");
    }
    let attributes = su
        .query_one(
            "SELECT rolsuper, rolreplication, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .unwrap();
    for i in 0..5 {
        assert!(
            !attributes.get::<_, bool>(i),
            "attribute {i} of the grant's role"
        );
    }
    let c = consumer(&pg).await.unwrap();
    for attack in [
        "SELECT pg_read_file('postgresql.conf')",
        "SELECT lo_import('/etc/passwd')",
        "COPY vaccination_records FROM PROGRAM 'id'",
    ] {
        let refused = c
            .batch_execute(attack)
            .await
            .err()
            .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
        assert_eq!(refused.as_deref(), Some("42501"), "{attack}");
    }
}

#[tokio::test]
async fn a_grant_s_role_expires_in_postgresql_itself_at_valid_until() {
    let (pg, su) = provider().await;
    let tables = vaccinations(&["id"]);
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
    let expiring = Grant {
        valid_until: jiff::Timestamp::from_second(soon.as_second()).unwrap(),
        ..grant(&tables)
    };
    sharing_sql::grant(&su, &expiring).await.unwrap();
    let expires: i64 = su
        .query_one(
            "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = $1",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expires, soon.as_second());
    consumer(&pg)
        .await
        .expect("before validUntil the role logs in");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    // No operator runs here: PostgreSQL alone refuses the login.
    let refused = login_refused(consumer(&pg).await);
    assert!(
        refused.contains("password authentication failed"),
        "{refused}"
    );
    // A later validUntil moves the role's expiry with it.
    sharing_sql::grant(&su, &grant(&tables)).await.unwrap();
    consumer(&pg)
        .await
        .expect("an extended grant logs in again");
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

const REPLICATED: &str = "dsc_repl0001";

/// Provider steps of a Replicate grant, as the controller runs them: the role with REPLICATION,
/// its column grants and the publication.
async fn publish(su: &tokio_postgres::Client, tables: &[GrantedTable], set_password: bool) {
    let sources = replication_sql::describe(su, tables).await.unwrap();
    assert_eq!(replication_sql::unpublishable(&sources), None);
    let grant = Grant {
        role: REPLICATED,
        replication: true,
        set_password,
        ..grant(tables)
    };
    sharing_sql::grant(su, &grant).await.unwrap();
    replication_sql::publish(su, REPLICATED, &sources)
        .await
        .unwrap();
}

/// Consumer steps: target tables the consumer's owner reads, then the subscription.
async fn subscribe(
    provider: &Postgres,
    provider_su: &tokio_postgres::Client,
    consumer_su: &tokio_postgres::Client,
    tables: &[GrantedTable],
) {
    let sources = replication_sql::describe(provider_su, tables)
        .await
        .unwrap();
    replication_sql::ensure_targets(consumer_su, REPLICATED, &sources, "app")
        .await
        .unwrap()
        .unwrap();
    let ca_file = provider.dir.join("ca.crt").display().to_string();
    let port = provider.port.to_string();
    let source = replication_sql::Source {
        host: "localhost",
        addr: "127.0.0.1",
        port: port.parse().unwrap(),
        dbname: "health",
        user: REPLICATED,
        password: ROLE_PASSWORD,
        ca_file: &ca_file,
    };
    replication_sql::subscribe(consumer_su, REPLICATED, &source)
        .await
        .unwrap();
    replication_sql::refresh_if_tables_changed(consumer_su, REPLICATED, &sources)
        .await
        .unwrap();
}

async fn rows_in(client: &tokio_postgres::Client, query: &str) -> Vec<String> {
    client
        .query(query, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Polls `query` on `client` until it returns `want`, for at most 20 seconds.
async fn eventually(client: &tokio_postgres::Client, query: &str, want: &[&str]) {
    let mut seen = Vec::new();
    for _ in 0..80 {
        seen = rows_in(client, query).await;
        if seen == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("{query}: wanted {want:?}, still {seen:?} after 20 s");
}

/// A provider whose shared table has a primary key, a consumer server subscribed to `columns` of
/// it as the controller subscribes one, and the existing row already copied.
async fn replicating(
    columns: &[&str],
) -> (
    Postgres,
    tokio_postgres::Client,
    Postgres,
    tokio_postgres::Client,
) {
    let (provider_pg, provider_su) = provider().await;
    provider_su
        .batch_execute("ALTER TABLE vaccination_records ADD PRIMARY KEY (id)")
        .await
        .unwrap();
    let (consumer_pg, consumer_su) = server_with_database().await;
    let tables = vaccinations(columns);
    publish(&provider_su, &tables, true).await;
    subscribe(&provider_pg, &provider_su, &consumer_su, &tables).await;
    eventually(
        &consumer_su,
        "SELECT district FROM vaccination_records ORDER BY id",
        &["Ba Dinh"],
    )
    .await;
    (provider_pg, provider_su, consumer_pg, consumer_su)
}

#[tokio::test]
async fn replication_never_writes_into_a_table_the_consumer_made_itself() {
    let (_provider_pg, provider_su) = provider().await;
    provider_su
        .batch_execute("ALTER TABLE vaccination_records ADD PRIMARY KEY (id)")
        .await
        .unwrap();
    let (_consumer_pg, consumer_su) = server_with_database().await;
    consumer_su
        .batch_execute("CREATE TABLE vaccination_records (id int PRIMARY KEY, district text, vaccine text); INSERT INTO vaccination_records VALUES (7, 'own', 'own')")
        .await
        .unwrap();
    let tables = vaccinations(&["id", "district", "vaccine"]);
    let sources = replication_sql::describe(&provider_su, &tables)
        .await
        .unwrap();
    let refused = replication_sql::ensure_targets(&consumer_su, REPLICATED, &sources, "app")
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("public.vaccination_records"), "{refused}");
    // A comment copied from a real target does not make the table the operator's either.
    consumer_su
        .batch_execute(
            "COMMENT ON TABLE vaccination_records IS 'sectordb: replicated by dsc_repl0001'",
        )
        .await
        .unwrap();
    assert!(
        replication_sql::ensure_targets(&consumer_su, REPLICATED, &sources, "app")
            .await
            .unwrap()
            .is_err()
    );
    assert_eq!(
        rows_in(&consumer_su, "SELECT district FROM vaccination_records").await,
        ["own"]
    );
}

#[tokio::test]
async fn a_column_of_a_type_the_provider_defined_is_refused() {
    let (_pg, su) = provider().await;
    su.batch_execute("CREATE TYPE mood AS ENUM ('ok'); ALTER TABLE vaccination_records ADD COLUMN mood mood, ADD PRIMARY KEY (id)")
        .await
        .unwrap();
    let sources = replication_sql::describe(&su, &vaccinations(&["id", "mood"]))
        .await
        .unwrap();
    let why = replication_sql::unpublishable(&sources).expect("refused");
    assert!(why.contains("mood"), "{why}");
}

#[tokio::test]
async fn replication_copies_exactly_the_granted_columns_and_stops_on_revocation() {
    let (provider_pg, provider_su, consumer_pg, consumer_su) =
        replicating(&["id", "district", "vaccine"]).await;
    let tables = vaccinations(&["id", "district", "vaccine"]);
    // The existing row was copied; changes stream; the undeclared column never arrives.
    provider_su
        .batch_execute(
            "INSERT INTO vaccination_records VALUES (2, 'Hoan Kiem', 'BCG', '2026-02-03', 'Tran Thi B');
             UPDATE vaccination_records SET district = 'Tay Ho' WHERE id = 1",
        )
        .await
        .unwrap();
    eventually(
        &consumer_su,
        "SELECT district FROM vaccination_records ORDER BY id",
        &["Tay Ho", "Hoan Kiem"],
    )
    .await;
    let columns = rows_in(
        &consumer_su,
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'vaccination_records' ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(columns, ["id", "district", "vaccine"]);
    let owner = rows_in(
        &consumer_su,
        "SELECT tableowner::text FROM pg_tables WHERE tablename = 'vaccination_records'",
    )
    .await;
    assert_eq!(owner, [replication_sql::REPLICA_OWNER]);
    let app = sql::connect(&consumer_pg.target("app", OWNER_PASSWORD), "health")
        .await
        .unwrap();
    assert_eq!(
        rows_in(&app, "SELECT district FROM vaccination_records ORDER BY id").await,
        ["Tay Ho", "Hoan Kiem"],
        "the consumer's owner reads its copy"
    );
    // ...and cannot hang code on it that the apply worker (a superuser) would run.
    app.batch_execute("CREATE FUNCTION grab() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN ALTER ROLE app SUPERUSER; RETURN NEW; END $$")
        .await
        .unwrap();
    let trigger = app
        .batch_execute("CREATE TRIGGER grab BEFORE INSERT ON vaccination_records FOR EACH ROW EXECUTE FUNCTION grab()")
        .await
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
    assert_eq!(
        trigger.as_deref(),
        Some("42501"),
        "a trigger on the replicated table"
    );
    let stream = replication_sql::stream(&provider_su, REPLICATED)
        .await
        .unwrap();
    assert!(stream.streaming, "{stream:?}");

    // Running every step again changes nothing and keeps the password.
    publish(&provider_su, &tables, false).await;
    subscribe(&provider_pg, &provider_su, &consumer_su, &tables).await;
    let subscriptions = rows_in(&consumer_su, "SELECT subname::text FROM pg_subscription").await;
    assert_eq!(subscriptions, [REPLICATED]);

    // No statement with the subscription's password reaches either server's log.
    assert!(
        !consumer_pg.log().contains(ROLE_PASSWORD),
        "password in the consumer's log"
    );
    assert!(
        !provider_pg.log().contains(ROLE_PASSWORD),
        "password in the provider's log"
    );

    // Revocation: the provider cuts the role off and drops publication and slot; the consumer
    // drops the subscription and keeps what it copied.
    sharing_sql::revoke(&provider_su, REPLICATED, "health")
        .await
        .unwrap();
    replication_sql::drop_publication(&provider_su, REPLICATED)
        .await
        .unwrap();
    replication_sql::unsubscribe(&consumer_su, REPLICATED)
        .await
        .unwrap();
    provider_su
        .batch_execute("INSERT INTO vaccination_records VALUES (3, 'Cau Giay', 'MMR', '2026-03-04', 'Le Van C')")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        rows_in(
            &consumer_su,
            "SELECT district FROM vaccination_records ORDER BY id"
        )
        .await,
        ["Tay Ho", "Hoan Kiem"],
        "nothing replicates after revocation, and the copy stays"
    );
    for (query, what) in [
        ("SELECT slot_name::text FROM pg_replication_slots", "slots"),
        ("SELECT pubname::text FROM pg_publication", "publications"),
    ] {
        assert!(
            rows_in(&provider_su, query).await.is_empty(),
            "{what} left on the provider"
        );
    }
    assert!(
        rows_in(&consumer_su, "SELECT subname::text FROM pg_subscription")
            .await
            .is_empty()
    );
    let login: bool = provider_su
        .query_one(
            "SELECT rolcanlogin OR rolreplication FROM pg_roles WHERE rolname = $1",
            &[&REPLICATED],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!login, "the role stays, NOLOGIN NOREPLICATION");
}

#[tokio::test]
async fn a_table_added_to_the_dataset_is_copied_by_the_running_subscription() {
    let (provider_pg, provider_su, _consumer_pg, consumer_su) =
        replicating(&["id", "district"]).await;
    provider_su
        .batch_execute(
            "ALTER TABLE diagnoses ADD PRIMARY KEY (id); INSERT INTO diagnoses VALUES (7, 'J10');",
        )
        .await
        .unwrap();
    let one = vaccinations(&["id", "district"]);
    let mut two = one.clone();
    two.push(GrantedTable {
        schema: "public".into(),
        table: "diagnoses".into(),
        columns: vec!["id".into(), "code".into()],
    });
    publish(&provider_su, &two, false).await;
    subscribe(&provider_pg, &provider_su, &consumer_su, &two).await;
    eventually(&consumer_su, "SELECT code FROM diagnoses", &["J10"]).await;
}

#[tokio::test]
async fn a_table_whose_key_is_not_granted_cannot_be_published() {
    let (_pg, su) = provider().await;
    let keyless = replication_sql::describe(&su, &vaccinations(&["id", "district"]))
        .await
        .unwrap();
    let reason = replication_sql::unpublishable(&keyless).expect("no primary key");
    assert!(reason.contains("no primary key"), "{reason}");
    su.batch_execute("ALTER TABLE vaccination_records ADD PRIMARY KEY (id)")
        .await
        .unwrap();
    let uncovered = replication_sql::describe(&su, &vaccinations(&["district"]))
        .await
        .unwrap();
    let reason = replication_sql::unpublishable(&uncovered).expect("key not granted");
    assert!(reason.contains("replica identity column(s) id"), "{reason}");
}
