//! The rules table and its deadline arithmetic, seen from outside the crate:
//! hand-written edge cases, the answers the privacy-requests service will
//! rely on, and property tests over thousands of dates.

use chrono::{Datelike, NaiveDate, Weekday};
use privacy_records::rules::deadline::{
    add_business_days, add_business_days_in, add_calendar_days, add_months, is_business_day,
    pause_length, pause_length_in,
};
use privacy_records::rules::{
    Clock, DeadlineError, Holidays, PauseReason, Period, RequestType, Resolution, RulesError,
    RulesTable, Unit,
};
use proptest::prelude::*;

fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).expect("valid test date")
}

fn table() -> &'static RulesTable {
    privacy_records::rules::table().expect("embedded rules table is valid")
}

fn days(n: u32) -> Period {
    Period::new(n, Unit::CalendarDays)
}

// ---------------------------------------------------------------------------
// Deadline arithmetic: hand-written edge cases
// ---------------------------------------------------------------------------

#[test]
fn zero_of_any_unit_leaves_the_date_unchanged_even_on_a_saturday() {
    let saturday = d(2026, 11, 21);
    assert_eq!(saturday.weekday(), Weekday::Sat);
    assert_eq!(add_calendar_days(saturday, 0), Ok(saturday));
    assert_eq!(add_business_days(saturday, 0), Ok(saturday));
    assert_eq!(add_months(saturday, 0), Ok(saturday));
}

#[test]
fn january_31_plus_one_month_is_february_28_in_a_common_year() {
    assert_eq!(add_months(d(2026, 1, 31), 1), Ok(d(2026, 2, 28)));
}

#[test]
fn january_31_plus_one_month_is_february_29_in_a_leap_year() {
    assert_eq!(add_months(d(2028, 1, 31), 1), Ok(d(2028, 2, 29)));
}

#[test]
fn february_29_plus_one_month_is_march_29_and_plus_a_year_is_february_28() {
    assert_eq!(add_months(d(2028, 2, 29), 1), Ok(d(2028, 3, 29)));
    assert_eq!(add_months(d(2028, 2, 29), 12), Ok(d(2029, 2, 28)));
}

#[test]
fn august_31_plus_one_month_is_september_30() {
    assert_eq!(add_months(d(2026, 8, 31), 1), Ok(d(2026, 9, 30)));
}

#[test]
fn calendar_days_count_the_leap_day() {
    // Feb 2028 has 29 days: 14 to reach Feb 29, then 31 more.
    assert_eq!(add_calendar_days(d(2028, 2, 15), 45), Ok(d(2028, 3, 31)));
    assert_eq!(add_calendar_days(d(2026, 2, 15), 45), Ok(d(2026, 4, 1)));
}

#[test]
fn calendar_days_cross_the_year_end() {
    assert_eq!(add_calendar_days(d(2026, 12, 1), 45), Ok(d(2027, 1, 15)));
}

#[test]
fn a_request_received_on_saturday_counts_business_days_from_monday() {
    let saturday = d(2026, 11, 21);
    assert_eq!(add_business_days(saturday, 1), Ok(d(2026, 11, 23)));
    assert_eq!(add_business_days(saturday, 10), Ok(d(2026, 12, 4)));
    assert_eq!(add_business_days(saturday, 15), Ok(d(2026, 12, 11)));
}

#[test]
fn a_request_received_on_sunday_counts_business_days_from_monday() {
    assert_eq!(add_business_days(d(2026, 11, 22), 1), Ok(d(2026, 11, 23)));
    assert_eq!(add_business_days(d(2026, 11, 22), 5), Ok(d(2026, 11, 27)));
}

#[test]
fn five_business_days_from_a_friday_is_the_next_friday() {
    assert_eq!(add_business_days(d(2026, 11, 20), 5), Ok(d(2026, 11, 27)));
}

#[test]
fn dates_past_the_end_of_the_calendar_are_an_error_not_a_panic() {
    assert_eq!(
        add_calendar_days(NaiveDate::MAX, 1),
        Err(DeadlineError::OutOfRange)
    );
    assert_eq!(
        add_business_days(NaiveDate::MAX, 1),
        Err(DeadlineError::OutOfRange)
    );
    assert_eq!(
        add_months(NaiveDate::MAX, 1),
        Err(DeadlineError::OutOfRange)
    );
}

#[test]
fn an_extension_counts_from_the_original_due_date() {
    // California: 45 + 45 calendar days.
    let mut clock = Clock::start(d(2026, 1, 1), days(45), Some(days(45)));
    assert_eq!(clock.due(), Ok(d(2026, 2, 15)));
    assert_eq!(clock.extend(d(2026, 2, 1)), Ok(d(2026, 4, 1)));
    assert_eq!(clock.due(), Ok(d(2026, 4, 1)));
    assert!(clock.is_extended());
}

