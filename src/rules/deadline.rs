//! Deadline arithmetic for the legal clocks of privacy requests.
//!
//! Everything here works on `chrono::NaiveDate`: a calendar date in the
//! jurisdiction's own sense (the day the request was received where the
//! subject is, as the caller determines it). Time of day and time zones are the
//! caller's business; a deadline is "by the end of this date".
//!
//! Counting conventions, chosen to match how regulators count:
//! - the day of receipt is day 0, so 45 calendar days from 1 March is 15 April;
//! - business days are Monday to Friday, less the jurisdiction's holidays where
//!   the rules table gives a calendar for it ([`Holidays`], e.g. California's
//!   state holidays). Without a calendar, or past the last date a calendar
//!   covers, a holiday counts as a business day, which can only make a deadline
//!   earlier than the law's, never later;
//! - months follow the GDPR (Regulation 1182/71, Art. 3(2)(c)): the same day
//!   of the month N months on, clamped to that month's last day when it has no
//!   such day (31 January + 1 month = 28 or 29 February). The Regulation's
//!   roll-forward of a deadline that falls on a weekend or holiday is *not*
//!   applied, again erring earlier.
//!
//! Adding 0 of any unit returns the date unchanged (even a Saturday): a zero
//! period is "nothing to count", and the rules table never holds one.

use chrono::{Datelike, Days, Months, NaiveDate, Weekday};
use serde::Deserialize;

/// The unit a legal period is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    CalendarDays,
    BusinessDays,
    Months,
}

impl Unit {
    /// Parses a key of the rules table.
    pub fn parse(key: &str) -> Option<Unit> {
        [Unit::CalendarDays, Unit::BusinessDays, Unit::Months]
            .into_iter()
            .find(|u| u.as_str() == key)
    }

    /// The key used in the rules table.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::CalendarDays => "calendar_days",
            Unit::BusinessDays => "business_days",
            Unit::Months => "months",
        }
    }
}

/// A legal period: an amount of a unit ("45 calendar days", "1 month").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    pub amount: u32,
    pub unit: Unit,
}

impl Period {
    pub const fn new(amount: u32, unit: Unit) -> Self {
        Period { amount, unit }
    }

    /// The date this period ends when counted from `start` (day 0), with no
    /// holidays.
    pub fn after(self, start: NaiveDate) -> Result<NaiveDate, DeadlineError> {
        self.after_in(start, Holidays::NONE)
    }

    /// The date this period ends when counted from `start` (day 0); business
    /// days skip `holidays` too.
    pub fn after_in(
        self,
        start: NaiveDate,
        holidays: Holidays<'_>,
    ) -> Result<NaiveDate, DeadlineError> {
        match self.unit {
            Unit::CalendarDays => add_calendar_days(start, self.amount),
            Unit::BusinessDays => add_business_days_in(start, self.amount, holidays),
            Unit::Months => add_months(start, self.amount),
        }
    }
}

/// A jurisdiction's holidays that are not business days (observed dates, on
/// weekdays), sorted. The rules table holds them as data with their sources;
/// [`Holidays::NONE`] is Monday to Friday without exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Holidays<'a> {
    dates: &'a [NaiveDate],
}

impl<'a> Holidays<'a> {
    /// No holidays: every Monday to Friday is a business day.
    pub const NONE: Holidays<'static> = Holidays { dates: &[] };

    /// Holidays from sorted dates (the rules table checks the order; an
    /// unsorted slice only makes lookups miss, i.e. deadlines earlier).
    pub fn new(sorted: &'a [NaiveDate]) -> Self {
        Holidays { dates: sorted }
    }

    pub fn dates(&self) -> &'a [NaiveDate] {
        self.dates
    }

    pub fn is_empty(&self) -> bool {
        self.dates.is_empty()
    }

    /// Whether `date` is one of these holidays.
    pub fn contains(&self, date: NaiveDate) -> bool {
        self.dates.binary_search(&date).is_ok()
    }

    /// Monday to Friday and not a holiday.
    pub fn is_business_day(&self, date: NaiveDate) -> bool {
        is_business_day(date) && !self.contains(date)
    }
}

/// Why a deadline could not be computed or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadlineError {
    #[error("the deadline falls outside the supported range of dates")]
    OutOfRange,
    #[error("no extension is allowed for this request")]
    NoExtensionAllowed,
    #[error("the request has already been extended once")]
    AlreadyExtended,
    #[error("extension requested on {requested_on}, after the due date {due}")]
    ExtensionAfterDue {
        requested_on: NaiveDate,
        due: NaiveDate,
    },
    #[error("a pause cannot end ({end}) before it starts ({start})")]
    PauseEndsBeforeStart { start: NaiveDate, end: NaiveDate },
}

/// `start` plus `n` calendar days.
pub fn add_calendar_days(start: NaiveDate, n: u32) -> Result<NaiveDate, DeadlineError> {
    start
        .checked_add_days(Days::new(u64::from(n)))
        .ok_or(DeadlineError::OutOfRange)
}

