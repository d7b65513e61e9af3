//! Every rule of `sectordb::validate`, with one accepted and one rejected case each, plus the
//! same cross-field rules as CEL (evaluated by kube's client-side CEL engine), and random input.

use proptest::prelude::*;
use sectordb::api::database::{PinnedSpec, SectorDatabaseSpec};
use sectordb::api::{
    BackupPolicy, BackupPolicySpec, DataSharingConnection, DataSharingConnectionSpec,
    SectorDatabase,
};
use sectordb::validate;
use serde_json::{Value, json};

fn database_json() -> Value {
    json!({
        "agency": {"code": "000.00.12.H53", "name": "Department of Health"},
        "sector": "Health",
        "classification": "Shared",
        "securityLevel": 3,
        "postgres": {"version": "15", "parameters": {"max_connections": "200"}},
        "tls": {"mode": "Required"},
        "instances": 1,
        "storage": {"size": "10Gi"},
        "database": {"name": "health", "owner": "app"},
        "sharing": {"datasets": [{"name": "vaccinations", "tables": [
            {"schema": "public", "name": "vaccination_records", "columns": ["id", "district", "vaccine", "given_on"]}
        ]}]},
        "deletionPolicy": "Retain"
    })
}

fn connection_json() -> Value {
    json!({
        "provider": {"database": "health-records", "dataset": "vaccinations"},
        "consumer": {"agency": {"code": "000.00.20.H53", "name": "Department of Labour"}, "namespace": "so-lao-dong"},
        "mode": "ReadOnly",
        "purpose": "Verify eligibility for social support payments",
        "legalBasis": "Decree 47/2020/ND-CP, art. 22",
        "validUntil": "2027-12-31T00:00:00Z",
        "connectionLimit": 5
    })
}

fn policy_json() -> Value {
    let repo = |name: &str, role: &str| {
        json!({
            "name": name, "role": role,
            "s3": {"endpoint": "https://s3.example.internal:9000", "bucket": "backups", "region": "r1",
                   "credentialsSecret": {"name": "s3"}}
        })
    };
    let mut mirror = repo("government-dc", "GovernmentDataCenter");
    mirror["maxLag"] = json!("1h");
    json!({
        "databaseSelector": {"namespaceSelector": {"matchLabels": {"sectordb.io/backup": "standard"}}},
        "schedule": {"full": "0 1 * * 0", "differential": "0 1 * * 1-6", "timeZone": "Asia/Ho_Chi_Minh"},
        "retention": {"fullBackups": 4, "differentialBackups": 14},
        "repositories": [repo("provincial-dc", "ProvincialDataCenter"), mirror],
        "encryption": {"keySecret": {"name": "backup-encryption"}},
        "verification": {"schedule": "0 3 * * 6"}
    })
}

/// Sets `value` at a dotted path (numeric parts index arrays).
fn with(mut doc: Value, path: &str, value: Value) -> Value {
    let mut node = &mut doc;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = match part.parse::<usize>() {
            Ok(i) => &mut node[i],
            Err(_) => &mut node[*part],
        };
    }
    let last = parts[parts.len() - 1];
    match (last.parse::<usize>(), value) {
        (Ok(i), v) => node[i] = v,
        (Err(_), Value::Null) => {
            node.as_object_mut().unwrap().remove(last);
        }
        (Err(_), v) => node[last] = v,
    }
    doc
}