#[test]
fn a_gdpr_extension_adds_two_months_to_the_clamped_original_due_date() {
    // Received 31 Jan: due 28 Feb; two further months from there: 28 Apr
    // (earlier than 30 Apr, which counting three months from receipt gives).
    let mut clock = Clock::start(
        d(2026, 1, 31),
        Period::new(1, Unit::Months),
        Some(Period::new(2, Unit::Months)),
    );
    assert_eq!(clock.due(), Ok(d(2026, 2, 28)));
    assert_eq!(clock.extended_due(), Ok(Some(d(2026, 4, 28))));
    assert_eq!(clock.extend(d(2026, 2, 10)), Ok(d(2026, 4, 28)));
}

#[test]
fn an_extension_asked_for_on_the_due_date_is_still_in_time() {
    let mut clock = Clock::start(d(2026, 1, 1), days(45), Some(days(45)));
    assert_eq!(clock.extend(d(2026, 2, 15)), Ok(d(2026, 4, 1)));
}

#[test]
fn an_extension_asked_for_after_the_due_date_is_refused() {
    let mut clock = Clock::start(d(2026, 1, 1), days(45), Some(days(45)));
    assert_eq!(
        clock.extend(d(2026, 2, 16)),
        Err(DeadlineError::ExtensionAfterDue {
            requested_on: d(2026, 2, 16),
            due: d(2026, 2, 15),
        })
    );
    assert!(!clock.is_extended());
    assert_eq!(clock.due(), Ok(d(2026, 2, 15)));
}

#[test]
fn a_second_extension_is_refused() {
    let mut clock = Clock::start(d(2026, 1, 1), days(45), Some(days(45)));
    assert!(clock.extend(d(2026, 1, 2)).is_ok());
    assert_eq!(
        clock.extend(d(2026, 1, 3)),
        Err(DeadlineError::AlreadyExtended)
    );
}

#[test]
fn a_clock_without_an_extension_cannot_be_extended() {
    let mut clock = Clock::start(d(2026, 1, 1), Period::new(15, Unit::BusinessDays), None);
    assert_eq!(
        clock.extend(d(2026, 1, 2)),
        Err(DeadlineError::NoExtensionAllowed)
    );
    assert_eq!(clock.extended_due(), Ok(None));
}

#[test]
fn a_calendar_day_pause_pushes_the_due_date_by_the_days_paused() {
    // Utah-style: 45 days from 1 Mar is 15 Apr; paused 10..17 Mar (7 days).
    let mut clock = Clock::start(d(2026, 3, 1), days(45), Some(days(45)));
    assert_eq!(
        clock.pause(d(2026, 3, 10), d(2026, 3, 17)),
        Ok(d(2026, 4, 22))
    );
    assert_eq!(clock.paused_days(), 7);
    assert_eq!(clock.original_due(), Ok(d(2026, 4, 22)));
}

#[test]
fn a_business_day_pause_counts_only_the_business_days_paused() {
    // 15 business days from Mon 23 Nov 2026 is Mon 14 Dec. Paused Fri 27 Nov
    // to Tue 1 Dec (exclusive): Fri and Mon, 2 business days, so Wed 16 Dec.
    let mut clock = Clock::start(d(2026, 11, 23), Period::new(15, Unit::BusinessDays), None);
    assert_eq!(clock.due(), Ok(d(2026, 12, 14)));
    assert_eq!(
        clock.pause(d(2026, 11, 27), d(2026, 12, 1)),
        Ok(d(2026, 12, 16))
    );
}

#[test]
fn a_month_clock_pauses_by_calendar_days() {
    let mut clock = Clock::start(d(2026, 1, 31), Period::new(1, Unit::Months), None);
    assert_eq!(clock.pause(d(2026, 2, 2), d(2026, 2, 5)), Ok(d(2026, 3, 3)));
}

#[test]
fn an_extension_after_a_pause_counts_from_the_pushed_due_date() {
    let mut clock = Clock::start(d(2026, 3, 1), days(45), Some(days(45)));
    assert!(clock.pause(d(2026, 3, 10), d(2026, 3, 17)).is_ok());
    // 15 Apr would be too late without the pause; with it the due date is 22 Apr.
    assert_eq!(clock.extend(d(2026, 4, 20)), Ok(d(2026, 6, 6)));
}

#[test]
fn a_pause_that_ends_before_it_starts_is_refused() {
    let mut clock = Clock::start(d(2026, 3, 1), days(45), None);
    assert_eq!(
        clock.pause(d(2026, 3, 17), d(2026, 3, 10)),
        Err(DeadlineError::PauseEndsBeforeStart {
            start: d(2026, 3, 17),
            end: d(2026, 3, 10),
        })
    );
    assert_eq!(clock.paused_days(), 0);
}

// ---------------------------------------------------------------------------
// Deadline arithmetic: properties
// ---------------------------------------------------------------------------

