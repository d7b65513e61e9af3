//! A real PostgreSQL 15 (Debian's packages, with pgaudit) started for one test: its own data
//! directory, a loopback port, TLS with a certificate from the operator's CA, and the
//! postgresql.conf / pg_hba.conf the operator generates. Stopped and removed on drop.

#![allow(dead_code)] // each test binary uses a different part

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use sectordb::api::database::SectorDatabaseSpec;
use sectordb::{pgconf, pki, sql};

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    pub ca: pki::CertifiedKey,
    /// The operator's client certificate for `postgres`: the superuser's only way in over TCP.
    pub superuser_certificate: pki::CertifiedKey,
}

fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/{program}")])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program}: {e} (scripts/setup-host installs PostgreSQL 15)")
        });
    assert!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_owned(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    Command::new("chown")
        .args(["postgres:postgres", path.to_str().unwrap()])
        .status()
        .unwrap();
}

impl Postgres {
    /// Starts a server configured as the operator configures one for `spec`.
    pub fn start(spec: &SectorDatabaseSpec) -> Postgres {
        let dir = std::env::temp_dir().join(format!(
            "sectordb-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let port = free_port();
        let ca = pki::new_ca().unwrap().key;
        let server = pki::issue_server(
            &ca,
            "localhost",
            &["localhost".into()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )
        .unwrap()
        .key;
        let superuser_certificate = pki::issue_client(&ca, "postgres").unwrap().key;
        write_owned(&dir.join("tls.crt"), &server.cert_pem, 0o644);
        write_owned(&dir.join("tls.key"), &server.key_pem, 0o600);
        // Another server subscribing to this one verifies it with this file.
        write_owned(&dir.join("ca.crt"), &ca.cert_pem, 0o644);
        write_owned(&dir.join("pg_hba.conf"), &pgconf::pg_hba_conf(spec), 0o644);
        // The operator's file, then the paths of this test's directory (later lines win).
        let d = dir.display();
        let conf = format!(
            "{}\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n\
             hba_file = '{d}/pg_hba.conf'\nssl_cert_file = '{d}/tls.crt'\nssl_key_file = '{d}/tls.key'\n\
             ssl_ca_file = '{d}/ca.crt'\n\
             log_destination = 'stderr'\n",
            pgconf::postgresql_conf(spec)
        );
        write_owned(&dir.join("postgresql.conf"), &conf, 0o644);
        let data = format!("{d}/data");
        as_postgres(
            "initdb",
            &[
                "-D",
                &data,
                "--username=postgres",
                "--auth-local=peer",
                "--auth-host=reject",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        );
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-o",
                &format!("-c config_file={d}/postgresql.conf"),
                "-l",
                &format!("{d}/log"),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        Postgres {
            dir,
            port,
            ca,
            superuser_certificate,
        }
    }

    pub fn target<'a>(&'a self, user: &'a str, password: &'a str) -> sql::Target<'a> {
        sql::Target {
            user,
            login: sql::Login::Password(password),
            ..self.superuser_target()
        }
    }

    /// The superuser, with the operator's client certificate.
    pub fn superuser_target(&self) -> sql::Target<'_> {
        sql::Target {
            host: "localhost",
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: self.port,
            user: "postgres",
            login: sql::Login::Certificate(&self.superuser_certificate),
            ca_pem: &self.ca.cert_pem,
        }
    }

    pub async fn superuser(&self) -> tokio_postgres::Client {
        self.superuser_on("postgres").await
    }

    pub async fn superuser_on(&self, dbname: &str) -> tokio_postgres::Client {
        sql::connect(&self.superuser_target(), dbname)
            .await
            .expect("superuser connects over TLS with the operator's certificate")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = format!("{}/data", self.dir.display());
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{BIN}/pg_ctl"),
                "-D",
                &data,
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A SectorDatabase spec for the tests.
pub fn spec(level: i32, tls: &str) -> SectorDatabaseSpec {
    serde_json::from_value(serde_json::json!({
        "agency": {"code": "000.00.12.H53", "name": "Health"}, "sector": "Health", "classification": "Shared",
        "securityLevel": level, "tls": {"mode": tls}, "storage": {"size": "1Gi"},
        "database": {"name": "health", "owner": "app"}
    }))
    .unwrap()
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
