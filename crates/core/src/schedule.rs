//! Build schedules (`[schedule.NAME]` in a project.toml): cron expressions read in an IANA time
//! zone, their slots, and whether a schedule is due.
//!
//! A *slot* is an instant the expression names in its zone. Expressions have 5 fields (`minute
//! hour day-of-month month day-of-week`) or 6 with seconds first, and croner's extensions
//! (`L`, `W`, `#`, names like `MON` or `JAN`, nicknames like `@daily`). When both the day of the
//! month and the day of the week are restricted, a day matching either matches (as in Vixie
//! cron).
//!
//! Daylight saving time, as croner does it (the Open Cron Pattern Specification): a time of
//! day that does not exist that day (02:30 when clocks jump from 02:00 to 03:00) runs at the
//! first instant after the jump, once, for an expression with fixed seconds, minute and hour;
//! an interval expression (`*/15 * * * *`) skips the slots in the gap. A time of day that
//! happens twice (clocks go back) runs once, the first time, for a fixed expression, and on
//! both passes for an interval one.
//!
//! Time zones come from the IANA database bundled into the binary (jiff's), not the host's, so
//! every machine reads a schedule alike.
//!
//! When a schedule is due is [`due`]: see there for missed runs (`catch_up`).

use std::fmt;

use jiff::Timestamp;
use jiff::tz::{TimeZone, TimeZoneDatabase};

/// A time zone (`jiff`'s).
pub type Tz = TimeZone;

/// What a cron expression must look like, for help texts.
pub const CRON_HELP: &str =
    "5 fields: minute hour day-of-month month day-of-week, or 6 with seconds first";

/// How long after its slot a run still counts as on time: the most a poller may lag. With
/// `catch_up = "none"`, a slot missed by more than this is skipped.
pub const GRACE_MS: i64 = 60_000;

/// The fields of a 6-field expression (a 5-field one has no seconds), with their values.
const FIELDS: [(&str, &str); 6] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT, 0 and 7 both Sunday"),
];

/// The nicknames croner knows, for the one-word expressions.
const NICKNAMES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    text: String,
    inner: croner::Cron,
}

impl Cron {
    /// Parses a cron expression of 5 fields (`minute hour day-of-month month day-of-week`) or 6
    /// (seconds first). The error says what is wrong (which field, and its values); what an
    /// expression looks like is [`CRON_HELP`].
    pub fn parse(text: &str) -> Result<Cron, String> {
        let text = text.trim();
        let fields: Vec<&str> = text.split_whitespace().collect();
        let bad = |why: String| Err(format!("`{text}` is not a cron expression: {why}"));
        if fields.is_empty() {
            return bad("it is empty".into());
        }
        if fields.len() == 1 && fields[0].starts_with('@') {
            if !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(fields[0])) {
                return bad(format!(
                    "unknown nickname (the nicknames are {})",
                    NICKNAMES.join(", ")
                ));
            }
        } else if !(5..=6).contains(&fields.len()) {
            return bad(format!("it has {} fields", fields.len()));
        }
        let inner = match parser().parse(text) {
            Ok(c) => c,
            Err(e) => return bad(field_error(&fields).unwrap_or_else(|| reason(&e))),
        };
        let cron = Cron {
            text: text.to_string(),
            inner,
        };
        // An expression no date matches (`0 0 30 2 *`) would wait forever without a word.
        if next_after(&cron, &TimeZone::UTC, 0).is_none() {
            return bad("no date ever matches it".into());
        }
        Ok(cron)
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// 5 or 6 fields (seconds optional, first), no year field, Vixie cron's day matching.
fn parser() -> croner::parser::CronParser {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
}

/// croner's reason, without its prefixes and final period.
fn reason(e: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    let text = match e {
        E::InvalidPattern(m) | E::IllegalCharacters(m) | E::ComponentError(m) => m.clone(),
        other => other.to_string(),
    };
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Which field of a 5- or 6-field expression croner refuses, and why: each field is tried
/// alone, the others replaced by `*`.
fn field_error(fields: &[&str]) -> Option<String> {
    let names = &FIELDS[6 - fields.len()..];
    for (i, field) in fields.iter().enumerate() {
        let probe: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *field } else { "*" })
            .collect();
        if let Err(e) = parser().parse(&probe.join(" ")) {
            let (name, values) = names[i];
            return Some(format!(
                "{name} `{field}`: {}; {name} values are {values}",
                reason(&e)
            ));
        }
    }
    None
}

