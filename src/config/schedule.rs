//! When a source syncs: a cron expression (5 fields, or 6 with seconds first), evaluated in
//! UTC or in an IANA time zone. croner parses and evaluates it, across daylight-saving
//! changes too; `aksync check`, the daemon's scheduler and its status page all ask this type,
//! so they always agree on the next run.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Every 30 minutes, on the hour and the half hour.
pub const DEFAULT_SCHEDULE: &str = "*/30 * * * *";
/// Where the cycle [`Schedule::interval`] measures begins, in the schedule's time zone: a
/// fixed day, so that the interval does not depend on when it is asked. 2024 is a leap year:
/// its February 29 is in the cycle.
const CYCLE_START: (i32, u32, u32) = (2024, 1, 1);
/// The cycle is a year: every weekday many times over, every day of every month, and both
/// daylight-saving changes.
const CYCLE_DAYS: u64 = 366;
const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct Schedule {
    expression: String,
    cron: Cron,
    timezone: Option<Tz>,
    /// The longest gap between two runs, measured once when the schedule is parsed.
    interval: Duration,
}

impl Schedule {
    /// Parses a cron expression and an optional IANA time zone name. The error is the reason
    /// alone; the caller names the key.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let expression = expression.trim();
        let fields = expression.split_whitespace().count();
        if !expression.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(ScheduleError::Expression(format!(
                "it has {fields} fields; use 5 (minute hour day-of-month month day-of-week) or 6 with seconds first"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|error| ScheduleError::Expression(error.to_string()))?;
        let timezone = timezone
            .map(|name| Tz::from_str(name.trim()).map_err(|_| ScheduleError::Timezone))
            .transpose()?;
        let mut schedule = Schedule {
            expression: expression.to_string(),
            cron,
            timezone,
            interval: Duration::ZERO,
        };
        // A pattern such as "0 0 30 2 *" parses but never matches.
        let reference = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        if schedule.next_after(reference).is_none() {
            return Err(ScheduleError::Expression(
                "it never matches a real date".into(),
            ));
        }
        schedule.interval = schedule.longest_gap();
        Ok(schedule)
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The IANA name of the time zone the expression is evaluated in.
    pub fn timezone_name(&self) -> &str {
        self.timezone.as_ref().map_or("UTC", |tz| tz.name())
    }

    /// The first run strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.search(after, |cron, at| cron.find_next_occurrence(at, false))
    }

    /// The time zone the expression is read in; UTC without one.
    fn zone(&self) -> Tz {
        self.timezone.unwrap_or(Tz::UTC)
    }

    /// One croner search from `at`, in the schedule's time zone.
    fn search(
        &self,
        at: DateTime<Utc>,
        find: impl Fn(&Cron, &DateTime<Tz>) -> Result<DateTime<Tz>, croner::errors::CronError>,
    ) -> Option<DateTime<Utc>> {
        find(&self.cron, &at.with_timezone(&self.zone()))
            .ok()
            .map(|found| found.with_timezone(&Utc))
    }

    /// The longest gap between two runs over the schedule's whole cycle: how long a healthy
    /// source may go without a run. `*/5 9-17 * * 1-5` runs every 5 minutes, but its interval
    /// is the weekend, from Friday 17:55 to Monday 09:00.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The first run at `at` or after it.
    fn at_or_after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.search(at, |cron, at| cron.find_next_occurrence(at, true))
    }

    /// The last run strictly before `before`.
    fn last_before(&self, before: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.search(before, |cron, at| cron.find_previous_occurrence(at, false))
    }

    /// The start of the day `date` in the schedule's time zone; a day that begins in a
    /// daylight-saving gap begins when its clock does.
    fn day_start(&self, date: chrono::NaiveDate) -> DateTime<Utc> {
        let midnight = date.and_time(chrono::NaiveTime::MIN);
        (0..4)
            .find_map(|hour| {
                self.zone()
                    .from_local_datetime(&(midnight + chrono::Duration::hours(hour)))
                    .earliest()
            })
            .map_or_else(|| midnight.and_utc(), |at| at.with_timezone(&Utc))
    }

