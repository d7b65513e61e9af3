//! pgBackRest's configuration for one database and the reading of `pgbackrest info`. Pure.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;

use crate::api::database::BackupRecord;
use crate::api::policy::{BackupPolicySpec, Repository};

/// Where the per-database backup Secret is mounted in the PostgreSQL container.
pub const CONFIG_DIR: &str = "/etc/sectordb-backup";
/// The configuration file every pgBackRest command of the operator names.
pub const CONFIG_FILE: &str = "/etc/sectordb-backup/pgbackrest.conf";
/// The digest of the configuration, so the operator can tell when the pod sees the current one.
pub const DIGEST_FILE: &str = "/etc/sectordb-backup/digest";
/// Where a database restored from backup finds the source's repository (`bootstrap.fromBackup`).
pub const RESTORE_DIR: &str = "/etc/sectordb-restore";

/// Where things are in the PostgreSQL container.
pub struct Layout<'a> {
    /// The mounted Secret that holds pgbackrest.conf and the repository's CA.
    pub config_dir: &'a str,
    pub pgdata: &'a str,
    /// The data volume: the spool lives there (the root filesystem is read-only).
    pub data_dir: &'a str,
    pub socket_dir: &'a str,
}

/// The policy's secret material, read from the operator's namespace.
pub struct RepositorySecrets<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// The CA that signs the S3 endpoint's certificate, when the policy names one.
    pub ca_pem: Option<&'a str>,
    /// The encryption passphrase, when the policy encrypts.
    pub passphrase: Option<&'a str>,
}

/// The stanza of a database: namespace, name and the start of its UID, so a database re-created
/// under the same name (its old backups retained) never collides with the old stanza.
pub fn stanza(namespace: &str, name: &str, uid: &str) -> String {
    let uid: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!("{namespace}.{name}.{uid}")
}

/// The passphrase that encrypts one stanza's repository files: derived from the policy's
/// passphrase and the stanza (HMAC-SHA256), so the key a database's pods hold opens no other
/// database's backups and the policy's own passphrase never leaves the operator's namespace.
pub fn stanza_passphrase(policy_passphrase: &str, stanza: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, policy_passphrase.as_bytes());
    let tag = ring::hmac::sign(&key, format!("sectordb stanza key v1\n{stanza}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Host and port of an `https://host[:port]` endpoint.
fn host_port(endpoint: &str) -> (String, u16) {
    let rest = endpoint
        .trim_start_matches("https://")
        .trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().unwrap_or(443)),
        None => (rest.to_string(), 443),
    }
}

/// The repository path: the policy's prefix (or `/`), absolute as pgBackRest wants it.
fn repo_path(repository: &Repository) -> String {
    let prefix = repository
        .s3
        .path_prefix
        .as_deref()
        .unwrap_or("")
        .trim_matches('/');
    format!("/{prefix}")
}

/// pgbackrest.conf for one database: `primary` as repo1 (the policy's primary repository, or a
/// mirror to restore from; S3 over verified TLS,
/// path or host style, encrypted when the policy says so, its retention), lz4 compression,
/// asynchronous WAL archiving with the spool on the data volume (the root filesystem is
/// read-only), and the local PostgreSQL through its socket.
pub fn config(
    policy: &BackupPolicySpec,
    primary: &Repository,
    secrets: &RepositorySecrets,
    stanza: &str,
    layout: &Layout,
) -> String {
    let (host, port) = host_port(&primary.s3.endpoint);
    let style = match primary.s3.uri_style {
        crate::api::policy::UriStyle::Path => "path",
        crate::api::policy::UriStyle::Host => "host",
    };
    let mut text =
        String::from("# Written by sectordb-operator from the BackupPolicy.\n[global]\n");
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(text, "{key}={value}");
    };
    line("repo1-type", "s3");
    line("repo1-s3-endpoint", &host);
    line("repo1-storage-port", &port.to_string());
    line("repo1-s3-uri-style", style);
    line("repo1-s3-bucket", &primary.s3.bucket);
    line("repo1-s3-region", &primary.s3.region);
    line("repo1-path", &repo_path(primary));
    line("repo1-s3-key", secrets.access_key_id);
    line("repo1-s3-key-secret", secrets.secret_access_key);
    if secrets.ca_pem.is_some() {
        line(
            "repo1-storage-ca-file",
            &format!("{}/repo1-ca.crt", layout.config_dir),
        );
    }
    if let Some(passphrase) = secrets.passphrase {
        line("repo1-cipher-type", "aes-256-cbc");
        line("repo1-cipher-pass", &stanza_passphrase(passphrase, stanza));
    }
    line(
        "repo1-retention-full",
        &policy.retention.full_backups.to_string(),
    );
    if let Some(diffs) = policy.retention.differential_backups {
        line("repo1-retention-diff", &diffs.to_string());
    }
    line("compress-type", "lz4");
    line("process-max", "2");
    line("start-fast", "y");
    line("archive-async", "y");
    line(
        "spool-path",
        &format!("{}/pgbackrest-spool", layout.data_dir),
    );
    line("lock-path", "/tmp/pgbackrest");
    line("log-level-file", "off");
    line("log-level-console", "warn");
    line("log-level-stderr", "error");
    let _ = write!(
        text,
        "\n[{stanza}]\npg1-path={}\npg1-socket-path={}\npg1-port={}\npg1-user=postgres\n",
        layout.pgdata,
        layout.socket_dir,
        crate::pgconf::PORT
    );
    text
}

