//! Restore drills: the commands the operator runs (row counts and a restore point when a backup
//! completes; restore, start, `pg_amcheck` and the counts again in the scratch pod) and how it
//! judges the copy. Pure.

use std::collections::BTreeMap;

use crate::dataplane::PGDATA;
use crate::pgconf::SOCKET_DIR;
use crate::sql;

/// Rows of every table of the current database, `schema.table|count` per line. `ONLY`: a
/// parent of an inheritance tree counts its own rows, each child its own.
const COUNT_ROWS: &str = "SELECT format('%I.%I', n.nspname, c.relname), \
     (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM ONLY %I.%I', n.nspname, c.relname), false, true, '')))[1]::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
     ORDER BY 1";

/// The restore point a drill recovers to, created right after backup `label` completed.
pub fn restore_point(label: &str) -> String {
    format!("sdb-{label}")
}

/// psql as `postgres` on the local socket; each statement its own `-c`, all in one session.
fn psql(database: &str, statements: &[&str]) -> Vec<String> {
    let mut command: Vec<String> = [
        "psql",
        "-X",
        "-q",
        "-A",
        "-t",
        "-F",
        "|",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        SOCKET_DIR,
        "-U",
        "postgres",
        "-d",
        database,
    ]
    .map(String::from)
    .to_vec();
    for statement in statements {
        command.push("-c".into());
        command.push((*statement).into());
    }
    command
}

/// Counts the rows and creates the restore point in one snapshot, then closes the WAL segment
/// so the restore point reaches the archive at once. A commit landing between the snapshot and
/// the restore point's record would count in the copy and not here; drills are judged on a
/// database at rest or nearly so, and a mismatch names its tables.
pub fn baseline_command(database: &str, label: &str) -> Vec<String> {
    let create = format!(
        "SELECT pg_create_restore_point({})",
        sql::literal(&restore_point(label))
    );
    psql(
        database,
        &[
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            COUNT_ROWS,
            &create,
            "COMMIT",
            "SELECT pg_switch_wal()",
        ],
    )
}

/// The row counts of the restored copy.
pub fn count_command(database: &str) -> Vec<String> {
    psql(database, &[COUNT_ROWS])
}

/// pgBackRest's arguments to restore backup `label` up to its restore point and promote.
pub fn restore_args(label: &str) -> Vec<String> {
    vec![
        format!("--set={label}"),
        "--type=name".into(),
        format!("--target={}", restore_point(label)),
        "--target-action=promote".into(),
        "restore".into(),
    ]
}

/// Starts the restored copy on the local socket only, without archiving or TLS (its own
/// configuration files, not the database's), and waits until recovery promoted it. What the
/// server logged ends the output of a failure.
pub fn start_command() -> Vec<String> {
    let script = format!(
        "set -u\n\
         fail() {{ tail -n 3 /tmp/drill.log >&2; exit 1; }}\n\
         pg_ctl -D {PGDATA} -w -t 3000 -l /tmp/drill.log \\\n\
           -o \"-c listen_addresses='' -c archive_mode=off -c ssl=off -c unix_socket_directories={SOCKET_DIR}\" start >/dev/null || fail\n\
         until [ \"$(psql -XAt -h {SOCKET_DIR} -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)\" = f ]; do\n\
           pg_ctl -D {PGDATA} status >/dev/null || fail\n\
           sleep 1\n\
         done\n"
    );
    vec!["sh".into(), "-c".into(), script]
}

/// `pg_amcheck` over every database of the copy: tables, and each B-tree index against its table.
pub fn amcheck_command() -> Vec<String> {
    [
        "pg_amcheck",
        "-h",
        SOCKET_DIR,
        "-U",
        "postgres",
        "--all",
        "--install-missing",
        "--heapallindexed",
    ]
    .map(String::from)
    .to_vec()
}

/// The `schema.table|count` lines of psql's output; other lines (the restore point's and the
/// WAL switch's positions) are not counts.
pub fn parse_counts(output: &str) -> BTreeMap<String, i64> {
    output
        .lines()
        .filter_map(|line| {
            let (table, count) = line.rsplit_once('|')?;
            Some((table.to_string(), count.trim().parse().ok()?))
        })
        .collect()
}

/// The counts as stored in the drill's ConfigMap, one `schema.table count` per line.
pub fn format_counts(counts: &BTreeMap<String, i64>) -> String {
    counts
        .iter()
        .map(|(table, count)| format!("{table} {count}\n"))
        .collect()
}

pub fn read_counts(text: &str) -> BTreeMap<String, i64> {
    text.lines()
        .filter_map(|line| {
            let (table, count) = line.rsplit_once(' ')?;
            Some((table.to_string(), count.parse().ok()?))
        })
        .collect()
}

/// `Err` names every table whose rows differ between the backup and its restored copy.
pub fn compare(
    at_backup: &BTreeMap<String, i64>,
    restored: &BTreeMap<String, i64>,
) -> Result<(), String> {
    let mut differ = Vec::new();
    for (table, count) in at_backup {
        match restored.get(table) {
            Some(found) if found == count => {}
            Some(found) => {
                differ.push(format!("{table}: {count} rows at backup, {found} restored"))
            }
            None => differ.push(format!(
                "{table}: {count} rows at backup, missing in the copy"
            )),
        }
    }
    for table in restored.keys().filter(|t| !at_backup.contains_key(*t)) {
        differ.push(format!("{table}: in the copy, not in the backup"));
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(differ.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_psql_output_and_survive_the_config_map() {
        let output = "public.visits|12\n\"Odd|name\".t|0\n0/3000090\n0/3000108\n";
        let counts = parse_counts(output);
        assert_eq!(
            counts,
            BTreeMap::from([
                ("public.visits".to_string(), 12),
                ("\"Odd|name\".t".to_string(), 0)
            ])
        );
        assert_eq!(read_counts(&format_counts(&counts)), counts);
    }

    #[test]
    fn a_copy_differing_in_any_table_is_named() {
        let backup = BTreeMap::from([("public.a".to_string(), 2), ("public.b".to_string(), 1)]);
        assert_eq!(compare(&backup, &backup), Ok(()));
        let copy = BTreeMap::from([("public.a".to_string(), 1), ("public.c".to_string(), 0)]);
        let why = compare(&backup, &copy).unwrap_err();
        assert!(
            why.contains("public.a: 2 rows at backup, 1 restored"),
            "{why}"
        );
        assert!(why.contains("public.b: 1 rows at backup, missing"), "{why}");
        assert!(why.contains("public.c: in the copy"), "{why}");
    }

    #[test]
    fn the_baseline_counts_and_marks_the_restore_point_in_one_transaction() {
        let command = baseline_command("health", "20261130-031138F");
        let statements: Vec<&String> = command
            .iter()
            .skip_while(|a| *a != "-c")
            .filter(|a| *a != "-c")
            .collect();
        assert_eq!(statements[0], "BEGIN ISOLATION LEVEL REPEATABLE READ");
        assert_eq!(
            statements[2],
            "SELECT pg_create_restore_point('sdb-20261130-031138F')"
        );
        assert_eq!(statements[3], "COMMIT");
        assert!(command.contains(&"health".to_string()));
        assert!(restore_args("20261130-031138F").contains(&"--target=sdb-20261130-031138F".into()));
    }
}
