//! The functions capstan adds to DataFusion, where its own ones differ from the reference
//! semantics (and from Spark's): rounding on the shortest decimal form, regular expressions
//! that give null on no match, parsing that gives null rather than an error, and the
//! `on_error = "fail"` failure.
//!
//! Every parameter is an argument (a literal), never captured state: DataFusion compares
//! function calls by name and arguments, so two calls that differ must differ there.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int64Array,
    Int64Builder, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{ColumnarValue, Expr, ScalarUDF, Volatility, create_udf, lit};

/// The arguments as arrays of one length, and whether they were all scalars.
/// (A batch of no rows never reaches the functions: see [`udf`].)
fn arrays(args: &[ColumnarValue]) -> Result<(Vec<ArrayRef>, bool)> {
    let n = args.iter().find_map(|a| match a {
        ColumnarValue::Array(a) => Some(a.len()),
        ColumnarValue::Scalar(_) => None,
    });
    let scalar = n.is_none();
    let n = n.unwrap_or(1);
    let out = args
        .iter()
        .map(|a| a.to_array_of_size(n))
        .collect::<Result<Vec<_>>>()?;
    Ok((out, scalar))
}

fn done(array: ArrayRef, scalar: bool) -> Result<ColumnarValue> {
    if scalar {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &array, 0,
        )?))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}

fn strings(a: &ArrayRef) -> Result<&StringArray> {
    a.as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| DataFusionError::Internal(format!("expected text, got {}", a.data_type())))
}

fn floats(a: &ArrayRef) -> Result<&Float64Array> {
    a.as_any().downcast_ref::<Float64Array>().ok_or_else(|| {
        DataFusionError::Internal(format!("expected float64, got {}", a.data_type()))
    })
}

fn ints(a: &ArrayRef) -> Result<&Int64Array> {
    a.as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| DataFusionError::Internal(format!("expected int64, got {}", a.data_type())))
}

fn bools(a: &ArrayRef) -> Result<&BooleanArray> {
    a.as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| DataFusionError::Internal(format!("expected bool, got {}", a.data_type())))
}

fn udf(
    name: &str,
    inputs: Vec<DataType>,
    output: DataType,
    f: impl Fn(&[ColumnarValue]) -> Result<ColumnarValue> + Send + Sync + 'static,
) -> Arc<ScalarUDF> {
    let empty_type = output.clone();
    // The functions read their literal parameters at row 0: a batch of no rows gets its
    // (empty) answer here.
    let guarded = move |args: &[ColumnarValue]| -> Result<ColumnarValue> {
        let no_rows = args
            .iter()
            .any(|a| matches!(a, ColumnarValue::Array(a) if a.is_empty()));
        if no_rows {
            return Ok(ColumnarValue::Array(arrow::array::new_empty_array(
                &empty_type,
            )));
        }
        f(args)
    };
    Arc::new(create_udf(
        name,
        inputs,
        output,
        Volatility::Immutable,
        Arc::new(guarded),
    ))
}

/// The first string argument as a scalar (a pattern, a format).
fn scalar_str(a: &ArrayRef, i: usize) -> Option<String> {
    let s = a.as_any().downcast_ref::<StringArray>()?;
    (!s.is_null(i)).then(|| s.value(i).to_string())
}

/// A regular expression, cached per pattern: patterns are literals, so a batch sees one.
fn regex_for(pattern: &str, case_insensitive: bool) -> Result<regex::Regex> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .build()
        .map_err(|e| DataFusionError::Execution(format!("bad regular expression {pattern:?}: {e}")))
}

