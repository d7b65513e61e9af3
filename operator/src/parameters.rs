//! The postgresql.conf parameters an agency may set, each with the kind of value PostgreSQL
//! accepts for it. A value outside its kind or range is `InvalidSpec` before it reaches the
//! server, so a typo never stops a restart or fails a reload. Everything else (listen
//! addresses, TLS, authentication, logging, archiving, preload libraries) belongs to the
//! operator and the security profile.

/// What a parameter's value must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// An integer in the range.
    Integer(i64, i64),
    /// A number in the range.
    Real(f64, f64),
    /// A size with a unit (kB, MB, GB, TB) of at least this many kB; `-1` where PostgreSQL
    /// derives the value itself.
    Memory { min_kb: i64, auto: bool },
    /// A duration with a unit (us, ms, s, min, h, d), or 0; `-1` where that turns it off.
    Time { off: bool },
    /// An IANA time zone.
    Zone,
}

use Kind::{Integer, Memory, Real, Time, Zone};

const fn mem(min_kb: i64) -> Kind {
    Memory {
        min_kb,
        auto: false,
    }
}

const TIME: Kind = Time { off: false };

/// The allow-list, sorted by name.
pub const ALLOWED: &[(&str, Kind)] = &[
    ("autovacuum_analyze_scale_factor", Real(0.0, 100.0)),
    ("autovacuum_max_workers", Integer(1, 100)),
    ("autovacuum_naptime", TIME),
    ("autovacuum_vacuum_cost_limit", Integer(-1, 10_000)),
    ("autovacuum_vacuum_scale_factor", Real(0.0, 100.0)),
    ("checkpoint_completion_target", Real(0.0, 1.0)),
    ("checkpoint_timeout", TIME),
    ("default_statistics_target", Integer(1, 10_000)),
    ("effective_cache_size", mem(8)),
    ("effective_io_concurrency", Integer(0, 1000)),
    ("idle_in_transaction_session_timeout", TIME),
    ("lock_timeout", TIME),
    ("log_min_duration_statement", Time { off: true }),
    ("maintenance_work_mem", mem(1024)),
    // The operator, the standbys and a grant's sessions need connections of their own.
    ("max_connections", Integer(10, 10_000)),
    ("max_parallel_maintenance_workers", Integer(0, 1024)),
    ("max_parallel_workers", Integer(0, 1024)),
    ("max_parallel_workers_per_gather", Integer(0, 1024)),
    ("max_wal_size", mem(32 * 1024)),
    ("max_worker_processes", Integer(8, 1024)),
    ("min_wal_size", mem(32 * 1024)),
    ("random_page_cost", Real(0.0, 1000.0)),
    ("shared_buffers", mem(128)),
    ("statement_timeout", TIME),
    ("temp_buffers", mem(800)),
    ("timezone", Zone),
    (
        "wal_buffers",
        Memory {
            min_kb: 32,
            auto: true,
        },
    ),
    ("work_mem", mem(64)),
];

/// The kind of an allowed parameter; `None` when an agency may not set it.
pub fn kind(name: &str) -> Option<Kind> {
    ALLOWED.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// The kind in words, for the API reference.
pub fn describe(kind: Kind) -> String {
    match kind {
        Integer(min, max) => format!("integer, {min} to {max}"),
        Real(min, max) => format!("number, {min} to {max}"),
        Memory { min_kb, auto } => format!(
            "size with a unit (kB, MB, GB, TB), at least {min_kb}kB{}",
            if auto { ", or -1" } else { "" }
        ),
        Time { off } => format!(
            "duration with a unit (us, ms, s, min, h, d), or 0{}",
            if off { ", or -1 (off)" } else { "" }
        ),
        Zone => "IANA time zone".into(),
    }
}

/// Splits `128MB` into (128, "MB").
fn number_and_unit(value: &str) -> Option<(i64, &str)> {
    let digits = value
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
        .map_or(value.len(), |(i, _)| i);
    let number = value[..digits].parse().ok()?;
    Some((number, &value[digits..]))
}

/// Why `value` is not of `kind`, if it is not.
pub fn check(kind: Kind, value: &str) -> Result<(), String> {
    match kind {
        Integer(min, max) => match value.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(()),
            _ => Err(format!("must be an integer from {min} to {max}")),
        },
        Real(min, max) => match value.parse::<f64>() {
            Ok(x) if x.is_finite() && (min..=max).contains(&x) => Ok(()),
            _ => Err(format!("must be a number from {min} to {max}")),
        },
        Memory { min_kb, auto } => {
            let kb = match number_and_unit(value) {
                Some((-1, "")) if auto => return Ok(()),
                Some((n, "kB")) => Some(n),
                Some((n, "MB")) => n.checked_mul(1024),
                Some((n, "GB")) => n.checked_mul(1024 * 1024),
                Some((n, "TB")) => n.checked_mul(1024 * 1024 * 1024),
                _ => None,
            };
            match kb {
                Some(kb) if kb >= min_kb && kb <= i64::from(i32::MAX) => Ok(()),
                _ => Err(format!(
                    "must be a size with a unit (kB, MB, GB, TB) of at least {min_kb}kB{}",
                    if auto { ", or -1" } else { "" }
                )),
            }
        }
        Time { off } => match number_and_unit(value) {
            Some((-1, "")) if off => Ok(()),
            Some((0, "")) => Ok(()),
            Some((n, "us" | "ms" | "s" | "min" | "h" | "d"))
                if n >= 0 && n <= i64::from(i32::MAX) =>
            {
                Ok(())
            }
            _ => Err(format!(
                "must be a duration with a unit (us, ms, s, min, h, d), or 0{}",
                if off { ", or -1 (off)" } else { "" }
            )),
        },
        Zone => match jiff::tz::TimeZone::get(value) {
            Ok(_)
                if value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c)) =>
            {
                Ok(())
            }
            _ => Err("must be an IANA time zone such as Asia/Ho_Chi_Minh".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(name: &str, value: &str) -> Result<(), String> {
        check(kind(name).expect("allowed"), value)
    }

    #[test]
    fn the_allow_list_is_sorted_and_unique() {
        assert!(ALLOWED.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn values_of_the_right_kind_and_range_pass() {
        for (name, value) in [
            ("max_connections", "200"),
            ("work_mem", "8MB"),
            ("shared_buffers", "1GB"),
            ("wal_buffers", "-1"),
            ("statement_timeout", "30s"),
            ("statement_timeout", "0"),
            ("log_min_duration_statement", "-1"),
            ("checkpoint_completion_target", "0.9"),
            ("timezone", "Asia/Ho_Chi_Minh"),
        ] {
            assert_eq!(verdict(name, value), Ok(()), "{name} = {value}");
        }
    }

    #[test]
    fn values_postgresql_would_refuse_or_that_would_starve_the_server_fail() {
        for (name, value) in [
            ("max_connections", "1"),
            ("max_connections", "lots"),
            ("work_mem", "x"),
            ("work_mem", "64"),
            ("work_mem", "1kB"),
            ("work_mem", "-1"),
            ("shared_buffers", "99999999TB"),
            ("statement_timeout", "-1"),
            ("statement_timeout", "5 s"),
            ("checkpoint_completion_target", "2"),
            ("checkpoint_completion_target", "NaN"),
            ("timezone", "Mars/Olympus"),
        ] {
            assert!(verdict(name, value).is_err(), "{name} = {value} passed");
        }
        assert_eq!(kind("ssl"), None);
    }
}
