//! The yearly request metrics a business reports (CCPA, 11 CCR 7102): per
//! request type, how many were received, complied with in whole or in
//! part, denied (by reason), and the days taken to respond. Pure: the
//! requests of the year go in, the figures come out.
use super::model::{DenialReason, State};
use crate::rules::RequestType;

/// One request received in the year, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub request_type: RequestType,
    pub state: State,
    pub denial_reason: Option<DenialReason>,
    /// Calendar days from receipt to the close; `None` while open.
    pub days: Option<i32>,
}

/// The figures of one request type.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeMetrics {
    pub request_type: RequestType,
    pub received: usize,
    pub complied_in_whole: usize,
    pub complied_in_part: usize,
    pub denied: usize,
    /// Denials by reason (`None`: no reason stored), in the reasons' order.
    pub denied_by_reason: Vec<(Option<DenialReason>, usize)>,
    pub median_days_to_respond: f64,
    pub mean_days_to_respond: f64,
}

/// A year's figures, every request type in the rules table's order, with
/// the open requests overdue now and due within the next 7 days.
#[derive(Debug, Clone, PartialEq)]
pub struct YearMetrics {
    pub year: i32,
    pub request_types: Vec<TypeMetrics>,
    pub overdue: i64,
    pub due_within_7_days: i64,
}

/// The figures of `outcomes`, the requests received in `year`.
pub fn of_year(year: i32, outcomes: &[Outcome], overdue: i64, due_soon: i64) -> YearMetrics {
    YearMetrics {
        year,
        request_types: RequestType::ALL
            .iter()
            .map(|&t| of_type(t, outcomes))
            .collect(),
        overdue,
        due_within_7_days: due_soon,
    }
}

fn of_type(t: RequestType, outcomes: &[Outcome]) -> TypeMetrics {
    let of_type: Vec<&Outcome> = outcomes.iter().filter(|o| o.request_type == t).collect();
    let in_state = |s: State| of_type.iter().filter(|o| o.state == s).count();
    let mut by_reason: Vec<(Option<DenialReason>, usize)> = Vec::new();
    for o in of_type.iter().filter(|o| o.state == State::Denied) {
        match by_reason.iter_mut().find(|(r, _)| *r == o.denial_reason) {
            Some((_, n)) => *n += 1,
            None => by_reason.push((o.denial_reason, 1)),
        }
    }
    // No reason first, then the reasons as declared (the wire enum's order).
    by_reason.sort_by_key(|(r, _)| r.map_or(0, |r| r as usize + 1));
    // Days to respond: requests answered (complied with or denied).
    let mut days: Vec<i32> = of_type
        .iter()
        .filter(|o| o.state != State::Canceled)
        .filter_map(|o| o.days)
        .collect();
    let mean = if days.is_empty() {
        0.0
    } else {
        days.iter().map(|&d| f64::from(d)).sum::<f64>() / days.len() as f64
    };
    TypeMetrics {
        request_type: t,
        received: of_type.len(),
        complied_in_whole: in_state(State::Completed),
        complied_in_part: in_state(State::PartiallyCompleted),
        denied: in_state(State::Denied),
        denied_by_reason: by_reason,
        median_days_to_respond: median(&mut days),
        mean_days_to_respond: mean,
    }
}

/// The median of `days` (sorted in place); 0 when empty.
fn median(days: &mut [i32]) -> f64 {
    days.sort_unstable();
    match days.len() {
        0 => 0.0,
        n if n % 2 == 1 => f64::from(days[n / 2]),
        n => (f64::from(days[n / 2 - 1]) + f64::from(days[n / 2])) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(state: State, reason: Option<DenialReason>, days: Option<i32>) -> Outcome {
        Outcome {
            request_type: RequestType::Deletion,
            state,
            denial_reason: reason,
            days,
        }
    }

    fn deletion(m: &YearMetrics) -> &TypeMetrics {
        m.request_types
            .iter()
            .find(|t| t.request_type == RequestType::Deletion)
            .expect("every type is reported")
    }

    #[test]
    fn an_empty_year_reports_every_type_at_zero() {
        let m = of_year(2026, &[], 0, 0);
        assert_eq!(m.request_types.len(), RequestType::ALL.len());
        let d = deletion(&m);
        assert_eq!(d.received, 0);
        assert_eq!(d.median_days_to_respond, 0.0);
        assert_eq!(d.mean_days_to_respond, 0.0);
    }

    #[test]
    fn outcomes_are_counted_by_how_the_request_ended() {
        let m = of_year(
            2026,
            &[
                outcome(State::Completed, None, Some(10)),
                outcome(State::PartiallyCompleted, None, Some(20)),
                outcome(State::Denied, Some(DenialReason::NoData), Some(3)),
                outcome(State::InProgress, None, None),
            ],
            2,
            1,
        );
        let d = deletion(&m);
        assert_eq!(
            (
                d.received,
                d.complied_in_whole,
                d.complied_in_part,
                d.denied
            ),
            (4, 1, 1, 1)
        );
        assert_eq!((m.overdue, m.due_within_7_days), (2, 1));
    }

    #[test]
    fn canceled_requests_count_as_received_but_not_in_the_days() {
        let m = of_year(
            2026,
            &[
                outcome(State::Completed, None, Some(4)),
                outcome(State::Canceled, None, Some(100)),
            ],
            0,
            0,
        );
        let d = deletion(&m);
        assert_eq!(d.received, 2);
        assert_eq!(d.median_days_to_respond, 4.0);
        assert_eq!(d.mean_days_to_respond, 4.0);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let m = of_year(
            2026,
            &[
                outcome(State::Completed, None, Some(9)),
                outcome(State::Completed, None, Some(1)),
                outcome(State::Completed, None, Some(3)),
                outcome(State::Completed, None, Some(5)),
            ],
            0,
            0,
        );
        assert_eq!(deletion(&m).median_days_to_respond, 4.0);
        assert_eq!(deletion(&m).mean_days_to_respond, 4.5);
    }

    #[test]
    fn denials_are_grouped_by_reason_in_the_reasons_order() {
        let m = of_year(
            2026,
            &[
                outcome(State::Denied, Some(DenialReason::Other), None),
                outcome(State::Denied, Some(DenialReason::IdentityNotVerified), None),
                outcome(State::Denied, None, None),
                outcome(State::Denied, Some(DenialReason::Other), None),
            ],
            0,
            0,
        );
        assert_eq!(
            deletion(&m).denied_by_reason,
            vec![
                (None, 1),
                (Some(DenialReason::IdentityNotVerified), 1),
                (Some(DenialReason::Other), 2),
            ]
        );
    }
}