/// The files of the per-database backup Secret: the configuration, the repository's CA and the
/// digest of both.
pub fn secret_files(config: &str, ca_pem: Option<&str>) -> Vec<(&'static str, String)> {
    let digest = crate::digest::of(&[config, ca_pem.unwrap_or("")]);
    let mut files = vec![("pgbackrest.conf", config.to_string()), ("digest", digest)];
    if let Some(ca) = ca_pem {
        files.push(("repo1-ca.crt", ca.to_string()));
    }
    files
}

/// The archive_command of a database its policy archives: asynchronous, so PostgreSQL is never
/// held up by the object store.
pub fn archive_command(stanza: &str) -> String {
    format!("pgbackrest --config={CONFIG_FILE} --stanza={stanza} archive-push %p")
}

/// A recovery target as pgBackRest reads one (`YYYY-MM-DD HH:MM:SS+00`: it refuses RFC 3339).
/// Recovery stops before the first commit after it.
pub fn restore_time(target: &Time) -> String {
    target.0.strftime("%Y-%m-%d %H:%M:%S+00").to_string()
}

/// Kind of backup.
pub use crate::api::backup::BackupType as Kind;

/// A pgBackRest command line for the pod, bounded by `timeout` (pgBackRest's own retries nest
/// and can take many minutes against an unreachable store).
pub fn command(stanza: &str, timeout_seconds: u64, args: &[&str]) -> Vec<String> {
    let mut command = vec![
        "timeout".to_string(),
        timeout_seconds.to_string(),
        "pgbackrest".to_string(),
        format!("--config={CONFIG_FILE}"),
        format!("--stanza={stanza}"),
    ];
    command.extend(args.iter().map(|a| a.to_string()));
    command
}

#[derive(Deserialize)]
struct StanzaInfo {
    #[serde(default)]
    backup: Vec<BackupInfo>,
}

#[derive(Deserialize)]
struct BackupInfo {
    label: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: Timestamps,
    info: SizeInfo,
    #[serde(default)]
    error: bool,
    #[serde(default)]
    annotation: std::collections::BTreeMap<String, String>,
}

/// The pgBackRest annotation on a full backup taken outside the schedule: on request, or the
/// last one before a database is deleted.
const OUTSIDE_SCHEDULE: &str = "sectordb-outside-schedule";

/// The arguments of one `pgbackrest backup` of `kind`. A backup outside the schedule is marked,
/// and every backup keeps the policy's `fullBackups` besides the marked full backups the
/// repository holds (`info`, as `pgbackrest info --output=json` printed it): pgBackRest counts
/// every full backup against its retention, so without this an agency requesting backups could
/// expire the scheduled ones the policy keeps.
pub fn backup_args(
    kind: &str,
    outside_schedule: bool,
    policy: &BackupPolicySpec,
    info: &str,
) -> Result<Vec<String>, String> {
    let stanzas: Vec<StanzaInfo> =
        serde_json::from_str(info).map_err(|e| format!("unreadable pgbackrest info: {e}"))?;
    let marked = stanzas
        .iter()
        .flat_map(|s| &s.backup)
        .filter(|b| b.kind == "full" && b.annotation.contains_key(OUTSIDE_SCHEDULE))
        .count();
    let keep =
        i64::from(policy.retention.full_backups) + marked as i64 + i64::from(outside_schedule);
    let mut args = vec![
        format!("--type={kind}"),
        format!("--repo1-retention-full={keep}"),
    ];
    if outside_schedule {
        args.push(format!("--annotation={OUTSIDE_SCHEDULE}=true"));
    }
    args.push("backup".into());
    Ok(args)
}

