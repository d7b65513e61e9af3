//! The security profile: which rules apply at which security level (design.md section 5). Held
//! as data so a province can replace it (`--security-profile <file>`, YAML) when the legal texts
//! change (Decree 331/2026, TCVN 14423:2026 at the time of writing).

use serde::{Deserialize, Serialize};

use crate::api::database::{Compliance, Finding, SectorDatabaseSpec, TlsMode};

/// A named set of rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityProfile {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// One rule and the lowest level it applies from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub id: RuleId,
    pub min_level: i32,
    /// For `RestoreDrill`: the longest allowed gap between drills, in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_days: Option<i32>,
}

/// What a rule checks. The operator knows how to evaluate each of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleId {
    TlsOnly,
    Pgaudit,
    BackupWithWalArchiving,
    OffsiteEncryptedBackup,
    HighAvailability,
    RestoreDrill,
}

impl RuleId {
    fn name(self) -> &'static str {
        match self {
            RuleId::TlsOnly => "tls-only",
            RuleId::Pgaudit => "pgaudit",
            RuleId::BackupWithWalArchiving => "backup-wal-archiving",
            RuleId::OffsiteEncryptedBackup => "offsite-encrypted-backup",
            RuleId::HighAvailability => "high-availability",
            RuleId::RestoreDrill => "restore-drill",
        }
    }
}

impl Default for SecurityProfile {
    fn default() -> Self {
        let rule = |id, min_level, max_days| Rule {
            id,
            min_level,
            max_days,
        };
        SecurityProfile {
            name: "sectordb-default-2026".into(),
            rules: vec![
                rule(RuleId::TlsOnly, 2, None),
                rule(RuleId::Pgaudit, 3, None),
                rule(RuleId::BackupWithWalArchiving, 2, None),
                rule(RuleId::OffsiteEncryptedBackup, 3, None),
                rule(RuleId::HighAvailability, 4, None),
                rule(RuleId::RestoreDrill, 4, Some(182)),
                rule(RuleId::RestoreDrill, 5, Some(91)),
            ],
        }
    }
}

/// What the operator knows for certain about a running database. Every field is `false` until
/// a controller has observed it, so an unprovisioned database is never reported compliant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub tls_enforced: bool,
    pub pgaudit_loaded: bool,
    pub backed_up_with_wal: bool,
    pub offsite_encrypted: bool,
    pub drill_within: Option<i32>,
    /// Standbys the primary reports as streaming (pg_stat_replication).
    pub streaming_standbys: i32,
    /// When the last WAL segment was archived (Unix seconds), from pg_stat_archiver.
    pub last_archived: Option<i64>,
    /// The archiver's last attempt failed.
    pub archiving_fails: bool,
}

