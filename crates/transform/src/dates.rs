//! Dates and times: parts, differences, shifts, truncation, and Java-style patterns (the
//! reference's and Spark's) translated to chrono's (DataFusion's). Timestamps carry no time
//! zone: they are read and computed as UTC on every engine.

use arrow::datatypes::DataType;
use capstan_core::visual::DateUnit;
use chrono::{NaiveDate, NaiveDateTime};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, cast, lit};

const MICROS: [(DateUnit, i64); 5] = [
    (DateUnit::Week, 7 * 86_400_000_000),
    (DateUnit::Day, 86_400_000_000),
    (DateUnit::Hour, 3_600_000_000),
    (DateUnit::Minute, 60_000_000),
    (DateUnit::Second, 1_000_000),
];

/// A date part as an integer; `day_of_week` is ISO's (1 = Monday … 7 = Sunday).
pub fn part(name: &str, ts: Expr) -> Expr {
    use datafusion::functions::expr_fn::date_part;
    let p = |part: &str| cast(date_part(lit(part), ts.clone()), DataType::Int64);
    match name {
        "day_of_week" => ((p("dow") + lit(6i64)) % lit(7i64)) + lit(1i64),
        "day_of_year" => p("doy"),
        other => p(other),
    }
}

/// The microseconds in one `unit`, for units of fixed length.
pub fn unit_micros(unit: DateUnit) -> Option<i64> {
    MICROS.iter().find(|(u, _)| *u == unit).map(|(_, m)| *m)
}

/// `a - b` in whole units, truncated toward zero; `None` for units of varying length.
pub fn diff(a: Expr, b: Expr, unit: DateUnit) -> Option<Expr> {
    let m = unit_micros(unit)?;
    let micros = |e: Expr| cast(e, DataType::Int64);
    Some((micros(a) - micros(b)) / lit(m))
}

/// `ts` shifted by `n` units.
pub fn add(ts: Expr, n: i64, unit: DateUnit) -> Expr {
    use arrow::datatypes::IntervalMonthDayNano;
    let n32 = n.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    let interval = match unit {
        DateUnit::Year => IntervalMonthDayNano::new(n32.saturating_mul(12), 0, 0),
        DateUnit::Quarter => IntervalMonthDayNano::new(n32.saturating_mul(3), 0, 0),
        DateUnit::Month => IntervalMonthDayNano::new(n32, 0, 0),
        DateUnit::Week => IntervalMonthDayNano::new(0, n32.saturating_mul(7), 0),
        DateUnit::Day => IntervalMonthDayNano::new(0, n32, 0),
        other => IntervalMonthDayNano::new(
            0,
            0,
            n.saturating_mul(unit_micros(other).unwrap_or(1))
                .saturating_mul(1000),
        ),
    };
    ts + lit(ScalarValue::IntervalMonthDayNano(Some(interval)))
}

pub fn trunc(ts: Expr, unit: DateUnit) -> Expr {
    cast(
        datafusion::functions::expr_fn::date_trunc(lit(unit.as_str()), ts),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
    )
}

/// A Java-style date pattern (`yyyy-MM-dd HH:mm:ss`) as chrono's (`%Y-%m-%d %H:%M:%S`).
pub fn java_to_chrono(pattern: &str) -> Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted text; '' is a quote.
            if chars.get(i + 1) == Some(&'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => return Err(format!("unclosed quote in date pattern {pattern:?}")),
                    Some('\'') if chars.get(j + 1) == Some(&'\'') => {
                        out.push('\'');
                        j += 2;
                    }
                    Some('\'') => break,
                    Some('%') => {
                        out.push_str("%%");
                        j += 1;
                    }
                    Some(ch) => {
                        out.push(*ch);
                        j += 1;
                    }
                }
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            if c == '%' {
                out.push_str("%%");
            } else {
                out.push(c);
            }
            i += 1;
            continue;
        }
        let mut n = 1;
        while chars.get(i + n) == Some(&c) {
            n += 1;
        }
        let spec = match (c, n) {
            ('y', 2) => "%y",
            ('y', _) | ('u', _) => "%Y",
            ('M', 1) => "%-m",
            ('M', 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', 1) => "%-d",
            ('d', _) => "%d",
            ('D', _) => "%j",
            ('H', 1) => "%-H",
            ('H', _) => "%H",
            ('h', 1) => "%-I",
            ('h', _) => "%I",
            ('m', 1) => "%-M",
            ('m', _) => "%M",
            ('s', 1) => "%-S",
            ('s', _) => "%S",
            ('S', 3) => "%3f",
            ('S', 6) => "%6f",
            ('S', 9) => "%9f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('Z', _) => "%z",
            ('X', 3) | ('x', 3) => "%:z",
            ('X', _) | ('x', _) => "%z",
            _ => {
                return Err(format!(
                    "`{}` in date pattern {pattern:?} is not a pattern letter capstan knows",
                    c.to_string().repeat(n)
                ));
            }
        };
        out.push_str(spec);
        i += n;
    }
    Ok(out)
}

/// Whether a chrono pattern reads a time of day (else it reads a date, at midnight).
fn has_time(chrono: &str) -> bool {
    [
        "%H", "%-H", "%I", "%-I", "%M", "%-M", "%S", "%-S", "%p", "%f", "%3f", "%6f", "%9f",
    ]
    .iter()
    .any(|p| chrono.contains(p))
}

/// Microseconds since 1970 of the first format that reads `text`.
pub fn parse(text: &str, formats: &[&str]) -> Option<i64> {
    formats.iter().find_map(|f| {
        let dt = if has_time(f) {
            NaiveDateTime::parse_from_str(text, f).ok()?
        } else {
            NaiveDate::parse_from_str(text, f)
                .ok()?
                .and_hms_opt(0, 0, 0)?
        };
        Some(dt.and_utc().timestamp_micros())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_patterns_translate() {
        for (java, chrono) in [
            ("yyyy-MM-dd", "%Y-%m-%d"),
            ("dd/MM/yyyy HH:mm:ss", "%d/%m/%Y %H:%M:%S"),
            ("yyyy-MM-dd'T'HH:mm:ss.SSS", "%Y-%m-%dT%H:%M:%S.%3f"),
            ("EEE, d MMM yyyy", "%a, %-d %b %Y"),
            ("'at' h a", "at %-I %p"),
            ("100%", "100%%"),
            ("''yy", "'%y"),
        ] {
            assert_eq!(java_to_chrono(java).unwrap(), chrono, "{java}");
        }
        assert!(java_to_chrono("yyyy-QQ").unwrap_err().contains("`QQ`"));
        assert!(java_to_chrono("'open").is_err());
    }

    #[test]
    fn parsing_tries_formats_in_order() {
        let f = ["%Y-%m-%d %H:%M:%S", "%d/%m/%Y"];
        assert_eq!(parse("1970-01-01 00:00:01", &f), Some(1_000_000));
        assert_eq!(parse("02/01/1970", &f), Some(86_400_000_000));
        assert_eq!(parse("1970-13-01", &f), None);
    }
}