fn database_errors(spec: Value, pinned: Option<&PinnedSpec>) -> Vec<String> {
    let spec: SectorDatabaseSpec = serde_json::from_value(spec).expect("spec deserializes");
    validate::database(&spec, pinned)
        .err()
        .unwrap_or_default()
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

fn pinned(size: &str) -> PinnedSpec {
    serde_json::from_value(
        json!({"database": {"name": "health", "owner": "app"}, "storageSize": size}),
    )
    .unwrap()
}

#[test]
fn database_sample_is_valid() {
    assert_eq!(database_errors(database_json(), None), Vec::<String>::new());
    assert_eq!(
        database_errors(database_json(), Some(&pinned("10Gi"))),
        Vec::<String>::new()
    );
}

#[test]
fn database_rules_reject_each_bad_field() {
    // (field path to change, bad value, field the violation must name)
    let cases: &[(&str, Value, &str)] = &[
        ("securityLevel", json!(0), "spec.securityLevel"),
        ("securityLevel", json!(6), "spec.securityLevel"),
        ("instances", json!(0), "spec.instances"),
        ("instances", json!(6), "spec.instances"),
        ("tls.mode", json!("Optional"), "spec.tls.mode"),
        (
            "postgres.parameters",
            json!({"listen_addresses": "*"}),
            "spec.postgres.parameters.listen_addresses",
        ),
        (
            "postgres.parameters",
            json!({"work_mem": "4MB'\nssl = off"}),
            "spec.postgres.parameters.work_mem",
        ),
        (
            "postgres.parameters",
            json!({"work_mem": "x"}),
            "spec.postgres.parameters.work_mem",
        ),
        (
            "postgres.parameters",
            json!({"max_connections": "1"}),
            "spec.postgres.parameters.max_connections",
        ),
        ("storage.size", json!("ten gigs"), "spec.storage.size"),
        ("storage.size", json!("512Ki"), "spec.storage.size"),
        ("database.name", json!("postgres"), "spec.database.name"),
        ("database.owner", json!("pg_monitor"), "spec.database.owner"),
        (
            "sharing.datasets.0.tables.0.columns",
            json!(["id", "id"]),
            "spec.sharing.datasets[0].tables[0].columns",
        ),
        (
            "sharing.datasets.0.tables.0.columns",
            json!([]),
            "spec.sharing.datasets[0].tables[0].columns",
        ),
    ];
    for (path, value, field) in cases {
        let errors = database_errors(with(database_json(), path, value.clone()), None);
        assert_eq!(errors, vec![field.to_string()], "{path} = {value}");
    }
}

#[test]
fn tls_may_be_optional_at_level_one_only() {
    let level1 = with(
        with(database_json(), "securityLevel", json!(1)),
        "tls.mode",
        json!("Optional"),
    );
    assert!(database_errors(level1, None).is_empty());
    let level2 = with(
        with(database_json(), "securityLevel", json!(2)),
        "tls.mode",
        json!("Optional"),
    );
    assert_eq!(database_errors(level2, None), vec!["spec.tls.mode"]);
}

#[test]
fn dataset_names_are_unique() {
    let mut doc = database_json();
    let dataset = doc["sharing"]["datasets"][0].clone();
    doc["sharing"]["datasets"]
        .as_array_mut()
        .unwrap()
        .push(dataset);
    assert_eq!(
        database_errors(doc, None),
        vec!["spec.sharing.datasets[1].name"]
    );
}

#[test]
fn database_name_is_immutable_against_the_pinned_spec() {
    let renamed = with(database_json(), "database.name", json!("health2"));
    assert_eq!(
        database_errors(renamed, Some(&pinned("10Gi"))),
        vec!["spec.database"]
    );
}

#[test]
fn storage_may_grow_but_never_shrink() {
    assert!(
        database_errors(
            with(database_json(), "storage.size", json!("20Gi")),
            Some(&pinned("10Gi"))
        )
        .is_empty()
    );
    assert_eq!(
        database_errors(
            with(database_json(), "storage.size", json!("5Gi")),
            Some(&pinned("10Gi"))
        ),
        vec!["spec.storage.size"]
    );
}

#[test]
fn bootstrap_is_immutable_against_the_pinned_spec() {
    let bootstrap =
        json!({"fromBackup": {"policy": "p", "database": {"namespace": "a", "name": "b"}}});
    let added = with(database_json(), "bootstrap", bootstrap);
    assert_eq!(
        database_errors(added.clone(), Some(&pinned("10Gi"))),
        vec!["spec.bootstrap"]
    );
    assert!(database_errors(added, None).is_empty());
}

fn connection_errors(spec: Value) -> Vec<String> {
    let spec: DataSharingConnectionSpec = serde_json::from_value(spec).expect("spec deserializes");
    validate::connection(&spec)
        .err()
        .unwrap_or_default()
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

#[test]
fn connection_sample_is_valid() {
    assert!(connection_errors(connection_json()).is_empty());
    let replicate = with(
        with(connection_json(), "mode", json!("Replicate")),
        "replicateInto",
        json!({"database": "w"}),
    );
    assert!(connection_errors(replicate).is_empty());
}

#[test]
fn connection_rules_reject_each_bad_field() {
    let cases: &[(&str, Value, &str)] = &[
        ("mode", json!("Replicate"), "spec.replicateInto"),
        (
            "replicateInto",
            json!({"database": "w"}),
            "spec.replicateInto",
        ),
        ("purpose", json!("too short"), "spec.purpose"),
        ("purpose", json!("x".repeat(501)), "spec.purpose"),
        ("legalBasis", json!("  "), "spec.legalBasis"),
        ("connectionLimit", json!(0), "spec.connectionLimit"),
        ("connectionLimit", json!(101), "spec.connectionLimit"),
    ];
    for (path, value, field) in cases {
        assert_eq!(
            connection_errors(with(connection_json(), path, value.clone())),
            vec![field.to_string()],
            "{path}"
        );
    }
}

fn policy_errors(spec: Value) -> Vec<String> {
    let spec: BackupPolicySpec = serde_json::from_value(spec).expect("spec deserializes");
    validate::policy(&spec)
        .err()
        .unwrap_or_default()
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

#[test]
fn policy_sample_is_valid() {
    assert!(policy_errors(policy_json()).is_empty());
}

#[test]
fn policy_rules_reject_each_bad_field() {
    let cases: &[(&str, Value, &str)] = &[
        (
            "repositories.0.s3.credentialsSecret.name",
            json!("sectordb-ca"),
            "spec.repositories[0].s3.credentialsSecret.name",
        ),
        (
            "encryption.keySecret.name",
            json!("sectordb-ca"),
            "spec.encryption.keySecret.name",
        ),
        ("schedule.full", json!("every sunday"), "spec.schedule.full"),
        (
            "schedule.full",
            json!("0 1 * * 0 2026"),
            "spec.schedule.full",
        ),
        (
            "schedule.differential",
            json!("61 1 * * 1-6"),
            "spec.schedule.differential",
        ),
        (
            "verification.schedule",
            json!("0 25 * * 6"),
            "spec.verification.schedule",
        ),
        (
            "schedule.timeZone",
            json!("Mars/Olympus_Mons"),
            "spec.schedule.timeZone",
        ),
        (
            "repositories.1.name",
            json!("provincial-dc"),
            "spec.repositories[1].name",
        ),
        (
            "repositories.0.maxLag",
            json!("1h"),
            "spec.repositories[0].maxLag",
        ),
        (
            "repositories.1.maxLag",
            json!("1 hour"),
            "spec.repositories[1].maxLag",
        ),
        (
            "repositories.1.s3.endpoint",
            json!("http://s3.example.internal"),
            "spec.repositories[1].s3.endpoint",
        ),
        ("repositories", json!([]), "spec.repositories"),
    ];
    for (path, value, field) in cases {
        assert_eq!(
            policy_errors(with(policy_json(), path, value.clone())),
            vec![field.to_string()],
            "{path}"
        );
    }
}

#[test]
fn durations_parse_to_seconds() {
    assert_eq!(validate::parse_duration("1h30m"), Some(5400));
    assert_eq!(validate::parse_duration("2d"), Some(172_800));
    assert_eq!(validate::parse_duration("90"), None);
    assert_eq!(validate::parse_duration(""), None);
    assert_eq!(validate::parse_duration("99999999999999999999d"), None);
}

// The CEL rules in the CRDs, evaluated as the apiserver would (kube's client-side CEL).

fn object(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "sectordb.io/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec})
}

fn cel_accepts_database(new: Value, old: Option<Value>) -> bool {
    let new: SectorDatabase = serde_json::from_value(object("SectorDatabase", new)).unwrap();
    match old {
        None => new.validate_cel().is_ok(),
        Some(old) => new
            .validate_cel_update(&serde_json::from_value(object("SectorDatabase", old)).unwrap())
            .is_ok(),
    }
}

#[test]
fn cel_refuses_plain_connections_above_level_one() {
    let level1 = with(
        with(database_json(), "securityLevel", json!(1)),
        "tls.mode",
        json!("Optional"),
    );
    assert!(cel_accepts_database(level1, None));
    assert!(!cel_accepts_database(
        with(database_json(), "tls.mode", json!("Optional")),
        None
    ));
}

#[test]
fn cel_keeps_database_and_bootstrap_immutable() {
    let old = database_json();
    assert!(cel_accepts_database(
        with(old.clone(), "instances", json!(2)),
        Some(old.clone())
    ));
    assert!(!cel_accepts_database(
        with(old.clone(), "database.name", json!("other")),
        Some(old.clone())
    ));
    let bootstrap =
        json!({"fromBackup": {"policy": "p", "database": {"namespace": "a", "name": "b"}}});
    assert!(!cel_accepts_database(
        with(old.clone(), "bootstrap", bootstrap),
        Some(old)
    ));
}

#[test]
fn cel_refuses_shrinking_storage() {
    let old = database_json();
    assert!(cel_accepts_database(
        with(old.clone(), "storage.size", json!("20Gi")),
        Some(old.clone())
    ));
    assert!(!cel_accepts_database(
        with(old.clone(), "storage.size", json!("5Gi")),
        Some(old)
    ));
}

#[test]
fn cel_requires_replicate_into_exactly_for_replicate_mode() {
    let accepts = |spec: Value| {
        serde_json::from_value::<DataSharingConnection>(object("DataSharingConnection", spec))
            .unwrap()
            .validate_cel()
            .is_ok()
    };
    assert!(accepts(connection_json()));
    assert!(!accepts(with(
        connection_json(),
        "mode",
        json!("Replicate")
    )));
    assert!(!accepts(with(
        connection_json(),
        "replicateInto",
        json!({"database": "w"})
    )));
}

#[test]
fn cel_checks_repository_names_and_primary_lag() {
    let accepts = |spec: Value| {
        serde_json::from_value::<BackupPolicy>(object("BackupPolicy", spec))
            .unwrap()
            .validate_cel()
            .is_ok()
    };
    assert!(accepts(policy_json()));
    assert!(!accepts(with(
        policy_json(),
        "repositories.1.name",
        json!("provincial-dc")
    )));
    assert!(!accepts(with(
        policy_json(),
        "repositories.0.maxLag",
        json!("1h")
    )));
}

// Random and malformed input: validation must answer, never panic.

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(json!("Optional")),
        Just(json!("0Gi")),
        Just(json!("99999999999999999999999999Ei")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces one field of a valid document with arbitrary JSON.
fn mutate(base: Value, fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    (prop::sample::select(fields), arbitrary_json())
        .prop_map(move |(field, value)| with(base.clone(), field, value))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn database_validation_never_panics(
        doc in mutate(database_json(), &["securityLevel", "instances", "tls", "postgres", "postgres.parameters",
            "storage", "storage.size", "database", "sharing", "sharing.datasets", "bootstrap"]),
        size in "[0-9.]{0,6}(Ki|Mi|Gi|k|M|G|m|e|)",
    ) {
        if let Ok(spec) = serde_json::from_value::<SectorDatabaseSpec>(doc) {
            let _ = validate::database(&spec, Some(&pinned(&size)));
            let _ = validate::database(&spec, None);
        }
    }

    #[test]
    fn connection_validation_never_panics(doc in mutate(connection_json(), &["mode", "replicateInto", "purpose",
        "legalBasis", "connectionLimit", "consumer", "validUntil"])) {
        if let Ok(spec) = serde_json::from_value::<DataSharingConnectionSpec>(doc) {
            let _ = validate::connection(&spec);
        }
    }

    #[test]
    fn policy_validation_never_panics(
        doc in mutate(policy_json(), &["schedule", "schedule.full", "schedule.timeZone", "repositories",
            "repositories.1.maxLag", "verification", "retention"]),
        cron in "[0-9*/,-]{1,4}( [0-9*/,-]{1,4}){0,6}",
        zone in ".{0,30}",
    ) {
        if let Ok(mut spec) = serde_json::from_value::<BackupPolicySpec>(doc) {
            let _ = validate::policy(&spec);
            spec.schedule.full = cron;
            spec.schedule.time_zone = zone;
            let _ = validate::policy(&spec);
        }
    }
}