/// Whether `date` is a Monday to Friday.
pub fn is_business_day(date: NaiveDate) -> bool {
    !matches!(date.weekday(), Weekday::Sat | Weekday::Sun)
}

/// The `n`th business day after `start` (the day of receipt is not counted,
/// whatever weekday it is). A request received on a Saturday has Monday as its
/// first business day.
pub fn add_business_days(start: NaiveDate, n: u32) -> Result<NaiveDate, DeadlineError> {
    add_business_days_in(start, n, Holidays::NONE)
}

/// [`add_business_days`], skipping `holidays` as well as weekends.
pub fn add_business_days_in(
    start: NaiveDate,
    n: u32,
    holidays: Holidays<'_>,
) -> Result<NaiveDate, DeadlineError> {
    if n == 0 {
        return Ok(start);
    }
    if !holidays.is_empty() {
        // Legal periods are short (tens of days): walk them day by day.
        let mut date = start;
        let mut left = n;
        while left > 0 {
            date = date.succ_opt().ok_or(DeadlineError::OutOfRange)?;
            if holidays.is_business_day(date) {
                left -= 1;
            }
        }
        return Ok(date);
    }
    // Jump whole weeks first so large periods stay O(1): any 7 consecutive
    // days hold exactly 5 business days, so the nth business day after `start`
    // is the (n - 5k)th after `start + 7k` whenever n > 5k.
    let weeks = (n - 1) / 5;
    let mut date = add_calendar_days(start, weeks.saturating_mul(7))?;
    let mut left = n - weeks * 5;
    while left > 0 {
        date = date.succ_opt().ok_or(DeadlineError::OutOfRange)?;
        if is_business_day(date) {
            left -= 1;
        }
    }
    Ok(date)
}

/// `start` plus `n` calendar months, GDPR style: the same day of the month,
/// clamped to the last day of the target month.
pub fn add_months(start: NaiveDate, n: u32) -> Result<NaiveDate, DeadlineError> {
    // chrono clamps to the end of the month, which is exactly the GDPR rule.
    start
        .checked_add_months(Months::new(n))
        .ok_or(DeadlineError::OutOfRange)
}

/// How long a pause over the half-open range `[start, end)` lasts, counted in
/// the days of `unit`: business days for a business-day clock, calendar days
/// otherwise (a month clock has no fractional months, so it pauses by days).
pub fn pause_length(start: NaiveDate, end: NaiveDate, unit: Unit) -> Result<u32, DeadlineError> {
    pause_length_in(start, end, unit, Holidays::NONE)
}

/// [`pause_length`], where a holiday is not a business day paused.
pub fn pause_length_in(
    start: NaiveDate,
    end: NaiveDate,
    unit: Unit,
    holidays: Holidays<'_>,
) -> Result<u32, DeadlineError> {
    if end < start {
        return Err(DeadlineError::PauseEndsBeforeStart { start, end });
    }
    let calendar =
        u32::try_from((end - start).num_days()).map_err(|_| DeadlineError::OutOfRange)?;
    match unit {
        Unit::CalendarDays | Unit::Months => Ok(calendar),
        Unit::BusinessDays => {
            // Whole weeks hold 5 business days; walk only the remainder.
            let mut count = calendar / 7 * 5;
            let mut day = add_calendar_days(start, calendar / 7 * 7)?;
            while day < end {
                if is_business_day(day) {
                    count += 1;
                }
                day = day.succ_opt().ok_or(DeadlineError::OutOfRange)?;
            }
            // Holidays inside the pause were not business days either.
            let skipped = holidays
                .dates()
                .iter()
                .filter(|h| (start..end).contains(h) && is_business_day(**h))
                .count();
            Ok(count.saturating_sub(u32::try_from(skipped).unwrap_or(u32::MAX)))
        }
    }
}

/// Push `due` later by `paused` days of the clock's unit (see [`pause_length`]).
pub fn push_by_pause(due: NaiveDate, paused: u32, unit: Unit) -> Result<NaiveDate, DeadlineError> {
    push_by_pause_in(due, paused, unit, Holidays::NONE)
}

/// [`push_by_pause`], skipping `holidays` on a business-day clock.
pub fn push_by_pause_in(
    due: NaiveDate,
    paused: u32,
    unit: Unit,
    holidays: Holidays<'_>,
) -> Result<NaiveDate, DeadlineError> {
    match unit {
        Unit::BusinessDays => add_business_days_in(due, paused, holidays),
        Unit::CalendarDays | Unit::Months => add_calendar_days(due, paused),
    }
}

