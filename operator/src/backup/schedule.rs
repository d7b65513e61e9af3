//! When a backup is due: the policy's cron strings in its time zone. Pure.

use jiff::Timestamp;

use super::pgbackrest::Kind;
use crate::api::policy::BackupSchedule;
use crate::validate::parse_cron;

/// A backup the schedule asks for, and the slot it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub kind: Kind,
    pub slot: Timestamp,
}

fn zone(schedule: &BackupSchedule) -> Option<jiff::tz::TimeZone> {
    jiff::tz::TimeZone::get(&schedule.time_zone).ok()
}

/// The latest slot of `cron` at or before `now` (`forward` false), or the first after it.
fn slot(cron: &str, schedule: &BackupSchedule, now: Timestamp, forward: bool) -> Option<Timestamp> {
    let at = now.to_zoned(zone(schedule)?);
    let cron = parse_cron(cron).ok()?;
    let found = if forward {
        cron.find_next_occurrence(&at, false)
    } else {
        cron.find_previous_occurrence(&at, true)
    };
    Some(found.ok()?.timestamp())
}

/// The latest slot of each schedule (full, differential) at or before `now`, or the first after.
fn slots(
    schedule: &BackupSchedule,
    now: Timestamp,
    forward: bool,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let full = slot(&schedule.full, schedule, now, forward);
    let diff = schedule
        .differential
        .as_deref()
        .and_then(|cron| slot(cron, schedule, now, forward));
    (full, diff)
}

/// What is due at `now` when the last backup run for the schedule stood for slot `last`. A
/// database never backed up gets a full backup at once (nothing is recoverable before one).
/// However many slots passed since `last` (an operator that was down), one backup is due, for
/// the latest slot; a full one when a full slot is among them.
pub fn due(schedule: &BackupSchedule, last: Option<Timestamp>, now: Timestamp) -> Option<Due> {
    let Some(last) = last else {
        return Some(Due {
            kind: Kind::Full,
            slot: now,
        });
    };
    let (full, diff) = slots(schedule, now, false);
    match (full.filter(|s| *s > last), diff.filter(|s| *s > last)) {
        (Some(full), diff) => Some(Due {
            kind: Kind::Full,
            slot: diff.map_or(full, |d| d.max(full)),
        }),
        (None, Some(diff)) => Some(Due {
            kind: Kind::Differential,
            slot: diff,
        }),
        (None, None) => None,
    }
}

/// The slot of a restore drill due at `now` (`verification.schedule`, in the backup schedule's
/// time zone) when the last one ran for slot `last`: the latest slot after it, once however many
/// passed.
pub fn drill_due(
    cron: &str,
    schedule: &BackupSchedule,
    last: Timestamp,
    now: Timestamp,
) -> Option<Timestamp> {
    slot(cron, schedule, now, false).filter(|s| *s > last)
}

/// The next slot of either schedule after `now`.
pub fn next_run(schedule: &BackupSchedule, now: Timestamp) -> Option<Timestamp> {
    match slots(schedule, now, true) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> BackupSchedule {
        BackupSchedule {
            full: "0 1 * * 0".into(),
            differential: Some("0 1 * * 1-6".into()),
            time_zone: "Asia/Ho_Chi_Minh".into(),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_database_never_backed_up_gets_a_full_backup_at_once() {
        let now = at("2026-11-30T10:00:00Z");
        assert_eq!(
            due(&schedule(), None, now),
            Some(Due {
                kind: Kind::Full,
                slot: now
            })
        );
    }

    #[test]
    fn slots_are_read_in_the_policy_time_zone() {
        // 01:00 in Ho Chi Minh City is 18:00 UTC the day before; 2026-11-29 is a Sunday there.
        let last = at("2026-11-28T18:00:00Z");
        assert_eq!(
            due(&schedule(), Some(last), at("2026-11-29T17:59:59Z")),
            None
        );
        assert_eq!(
            due(&schedule(), Some(last), at("2026-11-29T18:00:00Z")),
            Some(Due {
                kind: Kind::Differential,
                slot: at("2026-11-29T18:00:00Z")
            })
        );
    }

    #[test]
    fn many_missed_slots_give_one_backup_for_the_latest_and_full_wins() {
        // Down from Friday 01:00 to Wednesday 03:00 (local): the Sunday full slot and the diff
        // slots were missed; one full backup stands for the latest slot, Wednesday's.
        let last = at("2026-11-26T18:00:00Z");
        let now = at("2026-12-01T20:00:00Z");
        assert_eq!(
            due(&schedule(), Some(last), now),
            Some(Due {
                kind: Kind::Full,
                slot: at("2026-12-01T18:00:00Z")
            })
        );
        // Once that slot is recorded, nothing more is due until the next one.
        assert_eq!(
            due(&schedule(), Some(at("2026-12-01T18:00:00Z")), now),
            None
        );
    }

    #[test]
    fn a_drill_is_due_once_for_the_latest_missed_slot() {
        // Saturdays 03:00 in Ho Chi Minh City: 2026-11-27T20:00Z and 2026-12-04T20:00Z.
        let drill = "0 3 * * 6";
        let last = at("2026-11-20T20:00:00Z");
        assert_eq!(
            drill_due(drill, &schedule(), last, at("2026-11-27T19:59:59Z")),
            None
        );
        assert_eq!(
            drill_due(drill, &schedule(), last, at("2026-12-05T00:00:00Z")),
            Some(at("2026-12-04T20:00:00Z"))
        );
        let ran = at("2026-12-04T20:00:00Z");
        assert_eq!(
            drill_due(drill, &schedule(), ran, at("2026-12-05T00:00:00Z")),
            None
        );
    }

    #[test]
    fn the_next_run_is_the_earliest_slot_of_either_schedule() {
        assert_eq!(
            next_run(&schedule(), at("2026-11-30T10:00:00Z")),
            Some(at("2026-11-30T18:00:00Z"))
        );
    }
}