fn any_date() -> impl Strategy<Value = NaiveDate> {
    // 2000-01-01 ..= 2100-12-31, as days from the Common Era.
    (730_120i32..=767_009)
        .prop_map(|n| NaiveDate::from_num_days_from_ce_opt(n).unwrap_or(NaiveDate::MIN))
}

fn any_unit() -> impl Strategy<Value = Unit> {
    prop_oneof![
        Just(Unit::CalendarDays),
        Just(Unit::BusinessDays),
        Just(Unit::Months)
    ]
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|first| first.pred_opt())
        .map_or(28, |last| last.day())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn a_due_date_is_never_before_receipt(start in any_date(), n in 0u32..400, unit in any_unit()) {
        let due = Period::new(n, unit).after(start)?;
        prop_assert!(due >= start);
    }

    #[test]
    fn calendar_days_add_exactly_n_days(start in any_date(), n in 0u32..1000) {
        let due = add_calendar_days(start, n)?;
        prop_assert_eq!((due - start).num_days(), i64::from(n));
    }

    #[test]
    fn business_day_results_never_land_on_a_weekend(start in any_date(), n in 1u32..400) {
        let due = add_business_days(start, n)?;
        prop_assert!(is_business_day(due), "{} + {} business days = {} ({:?})", start, n, due, due.weekday());
    }

    #[test]
    fn business_days_add_exactly_n_weekdays_after_receipt(start in any_date(), n in 0u32..120) {
        let due = add_business_days(start, n)?;
        // Count by walking, independently of the week-jumping implementation.
        let counted = start.iter_days().skip(1).take_while(|day| *day <= due).filter(|day| is_business_day(*day)).count();
        prop_assert_eq!(counted, n as usize);
    }

    #[test]
    fn adding_months_keeps_the_day_of_month_clamped_to_the_month_end(start in any_date(), n in 0u32..48) {
        let due = add_months(start, n)?;
        let months = (due.year() - start.year()) * 12 + due.month() as i32 - start.month() as i32;
        prop_assert_eq!(months, n as i32);
        let expected_day = start.day().min(days_in_month(due.year(), due.month()));
        prop_assert_eq!(due.day(), expected_day);
    }

    #[test]
    fn deadlines_grow_with_the_period(start in any_date(), a in 0u32..400, b in 0u32..400, unit in any_unit()) {
        let (small, large) = if a <= b { (a, b) } else { (b, a) };
        let early = Period::new(small, unit).after(start)?;
        let late = Period::new(large, unit).after(start)?;
        prop_assert!(early <= late);
    }

    #[test]
    fn deadlines_never_move_earlier_when_receipt_is_later(start in any_date(), shift in 0u32..30, n in 0u32..200, unit in any_unit()) {
        let later = add_calendar_days(start, shift)?;
        prop_assert!(Period::new(n, unit).after(start)? <= Period::new(n, unit).after(later)?);
    }

    #[test]
    fn an_extended_due_date_is_never_before_the_original(
        start in any_date(),
        n in 1u32..100,
        ext in 0u32..100,
        unit in any_unit(),
        asked_after in 0u32..200,
    ) {
        let mut clock = Clock::start(start, Period::new(n, unit), Some(Period::new(ext, unit)));
        let original = clock.due()?;
        let asked_on = add_calendar_days(start, asked_after)?;
        match clock.extend(asked_on) {
            Ok(extended) => {
                prop_assert!(asked_on <= original);
                prop_assert!(extended >= original);
                prop_assert_eq!(clock.due()?, extended);
            }
            Err(DeadlineError::ExtensionAfterDue { due, .. }) => {
                prop_assert!(asked_on > original);
                prop_assert_eq!(due, original);
                prop_assert_eq!(clock.due()?, original);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    #[test]
    fn a_pause_never_brings_the_due_date_forward(
        start in any_date(),
        n in 1u32..100,
        unit in any_unit(),
        pause_from in 0u32..60,
        pause_len in 0u32..60,
    ) {
        let mut clock = Clock::start(start, Period::new(n, unit), None);
        let before = clock.due()?;
        let from = add_calendar_days(start, pause_from)?;
        let to = add_calendar_days(from, pause_len)?;
        let after = clock.pause(from, to)?;
        prop_assert!(after >= before);
        let paused = pause_length(from, to, unit)?;
        prop_assert!(paused <= pause_len);
        if pause_len == 0 {
            prop_assert_eq!(after, before);
        }
    }
}

// ---------------------------------------------------------------------------
// The rules table
// ---------------------------------------------------------------------------

#[test]
fn the_table_is_versioned_checked_and_lists_twenty_four_jurisdictions() {
    assert_eq!(table().version(), "2026-12-03.2");
    assert_eq!(table().checked(), d(2026, 12, 3));
    // The 21 of the research, and Oklahoma, Louisiana and Alabama (2027).
    assert_eq!(table().entries().count(), 24);
}

#[test]
fn a_state_code_resolves_exactly_whatever_its_case() {
    let lookup = table().lookup(" us-ca ");
    assert_eq!(lookup.resolution, Resolution::Exact);
    assert_eq!(lookup.rules.code(), "US-CA");
    assert!(!lookup.used_defaults());
}

#[test]
fn eu_member_states_and_their_subdivisions_resolve_to_the_gdpr() {
    for code in ["DE", "FR", "fr-75", "EL", "IE", "NO"] {
        let lookup = table().lookup(code);
        assert_eq!(lookup.resolution, Resolution::MemberState, "{code}");
        assert_eq!(lookup.rules.code(), "EU", "{code}");
    }
    assert_eq!(table().lookup("EU").resolution, Resolution::Exact);
}

#[test]
fn delaware_is_not_mistaken_for_germany() {
    assert_eq!(table().rules_for("US-DE").name, "Delaware");
    assert_eq!(table().rules_for("DE").code(), "EU");
}

#[test]
fn an_unknown_jurisdiction_gets_the_defaults_and_says_so() {
    for code in ["US-WA", "CA", "GB", "", "nonsense"] {
        let lookup = table().lookup(code);
        assert!(lookup.used_defaults(), "{code}");
        assert!(lookup.rules.is_default(), "{code}");
    }
    let rules = privacy_records::rules::rules_for("US-WA").expect("table is valid");
    assert!(rules.is_default());
    let due = rules.deadline_for(RequestType::Access);
    assert_eq!(due.period, days(45));
    assert_eq!(due.extension_period(), Some(days(45)));
    assert!(!due.statutory);
}

#[test]
fn iowa_grants_no_correction_so_a_correction_is_handled_voluntarily() {
    let iowa = table().rules_for("US-IA");
    assert!(!iowa.grants(RequestType::Correction));
    let due = iowa.deadline_for(RequestType::Correction);
    assert!(!due.statutory);
    assert_eq!(due.period, days(45));
    // Voluntary requests still follow the organisation's verification policy.
    assert!(iowa.verification_required(RequestType::Correction));
}

#[test]
fn iowa_gives_ninety_days_for_access_plus_forty_five() {
    let due = table().rules_for("US-IA").deadline_for(RequestType::Access);
    assert!(due.statutory);
    let mut clock = due.start_clock(d(2026, 1, 1));
    assert_eq!(clock.due(), Ok(d(2026, 4, 1)));
    assert_eq!(clock.extend(d(2026, 3, 1)), Ok(d(2026, 5, 16)));
}

#[test]
fn the_policy_exceptions_for_iowa_and_utah_are_in_the_table() {
    let iowa = table().rules_for("US-IA");
    let utah = table().rules_for("US-UT");
    for t in [
        RequestType::Correction,
        RequestType::OptOutTargetedAdvertising,
        RequestType::OptOutProfiling,
    ] {
        assert!(!iowa.grants(t), "Iowa grants {t}");
    }
    assert!(!utah.grants(RequestType::OptOutProfiling));
    assert!(utah.grants(RequestType::OptOutTargetedAdvertising));
    // The other eleven named states grant correction and all three opt-outs,
    // except that California's profiling right is the ADMT opt-out of 11 CCR
    // 7221 (from 1 January 2027), not a statutory opt-out of profiling.
    let ca = table().rules_for("US-CA");
    assert!(!ca.grants(RequestType::OptOutProfiling));
    assert!(ca.grants(RequestType::OptOutAdmt));
    for code in [
        "US-CO", "US-CT", "US-DE", "US-FL", "US-IN", "US-MT", "US-OR", "US-TN", "US-TX", "US-VA",
    ] {
        let rules = table().rules_for(code);
        for t in [
            RequestType::Access,
            RequestType::Deletion,
            RequestType::Correction,
            RequestType::Portability,
            RequestType::OptOutSale,
            RequestType::OptOutTargetedAdvertising,
            RequestType::OptOutProfiling,
        ] {
            assert!(rules.grants(t), "{code} does not grant {t}");
        }
    }
}

#[test]
fn utahs_correction_right_starts_on_1_july_2026() {
    let utah = table().rules_for("US-UT");
    assert!(utah.grants(RequestType::Correction));
    assert!(!utah.grants_on(RequestType::Correction, d(2026, 6, 30)));
    assert!(utah.grants_on(RequestType::Correction, d(2026, 7, 1)));
}

#[test]
fn a_law_grants_nothing_before_it_takes_effect() {
    let kentucky = table().rules_for("US-KY");
    assert!(!kentucky.grants_on(RequestType::Access, d(2025, 12, 31)));
    assert!(kentucky.grants_on(RequestType::Access, d(2026, 1, 1)));
}

#[test]
fn only_utah_stops_the_clock_while_a_suspected_fraud_awaits_authentication() {
    for rules in table().entries() {
        let pauses = rules.pauses_clock_for(PauseReason::FraudSuspectedAuthenticationPending);
        assert_eq!(pauses, rules.code() == "US-UT", "{}", rules.code());
    }
}

#[test]
fn california_opt_outs_are_due_in_fifteen_business_days_without_extension_or_verification() {
    let ca = table().rules_for("US-CA");
    let due = ca.deadline_for(RequestType::OptOutSale);
    assert_eq!(due.period, Period::new(15, Unit::BusinessDays));
    assert!(due.extension.is_none());
    assert!(due.cite.conservative);
    assert!(!ca.verification_required(RequestType::OptOutSale));
    assert!(ca.verification_required(RequestType::Access));
    assert!(ca.agent_may_file(RequestType::Deletion));
    assert!(!ca.grants(RequestType::ConfirmProcessing));
    assert!(!ca.appeal.exists);
}

#[test]
fn gdpr_access_is_due_in_one_month_extendable_by_two() {
    let eu = table().rules_for("EU");
    let due = eu.deadline_for(RequestType::Access);
    assert_eq!(due.period, Period::new(1, Unit::Months));
    assert_eq!(due.extension_period(), Some(Period::new(2, Unit::Months)));
    assert!(due.extension.is_some_and(|e| e.notice_required));
    assert!(eu.grants(RequestType::Restriction));
    assert!(eu.grants(RequestType::Objection));
    assert!(!eu.appeal.exists);
    assert!(eu.appeal.regulator_contact_required);
    assert_eq!(eu.free_requests.requests_per_12_months, None);
}

#[test]
fn agents_may_file_only_what_their_jurisdiction_allows() {
    let texas = table().rules_for("US-TX");
    assert!(texas.agent_may_file(RequestType::OptOutSale));
    assert!(texas.agent_may_file(RequestType::OptOutTargetedAdvertising));
    assert!(!texas.agent_may_file(RequestType::OptOutProfiling));
    assert!(!texas.agent_may_file(RequestType::Access));
    let virginia = table().rules_for("US-VA");
    assert!(!virginia.agent_may_file(RequestType::OptOutSale));
}

#[test]
fn universal_opt_out_recognition_starts_on_its_date() {
    let colorado = table().rules_for("US-CO");
    assert!(!colorado.universal_opt_out_on(d(2024, 6, 30)));
    assert!(colorado.universal_opt_out_on(d(2024, 7, 1)));
    assert!(
        !table()
            .rules_for("US-VA")
            .universal_opt_out_on(d(2026, 1, 1))
    );
}

#[test]
fn appeals_use_the_statute_where_read_and_forty_five_days_otherwise() {
    let appeal_days = |code: &str| {
        table()
            .rules_for(code)
            .appeal
            .deadline
            .map(|p| (p.amount, p.unit))
    };
    assert_eq!(appeal_days("US-IA"), Some((60, Unit::CalendarDays)));
    assert_eq!(appeal_days("US-KY"), Some((60, Unit::CalendarDays)));
    assert_eq!(appeal_days("US-OR"), Some((45, Unit::CalendarDays)));
    assert_eq!(appeal_days("US-VA"), Some((45, Unit::CalendarDays)));
    assert!(table().rules_for("US-VA").appeal.conservative);
    assert_eq!(appeal_days("US-UT"), None);
    assert_eq!(appeal_days("US-CA"), None);
}

#[test]
fn every_rule_is_cited_and_every_unconfirmed_value_is_a_noted_conservative_choice() {
    for rules in table().entries().chain(std::iter::once(table().defaults())) {
        for (label, cite) in rules.cites() {
            assert!(!cite.source.is_empty(), "{} {label}", rules.code());
            if cite.confidence.is_unconfirmed() {
                assert!(cite.conservative, "{} {label}", rules.code());
            }
            if cite.conservative {
                assert!(cite.note.is_some(), "{} {label}", rules.code());
            }
        }
    }
}

#[test]
fn every_jurisdiction_answers_every_request_type() {
    for rules in table().entries() {
        for t in RequestType::ALL {
            let due = rules.deadline_for(t);
            assert!(due.period.amount > 0, "{} {t}", rules.code());
            assert_eq!(due.statutory, rules.grants(t), "{} {t}", rules.code());
        }
    }
}

// ---------------------------------------------------------------------------
// The table is the law as enacted, with its dates. Each case
// names the provision it was checked against.
// ---------------------------------------------------------------------------

#[test]
fn california_caps_free_requests_only_for_requests_to_know_civ_code_1798_130_b() {
    // Civ. Code 1798.130(b): a business need not provide the information
    // required by 1798.110 and 1798.115 (requests to know) more than twice in
    // 12 months. A third deletion, correction or opt-out is not capped.
    let ca = table().rules_for("US-CA");
    assert_eq!(ca.free_limit_for(RequestType::Access), Some(2));
    assert_eq!(ca.free_limit_for(RequestType::Portability), Some(2));
    for t in [
        RequestType::Deletion,
        RequestType::Correction,
        RequestType::OptOutSale,
        RequestType::OptOutTargetedAdvertising,
        RequestType::LimitSensitiveData,
    ] {
        assert_eq!(ca.free_limit_for(t), None, "{t}");
        assert_eq!(ca.free_limit_on(t, d(2026, 12, 3)), None, "{t}");
    }
    assert!(ca.free_requests.source.contains("1798.130(b)"));
    // Elsewhere a limit still counts each type on its own.
    let va = table().rules_for("US-VA");
    assert_eq!(va.free_limit_for(RequestType::Deletion), Some(2));
}

#[test]
fn a_gdpr_opt_out_of_sale_or_of_sensitive_data_use_is_due_in_one_month_art_12_3() {
    // GDPR Art. 21 (objection) and Art. 7(3) (withdrawal of consent) are
    // requests under Arts. 15 to 22: Art. 12(3) gives one month, extendable by
    // two with notice, not the defaults' 45 days.
    let eu = table().rules_for("EU");
    for t in [RequestType::OptOutSale, RequestType::LimitSensitiveData] {
        assert!(eu.grants(t), "{t}");
        let due = eu.deadline_on(t, d(2026, 12, 3));
        assert!(due.statutory, "{t}");
        assert_eq!(due.period, Period::new(1, Unit::Months), "{t}");
        assert_eq!(due.extension_period(), Some(Period::new(2, Unit::Months)));
        // Received 3 Dec: due 3 Jan, earlier than 45 days (17 Jan).
        assert_eq!(due.start_clock(d(2026, 12, 3)).due(), Ok(d(2027, 1, 3)));
        assert!(!eu.verification_required(t), "{t}");
    }
    assert!(
        eu.right(RequestType::OptOutSale)
            .is_some_and(|g| { g.source.contains("Art. 21") && g.source.contains("Art. 7(3)") })
    );
}

#[test]
fn where_a_statute_has_no_agent_provision_agents_are_a_voluntary_setting() {
    let received = d(2026, 12, 3);
    // Iowa Code 715D, Utah Code 13-61-202, Va. Code 59.1-577: no agent
    // provision (a parent or guardian only); the GDPR has none either.
    for code in ["US-IA", "US-UT", "US-VA", "EU"] {
        let rules = table().rules_for(code);
        assert!(!rules.agents.provision, "{code}");
        assert!(rules.agents.types.is_empty(), "{code}");
        assert!(
            !rules.agent_statutory_on(RequestType::Access, received),
            "{code}"
        );
        assert!(
            !rules.agent_may_file_on(RequestType::Access, received, false),
            "{code}: agents are refused by default"
        );
        assert!(
            rules.agent_may_file_on(RequestType::Access, received, true),
            "{code}: accepted when the organisation accepts agents voluntarily"
        );
    }
    // C.R.S. 6-1-1306(1)(a)(II): Colorado provides agents for opt-outs only;
    // the voluntary setting does not override a statute's own provision.
    let co = table().rules_for("US-CO");
    assert!(co.agents.provision);
    assert!(co.agent_statutory_on(RequestType::OptOutSale, received));
    assert!(!co.agent_may_file_on(RequestType::Access, received, true));
    // 11 CCR 7063 and 7026(j): California agents for requests to know, delete,
    // correct and for the opt-outs.
    let ca = table().rules_for("US-CA");
    assert!(ca.agent_statutory_on(RequestType::Deletion, received));
    assert!(ca.agent_statutory_on(RequestType::OptOutSale, received));
    // A type the law does not grant is voluntary, under the defaults' policy.
    assert!(!ca.agent_statutory_on(RequestType::ConfirmProcessing, received));
    assert!(ca.agent_may_file_on(RequestType::ConfirmProcessing, received, false));
}

#[test]
fn every_jurisdiction_says_whether_its_statute_provides_for_agents() {
    for rules in table().entries() {
        let cite = &rules.agents.source;
        assert!(!cite.is_empty(), "{}", rules.code());
        if !rules.agents.provision {
            assert!(rules.agents.types.is_empty(), "{}", rules.code());
        }
    }
    assert!(!table().defaults().agents.provision);
}

#[test]
fn california_admt_rights_start_on_1_january_2027_11_ccr_7221_7222() {
    // 11 CCR 7200(b): ADMT duties from 1 January 2027 (regulations approved
    // in September 2025). Before, the request is voluntary, on the defaults.
    let ca = table().rules_for("US-CA");
    let before = d(2026, 12, 31);
    let from = d(2027, 1, 1);
    for t in [RequestType::OptOutAdmt, RequestType::AccessAdmt] {
        assert!(!ca.grants_on(t, before), "{t}");
        assert!(ca.grants_on(t, from), "{t}");
        let old = ca.deadline_on(t, before);
        assert!(!old.statutory, "{t}");
        assert_eq!(old.period, days(45), "{t}");
    }
    // 11 CCR 7221: an ADMT opt-out is due in 15 business days, no extension.
    let opt_out = ca.deadline_on(RequestType::OptOutAdmt, from);
    assert!(opt_out.statutory);
    assert_eq!(opt_out.period, Period::new(15, Unit::BusinessDays));
    assert!(opt_out.extension.is_none());
    assert!(RequestType::OptOutAdmt.is_opt_out());
    // 11 CCR 7222: ADMT access is answered like a request to know (45 + 45),
    // after verification.
    let access = ca.deadline_on(RequestType::AccessAdmt, from);
    assert!(access.statutory);
    assert_eq!(access.period, days(45));
    assert_eq!(access.extension_period(), Some(days(45)));
    assert!(ca.verification_required_on(RequestType::AccessAdmt, from));
    assert!(RequestType::AccessAdmt.is_access());
    // No other jurisdiction grants the ADMT types: voluntary there.
    for rules in table().entries().filter(|r| r.code() != "US-CA") {
        assert!(!rules.grants(RequestType::OptOutAdmt), "{}", rules.code());
    }
}

#[test]
fn the_laws_enacted_for_2027_apply_from_their_effective_dates() {
    // Oklahoma SB 546 and Louisiana SB 386 (Act 502): 1 January 2027.
    // Alabama HB 351 (Act 2026-552): 1 May 2027.
    for (code, before, from) in [
        ("US-OK", d(2026, 12, 31), d(2027, 1, 1)),
        ("US-LA", d(2026, 12, 31), d(2027, 1, 1)),
        ("US-AL", d(2027, 4, 30), d(2027, 5, 1)),
    ] {
        let rules = table().rules_for(code);
        assert_eq!(rules.code(), code);
        assert_eq!(rules.effective.date, from, "{code}");
        assert!(!rules.grants_on(RequestType::Access, before), "{code}");
        assert!(rules.grants_on(RequestType::Access, from), "{code}");
        // A request received before the date gets the old rule: voluntary.
        let old = rules.deadline_on(RequestType::Deletion, before);
        assert!(!old.statutory, "{code}");
        assert_eq!(old.cite.confidence.as_str(), "policy", "{code}");
        let new = rules.deadline_on(RequestType::Deletion, from);
        assert!(new.statutory, "{code}");
        assert_eq!(new.period, days(45), "{code}");
    }
}

#[test]
fn a_rule_with_a_date_answers_a_request_received_before_it_with_the_rule_before() {
    // Utah Code 13-61-201 as amended by HB 418: correction from 1 July 2026.
    let utah = table().rules_for("US-UT");
    assert!(
        !utah
            .deadline_on(RequestType::Correction, d(2026, 6, 30))
            .statutory
    );
    assert!(
        utah.deadline_on(RequestType::Correction, d(2026, 7, 1))
            .statutory
    );
    // Kentucky (KRS 367.3611 et seq., 1 January 2026): nothing before.
    let ky = table().rules_for("US-KY");
    assert!(
        !ky.deadline_on(RequestType::Access, d(2025, 12, 31))
            .statutory
    );
}

// ---------------------------------------------------------------------------
// Business days with holidays (California's state holidays as data)
// ---------------------------------------------------------------------------

#[test]
fn a_california_opt_out_received_the_friday_before_thanksgiving_week_skips_the_holidays() {
    // 11 CCR 7026(f): 15 business days. Received Friday 20 November 2026;
    // Thanksgiving (Thu 26) and the day after (Fri 27) are state holidays
    // (Gov. Code 19853; CalHR), so the 15th business day is Tuesday
    // 15 December, not Friday 11 December.
    let ca = table().rules_for("US-CA");
    let received = d(2026, 11, 20);
    assert_eq!(received.weekday(), Weekday::Fri);
    let due = ca.deadline_on(RequestType::OptOutSale, received);
    assert_eq!(due.period, Period::new(15, Unit::BusinessDays));
    assert_eq!(due.start_clock(received).due(), Ok(d(2026, 12, 15)));
    assert_eq!(add_business_days(received, 15), Ok(d(2026, 12, 11)));
}

#[test]
fn a_california_request_the_friday_before_christmas_skips_christmas_and_new_years_day() {
    // Received Friday 18 December 2026: Fri 25 Dec and Fri 1 Jan are holidays.
    let ca = table().rules_for("US-CA");
    let received = d(2026, 12, 18);
    let due = ca.deadline_on(RequestType::OptOutSale, received);
    assert_eq!(due.start_clock(received).due(), Ok(d(2027, 1, 12)));
    // 11 CCR 7021(a): acknowledge within 10 business days: Tue 5 Jan 2027
    // (Fri 1 Jan without the two holidays).
    let ack = ca.acknowledge.as_ref().expect("California acknowledges");
    let ack_by = Period::new(ack.amount, ack.unit).after_in(received, ca.holidays());
    assert_eq!(ack_by, Ok(d(2027, 1, 5)));
}

#[test]
fn a_voluntary_request_in_california_and_a_texas_opt_out_count_no_holidays() {
    // Texas has no holiday calendar in the table; a request California does
    // not grant follows the defaults, which have none either.
    let tx = table().rules_for("US-TX");
    assert!(tx.holidays().is_empty());
    let ca = table().rules_for("US-CA");
    assert!(
        ca.deadline_on(RequestType::ConfirmProcessing, d(2026, 11, 20))
            .holidays
            .is_empty()
    );
}

#[test]
fn a_business_day_pause_over_a_holiday_does_not_count_the_holiday() {
    let holidays = [d(2026, 11, 26), d(2026, 11, 27)];
    let h = Holidays::new(&holidays);
    // Mon 23 to Mon 30 Nov (exclusive): Mon-Wed are business days, Thu-Fri not.
    assert_eq!(
        pause_length_in(d(2026, 11, 23), d(2026, 11, 30), Unit::BusinessDays, h),
        Ok(3)
    );
    assert_eq!(
        pause_length(d(2026, 11, 23), d(2026, 11, 30), Unit::BusinessDays),
        Ok(5)
    );
    let mut clock =
        Clock::start(d(2026, 11, 20), Period::new(15, Unit::BusinessDays), None).with_holidays(h);
    assert_eq!(clock.due(), Ok(d(2026, 12, 15)));
    // Paused three business days: due three business days later.
    assert_eq!(
        clock.pause(d(2026, 11, 23), d(2026, 11, 30)),
        Ok(d(2026, 12, 18))
    );
}

#[test]
fn the_california_calendar_lists_only_weekdays_in_order_with_its_source() {
    let ca = table().rules_for("US-CA");
    let cal = ca.holidays.as_ref().expect("California has a calendar");
    assert!(cal.source.contains("19853"));
    assert!(cal.dates.windows(2).all(|w| w[0] < w[1]));
    assert!(cal.dates.iter().all(|h| is_business_day(*h)));
    assert!(cal.through >= d(2027, 12, 31));
    // 4 July 2026 is a Saturday: no weekday is observed for it.
    assert!(!ca.holidays().contains(d(2026, 7, 3)));
    // 11 November 2028 is a Saturday: observed Friday 10 November (Gov. Code 6701).
    assert!(ca.holidays().contains(d(2028, 11, 10)));
}

#[test]
fn a_table_with_a_holiday_on_a_weekend_or_out_of_order_is_refused() {
    let text =
        privacy_records::rules::EMBEDDED_TABLE.replacen("\"2026-11-26\"", "\"2026-11-28\"", 1);
    let err = RulesTable::parse(&text).err();
    assert!(
        matches!(&err, Some(RulesError::Invalid(p)) if p.iter().any(|p| p.contains("holidays"))),
        "{err:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn business_days_with_holidays_land_on_a_working_day_and_count_n_of_them(
        start in any_date(),
        n in 1u32..60,
    ) {
        let ca = table().rules_for("US-CA");
        let h = ca.holidays();
        let due = add_business_days_in(start, n, h)?;
        prop_assert!(h.is_business_day(due));
        let counted = start.iter_days().skip(1).take_while(|day| *day <= due).filter(|day| h.is_business_day(*day)).count();
        prop_assert_eq!(counted, n as usize);
        prop_assert!(due >= add_business_days(start, n)?);
    }
}

#[test]
fn nebraska_decides_an_appeal_within_sixty_days_as_its_statute_says() {
    // Neb. Rev. Stat. 87-1109(3): "not later than the sixtieth day after the
    // date of receipt of the appeal"; no extension.
    let nebraska = table().rules_for("US-NE");
    let deadline = nebraska.appeal.deadline.expect("an appeal deadline");
    assert_eq!((deadline.amount, deadline.unit), (60, Unit::CalendarDays));
    assert!(!nebraska.appeal.conservative, "read in the statute");
}

#[test]
fn rhode_island_agents_may_file_opt_outs_only() {
    // R.I. Gen. Laws 6-48.1-5(f): "A customer may designate an authorized
    // agent to exercise the rights to opt out on their behalf."
    let rhode_island = table().rules_for("US-RI");
    assert!(rhode_island.agents.provision);
    for t in [
        RequestType::OptOutSale,
        RequestType::OptOutTargetedAdvertising,
        RequestType::OptOutProfiling,
    ] {
        assert!(rhode_island.agent_may_file(t), "{t:?}");
    }
    for t in [
        RequestType::Access,
        RequestType::Deletion,
        RequestType::Correction,
    ] {
        assert!(!rhode_island.agent_may_file(t), "{t:?}");
    }
}