/// The legal clock of one request: when it was received, its period, the one
/// extension the rule allows, and the days it has been paused.
///
/// The due date is computed, never stored, so it cannot drift from its inputs:
/// `original_due = received + period`, pushed by the pauses; when extended,
/// `due = original_due + extension` (the extension counts from the original
/// due date, not from the day it was asked for, as CCPA 1798.130 and GDPR
/// Art. 12(3) both describe "further" time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock<'h> {
    received: NaiveDate,
    period: Period,
    extension: Option<Period>,
    extended: bool,
    paused_days: u32,
    holidays: Holidays<'h>,
}

impl Clock<'static> {
    /// A clock that starts on `received`; `extension` is what the rule allows
    /// (`None` when it allows none).
    pub fn start(received: NaiveDate, period: Period, extension: Option<Period>) -> Self {
        Clock {
            received,
            period,
            extension,
            extended: false,
            paused_days: 0,
            holidays: Holidays::NONE,
        }
    }

    /// A clock as it was stored: its inputs, whether the one extension was
    /// used, and the days (in the period's unit) it was stopped.
    pub fn restore(
        received: NaiveDate,
        period: Period,
        extension: Option<Period>,
        extended: bool,
        paused_days: u32,
    ) -> Self {
        Clock {
            received,
            period,
            extension,
            extended,
            paused_days,
            holidays: Holidays::NONE,
        }
    }
}

impl<'h> Clock<'h> {
    /// This clock, counting business days without `holidays` (the
    /// jurisdiction's calendar from the rules table).
    pub fn with_holidays<'a>(self, holidays: Holidays<'a>) -> Clock<'a> {
        Clock {
            received: self.received,
            period: self.period,
            extension: self.extension,
            extended: self.extended,
            paused_days: self.paused_days,
            holidays,
        }
    }

    pub fn holidays(&self) -> Holidays<'h> {
        self.holidays
    }

    pub fn received(&self) -> NaiveDate {
        self.received
    }

    pub fn is_extended(&self) -> bool {
        self.extended
    }

    pub fn paused_days(&self) -> u32 {
        self.paused_days
    }

    /// The due date before any extension, pushed by the pauses.
    pub fn original_due(&self) -> Result<NaiveDate, DeadlineError> {
        let due = self.period.after_in(self.received, self.holidays)?;
        push_by_pause_in(due, self.paused_days, self.period.unit, self.holidays)
    }

    /// The due date in force now.
    pub fn due(&self) -> Result<NaiveDate, DeadlineError> {
        let original = self.original_due()?;
        match (self.extended, self.extension) {
            (true, Some(extension)) => extension.after_in(original, self.holidays),
            _ => Ok(original),
        }
    }

    /// The due date the clock would have if extended, without extending it.
    pub fn extended_due(&self) -> Result<Option<NaiveDate>, DeadlineError> {
        match self.extension {
            Some(extension) => extension
                .after_in(self.original_due()?, self.holidays)
                .map(Some),
            None => Ok(None),
        }
    }

    /// Use the one extension, asked for on `requested_on`. Asking on the due
    /// date itself is still in time (the period runs to the end of that day).
    pub fn extend(&mut self, requested_on: NaiveDate) -> Result<NaiveDate, DeadlineError> {
        if self.extension.is_none() {
            return Err(DeadlineError::NoExtensionAllowed);
        }
        if self.extended {
            return Err(DeadlineError::AlreadyExtended);
        }
        let due = self.original_due()?;
        if requested_on > due {
            return Err(DeadlineError::ExtensionAfterDue { requested_on, due });
        }
        self.extended = true;
        self.due()
    }

    /// Stop the clock over `[start, end)` (e.g. Utah: while a suspected fraud
    /// awaits authentication). Only call it where the rule states a pause.
    pub fn pause(&mut self, start: NaiveDate, end: NaiveDate) -> Result<NaiveDate, DeadlineError> {
        let length = pause_length_in(start, end, self.period.unit, self.holidays)?;
        let paused_days = self
            .paused_days
            .checked_add(length)
            .ok_or(DeadlineError::OutOfRange)?;
        let mut next = *self;
        next.paused_days = paused_days;
        // Check the result is representable before committing to it.
        let due = next.due()?;
        *self = next;
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("valid test date")
    }

    #[test]
    fn forty_five_calendar_days_count_from_the_day_after_receipt() {
        assert_eq!(add_calendar_days(d(2026, 3, 1), 45), Ok(d(2026, 4, 15)));
    }

    #[test]
    fn business_days_skip_the_weekend() {
        // Friday + 1 business day = Monday.
        assert_eq!(add_business_days(d(2026, 11, 20), 1), Ok(d(2026, 11, 23)));
    }

    #[test]
    fn pause_over_a_weekend_counts_no_business_days() {
        // Saturday to Monday (exclusive): nothing to count.
        assert_eq!(
            pause_length(d(2026, 11, 21), d(2026, 11, 23), Unit::BusinessDays),
            Ok(0)
        );
        assert_eq!(
            pause_length(d(2026, 11, 21), d(2026, 11, 23), Unit::CalendarDays),
            Ok(2)
        );
    }
}