#[derive(Deserialize)]
struct Timestamps {
    start: i64,
    stop: i64,
}

#[derive(Deserialize)]
struct SizeInfo {
    repository: RepositorySize,
}

#[derive(Deserialize)]
struct RepositorySize {
    delta: i64,
}

/// The backups `pgbackrest info --output=json` lists for the stanza, oldest first; a backup
/// pgBackRest marks as having errors is left out.
pub fn parse_info(json: &str, repo: &str) -> Result<Vec<BackupRecord>, String> {
    let stanzas: Vec<StanzaInfo> =
        serde_json::from_str(json).map_err(|e| format!("unreadable pgbackrest info: {e}"))?;
    let time = |seconds: i64| {
        jiff::Timestamp::from_second(seconds)
            .map(Time)
            .map_err(|e| e.to_string())
    };
    stanzas
        .into_iter()
        .flat_map(|s| s.backup)
        .filter(|b| !b.error)
        .map(|b| {
            Ok(BackupRecord {
                label: Some(b.label),
                started: Some(time(b.timestamp.start)?),
                time: time(b.timestamp.stop)?,
                kind: b.kind,
                size_bytes: b.info.repository.delta,
                repos: vec![repo.to_string()],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: serde_json::Value) -> BackupPolicySpec {
        let mut spec = serde_json::json!({
            "databaseSelector": {}, "schedule": {"full": "0 1 * * 0"},
            "retention": {"fullBackups": 2, "differentialBackups": 7},
            "repositories": [{"name": "provincial-dc", "role": "ProvincialDataCenter", "s3": {
                "endpoint": "https://10.200.0.1:9443", "bucket": "sectordb-provincial", "pathPrefix": "/sectordb/",
                "credentialsSecret": {"name": "s3"}, "caSecret": {"name": "s3-ca"}}}]
        });
        if let Some(map) = extra.as_object() {
            for (k, v) in map {
                spec[k] = v.clone();
            }
        }
        serde_json::from_value(spec).unwrap()
    }

    fn layout() -> Layout<'static> {
        Layout {
            config_dir: CONFIG_DIR,
            pgdata: "/data/pgdata",
            data_dir: "/data",
            socket_dir: "/run/pg",
        }
    }

    fn secrets(passphrase: Option<&str>) -> RepositorySecrets<'_> {
        RepositorySecrets {
            access_key_id: "AKID",
            secret_access_key: "SECRET",
            ca_pem: Some("CA"),
            passphrase,
        }
    }

    #[test]
    fn backups_outside_the_schedule_never_count_against_the_policy_s_retention() {
        let spec = policy(serde_json::json!({}));
        let full = spec.retention.full_backups;
        let info = |marked: usize| {
            let mut backups =
                vec![serde_json::json!({"type": "full", "annotation": {"other": "x"}})];
            backups.extend((0..marked).map(
                |_| serde_json::json!({"type": "full", "annotation": {OUTSIDE_SCHEDULE: "true"}}),
            ));
            backups.push(
                serde_json::json!({"type": "diff", "annotation": {OUTSIDE_SCHEDULE: "true"}}),
            );
            for b in &mut backups {
                b["label"] = "l".into();
                b["timestamp"] = serde_json::json!({"start": 1, "stop": 2});
                b["info"] = serde_json::json!({"repository": {"delta": 1}});
            }
            serde_json::json!([{"backup": backups}]).to_string()
        };
        let scheduled = backup_args("diff", false, &spec, &info(0)).unwrap();
        assert_eq!(
            scheduled,
            [
                "--type=diff",
                &format!("--repo1-retention-full={full}"),
                "backup"
            ]
        );
        let scheduled = backup_args("full", false, &spec, &info(2)).unwrap();
        assert!(scheduled.contains(&format!("--repo1-retention-full={}", full + 2)));
        let requested = backup_args("full", true, &spec, &info(2)).unwrap();
        assert!(requested.contains(&format!("--repo1-retention-full={}", full + 3)));
        assert!(requested.contains(&format!("--annotation={OUTSIDE_SCHEDULE}=true")));
        assert!(backup_args("full", true, &spec, "not json").is_err());
    }

    #[test]
    fn the_config_names_the_primary_repository_over_verified_tls_with_encryption_and_retention() {
        let spec = policy(serde_json::json!({}));
        let conf = config(
            &spec,
            &spec.repositories[0],
            &secrets(Some("pass")),
            "ns.db.1234abcd",
            &layout(),
        );
        for line in [
            "repo1-type=s3",
            "repo1-s3-endpoint=10.200.0.1",
            "repo1-storage-port=9443",
            "repo1-s3-uri-style=path",
            "repo1-s3-bucket=sectordb-provincial",
            "repo1-path=/sectordb",
            "repo1-storage-ca-file=/etc/sectordb-backup/repo1-ca.crt",
            "repo1-cipher-type=aes-256-cbc",
            "repo1-retention-full=2",
            "repo1-retention-diff=7",
            "archive-async=y",
            "spool-path=/data/pgbackrest-spool",
            "[ns.db.1234abcd]",
            "pg1-path=/data/pgdata",
            "pg1-socket-path=/run/pg",
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "missing {line:?} in\n{conf}"
            );
        }
        assert!(!conf.contains("verify-tls"), "TLS is always verified");
        let key = format!(
            "repo1-cipher-pass={}",
            stanza_passphrase("pass", "ns.db.1234abcd")
        );
        assert!(conf.lines().any(|l| l == key), "{conf}");
        let plain = config(&spec, &spec.repositories[0], &secrets(None), "s", &layout());
        assert!(!plain.contains("cipher"));
    }

    #[test]
    fn each_stanza_is_encrypted_with_a_key_of_its_own_that_reveals_nothing_of_the_policy_s() {
        let one = stanza_passphrase("policy secret", "a.db.1");
        assert_eq!(one, stanza_passphrase("policy secret", "a.db.1"), "stable");
        assert_eq!(one.len(), 64);
        assert_ne!(one, stanza_passphrase("policy secret", "b.db.1"));
        assert_ne!(one, stanza_passphrase("another secret", "a.db.1"));
        let spec = policy(serde_json::json!({}));
        let conf = config(
            &spec,
            &spec.repositories[0],
            &secrets(Some("policy secret")),
            "a.db.1",
            &layout(),
        );
        assert!(!conf.contains("policy secret"), "{conf}");
    }

    #[test]
    fn a_recovery_target_is_written_the_way_pgbackrest_reads_it() {
        let at = Time("2026-11-30T04:00:07Z".parse().unwrap());
        assert_eq!(restore_time(&at), "2026-11-30 04:00:07+00");
    }

    #[test]
    fn the_digest_changes_with_the_configuration_or_the_ca() {
        let digest = |conf: &str, ca: &str| secret_files(conf, Some(ca))[1].1.clone();
        assert_ne!(digest("a", "ca"), digest("b", "ca"));
        assert_ne!(digest("a", "ca"), digest("a", "other"));
    }

    #[test]
    fn stanzas_carry_the_uid_so_a_recreated_database_gets_a_new_one() {
        assert_eq!(
            stanza("so-y-te", "health-records", "1f0e2a3b-4c5d"),
            "so-y-te.health-records.1f0e2a3b"
        );
    }

    #[test]
    fn info_lists_the_completed_backups_with_label_type_times_and_size() {
        let json = r#"[{"archive":[{"id":"15-1","max":"000000010000000000000010","min":"00000001000000000000000C"}],
          "backup":[{"archive":{"start":"0C","stop":"0C"},"error":false,"info":{"delta":179983866,"repository":{"delta":21714176,"size":21714176},"size":179983866},
            "label":"20261130-031138F","prior":null,"reference":null,"timestamp":{"start":1796008298,"stop":1796008301},"type":"full"},
           {"error":true,"info":{"delta":1,"repository":{"delta":1,"size":1},"size":1},
            "label":"20261130-031200F","timestamp":{"start":1796008320,"stop":1796008321},"type":"full"}],
          "cipher":"aes-256-cbc","name":"s","status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;
        let backups = parse_info(json, "provincial-dc").unwrap();
        assert_eq!(backups.len(), 1);
        assert_eq!(backups[0].label.as_deref(), Some("20261130-031138F"));
        assert_eq!(backups[0].kind, "full");
        assert_eq!(backups[0].size_bytes, 21714176);
        assert_eq!(backups[0].time.0.as_second(), 1796008301);
        assert!(parse_info("[]", "p").unwrap().is_empty());
        assert!(parse_info("not json", "p").is_err());
    }
}