/// Rounds half away from zero on the shortest decimal that reads back as `x` (2.675 → 2.68,
/// where `(x * 100).round() / 100` gives 2.67): what Spark's `round` does on doubles.
pub fn round_half_up(x: f64, digits: i64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let digits = digits.clamp(-300, 300);
    // The shortest representation, as scientific notation: d.ddddde±x.
    let s = format!("{:e}", x.abs());
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let mut ds: Vec<u8> = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    // ds[0] is the digit of 10^exp; keep the digits down to 10^-digits.
    let keep = exp + 1 + digits;
    if keep < 0 {
        return 0.0_f64.copysign(x);
    }
    let keep = keep as usize;
    if keep >= ds.len() {
        return x;
    }
    let round_up = ds[keep] >= 5;
    ds.truncate(keep);
    let mut value: f64 = 0.0;
    let mut digits_str = String::with_capacity(ds.len() + 1);
    for d in &ds {
        digits_str.push((b'0' + d) as char);
    }
    if digits_str.is_empty() {
        digits_str.push('0');
    }
    let mut n: u128 = digits_str.parse().unwrap_or(0);
    if round_up {
        n += 1;
    }
    // n × 10^(exp + 1 - keep), through the decimal parser for an exact reading.
    let scale = exp + 1 - keep as i64;
    if let Ok(v) = format!("{n}e{scale}").parse::<f64>() {
        value = v;
    }
    value.copysign(x)
}

static ROUND: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_round",
        vec![DataType::Float64, DataType::Int64],
        DataType::Float64,
        |args| {
            let (a, scalar) = arrays(args)?;
            let (x, d) = (floats(&a[0])?, ints(&a[1])?);
            let out: Float64Array = (0..x.len())
                .map(|i| {
                    (!x.is_null(i) && !d.is_null(i)).then(|| round_half_up(x.value(i), d.value(i)))
                })
                .collect();
            done(Arc::new(out), scalar)
        },
    )
});

pub fn round(x: Expr, digits: i64) -> Expr {
    ROUND.call(vec![x, lit(digits)])
}

static FAIL: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_fail",
        vec![DataType::Utf8],
        DataType::Null,
        |args| {
            let (a, _) = arrays(args)?;
            // Only evaluated for the rows that fail (it is a CASE branch): any row is a failure.
            if a[0].is_empty() {
                return Ok(ColumnarValue::Scalar(ScalarValue::Null));
            }
            let why = scalar_str(&a[0], 0).unwrap_or_default();
            exec_err!("{why}")
        },
    )
});

/// An expression that fails the run with `why` when a row reaches it.
pub fn fail(why: String) -> Expr {
    FAIL.call(vec![lit(why)])
}

static REGEX_MATCHES: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_regex_matches",
        vec![DataType::Utf8, DataType::Utf8, DataType::Boolean],
        DataType::Boolean,
        |args| {
            let (a, scalar) = arrays(args)?;
            let s = strings(&a[0])?;
            let Some(pattern) = scalar_str(&a[1], 0) else {
                return done(Arc::new(BooleanArray::new_null(s.len())), scalar);
            };
            let re = regex_for(&pattern, bools(&a[2])?.value(0))?;
            let out: BooleanArray = s.iter().map(|v| v.map(|v| re.is_match(v))).collect();
            done(Arc::new(out), scalar)
        },
    )
});

pub fn regex_matches(s: Expr, pattern: &str, case_insensitive: bool) -> Expr {
    REGEX_MATCHES.call(vec![s, lit(pattern), lit(case_insensitive)])
}

static REGEX_EXTRACT: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_regex_extract",
        vec![
            DataType::Utf8,
            DataType::Utf8,
            DataType::Boolean,
            DataType::Int64,
        ],
        DataType::Utf8,
        |args| {
            let (a, scalar) = arrays(args)?;
            let s = strings(&a[0])?;
            let Some(pattern) = scalar_str(&a[1], 0) else {
                return done(Arc::new(StringArray::new_null(s.len())), scalar);
            };
            let re = regex_for(&pattern, bools(&a[2])?.value(0))?;
            let group = ints(&a[3])?.value(0).max(0) as usize;
            let mut out = StringBuilder::with_capacity(s.len(), 0);
            for v in s.iter() {
                match v.and_then(|v| re.captures(v)).and_then(|c| c.get(group)) {
                    Some(m) => out.append_value(m.as_str()),
                    None => out.append_null(),
                }
            }
            done(Arc::new(out.finish()), scalar)
        },
    )
});

/// The `group`th group of the first match; no match (or the group took no part): null.
pub fn regex_extract(s: Expr, pattern: &str, case_insensitive: bool, group: i64) -> Expr {
    REGEX_EXTRACT.call(vec![s, lit(pattern), lit(case_insensitive), lit(group)])
}

