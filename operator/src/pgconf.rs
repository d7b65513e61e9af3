//! postgresql.conf and pg_hba.conf, built from a SectorDatabase spec and its security level.

use crate::api::database::{SectorDatabaseSpec, TlsMode};

/// The role standbys stream as; its password lives in the `<db>-replication` Secret.
pub const REPLICATION_USER: &str = "streaming_replica";
/// The group every DataSharingConnection's role belongs to; pg_hba.conf admits its members to the
/// application database only.
pub const SHARING_GROUP: &str = "sectordb_sharing";

/// Where the files land inside the PostgreSQL container.
pub const CONFIG_DIR: &str = "/etc/sectordb";
pub const TLS_DIR: &str = "/var/lib/sectordb/tls";
pub const SOCKET_DIR: &str = "/var/run/postgresql";
pub const PORT: i32 = 5432;

/// Parameters PostgreSQL reads only at start: changing one needs a restart, which the
/// StatefulSet does when the config hash in its pod template changes.
pub const RESTART_PARAMETERS: &[&str] = &[
    "max_connections",
    "max_worker_processes",
    "shared_buffers",
    "temp_buffers",
    "wal_buffers",
    "autovacuum_max_workers",
];

/// The pgaudit classes logged at level 3 and above (design.md section 5).
pub const PGAUDIT_CLASSES: &str = "ddl, role, write";

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// postgresql.conf: what the security profile requires, then the agency's restart-only
/// parameters. Reloadable parameters are applied with ALTER SYSTEM instead, without a restart.
pub fn postgresql_conf(spec: &SectorDatabaseSpec) -> String {
    let mut lines = vec![
        "# Written by sectordb-operator from the SectorDatabase spec; edits are overwritten."
            .to_string(),
        "listen_addresses = '*'".into(),
        format!("port = {PORT}"),
        format!("unix_socket_directories = {}", quote(SOCKET_DIR)),
        format!("hba_file = {}", quote(&format!("{CONFIG_DIR}/pg_hba.conf"))),
        "ssl = on".into(),
        format!("ssl_cert_file = {}", quote(&format!("{TLS_DIR}/tls.crt"))),
        format!("ssl_key_file = {}", quote(&format!("{TLS_DIR}/tls.key"))),
        // Client certificates are checked against the operator's CA: the superuser logs in
        // only with the operator's certificate.
        format!("ssl_ca_file = {}", quote(&format!("{TLS_DIR}/ca.crt"))),
        "ssl_min_protocol_version = 'TLSv1.2'".into(),
        "password_encryption = 'scram-sha-256'".into(),
        "wal_level = 'logical'".into(),
        "max_wal_senders = 10".into(),
        "max_replication_slots = 10".into(),
        // Always on, so a BackupPolicy attaching later needs no restart; until one does, the
        // command keeps nothing (ALTER SYSTEM sets pgBackRest's while a policy covers it).
        "archive_mode = on".into(),
        "archive_command = '/bin/true'".into(),
        "archive_timeout = 60".into(),
        "shared_preload_libraries = 'pgaudit'".into(),
        "log_destination = 'stderr'".into(),
        "logging_collector = off".into(),
        "log_line_prefix = '%m [%p] %q%u@%d '".into(),
        "log_connections = on".into(),
        "log_disconnections = on".into(),
    ];
    if spec.security_level >= 3 {
        lines.push(format!("pgaudit.log = {}", quote(PGAUDIT_CLASSES)));
        lines.push("pgaudit.log_catalog = off".into());
        lines.push("pgaudit.log_parameter = off".into());
    }
    for (name, value) in &spec.postgres.parameters {
        if RESTART_PARAMETERS.contains(&name.as_str()) {
            lines.push(format!("{name} = {}", quote(value)));
        }
    }
    lines.join("\n") + "\n"
}