impl SecurityProfile {
    /// The rules that apply at `level`; for rules listed at several levels the strictest that
    /// applies wins.
    fn applicable(&self, level: i32) -> Vec<&Rule> {
        let mut rules: Vec<&Rule> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.min_level <= level) {
            match rules.iter_mut().find(|r| r.id == rule.id) {
                Some(existing) if rule.min_level > existing.min_level => *existing = rule,
                Some(_) => {}
                None => rules.push(rule),
            }
        }
        rules
    }

    /// Evaluates a database against the rules of its level.
    pub fn evaluate(&self, spec: &SectorDatabaseSpec, observed: &Observed) -> Compliance {
        let findings = self
            .applicable(spec.security_level)
            .into_iter()
            .map(|rule| {
                let (satisfied, message) = match rule.id {
                    RuleId::TlsOnly if spec.tls.mode != TlsMode::Required => {
                        (false, "spec.tls.mode allows plain connections".to_string())
                    }
                    RuleId::TlsOnly => verdict(observed.tls_enforced, "plain connections are refused", "TLS-only access is not yet in force on a running server"),
                    RuleId::Pgaudit => verdict(observed.pgaudit_loaded, "pgaudit is loaded", "pgaudit is not yet loaded on a running server"),
                    RuleId::BackupWithWalArchiving => verdict(
                        observed.backed_up_with_wal,
                        "a BackupPolicy with WAL archiving backs this database up",
                        "no backup with WAL archiving has completed for this database",
                    ),
                    RuleId::OffsiteEncryptedBackup => verdict(
                        observed.offsite_encrypted,
                        "encrypted backups reach a GovernmentDataCenter repository",
                        "no encrypted backup has reached a GovernmentDataCenter repository",
                    ),
                    RuleId::HighAvailability if spec.instances < 2 => (false, format!("{} instance; at least 2 are required", spec.instances)),
                    RuleId::HighAvailability if observed.streaming_standbys >= 1 => (true, format!("{} standbys streaming from the primary", observed.streaming_standbys)),
                    RuleId::HighAvailability => (false, format!("{} instances asked for, but no standby streams from the primary yet", spec.instances)),
                    RuleId::RestoreDrill => {
                        let max = rule.max_days.unwrap_or(i32::MAX);
                        match observed.drill_within {
                            Some(days) if days <= max => (true, format!("last restore drill {days} days ago")),
                            Some(days) => (false, format!("last restore drill {days} days ago; at most {max} allowed")),
                            None => (false, format!("no passed restore drill recorded; one is required at least every {max} days")),
                        }
                    }
                };
                Finding { rule: rule.id.name().into(), satisfied, message }
            })
            .collect();
        Compliance {
            level: spec.security_level,
            profile: self.name.clone(),
            findings,
        }
    }
}

fn verdict(ok: bool, yes: &str, no: &str) -> (bool, String) {
    (ok, if ok { yes } else { no }.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(level: i32, instances: i32) -> SectorDatabaseSpec {
        serde_json::from_value(serde_json::json!({
            "agency": {"code": "H53", "name": "x"}, "sector": "Health", "classification": "Open",
            "securityLevel": level, "instances": instances, "storage": {"size": "1Gi"},
            "database": {"name": "d", "owner": "o"}
        }))
        .unwrap()
    }

    fn rules(compliance: &Compliance) -> Vec<&str> {
        compliance
            .findings
            .iter()
            .map(|f| f.rule.as_str())
            .collect()
    }

    #[test]
    fn level_one_has_no_rules_and_level_five_has_all() {
        let profile = SecurityProfile::default();
        assert!(
            profile
                .evaluate(&spec(1, 1), &Observed::default())
                .findings
                .is_empty()
        );
        assert_eq!(
            rules(&profile.evaluate(&spec(5, 2), &Observed::default())),
            [
                "tls-only",
                "pgaudit",
                "backup-wal-archiving",
                "offsite-encrypted-backup",
                "high-availability",
                "restore-drill"
            ]
        );
    }

    #[test]
    fn nothing_observed_is_never_compliant() {
        let c = SecurityProfile::default().evaluate(&spec(3, 1), &Observed::default());
        assert!(c.findings.iter().all(|f| !f.satisfied), "{c:?}");
    }

    #[test]
    fn the_strictest_drill_interval_applies() {
        let observed = Observed {
            drill_within: Some(120),
            ..Observed::default()
        };
        let profile = SecurityProfile::default();
        let drill = |level| {
            profile
                .evaluate(&spec(level, 2), &observed)
                .findings
                .into_iter()
                .find(|f| f.rule == "restore-drill")
                .unwrap()
        };
        assert!(drill(4).satisfied);
        assert!(!drill(5).satisfied);
    }

    #[test]
    fn level_four_needs_two_instances_and_a_streaming_standby() {
        let profile = SecurityProfile::default();
        let ha = |instances, streaming_standbys| {
            let observed = Observed {
                streaming_standbys,
                ..Observed::default()
            };
            profile
                .evaluate(&spec(4, instances), &observed)
                .findings
                .into_iter()
                .find(|f| f.rule == "high-availability")
                .unwrap()
                .satisfied
        };
        assert!(!ha(1, 0));
        assert!(
            !ha(2, 0),
            "asked for but not streaming is not high availability"
        );
        assert!(ha(2, 1));
    }
}