static REGEX_REPLACE: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_regex_replace",
        vec![
            DataType::Utf8,
            DataType::Utf8,
            DataType::Boolean,
            DataType::Utf8,
        ],
        DataType::Utf8,
        |args| {
            let (a, scalar) = arrays(args)?;
            let s = strings(&a[0])?;
            let Some(pattern) = scalar_str(&a[1], 0) else {
                return done(Arc::new(StringArray::new_null(s.len())), scalar);
            };
            let re = regex_for(&pattern, bools(&a[2])?.value(0))?;
            let with = scalar_str(&a[3], 0).unwrap_or_default();
            let out: StringArray = s
                .iter()
                .map(|v| v.map(|v| re.replace_all(v, regex::NoExpand(&with)).into_owned()))
                .collect();
            done(Arc::new(out), scalar)
        },
    )
});

/// Every match replaced by `with`, taken literally.
pub fn regex_replace(s: Expr, pattern: &str, case_insensitive: bool, with: Expr) -> Expr {
    REGEX_REPLACE.call(vec![s, lit(pattern), lit(case_insensitive), with])
}

static SPLIT_PART: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_split_part",
        vec![DataType::Utf8, DataType::Utf8, DataType::Int64],
        DataType::Utf8,
        |args| {
            let (a, scalar) = arrays(args)?;
            let s = strings(&a[0])?;
            let sep = scalar_str(&a[1], 0).unwrap_or_default();
            let part = ints(&a[2])?.value(0).max(1) as usize;
            let out: StringArray = s
                .iter()
                .map(|v| {
                    v.and_then(|v| {
                        if sep.is_empty() {
                            (part == 1).then(|| v.to_string())
                        } else {
                            v.split(sep.as_str()).nth(part - 1).map(str::to_string)
                        }
                    })
                })
                .collect();
            done(Arc::new(out), scalar)
        },
    )
});

/// The `part`th piece (from 1) of `s` split on `sep`; fewer pieces: null (SQL's split_part
/// gives "", Spark's too, and neither is what an empty cell should be).
pub fn split_part(s: Expr, sep: &str, part: i64) -> Expr {
    SPLIT_PART.call(vec![s, lit(sep), lit(part)])
}

static PARSE_FLOAT: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_parse_float",
        vec![DataType::Utf8],
        DataType::Float64,
        |args| {
            let (a, scalar) = arrays(args)?;
            let s = strings(&a[0])?;
            let mut out = Float64Builder::with_capacity(s.len());
            for v in s.iter() {
                out.append_option(v.and_then(|v| parse_number(v.trim())));
            }
            done(Arc::new(out.finish()), scalar)
        },
    )
});

/// A decimal number as people write it: digits, one point, an exponent; not `inf`, `nan` or
/// hexadecimal, which Rust's parser would take and Spark's would not.
fn parse_number(s: &str) -> Option<f64> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && s.bytes().any(|b| b.is_ascii_digit());
    if ok { s.parse().ok() } else { None }
}

pub fn parse_float(s: Expr) -> Expr {
    PARSE_FLOAT.call(vec![s])
}

static PARSE_INT: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_parse_int",
        vec![DataType::Utf8],
        DataType::Int64,
        |args| {
            let (a, scalar) = arrays(args)?;
            let s = strings(&a[0])?;
            let mut out = Int64Builder::with_capacity(s.len());
            for v in s.iter() {
                out.append_option(v.and_then(|v| v.trim().parse::<i64>().ok()));
            }
            done(Arc::new(out.finish()), scalar)
        },
    )
});

pub fn parse_int(s: Expr) -> Expr {
    PARSE_INT.call(vec![s])
}

static FLOAT_TO_INT: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_float_to_int",
        vec![DataType::Float64],
        DataType::Int64,
        |args| {
            let (a, scalar) = arrays(args)?;
            let x = floats(&a[0])?;
            let mut out = Int64Builder::with_capacity(x.len());
            for v in x.iter() {
                // Within i64 (2^63 is not): truncated toward zero; NaN, infinities, the rest: null.
                let fits = |v: &f64| v.is_finite() && *v >= -(2f64.powi(63)) && *v < 2f64.powi(63);
                out.append_option(v.filter(fits).map(|v| v.trunc() as i64));
            }
            done(Arc::new(out.finish()), scalar)
        },
    )
});

