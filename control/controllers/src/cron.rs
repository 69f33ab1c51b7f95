//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month, day
//! of week) with `*`, `?`, lists, ranges, steps and month/day names, or one of `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. A leading
//! `CRON_TZ=<zone>` or `TZ=<zone>` sets the time zone. As in standard cron, when both the day
//! of month and the day of week are restricted, a day matching either runs.

use k8s_openapi::jiff::civil::{Date, DateTime};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{Timestamp, ToSpan};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day of month or day of week was `*`/`?`: both must match (else either).
    any_day_star: bool,
    /// A zone from a `CRON_TZ=`/`TZ=` prefix.
    pub zone: Option<String>,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn number(text: &str, names: &[&str], offset: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(u32::try_from(i).unwrap_or(0) + offset);
    }
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not a number{}",
            if names.is_empty() { "" } else { " or a name" }
        )
    })
}

/// The bits of one field; `star` tells whether it was `*` or `?`.
fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    offset: u32,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step {s:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("step of zero in {part:?}"));
                }
                if step > max {
                    return Err(format!("step {step} in {part:?} is outside {min}-{max}"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a, names, offset)?, number(b, names, offset)?)
        } else {
            let a = number(range, names, offset)?;
            // `a/n` runs from a to the end of the range.
            (a, if part.contains('/') { max } else { a })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{part:?} is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    // As robfig/cron (Kubernetes' parser): `*`, `?` or `*/1` leave the field unrestricted for
    // the day-of-month/day-of-week rule; `*/2` restricts it.
    let star = text
        .split(',')
        .any(|p| matches!(p, "*" | "?" | "*/1" | "?/1"));
    Ok((bits, star))
}

impl Schedule {
    /// Parses a CronJob's `schedule`.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let mut text = text.trim();
        let mut zone = None;
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let (z, rest) = rest
                    .split_once(char::is_whitespace)
                    .ok_or("a time zone prefix needs a schedule after it")?;
                zone = Some(z.to_string());
                text = rest.trim();
            }
        }
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => return Err(format!("unknown descriptor {t:?}")),
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [m, h, dom, mon, dow] = fields[..] else {
            return Err(format!(
                "expected exactly 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ));
        };
        let (minutes, _) = field(m, 0, 59, &[], 0)?;
        let (hours, _) = field(h, 0, 23, &[], 0)?;
        let (days, dom_star) = field(dom, 1, 31, &[], 0)?;
        let (months, _) = field(mon, 1, 12, &MONTHS, 1)?;
        let (mut weekdays, dow_star) = field(dow, 0, 7, &DAYS, 0)?;
        // 7 is Sunday too.
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        if let Some(z) = &zone {
            TimeZone::get(z).map_err(|e| format!("unknown time zone {z:?}: {e}"))?;
        }
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            any_day_star: dom_star || dow_star,
            zone,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time after `after` (strictly) the schedule fires, in `zone` (the schedule's
    /// own prefix wins); `None` if none within five years (e.g. February 30).
    pub fn next_after(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let zone = match &self.zone {
            Some(z) => TimeZone::get(z).ok()?,
            None => zone.clone(),
        };
        let start = after.to_zoned(zone.clone());
        let mut t: DateTime = start
            .datetime()
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?;
        t = t.checked_add(1.minute()).ok()?;
        let limit = t.checked_add(5.years()).ok()?;
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                t = t
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .start_of_day();
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t
                    .date()
                    .tomorrow()
                    .ok()?
                    .to_datetime(k8s_openapi::jiff::civil::Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            let at = t.to_zoned(zone.clone()).ok()?.timestamp();
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(schedule: &str, after: &str) -> String {
        Schedule::parse(schedule)
            .unwrap()
            .next_after(at(after), &TimeZone::UTC)
            .unwrap()
            .to_string()
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        assert_eq!(
            next("*/5 * * * *", "2026-06-01T12:03:10Z"),
            "2026-06-01T12:05:00Z"
        );
        assert_eq!(
            next("*/5 * * * *", "2026-06-01T12:05:00Z"),
            "2026-06-01T12:10:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * *", "2026-06-01T13:00:00Z"),
            "2026-06-01T17:00:00Z"
        );
        assert_eq!(
            next("30 2 * * *", "2026-06-01T03:00:00Z"),
            "2026-06-02T02:30:00Z"
        );
        assert_eq!(
            next("0 0 1 jan,Jul *", "2026-06-01T00:00:00Z"),
            "2026-07-01T00:00:00Z"
        );
        // 2026-06-01 is a Monday; the next Friday is June 5th.
        assert_eq!(
            next("0 8 * * FRI", "2026-06-01T00:00:00Z"),
            "2026-06-05T08:00:00Z"
        );
        assert_eq!(
            next("0 8 * * 7", "2026-06-01T00:00:00Z"),
            "2026-06-07T08:00:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-06-01T12:00:00Z"),
            "2026-06-01T13:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2026-06-01T12:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-06-01T12:30:00Z"),
            "2026-06-01T12:45:00Z"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 15th (a Monday in June 2026) or any Friday.
        assert_eq!(
            next("0 0 15 * 5", "2026-06-01T00:00:00Z"),
            "2026-06-05T00:00:00Z"
        );
        assert_eq!(
            next("0 0 15 * 5", "2026-06-13T00:00:00Z"),
            "2026-06-15T00:00:00Z"
        );
        // Day of week is *: only the 15th.
        assert_eq!(
            next("0 0 15 * *", "2026-06-01T00:00:00Z"),
            "2026-06-15T00:00:00Z"
        );
        // `*/2` restricts: odd days or Mondays (2026-06-02 is a Tuesday, the 3rd is odd).
        assert_eq!(
            next("0 0 */2 * 1", "2026-06-01T00:00:00Z"),
            "2026-06-03T00:00:00Z"
        );
        assert_eq!(
            next("0 0 */2 * 1", "2026-06-05T00:00:00Z"),
            "2026-06-07T00:00:00Z"
        );
        assert_eq!(
            next("0 0 */2 * 1", "2026-06-07T00:00:00Z"),
            "2026-06-08T00:00:00Z"
        );
    }

    #[test]
    fn time_zones_from_the_prefix_or_the_caller() {
        // 09:00 in Berlin (summer time, UTC+2) is 07:00 UTC.
        assert_eq!(
            next("CRON_TZ=Europe/Berlin 0 9 * * *", "2026-06-01T08:00:00Z"),
            "2026-06-02T07:00:00Z"
        );
        let s = Schedule::parse("0 9 * * *").unwrap();
        let ny = TimeZone::get("America/New_York").unwrap();
        assert_eq!(
            s.next_after(at("2026-06-01T00:00:00Z"), &ny)
                .unwrap()
                .to_string(),
            "2026-06-01T13:00:00Z"
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (bad, says) in [
            ("* * * *", "exactly 5 fields"),
            ("61 * * * *", "outside 0-59"),
            ("*/0 * * * *", "step of zero"),
            ("1/4294967295 * * * *", "outside 0-59"),
            ("0 0 * foo *", "not a number or a name"),
            ("@often", "unknown descriptor"),
            ("TZ=Mars/Olympus 0 0 * * *", "unknown time zone"),
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // February 30th never comes.
        let never = Schedule::parse("0 0 30 2 *").unwrap();
        assert!(never
            .next_after(at("2026-01-01T00:00:00Z"), &TimeZone::UTC)
            .is_none());
    }
}
