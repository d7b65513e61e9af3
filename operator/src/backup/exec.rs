//! Running a command in a database's PostgreSQL container through `pods/exec`, bounded in time
//! and in how much output is kept.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The container pgBackRest runs in.
pub const CONTAINER: &str = "postgres";
/// Output kept per stream: pgBackRest's JSON info of a few hundred backups fits; a runaway log
/// does not fill the operator's memory.
const KEEP: u64 = 4 << 20;

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` when the apiserver reported no code (the command was not run).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn succeeded(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of stderr (or stdout), for a status message or an Event.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.trim().lines().collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" ");
        let code = self
            .code
            .map_or("no exit code".to_string(), |c| format!("exit code {c}"));
        if tail.is_empty() {
            code
        } else {
            format!("{code}: {tail}")
        }
    }
}

async fn read(stream: Option<impl AsyncRead + Unpin>) -> String {
    let mut bytes = Vec::new();
    if let Some(stream) = stream {
        let _ = stream.take(KEEP).read_to_end(&mut bytes).await;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs `command` in `pod` and waits for it, at most `timeout`.
pub async fn run(
    pods: &Api<Pod>,
    pod: &str,
    command: Vec<String>,
    timeout: Duration,
) -> Result<Output, String> {
    let params = AttachParams::default()
        .container(CONTAINER)
        .stdout(true)
        .stderr(true);
    let running = async {
        let mut process = pods
            .exec(pod, command, &params)
            .await
            .map_err(|e| format!("exec in {pod}: {e}"))?;
        let status = process.take_status();
        let (stdout, stderr) = tokio::join!(read(process.stdout()), read(process.stderr()));
        let status = match status {
            Some(status) => status.await,
            None => None,
        };
        let code = status.map(|s| {
            if s.status.as_deref() == Some("Success") {
                return 0;
            }
            s.details
                .and_then(|d| d.causes)
                .into_iter()
                .flatten()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
                .and_then(|c| c.message?.parse().ok())
                .unwrap_or(-1)
        });
        Ok(Output {
            code,
            stdout,
            stderr,
        })
    };
    tokio::time::timeout(timeout, running)
        .await
        .map_err(|_| format!("exec in {pod} did not finish within {timeout:?}"))?
}

/// The standard output of a command that succeeded, or what went wrong, prefixed with `what`.
pub fn stdout_of(result: Result<Output, String>, what: &str) -> Result<String, String> {
    match result {
        Ok(out) if out.succeeded() => Ok(out.stdout),
        Ok(out) => Err(format!("{what}: {}", out.tail())),
        Err(error) => Err(format!("{what}: {error}")),
    }
}