/// A float truncated toward zero to an integer; null where it has none (NaN, infinities,
/// beyond 64 bits), where Arrow's cast would fail the run.
pub fn float_to_int(x: Expr) -> Expr {
    FLOAT_TO_INT.call(vec![x])
}

static FLOAT_TO_STRING: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_float_to_string",
        vec![DataType::Float64],
        DataType::Utf8,
        |args| {
            let (a, scalar) = arrays(args)?;
            let x = floats(&a[0])?;
            let out: StringArray = x.iter().map(|v| v.map(float_text)).collect();
            done(Arc::new(out), scalar)
        },
    )
});

/// A float as text the way Spark casts it for |x| in [1e-3, 1e7): `1.0`, `2.5`; outside that
/// range Spark writes `1.0E7`, and so does this.
pub fn float_text(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let a = x.abs();
    if a == 0.0 || (1e-3..1e7).contains(&a) {
        let s = format!("{x}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let s = format!("{x:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = if m.contains('.') {
            m.to_string()
        } else {
            format!("{m}.0")
        };
        format!("{m}E{e}")
    }
}

pub fn float_to_string(x: Expr) -> Expr {
    FLOAT_TO_STRING.call(vec![x])
}

static PARSE_TIMESTAMP: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_parse_timestamp",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Timestamp(TimeUnit::Microsecond, None),
        |args| {
            let (a, scalar) = arrays(args)?;
            let s = strings(&a[0])?;
            // Formats, separated by a newline (no chrono format holds one).
            let formats = scalar_str(&a[1], 0).unwrap_or_default();
            let formats: Vec<&str> = formats.split('\n').collect();
            let mut out = TimestampMicrosecondBuilder::with_capacity(s.len());
            for v in s.iter() {
                out.append_option(v.and_then(|v| crate::dates::parse(v.trim(), &formats)));
            }
            done(Arc::new(out.finish()), scalar)
        },
    )
});

/// The first of `formats` (chrono's) that reads the text; none: null.
pub fn parse_timestamp(s: Expr, formats: Vec<String>) -> Expr {
    PARSE_TIMESTAMP.call(vec![s, lit(formats.join("\n"))])
}

static HAS_TEXT: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    udf(
        "capstan_is_blank",
        vec![DataType::Utf8],
        DataType::Boolean,
        |args| {
            let (a, scalar) = arrays(args)?;
            let s = strings(&a[0])?;
            let mut out = BooleanBuilder::with_capacity(s.len());
            for v in s.iter() {
                out.append_value(
                    v.is_none_or(|v| v.trim_matches([' ', '\t', '\n', '\r']).is_empty()),
                );
            }
            done(Arc::new(out.finish()), scalar)
        },
    )
});

/// Null, or only spaces, tabs and line breaks (what Spark's regex `^[ \t\n\r]*$` sees).
pub fn is_blank(s: Expr) -> Expr {
    HAS_TEXT.call(vec![s])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_away_from_zero_on_the_shortest_decimal() {
        for (x, d, want) in [
            (2.675, 2, 2.68),
            (2.5, 0, 3.0),
            (-2.5, 0, -3.0),
            (1.005, 2, 1.01),
            (0.125, 2, 0.13),
            (123.456, -1, 120.0),
            (0.0004, 2, 0.0),
            (9.995, 2, 10.0),
            (13.0, 2, 13.0),
            (1e300, 2, 1e300),
        ] {
            assert_eq!(round_half_up(x, d), want, "round({x}, {d})");
        }
        assert!(round_half_up(f64::NAN, 1).is_nan());
    }

    #[test]
    fn floats_print_as_spark_casts_them() {
        for (x, want) in [
            (1.0, "1.0"),
            (2.5, "2.5"),
            (-0.001, "-0.001"),
            (1e7, "1.0E7"),
            (1.5e-4, "1.5E-4"),
            (0.0, "0.0"),
        ] {
            assert_eq!(float_text(x), want);
        }
    }

    #[test]
    fn numbers_parse_as_written_and_nothing_else() {
        assert_eq!(parse_number("1.5"), Some(1.5));
        assert_eq!(parse_number("-2e3"), Some(-2000.0));
        assert_eq!(parse_number("inf"), None);
        assert_eq!(parse_number("nan"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("1,5"), None);
    }
}