    /// Within a day the runs are the same every day (cron's seconds, minutes and hours do not
    /// depend on the date), so the longest gap inside one is counted from those fields; the
    /// gaps between days are measured with croner day by day over the cycle, from the last
    /// run of a day to the first of the next day that has runs (which may be years later, for
    /// February 29). A few hundred croner calls, however often the schedule runs.
    fn longest_gap(&self) -> Duration {
        let (year, month, day) = CYCLE_START;
        let start =
            self.day_start(chrono::NaiveDate::from_ymd_opt(year, month, day).expect("a date"));
        let end = start + chrono::Duration::days(CYCLE_DAYS as i64);
        let mut longest = self.longest_gap_within_a_day();
        let Some(mut first_of_day) = self.at_or_after(start) else {
            return longest;
        };
        loop {
            let date = first_of_day.with_timezone(&self.zone()).date_naive();
            let next_day = self.day_start(date + chrono::Days::new(1));
            let Some(first_of_next) = self.at_or_after(next_day) else {
                break;
            };
            let Some(last_of_day) = self.last_before(first_of_next) else {
                break;
            };
            longest = longest.max((first_of_next - last_of_day).to_std().unwrap_or_default());
            if first_of_next >= end {
                break;
            }
            first_of_day = first_of_next;
        }
        longest
    }

    /// The longest gap between two runs of one day, from the time fields alone.
    fn longest_gap_within_a_day(&self) -> Duration {
        // croner's bit of a value that is set (its `component` module is private).
        const SET: u8 = 1;
        let pattern = &self.cron.pattern;
        let (hours, minutes, seconds) = (
            pattern.hours.get_set_values(SET),
            pattern.minutes.get_set_values(SET),
            pattern.seconds.get_set_values(SET),
        );
        let mut longest = 0;
        let mut previous = None;
        for hour in &hours {
            for minute in &minutes {
                for second in &seconds {
                    let at = u64::from(*hour) * 3600 + u64::from(*minute) * 60 + u64::from(*second);
                    if let Some(previous) = previous {
                        longest = longest.max(at - previous);
                    }
                    previous = Some(at);
                }
            }
        }
        Duration::from_secs(longest).min(DAY)
    }

