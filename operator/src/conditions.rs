//! metav1.Condition helpers: a condition keeps its `lastTransitionTime` while its status stays the
//! same, so rewriting an unchanged status is a no-op (no write, no churn for GitOps tools).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as the controller wants it, before transition times are settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Want {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Builds the condition list: each wanted condition keeps the previous `lastTransitionTime`
/// when its status did not change, and gets `now` otherwise.
pub fn settle(
    wanted: Vec<Want>,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    wanted
        .into_iter()
        .map(|want| {
            let status = if want.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == want.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: want.type_.to_string(),
                status,
                reason: want.reason.to_string(),
                message: want.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The status ("True"/"False"/"Unknown") of a condition type, if present.
pub fn status_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time() {
        let first = settle(
            vec![Want::new("Ready", false, "A", "m")],
            &[],
            Some(1),
            &at(10),
        );
        let again = settle(
            vec![Want::new("Ready", false, "B", "other")],
            &first,
            Some(2),
            &at(20),
        );
        assert_eq!(again[0].last_transition_time, at(10));
        assert_eq!(again[0].reason, "B");
        assert_eq!(again[0].observed_generation, Some(2));
    }

    #[test]
    fn flipped_status_gets_a_new_transition_time() {
        let first = settle(
            vec![Want::new("Ready", false, "A", "m")],
            &[],
            Some(1),
            &at(10),
        );
        let flipped = settle(
            vec![Want::new("Ready", true, "A", "m")],
            &first,
            Some(1),
            &at(20),
        );
        assert_eq!(flipped[0].last_transition_time, at(20));
        assert_eq!(status_of(&flipped, "Ready"), Some("True"));
        assert_eq!(status_of(&flipped, "Degraded"), None);
    }
}