/// Why a time zone name is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownZone {
    pub name: String,
    /// The nearest valid name, when one is close.
    pub nearest: Option<String>,
}

impl UnknownZone {
    /// The help line: the nearest name, or what a name looks like.
    pub fn help(&self) -> String {
        match &self.nearest {
            Some(n) => format!("did you mean `{n}`?"),
            None => {
                "expected an IANA time zone name like `Europe/Paris`, `America/New_York` or `UTC`"
                    .into()
            }
        }
    }
}

impl fmt::Display for UnknownZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown time zone `{}`", self.name)
    }
}

impl std::error::Error for UnknownZone {}

/// The IANA time zone `name` (any letter case), from the bundled database.
pub fn time_zone(name: &str) -> Result<Tz, UnknownZone> {
    let db = TimeZoneDatabase::bundled();
    if let Ok(tz) = db.get(name) {
        return Ok(tz);
    }
    let names: Vec<String> = db.available().map(|n| n.as_str().to_string()).collect();
    // A city alone (`Paris`), else the nearest spelling (`Europe/Pari`).
    let city = names.iter().find(|n| {
        n.rsplit('/')
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(&name.replace(' ', "_")))
    });
    let nearest = city
        .map(String::as_str)
        .or_else(|| crate::suggest(name, names.iter().map(String::as_str)))
        .map(str::to_string);
    Err(UnknownZone {
        name: name.to_string(),
        nearest,
    })
}

fn zoned(tz: &Tz, second: i64) -> Option<jiff::Zoned> {
    Some(Timestamp::from_second(second).ok()?.to_zoned(tz.clone()))
}

/// The first slot of `cron` in `tz` strictly after `after_ms` (milliseconds since the Unix
/// epoch), or `None` if there is none (before the year 5000).
pub fn next_after(cron: &Cron, tz: &Tz, after_ms: i64) -> Option<i64> {
    // Slots are whole seconds: the first one after `after_ms` is the first one after the
    // second it falls in.
    let start = zoned(tz, after_ms.div_euclid(1000))?;
    let next = cron.inner.find_next_occurrence(&start, false).ok()?;
    Some(next.timestamp().as_millisecond())
}

/// The last slot of `cron` in `tz` at or before `at_ms`, or `None` if there is none.
pub fn latest_at_or_before(cron: &Cron, tz: &Tz, at_ms: i64) -> Option<i64> {
    let start = zoned(tz, at_ms.div_euclid(1000))?;
    let prev = cron.inner.find_previous_occurrence(&start, true).ok()?;
    Some(prev.timestamp().as_millisecond())
}

/// What to do about runs missed while the daemon was down (`catch_up`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// Make up at most one run: however many slots were missed, the latest of them runs once.
    #[default]
    One,
    /// Make up nothing: a slot missed by more than [`GRACE_MS`] is skipped.
    None,
}

