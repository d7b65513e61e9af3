//! A pgBackRest backup started in the primary's pod and left to run there, so no reconcile waits
//! for it. The process writes its exit code and output into files of its own under the pod's
//! `/tmp` (an emptyDir: it outlives a container restart, not the pod), named after its
//! SectorBackup; a later reconcile reads them. An operator that restarts meanwhile finds the
//! process still running, or its result.

/// Where the processes keep their files.
const DIR: &str = "/tmp/sectordb-backups";

/// Starts `command` as the backup `name` unless one of that name already started. Arguments
/// reach the script as `$@`, never as text it parses. Results older than a week are removed.
pub fn start(name: &str, command: &[String]) -> Vec<String> {
    let script = format!(
        "d={DIR}; n=$1; shift\n\
         mkdir -p \"$d\" && find \"$d\" -type f -mtime +7 -delete\n\
         [ -e \"$d/$n.pid\" ] && exit 0\n\
         ( \"$@\" >\"$d/$n.log\" 2>&1; echo $? >\"$d/$n.rc.new\" && mv \"$d/$n.rc.new\" \"$d/$n.rc\" ) \
         </dev/null >/dev/null 2>&1 &\n\
         echo $! >\"$d/$n.pid\"\n"
    );
    let mut argv = vec!["sh".into(), "-c".into(), script, "sh".into(), name.into()];
    argv.extend(command.iter().cloned());
    argv
}

/// Asks how the backup `name` stands; `progress` reads the answer.
pub fn check(name: &str) -> Vec<String> {
    // The process's command line holds the script, and with it DIR: a pid the kernel gave to
    // another process since (a restarted container counts from 1 again) does not match.
    let script = format!(
        "d={DIR}; n=$1\n\
         if [ -e \"$d/$n.rc\" ]; then echo \"done $(cat \"$d/$n.rc\")\"; tail -n 3 \"$d/$n.log\"; exit 0; fi\n\
         p=$(cat \"$d/$n.pid\" 2>/dev/null) && grep -qsF {DIR} \"/proc/$p/cmdline\" && {{ echo running; exit 0; }}\n\
         echo lost\n"
    );
    vec!["sh".into(), "-c".into(), script, "sh".into(), name.into()]
}

/// Where a detached backup stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Running,
    /// It ended with this exit code; the last lines it printed.
    Finished {
        code: i32,
        tail: String,
    },
    /// Neither running nor finished: the pod (or its `/tmp`) is not the one it started in.
    Lost,
}

/// Reads what `check` printed.
pub fn progress(stdout: &str) -> Progress {
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or_default().trim();
    if first == "running" {
        return Progress::Running;
    }
    match first.strip_prefix("done ").map(|c| c.trim().parse()) {
        Some(Ok(code)) => Progress::Finished {
            code,
            tail: lines.collect::<Vec<_>>().join(" ").trim().to_string(),
        },
        _ => Progress::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_and_the_command_are_arguments_not_script_text() {
        let argv = start(
            "db-20261207",
            &["pgbackrest".into(), "--x=$(reboot)".into()],
        );
        assert_eq!(argv[..2], ["sh", "-c"]);
        assert!(!argv[2].contains("db-20261207") && !argv[2].contains("reboot"));
        assert_eq!(
            argv[3..],
            ["sh", "db-20261207", "pgbackrest", "--x=$(reboot)"]
        );
        assert_eq!(check("db-1")[3..], ["sh", "db-1"]);
    }

    #[test]
    fn progress_reads_each_answer() {
        assert_eq!(progress("running\n"), Progress::Running);
        assert_eq!(
            progress("done 0\n"),
            Progress::Finished {
                code: 0,
                tail: String::new()
            }
        );
        assert_eq!(
            progress("done 82\nERROR: [082]: one\ntwo\n"),
            Progress::Finished {
                code: 82,
                tail: "ERROR: [082]: one two".into()
            }
        );
        assert_eq!(progress("lost\n"), Progress::Lost);
        assert_eq!(progress("done \n"), Progress::Lost);
        assert_eq!(progress(""), Progress::Lost);
    }

    /// The scripts themselves, run by the host's sh against a scratch directory.
    #[test]
    fn a_started_command_runs_detached_once_and_reports_its_code() {
        let dir = std::env::temp_dir().join(format!("sectordb-detached-{}", std::process::id()));
        let local = |argv: Vec<String>| {
            let script = argv[2].replace(DIR, dir.to_str().unwrap());
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .args(&argv[3..])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let command = ["sh", "-c", "sleep 1; echo almost; exit 3"].map(String::from);
        local(start("b1", &command));
        // A second start of the same name runs nothing more.
        local(start("b1", &["sh", "-c", "exit 9"].map(String::from)));
        assert_eq!(progress(&local(check("b1"))), Progress::Running);
        std::thread::sleep(std::time::Duration::from_millis(2500));
        assert_eq!(
            progress(&local(check("b1"))),
            Progress::Finished {
                code: 3,
                tail: "almost".into()
            }
        );
        assert_eq!(progress(&local(check("never-started"))), Progress::Lost);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
