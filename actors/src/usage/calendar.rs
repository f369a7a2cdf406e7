//! The quotas' windows: calendar days and months in UTC, as Unix
//! milliseconds.

use time::{Date, Month, OffsetDateTime};

const DAY_MS: i64 = 86_400_000;

fn date_of(at_ms: i64) -> Date {
    OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
        .map_or(OffsetDateTime::UNIX_EPOCH.date(), |time| time.date())
}

fn millis_of(date: Date) -> i64 {
    date.midnight().assume_utc().unix_timestamp() * 1000
}

/// The start of the UTC day holding `at_ms`.
pub fn day_start(at_ms: i64) -> i64 {
    at_ms.div_euclid(DAY_MS) * DAY_MS
}

pub fn next_day_start(at_ms: i64) -> i64 {
    day_start(at_ms) + DAY_MS
}

/// The start of the UTC month holding `at_ms`.
pub fn month_start(at_ms: i64) -> i64 {
    let date = date_of(at_ms);
    Date::from_calendar_date(date.year(), date.month(), 1).map_or(day_start(at_ms), millis_of)
}

pub fn next_month_start(at_ms: i64) -> i64 {
    let date = date_of(at_ms);
    let (year, month) = match date.month() {
        Month::December => (date.year() + 1, Month::January),
        month => (date.year(), month.next()),
    };
    Date::from_calendar_date(year, month, 1).map_or(next_day_start(at_ms), millis_of)
}

/// A Unix day as `YYYY-MM-DD`.
pub fn day_label(unix_day: i64) -> String {
    let date = date_of(unix_day * DAY_MS);
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

/// `YYYY-MM-DD` as the Unix milliseconds of its midnight, UTC.
pub fn parse_day(text: &str) -> Option<i64> {
    let mut parts = text.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    Some(millis_of(date))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_utc_days_and_months() {
        // 2026-12-31T23:59:59.999Z
        let at = 1_798_761_599_999;
        assert_eq!(day_start(at), 1_798_675_200_000);
        assert_eq!(next_day_start(at), 1_798_761_600_000);
        assert_eq!(month_start(at), parse_day("2026-12-01").unwrap());
        assert_eq!(next_month_start(at), parse_day("2027-01-01").unwrap());
        assert_eq!(next_month_start(parse_day("2028-02-29").unwrap()), parse_day("2028-03-01").unwrap());
        assert_eq!(day_label(day_start(at) / DAY_MS), "2026-12-31");
        assert_eq!(parse_day("2026-02-30"), None);
        assert_eq!(parse_day("2026-12-01-x"), None);
    }
}