impl CatchUp {
    pub const NAMES: [&'static str; 2] = ["one", "none"];

    pub fn parse(s: &str) -> Option<CatchUp> {
        match s {
            "one" => Some(CatchUp::One),
            "none" => Some(CatchUp::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::One => "one",
            CatchUp::None => "none",
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a schedule is due now, from [`due`]. Each answer has `next_ms`, the first slot after
/// now (`None`: none ever again), for when to look next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Start one run now, for the slot at `slot_ms`. Record `slot_ms` (not the time the run
    /// started or ended) as the schedule's last run: it is the `last_ms` of the next call.
    Run { slot_ms: i64, next_ms: Option<i64> },
    /// The slot at `slot_ms` was missed by more than [`GRACE_MS`] and `catch_up = "none"`:
    /// start nothing. Recording `slot_ms` as the last run is optional (it only keeps the next
    /// call from answering `Skip` for it again, so that it is logged once).
    Skip { slot_ms: i64, next_ms: Option<i64> },
    /// No slot since the last run: start nothing.
    Wait { next_ms: Option<i64> },
}

/// Whether a schedule is due at `now_ms`, and for which slot (all times in milliseconds since
/// the Unix epoch).
///
/// - `last_ms`: the slot of its last run (see [`Due::Run`]), `None` if it never ran.
/// - `created_ms`: when the daemon first saw the schedule. A schedule that never ran counts
///   its slots from there: it never makes up runs from before it existed.
///
/// The slots that count are those in `(since, now_ms]`, where `since` is `last_ms`, or
/// `created_ms` for a schedule that never ran. None: [`Due::Wait`]. Otherwise the latest of
/// them, `latest`, is the one that may run (the older ones are never run):
///
/// - `catch_up = "one"`: [`Due::Run`] for `latest`, however late, so after downtime exactly
///   one missed run is made up (and several missed slots still give one run).
/// - `catch_up = "none"`: [`Due::Run`] for `latest` if `now_ms - latest <= GRACE_MS` (the
///   poller's lag, not downtime), else [`Due::Skip`].
///
/// A clock that went back (`now_ms` before `since`) gives [`Due::Wait`]. Whether the schedule
/// is enabled, and whether its previous run is still going, are the caller's to check.
pub fn due(
    cron: &Cron,
    tz: &Tz,
    last_ms: Option<i64>,
    now_ms: i64,
    catch_up: CatchUp,
    created_ms: i64,
) -> Due {
    let since = last_ms.unwrap_or(created_ms);
    let next_ms = next_after(cron, tz, now_ms);
    match latest_at_or_before(cron, tz, now_ms) {
        Some(latest) if latest > since => {
            if catch_up == CatchUp::One || now_ms - latest <= GRACE_MS {
                Due::Run {
                    slot_ms: latest,
                    next_ms,
                }
            } else {
                Due::Skip {
                    slot_ms: latest,
                    next_ms,
                }
            }
        }
        _ => Due::Wait { next_ms },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn at(ms: i64) -> String {
        Timestamp::from_millisecond(ms).unwrap().to_string()
    }

    fn paris() -> Tz {
        time_zone("Europe/Paris").unwrap()
    }

    fn cron(s: &str) -> Cron {
        Cron::parse(s).unwrap()
    }

    /// The next `n` slots after `from`.
    fn slots(c: &Cron, tz: &Tz, from: &str, n: usize) -> Vec<String> {
        let mut t = ms(from);
        (0..n)
            .map(|_| {
                t = next_after(c, tz, t).unwrap();
                at(t)
            })
            .collect()
    }

    #[test]
    fn daily_slot_follows_the_wall_clock_across_dst_in_paris() {
        // Clocks go forward on 2026-03-29 at 02:00 (UTC+1 -> UTC+2) and back on 2026-10-25
        // at 03:00 (UTC+2 -> UTC+1): 09:00 in Paris moves in UTC.
        let c = cron("0 9 * * *");
        assert_eq!(
            slots(&c, &paris(), "2026-03-28T00:00:00Z", 2),
            ["2026-03-28T08:00:00Z", "2026-03-29T07:00:00Z"]
        );
        assert_eq!(
            slots(&c, &paris(), "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T08:00:00Z", "2026-10-26T08:00:00Z"]
        );
    }

    #[test]
    fn a_time_skipped_by_dst_runs_once_just_after_the_jump() {
        // 02:30 does not exist in Paris on 2026-03-29: it runs at 03:00 local (01:00 UTC).
        let c = cron("30 2 * * *");
        assert_eq!(
            slots(&c, &paris(), "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
    }

    #[test]
    fn a_time_repeated_by_dst_runs_once() {
        // 02:30 happens twice in Paris on 2026-10-25 (00:30 and 01:30 UTC): once, the first.
        let c = cron("30 2 * * *");
        assert_eq!(
            slots(&c, &paris(), "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
    }

    #[test]
    fn hourly_slots_keep_real_time_across_dst() {
        // Every hour on the hour, through the repeated hour: 4 real hours, 4 slots.
        let c = cron("0 * * * *");
        assert_eq!(
            slots(&c, &paris(), "2026-10-24T23:30:00Z", 4),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z"
            ]
        );
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let c = cron("*/20 * * * * *");
        assert_eq!(
            slots(&c, &TimeZone::UTC, "2026-01-01T00:00:00Z", 4),
            [
                "2026-01-01T00:00:20Z",
                "2026-01-01T00:00:40Z",
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:01:20Z"
            ]
        );
        let c = cron("15 30 2 * * *");
        assert_eq!(
            slots(&c, &TimeZone::UTC, "2026-01-01T00:00:00Z", 1),
            ["2026-01-01T02:30:15Z"]
        );
        // Five fields: second 0.
        assert_eq!(
            slots(
                &cron("30 2 * * *"),
                &TimeZone::UTC,
                "2026-01-01T00:00:00Z",
                1
            ),
            ["2026-01-01T02:30:00Z"]
        );
    }

    #[test]
    fn next_after_is_strictly_after_even_within_a_second() {
        let c = cron("* * * * * *");
        let t = ms("2026-01-01T00:00:05Z");
        assert_eq!(next_after(&c, &TimeZone::UTC, t), Some(t + 1000));
        assert_eq!(next_after(&c, &TimeZone::UTC, t + 999), Some(t + 1000));
        assert_eq!(next_after(&c, &TimeZone::UTC, t - 1), Some(t));
        assert_eq!(latest_at_or_before(&c, &TimeZone::UTC, t + 999), Some(t));
        assert_eq!(latest_at_or_before(&c, &TimeZone::UTC, t), Some(t));
    }

    #[test]
    fn weekday_and_month_names() {
        let c = cron("0 8 * JAN-MAR MON-FRI");
        // 2026-01-03 is a Saturday.
        assert_eq!(
            slots(&c, &TimeZone::UTC, "2026-01-02T09:00:00Z", 1),
            ["2026-01-05T08:00:00Z"]
        );
    }

    fn parse_err(s: &str) -> String {
        Cron::parse(s).unwrap_err()
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        assert_eq!(
            parse_err("0 2 * *"),
            "`0 2 * *` is not a cron expression: it has 4 fields"
        );
        assert!(parse_err("0 0 2 * * * 2026").contains("it has 7 fields"));
        assert!(parse_err("  ").contains("it is empty"));
        assert_eq!(
            parse_err("61 2 * * *"),
            "`61 2 * * *` is not a cron expression: minute `61`: number out of bounds; minute \
             values are 0-59"
        );
        assert!(parse_err("@dayly").contains("unknown nickname (the nicknames are @yearly"));
        assert!(Cron::parse("@daily").is_ok());
        assert!(parse_err("*/0 * * * *").contains("minute `*/0`: step cannot be zero"));
        let e = parse_err("61 2 * * *");
        assert!(
            e.starts_with("`61 2 * * *` is not a cron expression: minute `61`: "),
            "{e}"
        );
        let e = parse_err("0 0 25 * * *");
        assert!(e.contains("hour `25`"), "{e}");
        let e = parse_err("0 9 * * MOON");
        assert!(e.contains("day-of-week `MOON`"), "{e}");
        let e = parse_err("0 9 * 13 *");
        assert!(e.contains("month `13`"), "{e}");
        assert_eq!(
            parse_err("0 0 30 2 *"),
            "`0 0 30 2 *` is not a cron expression: no date ever matches it"
        );
    }

    #[test]
    fn time_zones_and_their_suggestions() {
        assert_eq!(paris().iana_name(), Some("Europe/Paris"));
        assert!(time_zone("UTC").is_ok());
        let e = time_zone("Europe/Pariss").unwrap_err();
        assert_eq!(e.to_string(), "unknown time zone `Europe/Pariss`");
        assert_eq!(e.help(), "did you mean `Europe/Paris`?");
        assert_eq!(
            time_zone("New York").unwrap_err().nearest.as_deref(),
            Some("America/New_York")
        );
        let e = time_zone("Mars/Olympus_Mons").unwrap_err();
        assert_eq!(e.nearest, None);
        assert!(e.help().contains("IANA"));
    }

    const H: i64 = 3_600_000;

    #[test]
    fn due_never_run_does_not_make_up_slots_from_before_it_was_seen() {
        let c = cron("0 2 * * *");
        let utc = TimeZone::UTC;
        let created = ms("2026-05-10T12:00:00Z");
        // Seen at noon: the 02:00 slot of that day is before it.
        let now = created + 60_000;
        assert_eq!(
            due(&c, &utc, None, now, CatchUp::One, created),
            Due::Wait {
                next_ms: Some(ms("2026-05-11T02:00:00Z"))
            }
        );
        // The next night, it runs.
        let now = ms("2026-05-11T02:00:10Z");
        assert_eq!(
            due(&c, &utc, None, now, CatchUp::One, created),
            Due::Run {
                slot_ms: ms("2026-05-11T02:00:00Z"),
                next_ms: Some(ms("2026-05-12T02:00:00Z"))
            }
        );
    }

    #[test]
    fn due_after_several_missed_slots_runs_once_for_the_latest() {
        let c = cron("0 * * * *");
        let utc = TimeZone::UTC;
        let last = ms("2026-05-10T08:00:00Z");
        // Down from 08:30 to 12:20: 09:00, 10:00, 11:00 and 12:00 missed; one run, for 12:00.
        let now = ms("2026-05-10T12:20:00Z");
        let d = due(&c, &utc, Some(last), now, CatchUp::One, 0);
        assert_eq!(
            d,
            Due::Run {
                slot_ms: ms("2026-05-10T12:00:00Z"),
                next_ms: Some(ms("2026-05-10T13:00:00Z"))
            }
        );
        // Recorded: nothing more until 13:00.
        let Due::Run { slot_ms, .. } = d else {
            unreachable!()
        };
        assert_eq!(
            due(&c, &utc, Some(slot_ms), now + 1000, CatchUp::One, 0),
            Due::Wait {
                next_ms: Some(ms("2026-05-10T13:00:00Z"))
            }
        );
    }

    #[test]
    fn due_with_catch_up_none_skips_missed_slots_but_runs_on_time_ones() {
        let c = cron("0 * * * *");
        let utc = TimeZone::UTC;
        let last = ms("2026-05-10T08:00:00Z");
        let now = ms("2026-05-10T12:20:00Z");
        assert_eq!(
            due(&c, &utc, Some(last), now, CatchUp::None, 0),
            Due::Skip {
                slot_ms: ms("2026-05-10T12:00:00Z"),
                next_ms: Some(ms("2026-05-10T13:00:00Z"))
            }
        );
        // Within the grace: on time.
        let noon = ms("2026-05-10T12:00:00Z");
        for lag in [0, 1, GRACE_MS] {
            assert_eq!(
                due(&c, &utc, Some(last), noon + lag, CatchUp::None, 0),
                Due::Run {
                    slot_ms: noon,
                    next_ms: Some(noon + H)
                }
            );
        }
        assert!(matches!(
            due(&c, &utc, Some(last), noon + GRACE_MS + 1, CatchUp::None, 0),
            Due::Skip { .. }
        ));
    }

    #[test]
    fn due_not_yet() {
        let c = cron("30 2 * * *");
        let tz = paris();
        // Ran for the 02:30 slot of 2026-05-10 (00:30 UTC); at 23:00 UTC it waits.
        let last = ms("2026-05-10T00:30:00Z");
        let now = ms("2026-05-10T23:00:00Z");
        for catch_up in [CatchUp::One, CatchUp::None] {
            assert_eq!(
                due(&c, &tz, Some(last), now, catch_up, 0),
                Due::Wait {
                    next_ms: Some(ms("2026-05-11T00:30:00Z"))
                }
            );
        }
        // A clock that went back waits too.
        assert!(matches!(
            due(&c, &tz, Some(last), last - H, CatchUp::One, 0),
            Due::Wait { .. }
        ));
    }

    #[test]
    fn catch_up_names() {
        for name in CatchUp::NAMES {
            assert_eq!(CatchUp::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(CatchUp::default(), CatchUp::One);
        assert_eq!(CatchUp::parse("all"), None);
    }
}
