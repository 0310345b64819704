//! The one way knit builds a status condition, for every kind it reports on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition of `type_`. Its transition time is kept from `previous`
/// while its status holds, and is `now` when the status changes.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    condition_status(
        previous,
        type_,
        Some(status),
        reason,
        message,
        generation,
        now,
    )
}

/// `condition`, where `None` is the `Unknown` status.
pub fn condition_status(
    previous: &[Condition],
    type_: &str,
    status: Option<bool>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = match status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let then = Time("2026-11-21T10:00:00Z".parse().unwrap());
        let now = Time("2026-11-21T11:00:00Z".parse().unwrap());
        let ready = condition(&[], "Ready", true, "Bound", "", Some(1), &then);
        assert_eq!(ready.last_transition_time, then);
        let still = condition(
            std::slice::from_ref(&ready),
            "Ready",
            true,
            "Bound",
            "",
            Some(2),
            &now,
        );
        assert_eq!(still.last_transition_time, then);
        assert_eq!(still.observed_generation, Some(2));
        let failed = condition(&[ready], "Ready", false, "Gone", "", Some(2), &now);
        assert_eq!(
            (failed.status.as_str(), failed.last_transition_time),
            ("False", now)
        );
    }
}
