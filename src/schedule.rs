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
/// How many upcoming runs [`Schedule::interval`] looks at to find the longest gap.
const INTERVAL_SAMPLES: usize = 64;

#[derive(Clone)]
pub struct Schedule {
    expression: String,
    cron: Cron,
    timezone: Option<Tz>,
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
        let schedule = Schedule {
            expression: expression.to_string(),
            cron,
            timezone,
        };
        // A pattern such as "0 0 30 2 *" parses but never matches.
        let reference = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        if schedule.next_after(reference).is_none() {
            return Err(ScheduleError::Expression(
                "it never matches a real date".into(),
            ));
        }
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
        let next = match self.timezone {
            Some(tz) => self
                .cron
                .find_next_occurrence(&after.with_timezone(&tz), false)
                .map(|at| at.with_timezone(&Utc)),
            None => self.cron.find_next_occurrence(&after, false),
        };
        next.ok()
    }

    /// The longest gap between two of the next runs after `now`: how long a healthy source
    /// may go without a run (a weekday schedule has a weekend gap).
    pub fn interval(&self, now: DateTime<Utc>) -> Duration {
        let mut longest = Duration::ZERO;
        let mut previous = match self.next_after(now) {
            Some(first) => first,
            None => return longest,
        };
        for _ in 0..INTERVAL_SAMPLES {
            let Some(next) = self.next_after(previous) else {
                break;
            };
            longest = longest.max((next - previous).to_std().unwrap_or_default());
            previous = next;
        }
        longest
    }

    /// A time of day as the schedule reads it: in its time zone.
    pub fn local_time(&self, at: DateTime<Utc>, format: &str) -> String {
        match self.timezone {
            Some(tz) => at.with_timezone(&tz).format(format).to_string(),
            None => at.format(format).to_string(),
        }
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
        assert_eq!(
            every_two_seconds.interval(utc("2026-05-04T12:10:01Z")),
            Duration::from_secs(2)
        );
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
    fn the_interval_is_the_longest_gap() {
        let weekdays = Schedule::parse("0 9 * * 1-5", None).unwrap();
        assert_eq!(
            weekdays.interval(utc("2026-05-04T12:00:00Z")),
            Duration::from_secs(3 * 24 * 3600)
        );
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
        assert_eq!(
            hourly.interval(utc("2026-03-28T23:00:00Z")),
            Duration::from_secs(3600)
        );
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