    /// A time of day as the schedule reads it: in its time zone.
    pub fn local_time(&self, at: DateTime<Utc>, format: &str) -> String {
        at.with_timezone(&self.zone()).format(format).to_string()
    }
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule::parse(DEFAULT_SCHEDULE, None).expect("the default schedule parses")
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.expression == other.expression && self.timezone == other.timezone
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Schedule({:?} {})",
            self.expression,
            self.timezone_name()
        )
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.timezone_name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("not a cron expression: {0}")]
    Expression(String),
    #[error(
        "not an IANA time zone name (e.g. \"Europe/Berlin\", \"America/New_York\" or \"UTC\")"
    )]
    Timezone,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_fields() {
        let every_half_hour = Schedule::parse("*/30 * * * *", None).unwrap();
        assert_eq!(
            every_half_hour.next_after(utc("2026-05-04T12:10:00Z")),
            Some(utc("2026-05-04T12:30:00Z"))
        );
        assert_eq!(
            every_half_hour.next_after(utc("2026-05-04T12:30:00Z")),
            Some(utc("2026-05-04T13:00:00Z"))
        );
        let every_two_seconds = Schedule::parse("*/2 * * * * *", None).unwrap();
        assert_eq!(
            every_two_seconds.next_after(utc("2026-05-04T12:10:01Z")),
            Some(utc("2026-05-04T12:10:02Z"))
        );
        assert_eq!(every_two_seconds.interval(), Duration::from_secs(2));
        assert_eq!(Schedule::default().expression(), DEFAULT_SCHEDULE);
    }

    #[test]
    fn day_of_month_or_day_of_week_as_in_cron() {
        // Vixie cron: when both are restricted, either one matching is enough.
        let schedule = Schedule::parse("0 6 1 * MON", None).unwrap();
        // 2026-05-01 is a Friday, 2026-05-04 a Monday.
        assert_eq!(
            schedule.next_after(utc("2026-04-30T12:00:00Z")),
            Some(utc("2026-05-01T06:00:00Z"))
        );
        assert_eq!(
            schedule.next_after(utc("2026-05-01T12:00:00Z")),
            Some(utc("2026-05-04T06:00:00Z"))
        );
    }

    #[test]
    fn the_interval_is_the_longest_gap_of_the_whole_cycle() {
        let hours = |hours: u64| Duration::from_secs(hours * 3600);
        let minutes = |minutes: u64| Duration::from_secs(minutes * 60);
        for (expression, timezone, interval) in [
            ("0 9 * * 1-5", None, hours(72)),
            // Business hours: every 5 minutes, but nothing from Friday 17:55 to Monday 09:00.
            ("*/5 9-17 * * 1-5", None, hours(63) + minutes(5)),
            (
                "*/5 9-17 * * 1-5",
                Some("Europe/Berlin"),
                hours(64) + minutes(5),
            ),
            ("*/30 * * * *", None, minutes(30)),
            ("0 */6 * * *", None, hours(6)),
            ("@hourly", Some("Europe/Berlin"), hours(1)),
            ("@daily", None, hours(24)),
            // The autumn change makes one day 25 hours long.
            ("0 9 * * *", Some("Europe/Berlin"), hours(25)),
            ("@weekly", None, hours(7 * 24)),
            // 31 days; 61 from March 31 to May 31.
            ("0 0 1 * *", None, hours(31 * 24)),
            ("0 0 31 * *", None, hours(61 * 24)),
            ("@yearly", None, hours(366 * 24)),
            ("0 0 29 2 *", None, hours((365 * 3 + 366) * 24)),
            ("*/1 * * * * *", None, Duration::from_secs(1)),
        ] {
            let schedule = Schedule::parse(expression, timezone).unwrap();
            assert_eq!(schedule.interval(), interval, "{expression} {timezone:?}");
        }
    }

    #[test]
    fn a_daylight_saving_change_keeps_the_local_time() {
        // Berlin switches from CET (+1) to CEST (+2) at 2026-03-29 02:00 local time, and back
        // at 2026-10-25 03:00.
        let nine_in_berlin = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).unwrap();
        let half_past_two = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            nine_in_berlin.next_after(utc("2026-03-28T09:00:00Z")),
            Some(utc("2026-03-29T07:00:00Z"))
        );
        assert_eq!(
            nine_in_berlin.next_after(utc("2026-03-27T12:00:00Z")),
            Some(utc("2026-03-28T08:00:00Z"))
        );
        assert_eq!(
            nine_in_berlin.next_after(utc("2026-10-24T12:00:00Z")),
            Some(utc("2026-10-25T08:00:00Z"))
        );
        // The skipped hour: 02:30 does not exist on 2026-03-29, so that day's run happens
        // when the clock jumps, at 03:00 CEST (as cronie does); it is not lost.
        assert_eq!(
            half_past_two.next_after(utc("2026-03-28T02:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        let hourly = Schedule::parse("0 * * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            hourly.next_after(utc("2026-03-29T00:30:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert_eq!(hourly.interval(), Duration::from_secs(3600));
        // The repeated hour runs a fixed-time job once.
        let half_past_two_utc: Vec<_> = std::iter::successors(
            half_past_two.next_after(utc("2026-10-24T12:00:00Z")),
            |at| half_past_two.next_after(*at),
        )
        .take(2)
        .collect();
        assert_eq!(
            half_past_two_utc,
            vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
        assert_eq!(nine_in_berlin.timezone_name(), "Europe/Berlin");
        assert_eq!(
            nine_in_berlin.local_time(utc("2026-03-29T07:00:00Z"), "%H:%M"),
            "09:00"
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let error = Schedule::parse("*/30 * * *", None).unwrap_err();
        assert!(error.to_string().contains("4 fields"), "{error}");
        let error = Schedule::parse("0 0 0 * * * 2030", None).unwrap_err();
        assert!(error.to_string().contains("7 fields"), "{error}");
        let error = Schedule::parse("61 * * * *", None).unwrap_err();
        assert!(
            error.to_string().starts_with("not a cron expression"),
            "{error}"
        );
        let error = Schedule::parse("0 0 30 2 *", None).unwrap_err();
        assert!(error.to_string().contains("never matches"), "{error}");
        let error = Schedule::parse("0 9 * * *", Some("Europe/Berln")).unwrap_err();
        assert_eq!(error, ScheduleError::Timezone);
        assert!(Schedule::parse("@hourly", None).is_ok());
    }
}