/// The agency's parameters that PostgreSQL can reload without a restart.
pub fn reloadable_parameters(spec: &SectorDatabaseSpec) -> Vec<(&str, &str)> {
    spec.postgres
        .parameters
        .iter()
        .filter(|(name, _)| !RESTART_PARAMETERS.contains(&name.as_str()))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

/// pg_hba.conf: the superuser only over the local socket (peer) or over TLS with the operator's
/// client certificate (no password of it exists anywhere), the standbys' role for
/// physical replication over TLS and nothing else, the grants' roles over TLS to the application
/// database and nothing else; at level 2 and above a plain TCP connection is rejected
/// outright.
pub fn pg_hba_conf(spec: &SectorDatabaseSpec) -> String {
    let db = &spec.database.name;
    let mut lines = vec![
        "# Written by sectordb-operator; edits are overwritten.".to_string(),
        "local   all          postgres                 peer".into(),
        // A grant's role reaches the application database only: not `postgres`, not the
        // templates, not over the socket.
        format!("local   all          +{SHARING_GROUP}         reject"),
        "local   all          all                      scram-sha-256".into(),
        "hostssl all          postgres  0.0.0.0/0      cert".into(),
        "hostssl all          postgres  ::/0           cert".into(),
        "host    all          postgres  all            reject".into(),
        format!("hostssl replication  {REPLICATION_USER} 0.0.0.0/0 scram-sha-256"),
        format!("host    all          {REPLICATION_USER} all       reject"),
        format!("hostssl {db} +{SHARING_GROUP} 0.0.0.0/0 scram-sha-256"),
        format!("hostssl {db} +{SHARING_GROUP} ::/0      scram-sha-256"),
        format!("host    all          +{SHARING_GROUP} all       reject"),
        "hostssl all          all       0.0.0.0/0      scram-sha-256".into(),
        "hostssl all          all       ::/0           scram-sha-256".into(),
    ];
    if spec.tls.mode == TlsMode::Optional && spec.security_level < 2 {
        lines.push("hostnossl all        all       0.0.0.0/0      scram-sha-256".into());
        lines.push("hostnossl all        all       ::/0           scram-sha-256".into());
    } else {
        lines.push("hostnossl all        all       0.0.0.0/0      reject".into());
        lines.push("hostnossl all        all       ::/0           reject".into());
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(level: i32, tls: &str, parameters: serde_json::Value) -> SectorDatabaseSpec {
        serde_json::from_value(serde_json::json!({
            "agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Open",
            "securityLevel": level, "tls": {"mode": tls}, "storage": {"size": "1Gi"},
            "database": {"name": "d", "owner": "o"}, "postgres": {"parameters": parameters}
        }))
        .unwrap()
    }

    #[test]
    fn grant_roles_reach_only_the_application_database_over_tls() {
        let hba = pg_hba_conf(&spec(3, "Required", serde_json::json!({})));
        let sharing: Vec<&str> = hba
            .lines()
            .filter(|l| l.contains("+sectordb_sharing"))
            .collect();
        assert_eq!(sharing.len(), 4, "{hba}");
        assert!(sharing[0].starts_with("local") && sharing[0].ends_with("reject"));
        assert!(sharing[1].starts_with("hostssl d +sectordb_sharing"));
        assert!(sharing[3].ends_with("reject"));
        let first_general = hba
            .lines()
            .position(|l| l.starts_with("hostssl all          all"))
            .unwrap();
        let last_sharing = hba.lines().position(|l| l == sharing[3]).unwrap();
        assert!(
            last_sharing < first_general,
            "the reject comes before the lines that would admit it"
        );
    }

    #[test]
    fn plain_connections_are_rejected_from_level_two() {
        let hba = pg_hba_conf(&spec(2, "Required", serde_json::json!({})));
        assert!(hba.contains("hostnossl all        all       0.0.0.0/0      reject"));
        assert!(
            !hba.contains("scram-sha-256\nhostnossl all        all       0.0.0.0/0      scram")
        );
        let open = pg_hba_conf(&spec(1, "Optional", serde_json::json!({})));
        assert!(open.contains("hostnossl all        all       0.0.0.0/0      scram-sha-256"));
    }

    #[test]
    fn the_superuser_logs_in_over_the_network_only_with_a_certificate() {
        for (level, tls) in [(1, "Optional"), (3, "Required")] {
            let hba = pg_hba_conf(&spec(level, tls, serde_json::json!({})));
            // pg_hba.conf is read top down: the first line that matches decides.
            let methods: Vec<&str> = hba
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|f| f.len() > 4 && f[0].starts_with("host") && f[1] != "replication")
                .filter(|f| f[2] == "postgres" || f[2] == "all")
                .map(|f| f[f.len() - 1])
                .collect();
            let decided = methods.iter().find(|m| **m != "cert");
            assert_eq!(decided, Some(&"reject"), "{hba}");
            assert!(methods[0] == "cert", "{hba}");
        }
    }

    #[test]
    fn pgaudit_logs_from_level_three() {
        assert!(
            !postgresql_conf(&spec(2, "Required", serde_json::json!({}))).contains("pgaudit.log =")
        );
        assert!(
            postgresql_conf(&spec(3, "Required", serde_json::json!({})))
                .contains("pgaudit.log = 'ddl, role, write'")
        );
    }

    #[test]
    fn restart_parameters_go_to_the_file_and_the_rest_are_reloaded() {
        let s = spec(
            3,
            "Required",
            serde_json::json!({"max_connections": "200", "work_mem": "8MB"}),
        );
        let conf = postgresql_conf(&s);
        assert!(conf.contains("max_connections = '200'"));
        assert!(!conf.contains("work_mem"));
        assert_eq!(reloadable_parameters(&s), vec![("work_mem", "8MB")]);
    }
}
