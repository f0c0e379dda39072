//! PySpark code generated from a spec (see [`generate`]): the same semantics as the built-in
//! engine's plans ([`crate::plan`]), written out as a readable PySpark program.
//!
//! The spec is first checked exactly as the built-in engine checks it ([`crate::check`]), so
//! that both refuse the same specs with the same messages. The generator then walks the spec
//! with the schema each step sees (a Prepare step's input is the previous one's output, found
//! by planning that step in check mode), and types every formula subexpression with the
//! built-in engine's own compiler ([`crate::formula::Compiler`]): whether `+` joins text or
//! adds numbers, whether a result is an integer or a float, and where a value is cast, are the
//! built-in engine's decisions, written out as explicit Spark casts.
//!
//! Where Spark's functions differ from the reference semantics the code says so in a helper
//! (floors that stay floats, regular expressions translated from Rust's dialect to Java's, text
//! of floats and timestamps as Arrow writes them...). What cannot be mirrored exactly is
//! refused, with a problem that says "… is not available on Spark: …", rather than run with
//! other semantics.
//!
//! Every Spark column holds the Spark type of the built-in engine's type for it (timestamps as
//! Spark's `timestamp`, read and computed in UTC), and each output is cast to capstan's column
//! types before it is written (timestamps as `timestamp_ntz`, which Parquet stores as capstan
//! does).
//!
//! Refused, as not available on Spark: regular expressions with inline flags, POSIX classes,
//! `--`/`~~` class operators, `\u`/`\U` escapes, `\<`, `\>`, `\b{…}` and `\p{…}` other than
//! general categories; `regex_extract` of a group that may take no part in a match (Spark gives
//! "" where the built-in engine gives null); comparing a date with computed text; date
//! patterns with `yy` or `E` for reading, with zone letters, or reading without a year; and
//! `to_number`/`to_int` of dates. The built-in engine's run-time failures (the square root of a
//! negative number, a float that does not fit an integer) fail the Spark run too.
//!
//! Known to differ still: Spark writes a double as Java's `Double.toString` does, which before
//! Java 19 sometimes has more digits than the shortest (large integers above 2^53, mostly), and
//! writes the smallest double as `4.9E-324`; Java's date patterns read only the widths they
//! name where chrono also reads narrower fields (`2024-1-5` as `yyyy-MM-dd`); Spark makes -0.0
//! 0.0 in grouping, distinct, join and pivot keys; `pad_left` counts code points on Spark and
//! graphemes on the built-in engine; `now()` is each engine's clock.

use std::fmt::Write as _;
use std::ops::Range;

use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use capstan_core::formula::{BinaryOp, Expr as F, ExprKind, UnaryOp};
use capstan_core::visual::*;
use datafusion::common::DFSchema;
use datafusion::dataframe::DataFrame;

use crate::formula::Compiler;
use crate::plan::{Mode, PlanError, Planner, Problem};
use crate::types::*;
use crate::{Limits, Source};

type R<T> = Result<T, PlanError>;

/// A PySpark program for `spec`: reads `inputs` (name, schema) with `capstan.spark.read(spark,
/// name)`, writes each output with `capstan.spark.write(df, name)` (see
/// python/capstan/capstan/spark.py).
pub async fn generate(
    spec: &VisualSpec,
    inputs: &[(String, SchemaRef)],
    outputs: &[String],
) -> Result<String, PlanError> {
    let checked = crate::check(spec, inputs, outputs).await?;
    let ctx = crate::session(&Limits::default())?;
    let mut dfs = Vec::new();
    for (name, schema) in inputs {
        dfs.push((
            name.clone(),
            crate::open(&ctx, name, &Source::Empty(schema.clone())).await?,
        ));
    }
    let mut g = Gen {
        body: String::new(),
        outputs: checked
            .outputs
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    if checked.dynamic.is_some() {
                        None
                    } else {
                        Some(s.clone())
                    },
                )
            })
            .collect(),
        dynamic: false,
        shared: Vec::new(),
    };
    g.spec(spec, dfs).await?;
    Ok(g.finish(spec))
}

// --- Python text -----------------------------------------------------------------------------

/// A Python string literal: JSON's quoting, which Python reads the same.
fn pystr(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A Python float literal that reads back as exactly `x`.
fn pyfloat(x: f64) -> String {
    if x.is_nan() {
        "float(\"nan\")".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "float(\"inf\")".into()
        } else {
            "float(\"-inf\")".into()
        }
    } else {
        format!("{x:?}")
    }
}

/// A column by name, for Spark's parser: plain names as they are, others in backquotes (a dot
/// would otherwise reach into a struct).
fn attr(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ' ')
    {
        name.to_string()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

fn col(name: &str) -> String {
    format!("F.col({})", pystr(&attr(name)))
}

/// A column of one side of a join (`l` or `r`).
fn qcol(side: &str, name: &str) -> String {
    format!("F.col({})", pystr(&format!("{side}.{}", attr(name))))
}

/// `f(a, b, ...)`, one argument a line when there are several.
fn call(f: &str, args: &[String]) -> String {
    if args.len() <= 1 && args.iter().all(|a| !a.contains('\n')) {
        return format!("{f}({})", args.join(", "));
    }
    let mut s = format!("{f}(\n");
    for a in args {
        let _ = writeln!(s, "    {},", a.replace('\n', "\n    "));
    }
    s.push(')');
    s
}

/// A Python list of strings.
fn pylist(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| pystr(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

// --- Types -----------------------------------------------------------------------------------

/// The Spark type an expression is known to have (what decides whether a cast is needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Long,
    /// A small integer literal (Spark's `int`).
    Int,
    Double,
    Str,
    Bool,
    Date,
    Ts,
    Null,
    Other,
}

/// The Spark type the built-in engine's type `t` becomes.
fn st_for(t: &DataType) -> St {
    match t {
        t if is_int(t) => St::Long,
        t if is_float(t) => St::Double,
        t if is_string(t) => St::Str,
        DataType::Boolean => St::Bool,
        DataType::Date32 | DataType::Date64 => St::Date,
        DataType::Timestamp(..) => St::Ts,
        DataType::Null => St::Null,
        _ => St::Other,
    }
}

/// The Spark type a column of type `t` has (exactly: other integer widths are not `long`).
fn st_of_column(t: &DataType) -> St {
    match t {
        DataType::Int64 => St::Long,
        DataType::Float64 => St::Double,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => St::Str,
        DataType::Boolean => St::Bool,
        DataType::Date32 => St::Date,
        DataType::Timestamp(..) => St::Ts,
        DataType::Null => St::Null,
        _ => St::Other,
    }
}

/// Spark's name of the type `t` is computed as (`None`: the null type, which needs no cast).
fn spark_type(t: &DataType) -> Option<&'static str> {
    Some(match st_for(t) {
        St::Long | St::Int => "long",
        St::Double => "double",
        St::Str => "string",
        St::Bool => "boolean",
        St::Date => "date",
        St::Ts => "timestamp",
        St::Null => return None,
        St::Other => "string",
    })
}

/// The type capstan writes for `t`, as Spark names it (timestamps without a time zone).
fn stored_spark_type(t: &DataType) -> &'static str {
    match st_for(&stored_type(t)) {
        St::Long | St::Int => "long",
        St::Double => "double",
        St::Bool => "boolean",
        St::Date => "date",
        St::Ts => "timestamp_ntz",
        _ => "string",
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

/// A Spark column expression (always atomic: operators come in parentheses) and its type.
#[derive(Clone, Debug)]
struct Py {
    code: String,
    st: St,
}

fn py(code: impl Into<String>, st: St) -> Py {
    Py {
        code: code.into(),
        st,
    }
}

impl Py {
    fn column(name: &str, t: &DataType) -> Py {
        py(col(name), st_of_column(t))
    }

    /// Cast to the Spark type of `t`, where it is not that already.
    fn to(self, t: &DataType) -> Py {
        let want = st_for(t);
        if want == St::Null || (self.st == want && want != St::Other) {
            return self;
        }
        match spark_type(t) {
            Some(n) => py(format!("{}.cast({})", self.code, pystr(n)), want),
            None => self,
        }
    }

    fn method(&self, m: &str, args: &[String]) -> String {
        format!("{}.{m}({})", self.code, args.join(", "))
    }
}

fn null_of(t: &DataType) -> Py {
    match spark_type(t) {
        Some(n) => py(format!("F.lit(None).cast({})", pystr(n)), st_for(t)),
        None => py("F.lit(None)", St::Null),
    }
}

fn binop(a: &Py, op: &str, b: &Py, st: St) -> Py {
    py(format!("({} {op} {})", a.code, b.code), st)
}

/// Both operands of an operator the built-in engine computes in `target` (int64 or float64):
/// where one side is of that type already, Spark widens the other one (int to long, long to
/// double) exactly as the cast would; else the first side is cast.
fn numeric_pair(a: Py, b: Py, target: &DataType) -> (Py, Py) {
    let want = st_for(target);
    let widens = |x: &Py| {
        matches!(x.st, St::Long | St::Int | St::Double | St::Null)
            && (want == St::Double || x.st != St::Double)
    };
    if (a.st == want && widens(&b)) || (b.st == want && widens(&a)) {
        (a, b)
    } else if widens(&b) {
        (a.to(target), b)
    } else {
        (a.to(target), b.to(target))
    }
}

// --- Problems --------------------------------------------------------------------------------

fn unavailable(path: &str, span: Option<Range<usize>>, what: &str, why: &str) -> PlanError {
    PlanError::Spec(Problem {
        path: path.to_string(),
        span,
        message: format!("{what} is not available on Spark: {why}"),
        help: None,
    })
}

fn internal(path: &str, message: impl Into<String>) -> PlanError {
    PlanError::Spec(Problem {
        path: path.to_string(),
        span: None,
        message: message.into(),
        help: None,
    })
}

// --- Regular expressions ---------------------------------------------------------------------

/// The general categories `\p{..}` may name on both engines.
const CATEGORIES: [&str; 38] = [
    "L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No", "P", "Pc",
    "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So", "Z", "Zs", "Zl", "Zp", "C",
    "Cc", "Cf", "Cs", "Co", "Cn", "LC",
];

/// A regular expression of the built-in engine (Rust's `regex`) as a Java one (Spark's) that
/// matches the same text: Unicode classes (`(?U)`: `\d`, `\w`, `\s` and `\b` are Unicode's, as
/// in Rust), only `\n` ends a line for `.` (`(?d)`), `$` is the end of the text (`\z`: Java's
/// `$` also matches before a final line break), and named groups are plain groups. What has no
/// exact counterpart is refused, with why.
pub fn java_regex(pattern: &str, case_insensitive: bool) -> Result<String, String> {
    let cs: Vec<char> = pattern.chars().collect();
    let mut out = String::from(if case_insensitive { "(?diU)" } else { "(?dU)" });
    let mut i = 0;
    let mut class = 0usize;
    while i < cs.len() {
        let c = cs[i];
        match c {
            '\\' => {
                let Some(&n) = cs.get(i + 1) else {
                    return Err("the pattern ends with `\\`".into());
                };
                match n {
                    'v' => {
                        out.push_str("\\x0B");
                        i += 2;
                    }
                    'x' if cs.get(i + 2) == Some(&'{') => {
                        let end = cs[i..]
                            .iter()
                            .position(|&c| c == '}')
                            .map(|p| p + i)
                            .ok_or("an unclosed `\\x{`")?;
                        out.extend(&cs[i..=end]);
                        i = end + 1;
                    }
                    'u' | 'U' => return Err(format!("`\\{n}` escapes (write `\\x{{...}}`)")),
                    '<' | '>' => return Err(format!("the word boundary `\\{n}`")),
                    'b' | 'B' if cs.get(i + 2) == Some(&'{') => {
                        return Err("word boundaries `\\b{...}`".into());
                    }
                    'p' | 'P' => {
                        let (name, end) = if cs.get(i + 2) == Some(&'{') {
                            let end = cs[i..]
                                .iter()
                                .position(|&c| c == '}')
                                .map(|p| p + i)
                                .ok_or("an unclosed `\\p{`")?;
                            (cs[i + 3..end].iter().collect::<String>(), end)
                        } else {
                            (
                                cs.get(i + 2).map(|c| c.to_string()).unwrap_or_default(),
                                i + 2,
                            )
                        };
                        if !CATEGORIES.contains(&name.as_str()) {
                            return Err(format!(
                                "the Unicode class `\\{n}{{{name}}}` (general categories such as `\\p{{L}}` are)"
                            ));
                        }
                        let _ = write!(out, "\\{n}{{{name}}}");
                        i = end + 1;
                    }
                    _ => {
                        out.push('\\');
                        out.push(n);
                        i += 2;
                    }
                }
            }
            '[' => {
                if cs.get(i + 1) == Some(&':') {
                    return Err("POSIX classes such as `[:alpha:]`".into());
                }
                class += 1;
                out.push('[');
                i += 1;
                if cs.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` first in a class is literal in Rust's dialect.
                if cs.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
            }
            ']' if class > 0 => {
                class -= 1;
                out.push(']');
                i += 1;
            }
            '-' | '~' if class > 0 && cs.get(i + 1) == Some(&c) => {
                return Err(format!("the class operator `{c}{c}`"));
            }
            _ if class > 0 => {
                out.push(c);
                i += 1;
            }
            '$' => {
                out.push_str("\\z");
                i += 1;
            }
            '(' if cs.get(i + 1) == Some(&'?') => {
                let rest: String = cs[i + 2..].iter().take(2).collect();
                if rest.starts_with(':') {
                    out.push_str("(?:");
                    i += 3;
                } else if rest.starts_with('<') || rest == "P<" {
                    let end = cs[i..]
                        .iter()
                        .position(|&c| c == '>')
                        .map(|p| p + i)
                        .ok_or("an unclosed group name")?;
                    out.push('(');
                    i = end + 1;
                } else {
                    return Err(
                        "inline flags such as `(?i)` (write `/.../i` for a case-insensitive match)"
                            .into(),
                    );
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Whether capture group `group` may take no part in a match (it, or a group around it, is
/// optional or in one branch of an alternation): Rust's regex then gives null, and Spark's
/// `regexp_extract` an empty string, which nothing tells apart.
fn group_may_be_unset(pattern: &str, group: usize) -> bool {
    struct Frame {
        capture: Option<usize>,
        alternation: bool,
        optional: bool,
    }
    let cs: Vec<char> = pattern.chars().collect();
    // Frames of every group, by index of opening; the top level is frame 0.
    let mut frames = vec![Frame {
        capture: None,
        alternation: false,
        optional: false,
    }];
    let mut parents: Vec<Option<usize>> = vec![None];
    let mut stack = vec![0usize];
    let mut captures = 0usize;
    let mut i = 0;
    let mut class = 0usize;
    while i < cs.len() {
        let c = cs[i];
        if c == '\\' {
            i += 2;
            continue;
        }
        if class > 0 {
            match c {
                '[' => class += 1,
                ']' => class -= 1,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            '[' => {
                class = 1;
                i += 1;
                if cs.get(i) == Some(&'^') {
                    i += 1;
                }
                if cs.get(i) == Some(&']') {
                    i += 1;
                }
                continue;
            }
            '(' => {
                let capture = if cs.get(i + 1) == Some(&'?') {
                    let named = cs.get(i + 2) == Some(&'<')
                        || (cs.get(i + 2) == Some(&'P') && cs.get(i + 3) == Some(&'<'));
                    named.then(|| {
                        captures += 1;
                        captures
                    })
                } else {
                    captures += 1;
                    Some(captures)
                };
                frames.push(Frame {
                    capture,
                    alternation: false,
                    optional: false,
                });
                parents.push(stack.last().copied());
                stack.push(frames.len() - 1);
            }
            ')' => {
                let Some(f) = stack.pop() else { return true };
                let next: String = cs[i + 1..].iter().take(3).collect();
                if next.starts_with('?')
                    || next.starts_with('*')
                    || next.starts_with("{0")
                    || next.starts_with("{,")
                {
                    frames[f].optional = true;
                }
            }
            '|' => {
                if let Some(&f) = stack.last() {
                    frames[f].alternation = true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let Some(mut f) = frames.iter().position(|fr| fr.capture == Some(group)) else {
        return true;
    };
    if frames[f].optional {
        return true;
    }
    while let Some(p) = parents[f] {
        if frames[p].alternation || frames[p].optional {
            return true;
        }
        f = p;
    }
    false
}

/// Whether `pattern` can match empty text somewhere. An empty match depends only on the
/// assertions around it (start, end, word boundaries), so these texts, which hold every
/// combination of them, show it.
fn can_match_empty(pattern: &str) -> bool {
    let Ok(re) = regex::Regex::new(pattern) else {
        return true;
    };
    ["", "a", " ", "a b", "aa", "  "].iter().any(|t| {
        (0..=t.len())
            .filter(|k| t.is_char_boundary(*k))
            .any(|k| re.find_at(t, k).is_some_and(|m| m.is_empty()))
    })
}

/// The Java pattern for replacing every match of `pattern` (Rust's) as Rust's `replace_all`
/// does: where the pattern can match empty text, Rust skips an empty match right where the
/// previous match ended, and Java takes it; `\G` (where the previous match ended) tells them
/// apart, and the atomic group keeps the match Rust would have found there.
fn replace_all_pattern(pattern: &str, java: &str) -> String {
    if !can_match_empty(pattern) {
        return java.to_string();
    }
    let (flags, body) = java.split_at(java.find(')').map(|i| i + 1).unwrap_or(0));
    format!("{flags}(?:\\A|(?!\\G))(?:{body})|(?>{body})(?!\\G)")
}

/// A double truncated toward zero to a long; null for NaN, infinities and what does not fit,
/// as on the built-in engine.
fn to_long(x: &Py) -> Py {
    py(format!("_to_long({})", x.code), St::Long)
}

/// A Java regex that matches `s` literally (for `split`).
fn java_literal(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A replacement text taken literally by Java's `replaceAll` (Spark's `regexp_replace`).
fn java_replacement(s: &str) -> String {
    s.replace('\\', "\\\\").replace('$', "\\$")
}

// --- Date patterns ---------------------------------------------------------------------------

/// A Java-style date pattern as the built-in engine reads it ([`crate::dates::java_to_chrono`]),
/// written for Spark's formatter so that it means the same: one letter per chrono field, the
/// widths chrono writes, literal text quoted. `parse`: for reading text (Spark refuses some
/// letters there, and two-digit years read differently).
fn spark_date_pattern(pattern: &str, parse: bool) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut literal = String::new();
    let flush = |out: &mut String, literal: &mut String| {
        if literal.is_empty() {
            return;
        }
        if literal
            .chars()
            .all(|c| matches!(c, ' ' | '-' | '/' | ':' | '.' | ','))
        {
            out.push_str(literal);
        } else {
            let _ = write!(out, "'{}'", literal.replace('\'', "''"));
        }
        literal.clear();
    };
    let mut has_year = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            if chars.get(i + 1) == Some(&'\'') {
                literal.push('\'');
                i += 2;
                continue;
            }
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => return Err("an unclosed quote".into()),
                    Some('\'') if chars.get(j + 1) == Some(&'\'') => {
                        literal.push('\'');
                        j += 2;
                    }
                    Some('\'') => break,
                    Some(ch) => {
                        literal.push(*ch);
                        j += 1;
                    }
                }
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            literal.push(c);
            i += 1;
            continue;
        }
        let mut n = 1;
        while chars.get(i + n) == Some(&c) {
            n += 1;
        }
        flush(&mut out, &mut literal);
        let spec = match (c, n) {
            ('y', 2) if parse => return Err("two-digit years (`yy`) read as 1970–2069 on the built-in engine and as 2000–2099 on Spark".into()),
            ('y', 2) => "yy",
            ('y', _) | ('u', _) => {
                has_year = true;
                "yyyy"
            }
            ('M', 1) => "M",
            ('M', 2) => "MM",
            ('M', 3) => "MMM",
            ('M', _) => "MMMM",
            ('d', 1) => "d",
            ('d', _) => "dd",
            ('D', _) => "DDD",
            ('H', 1) => "H",
            ('H', _) => "HH",
            ('h', 1) => "h",
            ('h', _) => "hh",
            ('m', 1) => "m",
            ('m', _) => "mm",
            ('s', 1) => "s",
            ('s', _) => "ss",
            ('S', 3) => "SSS",
            ('S', 6) => "SSSSSS",
            ('S', 9) => "SSSSSSSSS",
            ('a', _) => "a",
            ('E', _) if parse => return Err("day names (`E`) cannot be read by Spark's parser".into()),
            ('E', 1..=3) => "EEE",
            ('E', _) => "EEEE",
            ('Z' | 'X' | 'x', _) => return Err("time zone offsets (timestamps have none)".into()),
            _ => return Err(format!("`{}` is not a pattern letter capstan knows", c.to_string().repeat(n))),
        };
        out.push_str(spec);
        i += n;
    }
    flush(&mut out, &mut literal);
    if parse && !has_year {
        return Err(
            "a pattern without a year (the built-in engine reads none, Spark takes 1970)".into(),
        );
    }
    Ok(out)
}

/// A timestamp literal of `micros` since 1970, UTC.
fn ts_literal(micros: i64) -> String {
    let dt = chrono::DateTime::from_timestamp_micros(micros)
        .map(|d| d.naive_utc())
        .unwrap_or_default();
    let text = if micros.rem_euclid(1_000_000) == 0 {
        dt.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        dt.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    };
    format!("F.lit({}).cast(\"timestamp\")", pystr(&text))
}

/// The microseconds of a string literal compared with a date: Arrow's cast, as the built-in
/// engine's comparison makes it.
fn arrow_timestamp(text: &str) -> Option<i64> {
    use arrow::array::{Array, StringArray, TimestampMicrosecondArray};
    let a = StringArray::from(vec![text]);
    let opts = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let t = arrow::compute::cast_with_options(&a, &ts(), &opts).ok()?;
    let t = t.as_any().downcast_ref::<TimestampMicrosecondArray>()?;
    (!t.is_null(0)).then(|| t.value(0))
}

// --- Formulas --------------------------------------------------------------------------------

/// Compiles formulas to Spark column expressions, typing each part with the built-in
/// engine's compiler.
struct Formula<'a> {
    schema: &'a DFSchema,
    on_error: OnError,
    what: &'a str,
    path: &'a str,
}

impl Formula<'_> {
    fn compile(&self, text: &str) -> R<(Py, DataType)> {
        let ast = capstan_core::formula::parse(text).map_err(|e| {
            PlanError::Spec(Problem {
                path: self.path.to_string(),
                span: Some(e.span),
                message: e.message,
                help: e.help,
            })
        })?;
        let t = self.ty(&ast)?;
        Ok((self.expr(&ast)?, t))
    }

    fn ty(&self, e: &F) -> R<DataType> {
        Compiler {
            schema: self.schema,
            on_error: self.on_error,
            what: self.what.to_string(),
        }
        .expr(e)
        .map(|t| t.ty)
        .map_err(|p| {
            PlanError::Spec(Problem {
                path: self.path.to_string(),
                span: Some(p.span),
                message: p.message,
                help: p.help,
            })
        })
    }

    fn no(&self, e: &F, what: &str, why: &str) -> PlanError {
        unavailable(self.path, Some(e.span.clone()), what, why)
    }

    /// What a division by zero gives: null, or the run fails naming the step.
    fn by_zero(&self, divisor: &Py, value: Py) -> Py {
        let on_zero = match self.on_error {
            OnError::Null => "F.lit(None)".to_string(),
            OnError::Fail => format!(
                "F.raise_error({})",
                pystr(&format!("{}: division by zero", self.what))
            ),
        };
        py(
            format!(
                "F.when({} == F.lit(0), {on_zero}).otherwise({})",
                divisor.code, value.code
            ),
            value.st,
        )
    }

    fn expr(&self, e: &F) -> R<Py> {
        Ok(match &e.kind {
            ExprKind::Null => py("F.lit(None)", St::Null),
            ExprKind::Bool(b) => py(if *b { "F.lit(True)" } else { "F.lit(False)" }, St::Bool),
            ExprKind::Int(i) => py(
                format!("F.lit({i})"),
                if i32::try_from(*i).is_ok() {
                    St::Int
                } else {
                    St::Long
                },
            ),
            ExprKind::Float(x) => py(format!("F.lit({})", pyfloat(*x)), St::Double),
            ExprKind::Str(s) => py(format!("F.lit({})", pystr(s)), St::Str),
            ExprKind::Regex { .. } => {
                return Err(internal(self.path, "a regular expression outside a call"));
            }
            ExprKind::Column(name) => Py::column(name, &self.ty(e)?),
            ExprKind::Unary { op, expr } => {
                let a = self.expr(expr)?;
                match op {
                    UnaryOp::Neg if a.st == St::Null => a,
                    UnaryOp::Neg => py(format!("(-{})", a.code), a.st),
                    UnaryOp::Not => py(format!("(~{})", a.to(&DataType::Boolean).code), St::Bool),
                }
            }
            ExprKind::Binary { op, left, right } => self.binary(e, *op, left, right)?,
            ExprKind::Call { name, args } => self.call(e, name, args)?,
        })
    }

    fn binary(&self, e: &F, op: BinaryOp, left: &F, right: &F) -> R<Py> {
        use BinaryOp::*;
        let (ta, tb) = (self.ty(left)?, self.ty(right)?);
        let (a, b) = (self.expr(left)?, self.expr(right)?);
        let both_int = (is_int(&ta) || is_null(&ta)) && (is_int(&tb) || is_null(&tb));
        let float = DataType::Float64;
        let num_ty = if both_int {
            DataType::Int64
        } else {
            DataType::Float64
        };
        Ok(match op {
            Add if is_string(&ta) || is_string(&tb) => {
                // Spark's concat is null where any part is, as `+` on text is.
                py(
                    format!(
                        "F.concat({}, {})",
                        a.to(&DataType::Utf8).code,
                        b.to(&DataType::Utf8).code
                    ),
                    St::Str,
                )
            }
            Add | Sub | Mul => {
                let (x, y) = numeric_pair(a, b, &num_ty);
                binop(&x, op.symbol(), &y, st_for(&num_ty))
            }
            Div => {
                // Spark's `/` divides as doubles.
                let (x, d) = numeric_pair(a, b, &float);
                let value = binop(&x, "/", &d, St::Double);
                self.by_zero(&d, value)
            }
            IntDiv if both_int => {
                let (x, d) = numeric_pair(a, b, &num_ty);
                // As the built-in engine: Spark's `div` truncates, exactly; one less where it
                // rounded up (a remainder, and operands of different signs).
                let value = py(
                    format!(
                        "(F.call_function('div', {x}, {d}) - F.when(({x} % {d} != F.lit(0)) & (({x} < F.lit(0)) != ({d} < F.lit(0))), F.lit(1)).otherwise(F.lit(0)))",
                        x = x.code,
                        d = d.code
                    ),
                    St::Long,
                );
                self.by_zero(&d, value)
            }
            IntDiv => {
                let (x, d) = numeric_pair(a, b, &float);
                let q = binop(&x, "/", &d, St::Double);
                // `_floor` keeps a double (Spark's floor of a double is a long).
                self.by_zero(&d, py(format!("_floor({})", q.code), St::Double))
            }
            Mod => {
                let (x, y) = numeric_pair(a, b, &num_ty);
                let value = binop(&x, "%", &y, st_for(&num_ty));
                self.by_zero(&y, value)
            }
            Eq | Ne | Lt | Le | Gt | Ge => {
                let (x, y) = self.comparable(e, left, right, a, b, &ta, &tb)?;
                let sym = match op {
                    Eq => "==",
                    Ne => "!=",
                    Lt => "<",
                    Le => "<=",
                    Gt => ">",
                    _ => ">=",
                };
                binop(&x, sym, &y, St::Bool)
            }
            And | Or => {
                let (x, y) = (a.to(&DataType::Boolean), b.to(&DataType::Boolean));
                binop(&x, if op == And { "&" } else { "|" }, &y, St::Bool)
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn comparable(
        &self,
        e: &F,
        left: &F,
        right: &F,
        a: Py,
        b: Py,
        ta: &DataType,
        tb: &DataType,
    ) -> R<(Py, Py)> {
        if is_numeric(ta) && is_numeric(tb) {
            return Ok(numeric_pair(a, b, &DataType::Float64));
        }
        let date = |t: &DataType| is_temporal(t);
        if (date(ta) && (date(tb) || is_string(tb))) || (is_string(ta) && date(tb)) {
            let side = |p: Py, t: &DataType, f: &F| -> R<Py> {
                if !is_string(t) {
                    return Ok(p.to(&ts()));
                }
                match &f.kind {
                    ExprKind::Str(s) => match arrow_timestamp(s) {
                        Some(us) => Ok(py(ts_literal(us), St::Ts)),
                        None => Err(self.no(f, "this comparison", "the text is not a date Arrow reads, and the built-in engine fails the run on it")),
                    },
                    _ => Err(self.no(e, "comparing a date with computed text", "the engines read dates from text differently; compare with a literal ISO date, or parse_date(…) the text")),
                }
            };
            return Ok((side(a, ta, left)?, side(b, tb, right)?));
        }
        Ok((a, b))
    }

    fn call(&self, e: &F, name: &str, args: &[F]) -> R<Py> {
        let regex_arg = |i: usize| -> Option<(String, bool)> {
            match args.get(i).map(|a| &a.kind) {
                Some(ExprKind::Regex {
                    pattern,
                    case_insensitive,
                }) => Some((pattern.clone(), *case_insensitive)),
                _ => None,
            }
        };
        let mut typed = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            if regex_arg(i).is_some() {
                typed.push((py("F.lit(None)", St::Null), DataType::Null));
            } else {
                typed.push((self.expr(a)?, self.ty(a)?));
            }
        }
        let arg = |i: usize| typed[i].0.clone();
        let aty = |i: usize| typed[i].1.clone();
        let float = DataType::Float64;
        let num = |i: usize| arg(i).to(&float);
        let int_lit = |i: usize| -> i64 {
            match &args[i].kind {
                ExprKind::Int(n) => *n,
                ExprKind::Unary {
                    op: UnaryOp::Neg,
                    expr,
                } => match expr.kind {
                    ExprKind::Int(n) => -n,
                    _ => 0,
                },
                _ => 0,
            }
        };
        let str_lit = |i: usize| -> String {
            match &args.get(i).map(|a| &a.kind) {
                Some(ExprKind::Str(s)) => s.clone(),
                _ => String::new(),
            }
        };
        let date = |i: usize| arg(i).to(&ts());
        let unit = |i: usize| DateUnit::parse(&str_lit(i)).unwrap_or(DateUnit::Day);
        let whole = self.ty(e)?;
        let java = |i: usize| -> R<String> {
            let (p, ci) = regex_arg(i).unwrap_or_else(|| (str_lit(i), false));
            java_regex(&p, ci).map_err(|why| {
                self.no(
                    &args[i],
                    "this regular expression",
                    &format!("{why} has no exact counterpart in Java's regular expressions"),
                )
            })
        };
        Ok(match name {
            "if" => {
                let c = arg(0).to(&DataType::Boolean);
                let then = arg(1).to(&whole);
                let otherwise = if args.len() > 2 {
                    arg(2).to(&whole)
                } else {
                    null_of(&whole)
                };
                py(
                    format!(
                        "F.when({}, {}).otherwise({})",
                        c.code, then.code, otherwise.code
                    ),
                    st_for(&whole),
                )
            }
            "coalesce" => {
                let parts: Vec<String> = (0..args.len()).map(|i| arg(i).to(&whole).code).collect();
                py(format!("F.coalesce({})", parts.join(", ")), st_for(&whole))
            }
            "is_null" => py(arg(0).method("isNull", &[]), St::Bool),
            "is_not_null" => py(arg(0).method("isNotNull", &[]), St::Bool),
            "is_blank" => {
                if is_string(&aty(0)) {
                    py(format!("_is_blank({})", arg(0).code), St::Bool)
                } else {
                    py(arg(0).method("isNull", &[]), St::Bool)
                }
            }
            "null_if" => py(
                format!(
                    "F.nullif({}, {})",
                    arg(0).to(&whole).code,
                    arg(1).to(&whole).code
                ),
                st_for(&whole),
            ),
            "abs" => {
                let a = arg(0);
                py(format!("F.abs({})", a.code), a.st)
            }
            "round" => {
                let digits = if args.len() > 1 { int_lit(1) } else { 0 };
                py(format!("_round({}, {digits})", num(0).code), St::Double)
            }
            "floor" => py(format!("_floor({})", num(0).code), St::Double),
            "ceil" => py(format!("_ceil({})", num(0).code), St::Double),
            // Of a negative number: null, as on the built-in engine.
            "sqrt" => {
                let x = num(0);
                py(
                    format!(
                        "F.when({} < F.lit(0.0), F.lit(None).cast(\"double\")).otherwise(F.nanvl(F.sqrt({}), F.lit(None).cast(\"double\")))",
                        x.code, x.code
                    ),
                    St::Double,
                )
            }
            "pow" => py(
                format!("_pow({}, {})", num(0).code, num(1).code),
                St::Double,
            ),
            "exp" => py(format!("F.exp({})", num(0).code), St::Double),
            "ln" | "log" => {
                let x = num(0);
                let f = if name == "ln" { "F.log" } else { "F.log10" };
                py(
                    format!("F.when({} > F.lit(0.0), {f}({}))", x.code, x.code),
                    St::Double,
                )
            }
            // The built-in engine's sign of -0.0 is 0.0; Spark's is -0.0.
            "sign" => {
                let x = num(0);
                py(
                    format!(
                        "F.when({} == F.lit(0.0), F.lit(0.0)).otherwise(F.signum({}))",
                        x.code, x.code
                    ),
                    St::Double,
                )
            }
            "min" | "max" => {
                let parts: Vec<String> = (0..args.len()).map(|i| arg(i).to(&whole).code).collect();
                let f = if name == "min" {
                    "F.least"
                } else {
                    "F.greatest"
                };
                py(format!("{f}({})", parts.join(", ")), st_for(&whole))
            }
            "clip" => {
                let (x, lo, hi) = (num(0), num(1), num(2));
                py(
                    format!(
                        "F.when({}.isNull(), F.lit(None).cast(\"double\")).otherwise(F.least(F.greatest({}, {}), {}))",
                        x.code, x.code, lo.code, hi.code
                    ),
                    St::Double,
                )
            }
            "length" => py(format!("F.length({})", arg(0).code), St::Int),
            "upper" => py(format!("F.upper({})", arg(0).code), St::Str),
            "lower" => py(format!("F.lower({})", arg(0).code), St::Str),
            "trim" => py(format!("F.trim({})", arg(0).code), St::Str),
            "substring" => {
                let from = int_lit(1).max(0);
                let len = if args.len() > 2 {
                    int_lit(2).max(from) - from
                } else {
                    i32::MAX as i64
                };
                py(
                    format!("F.substring({}, {}, {len})", arg(0).code, from + 1),
                    St::Str,
                )
            }
            "left" => py(
                format!("F.substring({}, 1, {})", arg(0).code, int_lit(1).max(0)),
                St::Str,
            ),
            "right" => py(
                format!("F.right({}, F.lit({}))", arg(0).code, int_lit(1).max(0)),
                St::Str,
            ),
            "contains" => py(arg(0).method("contains", &[arg(1).code]), St::Bool),
            "starts_with" => py(arg(0).method("startswith", &[arg(1).code]), St::Bool),
            "ends_with" => py(arg(0).method("endswith", &[arg(1).code]), St::Bool),
            "replace" => {
                let s = arg(0);
                let with = str_lit(2);
                match regex_arg(1) {
                    Some((p, _)) => {
                        let j = java(1)?;
                        py(
                            format!(
                                "F.regexp_replace({}, {}, {})",
                                s.code,
                                pystr(&replace_all_pattern(&p, &j)),
                                pystr(&java_replacement(&with))
                            ),
                            St::Str,
                        )
                    }
                    // Both engines leave the text as it is where `find` is empty.
                    None => py(
                        format!(
                            "F.replace({}, {}, F.lit({}))",
                            s.code,
                            arg(1).code,
                            pystr(&with)
                        ),
                        St::Str,
                    ),
                }
            }
            "matches" => py(arg(0).method("rlike", &[pystr(&java(1)?)]), St::Bool),
            "regex_extract" => {
                let (p, ci) = regex_arg(1).unwrap_or_else(|| (str_lit(1), false));
                let group = if args.len() > 2 { int_lit(2) } else { 1 };
                self.regex_extract(&args[1], &arg(0), &p, ci, group)?
            }
            "concat" => {
                let parts: Vec<String> = (0..args.len())
                    .map(|i| {
                        let t = aty(i);
                        let text = if is_float(&t) {
                            float_text(arg(i).to(&float))
                        } else {
                            arrow_text(arg(i), &t)
                        };
                        format!("F.coalesce({}, F.lit(\"\"))", text.code)
                    })
                    .collect();
                py(format!("F.concat({})", parts.join(", ")), St::Str)
            }
            "split_part" => split_part(&arg(0), &str_lit(1), int_lit(2)),
            "to_string" => {
                let (a, t) = (arg(0), aty(0));
                if is_float(&t) {
                    float_text(a.to(&float))
                } else {
                    arrow_text(a, &t)
                }
            }
            "to_number" => {
                let (a, t) = (arg(0), aty(0));
                if is_string(&t) {
                    parse_float(&a)
                } else if is_temporal(&t) {
                    return Err(self.no(
                        e,
                        "to_number of a date",
                        "the engines turn dates into numbers differently",
                    ));
                } else {
                    a.to(&float)
                }
            }
            "to_int" => {
                let (a, t) = (arg(0), aty(0));
                if is_string(&t) {
                    parse_int(&a)
                } else if is_temporal(&t) {
                    return Err(self.no(
                        e,
                        "to_int of a date",
                        "the engines turn dates into numbers differently",
                    ));
                } else {
                    if is_float(&t) {
                        to_long(&a.to(&float))
                    } else {
                        a.to(&DataType::Int64)
                    }
                }
            }
            "sha256" => py(format!("F.sha2({}, 256)", arg(0).code), St::Str),
            "pad_left" => {
                let s = arg(0);
                let n = int_lit(1).max(0);
                let fill = str_lit(2);
                py(
                    format!(
                        "F.when(F.length({}) >= F.lit({n}), {}).otherwise(F.lpad({}, {n}, {}))",
                        s.code,
                        s.code,
                        s.code,
                        pystr(&fill)
                    ),
                    St::Str,
                )
            }
            "now" => py("F.current_timestamp()", St::Ts),
            "year" | "month" | "day" | "hour" | "minute" | "second" | "day_of_week" => {
                date_part(name, &date(0))
            }
            "date_diff" => date_diff(&date(0), &date(1), unit(2))
                .ok_or_else(|| internal(self.path, "date_diff in a unit of varying length"))?,
            "date_add" => date_add(&date(0), int_lit(1), unit(2)),
            "date_trunc" => py(
                format!(
                    "F.date_trunc({}, {})",
                    pystr(unit(1).as_str()),
                    date(0).code
                ),
                St::Ts,
            ),
            "parse_date" => {
                let p = spark_date_pattern(&str_lit(1), true)
                    .map_err(|why| self.no(&args[1], "this date pattern", &why))?;
                py(
                    format!(
                        "F.try_to_timestamp(_trim_space({}), F.lit({}))",
                        arg(0).code,
                        pystr(&p)
                    ),
                    St::Ts,
                )
            }
            "format_date" => {
                let p = spark_date_pattern(&str_lit(1), false)
                    .map_err(|why| self.no(&args[1], "this date pattern", &why))?;
                py(
                    format!("F.date_format({}, {})", date(0).code, pystr(&p)),
                    St::Str,
                )
            }
            other => {
                return Err(self.no(
                    e,
                    &format!("{other}()"),
                    "capstan has no Spark counterpart for it",
                ));
            }
        })
    }

    fn regex_extract(&self, at: &F, s: &Py, pattern: &str, ci: bool, group: i64) -> R<Py> {
        regex_extract(s, pattern, ci, group)
            .map_err(|why| self.no(at, "this regular expression", &why))
    }
}

/// The `group`th group of the first match of `pattern` in `s`; no match (or the group took no
/// part in it): null.
fn regex_extract(s: &Py, pattern: &str, ci: bool, group: i64) -> Result<Py, String> {
    let j = java_regex(pattern, ci)
        .map_err(|why| format!("{why} has no exact counterpart in Java's regular expressions"))?;
    let groups = regex::Regex::new(pattern)
        .map(|r| r.captures_len() - 1)
        .map_err(|e| e.to_string())?;
    let group = group.max(0) as usize;
    if group > groups {
        // No such group: null on every row (Spark's regexp_extract would fail).
        return Ok(null_of(&DataType::Utf8));
    }
    if group > 0 && group_may_be_unset(pattern, group) {
        return Err(format!(
            "group {group} may take no part in a match (it is optional, or in one branch of `|`): the built-in engine gives null there and Spark an empty string"
        ));
    }
    Ok(py(
        format!(
            "F.when({}.rlike({}), F.regexp_extract({}, {}, {group}))",
            s.code,
            pystr(&j),
            s.code,
            pystr(&j)
        ),
        St::Str,
    ))
}

/// Part `part` (from 1) of `s` split on `sep`; fewer parts: null.
fn split_part(s: &Py, sep: &str, part: i64) -> Py {
    if sep.is_empty() {
        return if part == 1 {
            s.clone()
        } else {
            null_of(&DataType::Utf8)
        };
    }
    py(
        format!(
            "F.get(F.split({}, {}, -1), {})",
            s.code,
            pystr(&java_literal(sep)),
            part - 1
        ),
        St::Str,
    )
}

/// A double as text, as the built-in engine's `float_text` writes it (Spark's cast: `1.0`,
/// `1.0E7`).
fn float_text(x: Py) -> Py {
    py(format!("{}.cast(\"string\")", x.code), St::Str)
}

/// A value as text the way Arrow casts it (what the built-in engine's casts to text do).
fn arrow_text(a: Py, t: &DataType) -> Py {
    if is_string(t) {
        a
    } else if is_float(t) {
        py(
            format!("_arrow_float_text({})", a.to(&DataType::Float64).code),
            St::Str,
        )
    } else if matches!(t, DataType::Timestamp(..)) {
        py(format!("_arrow_ts_text({})", a.code), St::Str)
    } else {
        a.to(&DataType::Utf8)
    }
}

/// A value as text the way the built-in engine's steps write it (`text_of`): floats as Spark
/// casts them, the rest as Arrow does.
fn text_of(a: Py, t: &DataType) -> Py {
    if is_float(t) {
        float_text(a.to(&DataType::Float64))
    } else {
        arrow_text(a, t)
    }
}

/// The built-in engine's `parse_float(btrim(s))`: a decimal number as people write it (no
/// `inf`, `nan`, hexadecimal or `1.5d`, which Spark's cast would take), around it whitespace.
fn parse_float(s: &Py) -> Py {
    py(format!("_parse_float({})", s.code), St::Double)
}

fn parse_int(s: &Py) -> Py {
    py(format!("_parse_int({})", s.code), St::Long)
}

fn date_part(name: &str, d: &Py) -> Py {
    let f = match name {
        "year" => "F.year",
        "quarter" => "F.quarter",
        "month" => "F.month",
        "day" => "F.dayofmonth",
        "hour" => "F.hour",
        "minute" => "F.minute",
        "second" => "F.second",
        "day_of_year" => "F.dayofyear",
        // ISO 8601: 1 = Monday … 7 = Sunday.
        _ => {
            return py(
                format!("(F.weekday({}) + F.lit(1)).cast(\"long\")", d.code),
                St::Long,
            );
        }
    };
    py(format!("{f}({}).cast(\"long\")", d.code), St::Long)
}

/// `a - b` in whole `unit`s, truncated toward zero (`div` is Spark's integer division).
fn date_diff(a: &Py, b: &Py, unit: DateUnit) -> Option<Py> {
    let m = crate::dates::unit_micros(unit)?;
    Some(py(
        format!(
            "F.call_function(\"div\", F.unix_micros({}) - F.unix_micros({}), F.lit({m}))",
            a.code, b.code
        ),
        St::Long,
    ))
}

fn date_add(d: &Py, n: i64, unit: DateUnit) -> Py {
    let n32 = n.clamp(i32::MIN as i64, i32::MAX as i64);
    let clamp = |x: i64| x.clamp(i32::MIN as i64, i32::MAX as i64);
    let (n, unit) = match unit {
        DateUnit::Year => (clamp(n32 * 12), "MONTH"),
        DateUnit::Quarter => (clamp(n32 * 3), "MONTH"),
        DateUnit::Month => (n32, "MONTH"),
        DateUnit::Week => (clamp(n32 * 7), "DAY"),
        DateUnit::Day => (n32, "DAY"),
        DateUnit::Hour => (n, "HOUR"),
        DateUnit::Minute => (n, "MINUTE"),
        DateUnit::Second => (n, "SECOND"),
    };
    py(
        format!(
            "({} + F.expr({}))",
            d.code,
            pystr(&format!("INTERVAL '{n}' {unit}"))
        ),
        St::Ts,
    )
}

// --- The program -----------------------------------------------------------------------------

struct Gen {
    body: String,
    /// The outputs the built-in engine writes, in order, with their schemas where they do not
    /// depend on the data.
    outputs: Vec<(String, Option<SchemaRef>)>,
    /// Whether a step before this one made columns from the data (so the columns are known only
    /// when the program runs).
    dynamic: bool,
    /// The Python lists of output columns that several outputs share, by their schema.
    shared: Vec<(SchemaRef, String)>,
}

fn sort_key(k: &SortKey) -> String {
    let dir = match (k.descending, k.nulls_first()) {
        (false, true) => "asc_nulls_first",
        (false, false) => "asc_nulls_last",
        (true, true) => "desc_nulls_first",
        (true, false) => "desc_nulls_last",
    };
    format!("{}.{dir}()", col(&k.column))
}

fn ty(df: &DataFrame, path: &str, name: &str) -> R<DataType> {
    crate::plan::typed(df, path, name).map(|t| t.ty)
}

fn schema_of(df: &DataFrame) -> Schema {
    df.schema().as_arrow().clone()
}

/// A literal of a spec (a value to match, to fill) for a column of type `t`: what
/// [`crate::plan::literal_for`] makes of it.
fn literal(t: &DataType, v: &Literal, path: &str) -> R<Py> {
    Ok(match (v, t) {
        (Literal::Str(s), t) if is_string(t) => py(format!("F.lit({})", pystr(s)), St::Str),
        (Literal::Int(i), t) if is_int(t) => py(
            format!("F.lit({i})"),
            if i32::try_from(*i).is_ok() {
                St::Int
            } else {
                St::Long
            },
        ),
        (Literal::Int(i), t) if is_float(t) => {
            py(format!("F.lit({})", pyfloat(*i as f64)), St::Double)
        }
        (Literal::Float(x), t) if is_float(t) => py(format!("F.lit({})", pyfloat(*x)), St::Double),
        (Literal::Bool(b), DataType::Boolean) => {
            py(if *b { "F.lit(True)" } else { "F.lit(False)" }, St::Bool)
        }
        (Literal::Str(s), t) if is_temporal(t) => match date_literal(s) {
            Some(us) => py(ts_literal(us), St::Ts),
            None => return Err(internal(path, format!("{s:?} is not an ISO date"))),
        },
        (v, t) => {
            return Err(internal(
                path,
                format!("{v} does not fit a {} column", type_name(t)),
            ));
        }
    })
}

fn date_literal(s: &str) -> Option<i64> {
    crate::dates::parse(s, &["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])
}

/// Null, or only spaces, tabs and line breaks (text); null (anything else).
fn empty(c: &Py, t: &DataType) -> Py {
    if is_string(t) {
        py(format!("_is_blank({})", c.code), St::Bool)
    } else {
        py(c.method("isNull", &[]), St::Bool)
    }
}

/// `df = df.withColumn(...)...`, for columns set one after the other.
fn with_columns(var: &str, sets: &[(String, Py)]) -> String {
    match sets {
        [] => format!("{var} = {var}"),
        [(n, e)] => format!("{var} = {var}.withColumn({}, {})", pystr(n), e.code),
        _ => {
            let mut s = format!("{var} = (\n    {var}");
            for (n, e) in sets {
                let _ = write!(
                    s,
                    "\n    .withColumn({}, {})",
                    pystr(n),
                    e.code.replace('\n', "\n    ")
                );
            }
            s.push_str("\n)");
            s
        }
    }
}

impl Gen {
    fn line(&mut self, s: &str) {
        self.body.push_str(s);
        self.body.push('\n');
    }

    fn comment(&mut self, s: &str) {
        if !self.body.is_empty() {
            self.body.push('\n');
        }
        let _ = writeln!(self.body, "# {s}");
    }

    /// Reads an input into `var`, its timestamps as Spark's `timestamp` (Parquet's timestamps
    /// without a time zone read as `timestamp_ntz`).
    fn read(&mut self, var: &str, name: &str, schema: &Schema) {
        self.comment(&format!("input `{name}`"));
        self.line(&format!(
            "{var} = capstan.spark.read(spark, {})",
            pystr(name)
        ));
        let stamps: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| matches!(f.data_type(), DataType::Timestamp(..)))
            .map(|f| format!("{}: {}.cast(\"timestamp\")", pystr(f.name()), col(f.name())))
            .collect();
        if !stamps.is_empty() {
            self.line(&format!(
                "{var} = {var}.withColumns({{{}}})",
                stamps.join(", ")
            ));
        }
    }

    /// Writes `expr` (a DataFrame) to the output `name`, in capstan's column types.
    fn write(&mut self, expr: &str, name: &str) {
        let Some((_, schema)) = self.outputs.iter().find(|(n, _)| n == name).cloned() else {
            return;
        };
        let Some(s) = schema else {
            self.comment(&format!(
                "output `{name}`, in capstan's column types (its columns come from the data)"
            ));
            self.line(&format!(
                "capstan.spark.write(_stored({expr}), {})",
                pystr(name)
            ));
            return;
        };
        let cols: Vec<String> = s
            .fields()
            .iter()
            .map(|f| {
                format!(
                    "{}.cast({}).alias({})",
                    col(f.name()),
                    pystr(stored_spark_type(f.data_type())),
                    pystr(f.name())
                )
            })
            .collect();
        let alike = self
            .outputs
            .iter()
            .filter(|(_, o)| o.as_ref().is_some_and(|o| o.fields() == s.fields()))
            .count();
        if alike < 2 {
            self.comment(&format!("output `{name}`, in capstan's column types"));
            self.line(&format!(
                "capstan.spark.write({}, {})",
                call(&format!("{expr}.select"), &cols),
                pystr(name)
            ));
            return;
        }
        let var = match self.shared.iter().find(|(o, _)| o.fields() == s.fields()) {
            Some((_, v)) => v.clone(),
            None => {
                let v = if self.shared.is_empty() {
                    "columns".to_string()
                } else {
                    format!("columns_{}", self.shared.len() + 1)
                };
                self.comment("the outputs' columns, in capstan's column types");
                self.line(&format!(
                    "{v} = {}",
                    call("", &cols)
                        .replacen('(', "[", 1)
                        .trim_end_matches(')')
                        .to_string()
                        + "]"
                ));
                self.shared.push((s.clone(), v.clone()));
                v
            }
        };
        self.comment(&format!("output `{name}`"));
        self.line(&format!(
            "capstan.spark.write({expr}.select({var}), {})",
            pystr(name)
        ));
    }

    fn finish(self, spec: &VisualSpec) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# A {} recipe, as PySpark: capstan generated this program from the recipe's spec, with",
            spec.kind().as_str()
        );
        s.push_str("# the semantics of capstan's built-in engine.\n");
        s.push_str("from pyspark.sql import SparkSession, functions as F, Window\n");
        s.push_str("import capstan.spark\n\n");
        s.push_str("spark = SparkSession.builder.getOrCreate()\n");
        s.push_str("spark.conf.set(\"spark.sql.session.timeZone\", \"UTC\")\n");
        s.push_str("spark.conf.set(\"spark.sql.ansi.enabled\", \"false\")\n");
        s.push_str("# Column names are case-sensitive, as capstan's are.\n");
        s.push_str("spark.conf.set(\"spark.sql.caseSensitive\", \"true\")\n");
        s.push_str("spark.conf.set(\"spark.sql.legacy.timeParserPolicy\", \"CORRECTED\")\n");
        // The helpers the body calls, and the ones they call.
        let mut used: Vec<&str> = HELPERS
            .iter()
            .map(|(n, _, _)| *n)
            .filter(|n| self.body.contains(&format!("{n}(")))
            .collect();
        let mut i = 0;
        while i < used.len() {
            if let Some((_, _, deps)) = HELPERS.iter().find(|(n, _, _)| *n == used[i]) {
                for d in *deps {
                    if !used.contains(d) {
                        used.push(d);
                    }
                }
            }
            i += 1;
        }
        for (name, text, _) in HELPERS {
            if used.contains(name) {
                s.push_str("\n\n");
                s.push_str(text.trim_start_matches('\n'));
                s.push('\n');
            }
        }
        s.push_str("\n\n");
        s.push_str(&self.body);
        s
    }

    async fn spec(&mut self, spec: &VisualSpec, inputs: Vec<(String, DataFrame)>) -> R<()> {
        let first_out = self
            .outputs
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        let one = |inputs: &[(String, DataFrame)]| inputs[0].clone();
        match spec {
            VisualSpec::Prepare(p) => {
                let (name, mut df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                for (i, step) in p.steps.iter().enumerate() {
                    let path = format!("steps[{i}]");
                    self.comment(&format!("{path}: {}", step.type_name()));
                    self.step(&df, &path, step)?;
                    if matches!(step, Step::Unfold { .. }) {
                        self.dynamic = true;
                    }
                    df = Planner::new(Mode::Check).step(df, &path, step).await?;
                }
                self.write("df", &first_out);
            }
            VisualSpec::Sync(s) => {
                let (name, df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                if !s.columns.is_empty() {
                    self.comment("sync: these columns");
                    let cols: Vec<String> = s.columns.iter().map(|c| col(c)).collect();
                    self.line(&format!("df = {}", call("df.select", &cols)));
                }
                self.write("df", &first_out);
            }
            VisualSpec::Filter(f) => {
                let (name, df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                if let Some(c) = &f.condition {
                    self.comment(
                        "where: the rows where the condition is true (null counts as false)",
                    );
                    let (cond, _) = Formula {
                        schema: df.schema(),
                        on_error: OnError::Null,
                        what: "filter",
                        path: "where",
                    }
                    .compile(c)?;
                    self.line(&format!(
                        "df = df.where({})",
                        cond.to(&DataType::Boolean).code
                    ));
                }
                if let Some(s) = &f.sample {
                    self.comment("sample: the first rows");
                    self.line(&format!("df = df.limit({})", s.rows));
                }
                self.write("df", &first_out);
            }
            VisualSpec::Sort(s) => {
                let (name, df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                self.comment("sort");
                let keys: Vec<String> = s.by.iter().map(sort_key).collect();
                self.line(&format!("df = {}", call("df.orderBy", &keys)));
                self.write("df", &first_out);
            }
            VisualSpec::Distinct(d) => {
                let (name, df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                let cols = if d.columns.is_empty() {
                    crate::plan::names(&df)
                } else {
                    d.columns.clone()
                };
                let keys: Vec<String> = cols.iter().map(|c| col(c)).collect();
                match &d.count_column {
                    Some(c) => {
                        self.comment("distinct, with the number of rows each stands for");
                        self.line(&format!(
                            "df = {}.agg(F.count(F.lit(1)).alias({}))",
                            call("df.groupBy", &keys),
                            pystr(c)
                        ));
                    }
                    None => {
                        self.comment("distinct");
                        self.line(&format!("df = {}.distinct()", call("df.select", &keys)));
                    }
                }
                self.write("df", &first_out);
            }
            VisualSpec::Group(g) => {
                let (name, df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                self.group(&df, g)?;
                self.write("df", &first_out);
            }
            VisualSpec::Window(w) => {
                let (name, df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                self.window(&df, w)?;
                self.write("df", &first_out);
            }
            VisualSpec::TopN(t) => {
                let (name, df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                self.comment("top_n: rows numbered in order within their partition, ties broken by every other column");
                let mut order: Vec<String> = t.by.iter().map(sort_key).collect();
                let names = crate::plan::names(&df);
                for n in &names {
                    if !t.by.iter().any(|k| &k.column == n) && !t.partition_by.contains(n) {
                        order.push(format!("{}.asc_nulls_first()", col(n)));
                    }
                }
                let part: Vec<String> = t.partition_by.iter().map(|c| col(c)).collect();
                self.line(&format!("w = {}", window_spec(&part, &order)));
                let rank = fresh("__capstan_rank", &names);
                self.line(&format!(
                    "ranked = df.select(\"*\", F.row_number().over(w).alias({}))",
                    pystr(&rank)
                ));
                let top = format!("ranked.where(F.col({}) <= {})", pystr(&rank), t.top);
                self.write(&top, &first_out);
                if let Some(rest) = &t.rest {
                    let r = format!("ranked.where(F.col({}) > {})", pystr(&rank), t.top);
                    self.write(&r, rest);
                }
            }
            VisualSpec::Split(s) => {
                let (name, df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                let names = crate::plan::names(&df);
                let rule = fresh("__capstan_rule", &names);
                if !s.rules.is_empty() {
                    self.comment("split: each row goes to the first rule whose condition is true");
                    let mut chain = String::from("F");
                    for (i, r) in s.rules.iter().enumerate() {
                        let path = format!("rules[{i}].when");
                        let (c, _) = Formula {
                            schema: df.schema(),
                            on_error: OnError::Null,
                            what: "split",
                            path: &path,
                        }
                        .compile(&r.when)?;
                        let _ = write!(
                            chain,
                            "{}.when({}, F.lit({i}))",
                            if i == 0 { "" } else { "\n    " },
                            c.to(&DataType::Boolean).code
                        );
                    }
                    let chain = if s.rules.len() > 1 {
                        format!("(\n    {chain}\n)")
                    } else {
                        chain
                    };
                    self.line(&format!("df = df.withColumn({}, {chain})", pystr(&rule)));
                }
                for (o, _) in self.outputs.clone() {
                    let taken: Vec<String> = s
                        .rules
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.output == o)
                        .map(|(i, _)| i.to_string())
                        .collect();
                    let mut conds = Vec::new();
                    if !taken.is_empty() {
                        conds.push(format!(
                            "F.col({}).isin({})",
                            pystr(&rule),
                            taken.join(", ")
                        ));
                    }
                    if s.otherwise.as_deref() == Some(o.as_str()) {
                        conds.push(if s.rules.is_empty() {
                            "F.lit(True)".to_string()
                        } else {
                            format!("F.col({}).isNull()", pystr(&rule))
                        });
                    }
                    let e = if conds.is_empty() {
                        "df.limit(0)".to_string()
                    } else {
                        format!("df.where({})", conds.join(" | "))
                    };
                    self.write(&e, &o);
                }
            }
            VisualSpec::Stack(s) => self.stack(&inputs, s)?,
            VisualSpec::Join(j) => self.join(&inputs, j)?,
            VisualSpec::Pivot(p) => {
                let (name, df) = one(&inputs);
                self.read("df", &name, &schema_of(&df));
                self.pivot(&df, p)?;
                self.write("df", &first_out);
            }
        }
        Ok(())
    }

    fn group(&mut self, df: &DataFrame, g: &GroupSpec) -> R<()> {
        let keys: Vec<String> = g.keys.iter().map(|c| col(c)).collect();
        let names = crate::plan::names(df);
        let mut aggs = Vec::new();
        let mut firsts = Vec::new();
        if g.count {
            aggs.push("F.count(F.lit(1)).alias(\"count\")".to_string());
        }
        for (i, a) in g.aggregates.iter().enumerate() {
            let t = ty(df, &format!("aggregates[{i}].column"), &a.column)?;
            for f in &a.functions {
                let out = format!("{}_{}", a.column, f.as_str());
                let x = Py::column(&a.column, &t);
                let e = match f {
                    AggFn::First | AggFn::Last => {
                        let helper = fresh(
                            &format!("__capstan_{}_{}", f.as_str(), firsts.len()),
                            &names,
                        );
                        let w = if *f == AggFn::First {
                            "F.first"
                        } else {
                            "F.last"
                        };
                        firsts.push(format!("{w}({}).over(w).alias({})", x.code, pystr(&helper)));
                        format!("F.first(F.col({}))", pystr(&helper))
                    }
                    other => aggregate(*other, &x, &t),
                };
                aggs.push(format!("{e}.alias({})", pystr(&out)));
            }
        }
        if !firsts.is_empty() {
            self.comment("group: first and last in `order_by`'s order, over each group's rows");
            let order: Vec<String> = g.order_by.iter().map(sort_key).collect();
            self.line(&format!(
                "w = {}.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)",
                window_spec(&keys, &order)
            ));
            let mut items = vec!["\"*\"".to_string()];
            items.extend(firsts);
            self.line(&format!("df = {}", call("df.select", &items)));
        }
        self.comment("group");
        if aggs.is_empty() {
            self.line(&format!("df = {}.distinct()", call("df.select", &keys)));
        } else {
            self.line(&format!(
                "df = {}",
                call(&format!("{}.agg", call("df.groupBy", &keys)), &aggs)
            ));
        }
        Ok(())
    }

    fn window(&mut self, df: &DataFrame, w: &WindowSpec) -> R<()> {
        self.comment("window");
        let part: Vec<String> = w.partition_by.iter().map(|c| col(c)).collect();
        let order: Vec<String> = w.order_by.iter().map(sort_key).collect();
        self.line(&format!("w = {}", window_spec(&part, &order)));
        let bound = |n: Option<u32>, preceding: bool| match n {
            None if preceding => "Window.unboundedPreceding".to_string(),
            None => "Window.unboundedFollowing".to_string(),
            Some(0) => "Window.currentRow".to_string(),
            Some(n) if preceding => format!("-{n}"),
            Some(n) => n.to_string(),
        };
        let (p, f) = match &w.frame {
            Some(f) => (f.preceding, f.following),
            None => (None, None),
        };
        let needs_frame = w.compute.iter().any(|c| !c.function.is_ranking());
        if needs_frame {
            let comment = if w.frame.is_none() {
                "  # aggregates see the whole partition"
            } else {
                ""
            };
            self.line(&format!(
                "frame = w.rowsBetween({}, {}){comment}",
                bound(p, true),
                bound(f, false)
            ));
        }
        let mut items = vec!["\"*\"".to_string()];
        for (i, c) in w.compute.iter().enumerate() {
            let path = format!("compute[{i}]");
            let column = match &c.column {
                Some(n) => {
                    let t = ty(df, &format!("{path}.column"), n)?;
                    Some((Py::column(n, &t), t))
                }
                None => None,
            };
            let e = match c.function {
                WindowFn::RowNumber => "F.row_number().over(w)".to_string(),
                WindowFn::Rank => "F.rank().over(w)".to_string(),
                WindowFn::DenseRank => "F.dense_rank().over(w)".to_string(),
                WindowFn::Lag | WindowFn::Lead => {
                    let (x, _) =
                        column.ok_or_else(|| internal(&path, "lag and lead need a column"))?;
                    let f = if c.function == WindowFn::Lag {
                        "F.lag"
                    } else {
                        "F.lead"
                    };
                    format!("{f}({}, {}).over(w)", x.code, c.offset.unwrap_or(1))
                }
                agg_fn => {
                    let e = match (&column, agg_fn) {
                        (Some((x, t)), WindowFn::Sum) if is_int(t) => {
                            format!("F.sum({})", x.clone().to(&DataType::Int64).code)
                        }
                        (Some((x, _)), WindowFn::Sum) => {
                            format!("F.sum({})", x.clone().to(&DataType::Float64).code)
                        }
                        (Some((x, _)), WindowFn::Avg) => {
                            format!("F.avg({})", x.clone().to(&DataType::Float64).code)
                        }
                        (Some((x, _)), WindowFn::Min) => format!("F.min({})", x.code),
                        (Some((x, _)), WindowFn::Max) => format!("F.max({})", x.code),
                        (Some((x, _)), WindowFn::Count) => format!("F.count({})", x.code),
                        (None, WindowFn::Count) => "F.count(F.lit(1))".to_string(),
                        (Some((x, _)), WindowFn::First) => format!("F.first({})", x.code),
                        (Some((x, _)), WindowFn::Last) => format!("F.last({})", x.code),
                        _ => {
                            return Err(internal(
                                &path,
                                format!("{} needs a `column`", agg_fn.as_str()),
                            ));
                        }
                    };
                    format!("{e}.over(frame)")
                }
            };
            items.push(format!("{e}.alias({})", pystr(&c.to)));
        }
        self.line(&format!("df = {}", call("df.select", &items)));
        Ok(())
    }

    fn stack(&mut self, inputs: &[(String, DataFrame)], s: &StackSpec) -> R<()> {
        let mut columns: Vec<(String, DataType)> = Vec::new();
        for (_, df) in inputs {
            for f in df.schema().fields() {
                let t = stored_type(f.data_type());
                match columns.iter_mut().find(|(n, _)| n == f.name()) {
                    None => columns.push((f.name().clone(), t)),
                    Some((_, have)) if *have == t => {}
                    Some((_, have)) if is_numeric(have) && is_numeric(&t) => {
                        *have = DataType::Float64
                    }
                    Some(_) => return Err(internal("", "the inputs' columns do not agree")),
                }
            }
        }
        let mut parts = Vec::new();
        for (i, (name, df)) in inputs.iter().enumerate() {
            let var = format!("in_{i}");
            self.read(&var, name, &schema_of(df));
            let have = crate::plan::names(df);
            let mut exprs = Vec::new();
            for (n, t) in &columns {
                let e = if have.contains(n) {
                    Py::column(n, &ty(df, "", n)?).to(t)
                } else {
                    null_of(t)
                };
                exprs.push(format!("{}.alias({})", e.code, pystr(n)));
            }
            if let Some(o) = &s.origin_column {
                exprs.push(format!("F.lit({}).alias({})", pystr(name), pystr(o)));
            }
            parts.push(call(&format!("{var}.select"), &exprs));
        }
        self.comment("stack: the inputs' rows, by column name, each column of one type");
        let mut e = format!("(\n    {}", parts[0].replace('\n', "\n    "));
        for part in &parts[1..] {
            let _ = write!(e, "\n    .unionAll({})", part.replace('\n', "\n    "));
        }
        e.push_str("\n)");
        self.line(&format!("df = {e}"));
        let first = self
            .outputs
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        self.write("df", &first);
        Ok(())
    }

    fn join(&mut self, inputs: &[(String, DataFrame)], j: &JoinSpec) -> R<()> {
        let (ln, left) = &inputs[0];
        let (rn, right) = &inputs[1];
        self.read("left", ln, &schema_of(left));
        self.read("right", rn, &schema_of(right));
        let lcols = crate::plan::names(left);
        let rcols = crate::plan::names(right);
        let cond: Vec<String> =
            j.on.iter()
                .map(|k| format!("({} == {})", qcol("l", &k.left), qcol("r", &k.right)))
                .collect();
        let cond = cond.join(" & ");
        let same_key = |n: &str| j.on.iter().any(|k| k.left == n && k.right == n);
        let anti = |this: &str, other: &str, cols: &[String], side: &str| -> String {
            let sel: Vec<String> = cols
                .iter()
                .map(|n| format!("{}.alias({})", qcol(side, n), pystr(n)))
                .collect();
            let (a, b) = if side == "l" { ("l", "r") } else { ("r", "l") };
            format!(
                "{this}.alias(\"{a}\").join({other}.alias(\"{b}\"), {cond}, \"left_anti\").select({})",
                sel.join(", ")
            )
        };
        self.comment(&format!(
            "join ({}): the first input's columns, then the second's",
            j.join_type.as_str()
        ));
        let main = match j.join_type {
            JoinType::LeftAnti => anti("left", "right", &lcols, "l"),
            JoinType::RightAnti => anti("right", "left", &rcols, "r"),
            jt => {
                let joined = match jt {
                    JoinType::Cross => {
                        "left.alias(\"l\").crossJoin(right.alias(\"r\"))".to_string()
                    }
                    _ => {
                        let how = match jt {
                            JoinType::Left => "left",
                            JoinType::Right => "right",
                            JoinType::Full => "full",
                            _ => "inner",
                        };
                        format!("left.alias(\"l\").join(right.alias(\"r\"), {cond}, \"{how}\")")
                    }
                };
                let mut sel = Vec::new();
                for n in &lcols {
                    let e = if same_key(n) && matches!(jt, JoinType::Right | JoinType::Full) {
                        // A key of one name on both sides: from whichever side has the row.
                        format!("F.coalesce({}, {})", qcol("l", n), qcol("r", n))
                    } else {
                        qcol("l", n)
                    };
                    sel.push(format!("{e}.alias({})", pystr(n)));
                }
                for n in &rcols {
                    if same_key(n) {
                        continue;
                    }
                    let out = if lcols.contains(n) {
                        format!("{rn}_{n}")
                    } else {
                        n.clone()
                    };
                    sel.push(format!("{}.alias({})", qcol("r", n), pystr(&out)));
                }
                call(&format!("{joined}.select"), &sel)
            }
        };
        self.line(&format!("df = {main}"));
        let first = self
            .outputs
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_default();
        self.write("df", &first);
        if let Some(u) = &j.unmatched_left {
            self.comment("the first input's rows that matched nothing");
            self.line(&format!(
                "unmatched_left = {}",
                anti("left", "right", &lcols, "l")
            ));
            self.write("unmatched_left", u);
        }
        if let Some(u) = &j.unmatched_right {
            self.comment("the second input's rows that matched nothing");
            self.line(&format!(
                "unmatched_right = {}",
                anti("right", "left", &rcols, "r")
            ));
            self.write("unmatched_right", u);
        }
        Ok(())
    }

    /// The sorted distinct non-null values of `column`, read when the program runs, into
    /// `values` (at most `max`, else the run fails as the built-in engine's does).
    fn discover(&mut self, column: &str, t: &DataType, max: u32, path: &str) {
        let c = col(column);
        let sel = if matches!(t, DataType::Timestamp(..)) {
            format!("F.unix_micros({c})")
        } else {
            c.clone()
        };
        self.line(&format!(
            "values = [r[0] for r in df.where({c}.isNotNull()).select({sel}).distinct().orderBy({sel}.asc_nulls_first()).limit({}).collect()]",
            max as u64 + 1
        ));
        self.line(&format!(
            "_discovered(values, {max}, {}, {})",
            pystr(path),
            pystr(column)
        ));
    }

    /// `column == v`, for a value `v` that [`Gen::discover`] found.
    fn is_value(column: &str, t: &DataType) -> String {
        if matches!(t, DataType::Timestamp(..)) {
            format!("(F.unix_micros({}) == F.lit(v))", col(column))
        } else {
            format!("({} == F.lit(v))", col(column))
        }
    }

    fn pivot(&mut self, df: &DataFrame, p: &PivotSpec) -> R<()> {
        let pt = ty(df, "column", &p.column)?;
        self.comment(&format!(
            "pivot, in two passes: the values of `{}` are read from the data first",
            p.column
        ));
        self.discover(&p.column, &pt, p.max_columns.unwrap_or(100), "column");
        self.line("aggs = []");
        self.line("for v in values:");
        self.line(&format!("    hit = {}", Self::is_value(&p.column, &pt)));
        self.line("    name = _value_name(v)");
        if p.aggregates.is_empty() {
            self.line("    aggs.append(F.count(F.when(hit, F.lit(1))).alias(name + \"_count\"))");
        }
        for (i, a) in p.aggregates.iter().enumerate() {
            let t = ty(df, &format!("aggregates[{i}].column"), &a.column)?;
            for f in &a.functions {
                let masked = py(format!("F.when(hit, {})", col(&a.column)), st_of_column(&t));
                let e = aggregate(*f, &masked, &t);
                self.line(&format!(
                    "    aggs.append({e}.alias(name + {}))",
                    pystr(&format!("_{}_{}", a.column, f.as_str()))
                ));
            }
        }
        let keys: Vec<String> = p.index.iter().map(|c| col(c)).collect();
        self.line(&format!(
            "df = {}.agg(*aggs) if aggs else {}.distinct()",
            call("df.groupBy", &keys),
            call("df.select", &keys)
        ));
        Ok(())
    }

    /// The code of one Prepare step, on `df` (its input, for the columns' types).
    fn step(&mut self, df: &DataFrame, path: &str, step: &Step) -> R<()> {
        let p = |field: &str| format!("{path}.{field}");
        let what = format!("{path} ({})", step.type_name());
        let names = crate::plan::names(df);
        let column = |name: &str, field: &str| -> R<(Py, DataType)> {
            let t = ty(df, &p(field), name)?;
            Ok((Py::column(name, &t), t))
        };
        let dynamic = self.dynamic;
        let code = match step {
            Step::Rename { columns } => {
                if dynamic {
                    let map: Vec<String> = columns
                        .iter()
                        .map(|(a, b)| format!("{}: {}", pystr(a), pystr(b)))
                        .collect();
                    format!(
                        "df = df.select([_col(c).alias({{{}}}.get(c, c)) for c in df.columns])",
                        map.join(", ")
                    )
                } else {
                    let sel: Vec<String> = names
                        .iter()
                        .map(|n| match columns.get(n) {
                            Some(to) => format!("{}.alias({})", col(n), pystr(to)),
                            None => col(n),
                        })
                        .collect();
                    format!("df = {}", call("df.select", &sel))
                }
            }
            Step::Keep { columns } => format!(
                "df = {}",
                call(
                    "df.select",
                    &columns.iter().map(|c| col(c)).collect::<Vec<_>>()
                )
            ),
            Step::Remove { columns } => {
                if dynamic {
                    format!(
                        "df = df.select([_col(c) for c in df.columns if c not in {}])",
                        pylist(columns)
                    )
                } else {
                    let kept: Vec<String> = names
                        .iter()
                        .filter(|n| !columns.contains(n))
                        .map(|n| col(n))
                        .collect();
                    format!("df = {}", call("df.select", &kept))
                }
            }
            Step::Reorder { columns } => {
                let mut sel: Vec<String> = columns.iter().map(|c| col(c)).collect();
                if dynamic {
                    sel.push(format!(
                        "*[_col(c) for c in df.columns if c not in {}]",
                        pylist(columns)
                    ));
                } else {
                    sel.extend(
                        names
                            .iter()
                            .filter(|n| !columns.contains(n))
                            .map(|n| col(n)),
                    );
                }
                format!("df = {}", call("df.select", &sel))
            }
            Step::Copy { column: c, to } => {
                let (x, _) = column(c, "column")?;
                with_columns("df", &[(to.clone(), x)])
            }
            Step::Formula {
                column: c,
                expression,
                on_error,
            } => {
                let fp = p("expression");
                let (e, t) = Formula {
                    schema: df.schema(),
                    on_error: *on_error,
                    what: &what,
                    path: &fp,
                }
                .compile(expression)?;
                let e = if is_null(&t) {
                    null_of(&DataType::Utf8)
                } else {
                    e.to(&t)
                };
                with_columns("df", &[(c.clone(), e)])
            }
            Step::IfThenElse {
                to,
                rules,
                otherwise,
            } => {
                let mut branches = Vec::new();
                for (i, r) in rules.iter().enumerate() {
                    let (wp, tp) = (
                        p(&format!("rules[{i}].when")),
                        p(&format!("rules[{i}].then")),
                    );
                    let (c, _) = Formula {
                        schema: df.schema(),
                        on_error: OnError::Null,
                        what: &what,
                        path: &wp,
                    }
                    .compile(&r.when)?;
                    let v = Formula {
                        schema: df.schema(),
                        on_error: OnError::Null,
                        what: &what,
                        path: &tp,
                    }
                    .compile(&r.then)?;
                    branches.push((c, v));
                }
                let other = match otherwise {
                    Some(e) => {
                        let ep = p("else");
                        Some(
                            Formula {
                                schema: df.schema(),
                                on_error: OnError::Null,
                                what: &what,
                                path: &ep,
                            }
                            .compile(e)?,
                        )
                    }
                    None => None,
                };
                let mut ty = DataType::Null;
                for (_, t) in branches.iter().map(|(_, v)| v).chain(other.iter()) {
                    ty = match (&ty, t) {
                        (a, b) if is_null(b) => a.clone(),
                        (a, b) if is_null(a) => stored_type(b),
                        (a, b) if is_int(a) && is_int(b) => DataType::Int64,
                        (a, b) if is_numeric(a) && is_numeric(b) => DataType::Float64,
                        (a, _) => stored_type(a),
                    };
                }
                if is_null(&ty) {
                    ty = DataType::Utf8;
                }
                let mut e = String::from("F");
                for (i, (c, (v, _))) in branches.into_iter().enumerate() {
                    let _ = write!(
                        e,
                        "{}.when({}, {})",
                        if i == 0 { "" } else { "\n" },
                        c.to(&DataType::Boolean).code,
                        v.to(&ty).code
                    );
                }
                let o = match other {
                    Some((o, _)) => o.to(&ty),
                    None => null_of(&ty),
                };
                let _ = write!(e, "\n.otherwise({})", o.code);
                let e = if e.matches('\n').count() <= 2 && e.len() < 100 {
                    e.replace('\n', "")
                } else {
                    format!("(\n    {}\n)", e.replace('\n', "\n    "))
                };
                with_columns("df", &[(to.clone(), py(e, st_for(&ty)))])
            }
            Step::FilterValue {
                column: c,
                values,
                matching,
                action,
                flag_column,
            } => {
                let (x, t) = column(c, "column")?;
                let mut conds = Vec::new();
                for (i, v) in values.iter().enumerate() {
                    let vp = p(&format!("values[{i}]"));
                    conds.push(match matching {
                        Matching::Exact => {
                            let l = literal(&t, v, &vp)?;
                            let x = if is_temporal(&t) { x.clone().to(&ts()) } else { x.clone() };
                            format!("({} == {})", x.code, l.code)
                        }
                        Matching::Substring => {
                            let Literal::Str(s) = v else { return Err(internal(&vp, "substring matching takes text")) };
                            x.method("contains", &[format!("F.lit({})", pystr(s))])
                        }
                        Matching::Regex => {
                            let Literal::Str(s) = v else { return Err(internal(&vp, "regex matching takes text")) };
                            let j = java_regex(s, false).map_err(|why| unavailable(&vp, None, "this regular expression", &format!("{why} has no exact counterpart in Java's regular expressions")))?;
                            x.method("rlike", &[pystr(&j)])
                        }
                    });
                }
                let cond = if conds.len() == 1 {
                    conds.remove(0)
                } else {
                    format!("({})", conds.join(" | "))
                };
                self.act(df, path, &cond, *action, Some(c), flag_column.as_deref())?
            }
            Step::FilterRange {
                column: c,
                min,
                max,
                action,
                flag_column,
            } => {
                let (x, _) = column(c, "column")?;
                let x = x.to(&DataType::Float64);
                let mut conds = Vec::new();
                if let Some(lo) = min {
                    conds.push(format!("({} >= F.lit({}))", x.code, pyfloat(*lo)));
                }
                if let Some(hi) = max {
                    conds.push(format!("({} <= F.lit({}))", x.code, pyfloat(*hi)));
                }
                let cond = if conds.len() == 1 {
                    conds.remove(0)
                } else {
                    format!("({})", conds.join(" & "))
                };
                self.act(df, path, &cond, *action, Some(c), flag_column.as_deref())?
            }
            Step::FilterDate {
                column: c,
                from,
                to,
                action,
                flag_column,
            } => {
                let (x, _) = column(c, "column")?;
                let x = x.to(&ts());
                let mut conds = Vec::new();
                for (bound, field, op) in [(from, "from", ">="), (to, "to", "<=")] {
                    if let Some(b) = bound {
                        let us = date_literal(b).ok_or_else(|| {
                            internal(&p(field), format!("{b:?} is not an ISO date"))
                        })?;
                        conds.push(format!("({} {op} {})", x.code, ts_literal(us)));
                    }
                }
                let cond = if conds.len() == 1 {
                    conds.remove(0)
                } else {
                    format!("({})", conds.join(" & "))
                };
                self.act(df, path, &cond, *action, Some(c), flag_column.as_deref())?
            }
            Step::FilterFormula {
                expression,
                action,
                flag_column,
            } => {
                let fp = p("expression");
                let (c, _) = Formula {
                    schema: df.schema(),
                    on_error: OnError::Null,
                    what: &what,
                    path: &fp,
                }
                .compile(expression)?;
                let c = c.to(&DataType::Boolean);
                self.act(df, path, &c.code, *action, None, flag_column.as_deref())?
            }
            Step::RemoveEmpty { columns, how } => {
                let mut empties = Vec::new();
                for c in columns {
                    let (x, t) = column(c, "columns")?;
                    empties.push(empty(&x, &t).code);
                }
                let cond = match empties.len() {
                    0 => "F.lit(False)".to_string(),
                    1 => empties.remove(0),
                    _ => format!(
                        "({})",
                        empties.join(if *how == EmptyHow::Any { " | " } else { " & " })
                    ),
                };
                format!("df = df.where(~{cond})")
            }
            Step::FillEmpty { columns, value } => {
                let mut sets = Vec::new();
                let mut types = std::collections::HashMap::new();
                for c in columns {
                    let t = match types.get(c) {
                        Some(t) => DataType::clone(t),
                        None => ty(df, &p("columns"), c)?,
                    };
                    let x = Py::column(c, &t);
                    let st = stored_type(&t);
                    let v = literal(&t, value, &p("value"))?.to(&st);
                    let e = format!(
                        "F.when({}, {}).otherwise({})",
                        empty(&x, &t).code,
                        v.code,
                        x.clone().to(&st).code
                    );
                    types.insert(c.clone(), st.clone());
                    sets.push((c.clone(), py(e, st_for(&st))));
                }
                with_columns("df", &sets)
            }
            Step::FindReplace {
                column: c,
                replacements,
                matching,
                to,
            } => {
                let (x, _) = column(c, "column")?;
                let mut e = x.clone();
                match matching {
                    Matching::Exact => {
                        if !replacements.is_empty() {
                            let mut s = String::from("F");
                            for r in replacements {
                                let _ = write!(
                                    s,
                                    ".when({} == F.lit({}), F.lit({}))",
                                    x.code,
                                    pystr(&r.find),
                                    pystr(&r.replace)
                                );
                            }
                            let _ = write!(s, ".otherwise({})", x.code);
                            e = py(s, St::Str);
                        }
                    }
                    Matching::Substring => {
                        for r in replacements {
                            e = py(
                                format!(
                                    "F.replace({}, F.lit({}), F.lit({}))",
                                    e.code,
                                    pystr(&r.find),
                                    pystr(&r.replace)
                                ),
                                St::Str,
                            );
                        }
                    }
                    Matching::Regex => {
                        for (i, r) in replacements.iter().enumerate() {
                            let fp = p(&format!("replacements[{i}].find"));
                            let j = java_regex(&r.find, false).map_err(|why| unavailable(&fp, None, "this regular expression", &format!("{why} has no exact counterpart in Java's regular expressions")))?;
                            e = py(
                                format!(
                                    "F.regexp_replace({}, {}, {})",
                                    e.code,
                                    pystr(&replace_all_pattern(&r.find, &j)),
                                    pystr(&java_replacement(&r.replace))
                                ),
                                St::Str,
                            );
                        }
                    }
                }
                with_columns("df", &[(to.clone().unwrap_or_else(|| c.clone()), e)])
            }
            Step::StringTransform { columns, mode } => {
                let sets: Vec<(String, Py)> = columns
                    .iter()
                    .map(|c| {
                        let x = col(c);
                        let e = match mode {
                            StringMode::Upper => format!("F.upper({x})"),
                            StringMode::Lower => format!("F.lower({x})"),
                            StringMode::Trim => format!("F.trim({x})"),
                            StringMode::NormalizeSpaces => format!(
                                "F.trim(F.regexp_replace({x}, \"[ \\\\t\\\\n\\\\r]+\", \" \"))"
                            ),
                        };
                        (c.clone(), py(e, St::Str))
                    })
                    .collect();
                with_columns("df", &sets)
            }
            Step::RegexExtract {
                column: c,
                pattern,
                to,
            } => {
                let (x, _) = column(c, "column")?;
                let groups = regex::Regex::new(pattern)
                    .map(|r| r.captures_len() - 1)
                    .unwrap_or(0);
                let mut sets = Vec::new();
                for (i, out) in to.iter().enumerate() {
                    let group = if groups == 0 { 0 } else { i as i64 + 1 };
                    let e = regex_extract(&x, pattern, false, group).map_err(|why| {
                        unavailable(&p("pattern"), None, "this regular expression", &why)
                    })?;
                    sets.push((out.clone(), e));
                }
                with_columns("df", &sets)
            }
            Step::SplitColumn {
                column: c,
                separator,
                to,
            } => {
                let (x, _) = column(c, "column")?;
                let sets: Vec<(String, Py)> = to
                    .iter()
                    .enumerate()
                    .map(|(i, out)| (out.clone(), split_part(&x, separator, i as i64 + 1)))
                    .collect();
                with_columns("df", &sets)
            }
            Step::Concat {
                columns,
                separator,
                to,
            } => {
                let mut parts = vec![pystr(separator)];
                for c in columns {
                    let (x, t) = column(c, "columns")?;
                    parts.push(text_of(x, &t).code);
                }
                with_columns(
                    "df",
                    &[(
                        to.clone(),
                        py(format!("F.concat_ws({})", parts.join(", ")), St::Str),
                    )],
                )
            }
            Step::Round {
                columns,
                digits,
                mode,
            } => {
                let mut sets = Vec::new();
                let mut rounded: Vec<String> = Vec::new();
                for c in columns {
                    let t = if rounded.contains(c) {
                        DataType::Float64
                    } else {
                        ty(df, &p("columns"), c)?
                    };
                    if is_int(&t) && *digits >= 0 {
                        continue;
                    }
                    let x = Py::column(c, &t).to(&DataType::Float64);
                    let scale = pyfloat(10f64.powi(*digits));
                    let e = match mode {
                        RoundMode::Round => format!("_round({}, {digits})", x.code),
                        RoundMode::Floor => {
                            format!("(_floor({} * F.lit({scale})) / F.lit({scale}))", x.code)
                        }
                        RoundMode::Ceil => {
                            format!("(_ceil({} * F.lit({scale})) / F.lit({scale}))", x.code)
                        }
                    };
                    rounded.push(c.clone());
                    sets.push((c.clone(), py(e, St::Double)));
                }
                if sets.is_empty() {
                    "pass  # integers are whole already".to_string()
                } else {
                    with_columns("df", &sets)
                }
            }
            Step::Clip {
                column: c,
                min,
                max,
            } => {
                let (x, _) = column(c, "column")?;
                let mut x = x.to(&DataType::Float64);
                if let Some(lo) = min {
                    x = py(
                        format!(
                            "F.when({} < F.lit({}), F.lit({})).otherwise({})",
                            x.code,
                            pyfloat(*lo),
                            pyfloat(*lo),
                            x.code
                        ),
                        St::Double,
                    );
                }
                if let Some(hi) = max {
                    x = py(
                        format!(
                            "F.when({} > F.lit({}), F.lit({})).otherwise({})",
                            x.code,
                            pyfloat(*hi),
                            pyfloat(*hi),
                            x.code
                        ),
                        St::Double,
                    );
                }
                with_columns("df", &[(c.clone(), x)])
            }
            Step::Bin {
                column: c,
                width,
                to,
            } => {
                let (x, _) = column(c, "column")?;
                let w = pyfloat(*width);
                let e = py(
                    format!(
                        "(_floor({} / F.lit({w})) * F.lit({w}))",
                        x.to(&DataType::Float64).code
                    ),
                    St::Double,
                );
                with_columns("df", &[(to.clone().unwrap_or_else(|| c.clone()), e)])
            }
            Step::Convert {
                column: c,
                to,
                on_error,
            } => {
                let (x, t) = column(c, "column")?;
                let target = arrow_type(*to);
                let e = convert(&x, &t, *to, &p("to"))?;
                let e = match on_error {
                    OnError::Null => e,
                    OnError::Fail => {
                        let why =
                            format!("{what}: a value of `{c}` is not a valid {}", to.as_str());
                        py(
                            format!(
                                "F.when({}.isNotNull() & {}.isNull(), F.raise_error({}).cast({})).otherwise({})",
                                x.code,
                                e.code,
                                pystr(&why),
                                pystr(spark_type(&target).unwrap_or("string")),
                                e.code
                            ),
                            e.st,
                        )
                    }
                };
                with_columns("df", &[(c.clone(), e.to(&target))])
            }
            Step::Hash { columns } => {
                let mut sets = Vec::new();
                let mut hashed: Vec<String> = Vec::new();
                for c in columns {
                    let t = if hashed.contains(c) {
                        DataType::Utf8
                    } else {
                        ty(df, &p("columns"), c)?
                    };
                    let x = Py::column(c, &t);
                    hashed.push(c.clone());
                    sets.push((
                        c.clone(),
                        py(format!("F.sha2({}, 256)", text_of(x, &t).code), St::Str),
                    ));
                }
                with_columns("df", &sets)
            }
            Step::ParseDate {
                column: c,
                formats,
                to,
            } => {
                let (x, _) = column(c, "column")?;
                let mut parts = Vec::new();
                for (i, f) in formats.iter().enumerate() {
                    let sp = spark_date_pattern(f, true).map_err(|why| {
                        unavailable(
                            &p(&format!("formats[{i}]")),
                            None,
                            "this date pattern",
                            &why,
                        )
                    })?;
                    parts.push(format!(
                        "F.try_to_timestamp(_trim_space({}), F.lit({}))",
                        x.code,
                        pystr(&sp)
                    ));
                }
                let e = if parts.len() == 1 {
                    parts.remove(0)
                } else {
                    format!("F.coalesce({})", parts.join(", "))
                };
                with_columns(
                    "df",
                    &[(to.clone().unwrap_or_else(|| c.clone()), py(e, St::Ts))],
                )
            }
            Step::FormatDate {
                column: c,
                format,
                to,
            } => {
                let (x, _) = column(c, "column")?;
                let sp = spark_date_pattern(format, false)
                    .map_err(|why| unavailable(&p("format"), None, "this date pattern", &why))?;
                let e = py(
                    format!("F.date_format({}, {})", x.to(&ts()).code, pystr(&sp)),
                    St::Str,
                );
                with_columns("df", &[(to.clone().unwrap_or_else(|| c.clone()), e)])
            }
            Step::DatePart { column: c, parts } => {
                let (x, _) = column(c, "column")?;
                let x = x.to(&ts());
                let sets: Vec<(String, Py)> = parts
                    .iter()
                    .map(|part| {
                        (
                            format!("{c}_{}", part.as_str()),
                            date_part(part.as_str(), &x),
                        )
                    })
                    .collect();
                with_columns("df", &sets)
            }
            Step::DateDiff {
                column: c,
                other,
                unit,
                to,
            } => {
                let (a, _) = column(c, "column")?;
                let (b, _) = column(other, "other")?;
                let e = date_diff(&a.to(&ts()), &b.to(&ts()), *unit)
                    .ok_or_else(|| internal(&p("unit"), "a unit of varying length"))?;
                with_columns("df", &[(to.clone(), e)])
            }
            Step::DateTrunc {
                column: c,
                unit,
                to,
            } => {
                let (x, _) = column(c, "column")?;
                let e = py(
                    format!(
                        "F.date_trunc({}, {})",
                        pystr(unit.as_str()),
                        x.to(&ts()).code
                    ),
                    St::Ts,
                );
                with_columns("df", &[(to.clone().unwrap_or_else(|| c.clone()), e)])
            }
            Step::UnixTime {
                column: c,
                unit,
                to,
            } => {
                let (x, t) = column(c, "column")?;
                let per = match unit {
                    EpochUnit::Seconds => 1_000_000i64,
                    EpochUnit::Milliseconds => 1_000,
                };
                let micros = if is_int(&t) {
                    format!("({} * F.lit({per}))", x.to(&DataType::Int64).code)
                } else {
                    to_long(&py(
                        format!(
                            "({} * F.lit({}))",
                            x.to(&DataType::Float64).code,
                            pyfloat(per as f64)
                        ),
                        St::Double,
                    ))
                    .code
                };
                with_columns(
                    "df",
                    &[(
                        to.clone().unwrap_or_else(|| c.clone()),
                        py(format!("F.timestamp_micros({micros})"), St::Ts),
                    )],
                )
            }
            Step::Fold {
                columns,
                key_column,
                value_column,
            } => {
                let mut types = Vec::new();
                for c in columns {
                    types.push(ty(df, &p("columns"), c)?);
                }
                let all = |f: fn(&DataType) -> bool| types.iter().all(f);
                let vt = if all(is_int) {
                    Some(DataType::Int64)
                } else if all(is_numeric) {
                    Some(DataType::Float64)
                } else if types
                    .iter()
                    .all(|t| stored_type(t) == stored_type(&types[0]))
                {
                    Some(stored_type(&types[0]))
                } else {
                    None
                };
                let kept = if dynamic {
                    "*kept".to_string()
                } else {
                    names
                        .iter()
                        .filter(|n| !columns.contains(n))
                        .map(|n| col(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut parts = Vec::new();
                for (c, t) in columns.iter().zip(&types) {
                    let x = Py::column(c, t);
                    let v = match &vt {
                        Some(vt) => x.to(vt),
                        None => text_of(x, t),
                    };
                    let sep = if kept.is_empty() { "" } else { ", " };
                    parts.push(format!(
                        "df.select({kept}{sep}F.lit({}).alias({}), {}.alias({}))",
                        pystr(c),
                        pystr(key_column),
                        v.code,
                        pystr(value_column)
                    ));
                }
                let mut s = String::new();
                if dynamic {
                    let _ = writeln!(
                        s,
                        "kept = [_col(c) for c in df.columns if c not in {}]",
                        pylist(columns)
                    );
                }
                s.push_str("df = (\n    ");
                s.push_str(&parts[0]);
                for part in &parts[1..] {
                    let _ = write!(s, "\n    .unionAll({part})");
                }
                s.push_str("\n)");
                s
            }
            Step::Unfold {
                column: c,
                value_column,
                prefix,
                max_columns,
            } => {
                let (_, t) = column(c, "column")?;
                let then = match value_column {
                    Some(v) => column(v, "value_column")?.0,
                    None => py("F.lit(1).cast(\"long\")", St::Long),
                };
                let prefix = prefix.clone().unwrap_or_else(|| format!("{c}_"));
                self.line(&format!(
                    "# (in two passes: the values of `{c}` are read from the data first)"
                ));
                self.discover(c, &t, max_columns.unwrap_or(100), path);
                self.line("for v in values:");
                format!(
                    "    df = df.withColumn({} + _value_name(v), F.when({}, {}))",
                    pystr(&prefix),
                    Self::is_value(c, &t),
                    then.code
                )
            }
        };
        self.line(&code);
        Ok(())
    }

    /// A filter's action on the rows where `cond` holds (null counts as false).
    fn act(
        &self,
        df: &DataFrame,
        path: &str,
        cond: &str,
        action: RowAction,
        column: Option<&str>,
        flag: Option<&str>,
    ) -> R<String> {
        Ok(match action {
            RowAction::Keep => format!("df = df.where({cond})"),
            RowAction::Remove => format!("df = df.where(~F.coalesce({cond}, F.lit(False)))"),
            RowAction::Flag => {
                let f =
                    flag.ok_or_else(|| internal(path, "action = \"flag\" needs `flag_column`"))?;
                with_columns(
                    "df",
                    &[(
                        f.to_string(),
                        py(format!("F.coalesce({cond}, F.lit(False))"), St::Bool),
                    )],
                )
            }
            RowAction::Clear => {
                let c = column.ok_or_else(|| {
                    internal(path, "action = \"clear\" clears the cells of one column")
                })?;
                let t = ty(df, &format!("{path}.column"), c)?;
                let st = stored_type(&t);
                let e = format!(
                    "F.when({cond}, {}).otherwise({})",
                    null_of(&st).code,
                    Py::column(c, &t).to(&st).code
                );
                with_columns("df", &[(c.to_string(), py(e, st_for(&st)))])
            }
        })
    }
}

/// The Spark aggregate of `f` over `x` (a column of type `t`, or a masked one).
fn aggregate(f: AggFn, x: &Py, t: &DataType) -> String {
    let f64c = |x: &Py| x.clone().to(&DataType::Float64).code;
    match f {
        AggFn::Count => format!("F.count({})", x.code),
        AggFn::CountDistinct => format!("F.count_distinct({})", x.code),
        AggFn::Sum if is_int(t) => format!("F.sum({})", x.clone().to(&DataType::Int64).code),
        AggFn::Sum => format!("F.sum({})", f64c(x)),
        AggFn::Avg => format!("F.avg({})", f64c(x)),
        AggFn::Stddev => format!("F.stddev_samp({})", f64c(x)),
        AggFn::Median => format!("F.median({})", f64c(x)),
        AggFn::Min => format!("F.min({})", x.code),
        AggFn::Max => format!("F.max({})", x.code),
        AggFn::First => format!("F.first({})", x.code),
        AggFn::Last => format!("F.last({})", x.code),
    }
}

/// The built-in engine's conversions (`Planner::convert`).
fn convert(x: &Py, from: &DataType, to: ColumnType, path: &str) -> R<Py> {
    let e = x.clone();
    Ok(match to {
        ColumnType::String => text_of(e, from),
        ColumnType::Int64 if is_string(from) => parse_int(&e),
        ColumnType::Int64 if is_float(from) => to_long(&e.to(&DataType::Float64)),
        ColumnType::Int64 if is_int(from) || is_bool(from) => e.to(&DataType::Int64),
        ColumnType::Float64 if is_string(from) => parse_float(&e),
        ColumnType::Float64 if is_numeric(from) => e.to(&DataType::Float64),
        ColumnType::Bool if is_string(from) => {
            let l = format!("F.lower(F.trim({}))", e.code);
            py(
                format!(
                    "F.when({l} == F.lit(\"true\"), F.lit(True)).when({l} == F.lit(\"false\"), F.lit(False))"
                ),
                St::Bool,
            )
        }
        ColumnType::Bool if is_numeric(from) => py(
            format!("({} != F.lit(0.0))", e.to(&DataType::Float64).code),
            St::Bool,
        ),
        ColumnType::Bool if is_bool(from) => e,
        ColumnType::Date | ColumnType::Timestamp if is_string(from) => {
            let formats = [
                "yyyy-MM-dd",
                "yyyy-MM-dd'T'HH:mm:ss",
                "yyyy-MM-dd HH:mm:ss",
                "yyyy-MM-dd'T'HH:mm:ss.SSSSSSSSS",
                "yyyy-MM-dd HH:mm:ss.SSSSSSSSS",
            ];
            let parts: Vec<String> = formats
                .iter()
                .map(|f| {
                    format!(
                        "F.try_to_timestamp(_trim_space({}), F.lit({}))",
                        e.code,
                        pystr(f)
                    )
                })
                .collect();
            let parsed = py(format!("F.coalesce({})", parts.join(", ")), St::Ts);
            if to == ColumnType::Date {
                parsed.to(&DataType::Date32)
            } else {
                parsed
            }
        }
        ColumnType::Date if is_temporal(from) => e.to(&DataType::Date32),
        ColumnType::Timestamp if is_temporal(from) => e.to(&ts()),
        other => {
            return Err(internal(
                path,
                format!(
                    "a {} column does not convert to {}",
                    type_name(from),
                    other.as_str()
                ),
            ));
        }
    })
}

/// A window over these partition and order expressions.
fn window_spec(part: &[String], order: &[String]) -> String {
    match (part.is_empty(), order.is_empty()) {
        (false, false) => format!(
            "Window.partitionBy({}).orderBy({})",
            part.join(", "),
            order.join(", ")
        ),
        (false, true) => format!("Window.partitionBy({})", part.join(", ")),
        (true, false) => format!("Window.orderBy({})", order.join(", ")),
        (true, true) => "Window.partitionBy()".to_string(),
    }
}

/// `base`, or `base` with a number, so that it is none of `names`.
fn fresh(base: &str, names: &[String]) -> String {
    let mut n = base.to_string();
    let mut i = 1;
    while names.contains(&n) {
        n = format!("{base}_{i}");
        i += 1;
    }
    n
}

/// The functions the generated programs define when they use them: name, text, and the other
/// helpers it calls.
const HELPERS: &[(&str, &str, &[&str])] = &[
    (
        "_col",
        r#"
def _col(name):
    """A column by its exact name (dots and backquotes included)."""
    return F.col("`" + name.replace("`", "``") + "`")"#,
        &[],
    ),
    (
        "_floor",
        r#"
def _floor(x):
    """The floor of a double, as a double (Spark's floor gives a long). Zeros keep their sign,
    and beyond 2^52 every double is whole already (NaN, which Spark orders above all, too)."""
    return F.when((F.abs(x) >= F.lit(4503599627370496.0)) | (x == F.lit(0.0)), x).otherwise(F.floor(x).cast("double"))"#,
        &[],
    ),
    (
        "_ceil",
        r#"
def _ceil(x):
    """The ceiling of a double, as a double (see _floor): -0.0 between -1 and 0."""
    whole = (F.abs(x) >= F.lit(4503599627370496.0)) | (x == F.lit(0.0))
    return F.when(whole, x).when((x < F.lit(0.0)) & (x > F.lit(-1.0)), F.lit(-0.0)).otherwise(F.ceil(x).cast("double"))"#,
        &[],
    ),
    (
        "_round",
        r#"
def _round(x, digits):
    """x rounded half away from zero on its shortest decimal form (Spark's round on doubles),
    a negative number that rounds to zero giving -0.0, as in the built-in engine."""
    r = F.round(x, digits)
    negative = (x < F.lit(0.0)) | (x.cast("string") == F.lit("-0.0"))
    return F.when((r == F.lit(0.0)) & negative, F.lit(-0.0)).otherwise(r)"#,
        &[],
    ),
    (
        "_pow",
        r#"
def _pow(x, y):
    """x to the power y, as C's pow (the built-in engine's): 1 for 1 to any power and for -1 to
    an infinite one, where Java's gives NaN."""
    one = y.isNotNull() & ((x == F.lit(1.0)) | ((x == F.lit(-1.0)) & (F.abs(y) == F.lit(float("inf")))))
    return F.when(one, F.lit(1.0)).otherwise(F.pow(x, y))"#,
        &[],
    ),
    (
        "_trim_space",
        r#"
def _trim_space(s):
    """s without leading and trailing Unicode whitespace (Rust's str::trim)."""
    return F.regexp_replace(s, "(?U)^\\s+|\\s+\\z", "")"#,
        &[],
    ),
    (
        "_is_blank",
        r#"
def _is_blank(s):
    """True where s is null or only spaces, tabs and line breaks."""
    return s.isNull() | s.rlike("^[ \\t\\n\\r]*\\z")"#,
        &[],
    ),
    (
        "_parse_float",
        r#"
def _parse_float(s):
    """s read as a decimal number (digits, one point, an exponent; whitespace around it), else
    null: not inf, nan, hexadecimal or 1.5d, which Spark's cast would read."""
    t = _trim_space(s)
    return F.when(t.rlike("^[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]+)?\\z"), t.cast("double"))"#,
        &["_trim_space"],
    ),
    (
        "_parse_int",
        r#"
def _parse_int(s):
    """s read as a whole number in 64 bits (whitespace around it), else null."""
    t = _trim_space(s)
    return F.when(t.rlike("^[+-]?[0-9]+\\z"), t.cast("long"))"#,
        &["_trim_space"],
    ),
    (
        "_arrow_float_text",
        r#"
def _arrow_float_text(x):
    """A double as text the way Arrow casts it (Rust's ryu: 10000000.0, 1e20, 1.5e-7), from the
    shortest digits Spark writes (1.0E7)."""
    s = x.cast("string")
    pattern = "^(-?)([0-9]+)\\.([0-9]+)(?:E(-?[0-9]+))?\\z"
    sign = F.regexp_extract(s, pattern, 1)
    whole = F.regexp_extract(s, pattern, 2)
    raw = F.concat(whole, F.regexp_extract(s, pattern, 3))
    exp = F.coalesce(F.regexp_extract(s, pattern, 4).cast("int"), F.lit(0))
    unpadded = F.regexp_replace(raw, "^0+", "")
    digits = F.regexp_replace(unpadded, "0+\\z", "")
    # The value is 0.digits × 10^point.
    point = F.length(whole) + exp - (F.length(raw) - F.length(unpadded))
    n = F.length(digits)
    text = (
        F.when((point >= n) & (point <= 16), F.concat(digits, F.repeat(F.lit("0"), point - n), F.lit(".0")))
        .when((point > 0) & (point <= 16), F.concat(F.substr(digits, F.lit(1), point), F.lit("."), F.substr(digits, point + 1)))
        .when((point > -5) & (point <= 0), F.concat(F.lit("0."), F.repeat(F.lit("0"), -point), digits))
        .when(n == 1, F.concat(digits, F.lit("e"), (point - 1).cast("string")))
        .otherwise(F.concat(F.substr(digits, F.lit(1), F.lit(1)), F.lit("."), F.substr(digits, F.lit(2)), F.lit("e"), (point - 1).cast("string")))
    )
    return (
        F.when(F.isnan(x), F.lit("NaN"))
        .when(x == float("inf"), F.lit("inf"))
        .when(x == float("-inf"), F.lit("-inf"))
        .when(x == F.lit(0.0), F.concat(sign, F.lit("0.0")))
        .otherwise(F.concat(sign, text))
    )"#,
        &[],
    ),
    (
        "_to_long",
        r#"
def _to_long(x):
    """A double truncated toward zero to a long; null for NaN, infinities and what does not
    fit in 64 bits, as on the built-in engine."""
    bad = F.isnan(x) | (x < F.lit(-9.223372036854775808e18)) | (x >= F.lit(9.223372036854775808e18))
    return F.when(bad, F.lit(None).cast("long")).otherwise(x.cast("long"))"#,
        &[],
    ),
    (
        "_arrow_ts_text",
        r#"
def _arrow_ts_text(t):
    """A timestamp as text the way Arrow casts it: 2024-01-31T10:00:00, with .fff or .ffffff
    where it has a fraction of a second."""
    us = F.pmod(F.unix_micros(t), F.lit(1000000))
    fraction = (
        F.when(us == 0, F.lit(""))
        .when(us % 1000 == 0, F.concat(F.lit("."), F.lpad((us / 1000).cast("long").cast("string"), 3, "0")))
        .otherwise(F.concat(F.lit("."), F.lpad(us.cast("string"), 6, "0")))
    )
    return F.concat(F.date_format(t, "yyyy-MM-dd'T'HH:mm:ss"), fraction)"#,
        &[],
    ),
    (
        "_float_name",
        r#"
def _float_name(x):
    """A float as text the way Spark casts it (1.0, 2.5, 1.0E7, 1.5E-4), in Python."""
    import decimal
    import math

    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0 or 1e-3 <= abs(x) < 1e7:
        s = repr(x)
        return s if "." in s else s + ".0"
    sign, digits, exponent = decimal.Decimal(repr(abs(x))).as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + exponent
    text = text.lstrip("0")
    point -= len(digits) - len(text)
    text = text.rstrip("0") or "0"
    mantissa = text[0] + "." + (text[1:] or "0")
    return ("-" if x < 0 else "") + mantissa + "E" + str(point - 1)"#,
        &[],
    ),
    (
        "_value_name",
        r#"
def _value_name(v):
    """A value as part of a column name (pivot, unfold): timestamps as microseconds."""
    import datetime

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _float_name(v)
    if isinstance(v, datetime.date):
        return v.isoformat()
    return str(v)"#,
        &["_float_name"],
    ),
    (
        "_discovered",
        r#"
def _discovered(values, most, path, column):
    """What a two-pass step found in the data; more than `most` values fail the run."""
    if len(values) > most:
        raise ValueError(
            f"{path}: `{column}` has more than {most} distinct values, each of which would become a column "
            "(raise `max_columns`, or group the values first)"
        )
    names = ", ".join(_value_name(v) for v in values)
    print(f"{path}: {len(values)} value{'' if len(values) == 1 else 's'} of `{column}`: {names}")"#,
        &["_value_name"],
    ),
    (
        "_stored",
        r#"
def _stored(df):
    """Every column in one of capstan's types (the columns came from the data)."""
    from pyspark.sql import types as T

    def stored(f):
        t = f.dataType
        if isinstance(t, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
            name = "long"
        elif isinstance(t, (T.FloatType, T.DoubleType, T.DecimalType)):
            name = "double"
        elif isinstance(t, (T.TimestampType, T.TimestampNTZType)):
            name = "timestamp_ntz"
        elif isinstance(t, (T.BooleanType, T.DateType)):
            name = t.simpleString()
        else:
            name = "string"
        return _col(f.name).cast(name).alias(f.name)

    return df.select([stored(f) for f in df.schema.fields])"#,
        &["_col"],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_regexes_become_java_ones_that_match_the_same_text() {
        assert_eq!(java_regex(r"^\d+$", false).unwrap(), r"(?dU)^\d+\z");
        assert_eq!(
            java_regex(r"(?P<y>\d{4})-[]a$]", true).unwrap(),
            r"(?diU)(\d{4})-[\]a$]"
        );
        assert_eq!(
            java_regex(r"\v\x{41}\pL", false).unwrap(),
            r"(?dU)\x0B\x{41}\p{L}"
        );
        assert!(
            java_regex("(?i)a", false)
                .unwrap_err()
                .contains("inline flags")
        );
        assert!(
            java_regex("[[:alpha:]]", false)
                .unwrap_err()
                .contains("POSIX")
        );
        assert!(java_regex(r"\p{Greek}", false).is_err());
        assert!(java_regex("[a-z--c]", false).is_err());
    }

    #[test]
    fn groups_that_may_take_no_part_in_a_match_are_found() {
        assert!(!group_may_be_unset(r"([a-z])(\d+)", 2));
        assert!(!group_may_be_unset(r"(a|b)(c)", 1));
        assert!(!group_may_be_unset(r"[(](x)", 1));
        assert!(group_may_be_unset(r"(a)|(b)", 1));
        assert!(group_may_be_unset(r"x(a)?", 1));
        assert!(group_may_be_unset(r"(?:(a)b)*", 1));
        assert!(group_may_be_unset(r"((a)|b)", 2));
        assert!(group_may_be_unset(r"(a){0,2}", 1));
    }

    #[test]
    fn empty_matches_are_found_and_replaced_as_rust_replaces_them() {
        assert!(can_match_empty("z*"));
        assert!(can_match_empty(r"\b"));
        assert!(can_match_empty("a|"));
        assert!(!can_match_empty(r"\d+"));
        assert_eq!(replace_all_pattern(r"\d+", r"(?dU)\d+"), r"(?dU)\d+");
        assert_eq!(
            replace_all_pattern("z*", "(?dU)z*"),
            r"(?dU)(?:\A|(?!\G))(?:z*)|(?>z*)(?!\G)"
        );
    }

    #[test]
    fn date_patterns_mean_on_spark_what_they_mean_on_the_built_in_engine() {
        assert_eq!(
            spark_date_pattern("yyyy-MM-dd'T'HH:mm", true).unwrap(),
            "yyyy-MM-dd'T'HH:mm"
        );
        assert_eq!(
            spark_date_pattern("u/M/d D [#]", false).unwrap(),
            "yyyy/M/d DDD' [#]'"
        );
        assert_eq!(
            spark_date_pattern("EEEE, h a ''yy", false).unwrap(),
            "EEEE, h a' '''yy"
        );
        assert!(
            spark_date_pattern("dd/MM/yy", true)
                .unwrap_err()
                .contains("two-digit years")
        );
        assert!(spark_date_pattern("EEE yyyy", true).is_err());
        assert!(
            spark_date_pattern("HH:mm", true)
                .unwrap_err()
                .contains("without a year")
        );
        assert!(spark_date_pattern("yyyy Z", false).is_err());
    }

    #[test]
    fn python_literals_read_back_exactly() {
        assert_eq!(pystr("a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(pyfloat(0.1), "0.1");
        assert_eq!(pyfloat(1e21), "1e21");
        assert_eq!(pyfloat(f64::NEG_INFINITY), "float(\"-inf\")");
        assert_eq!(col("a.b"), r#"F.col("`a.b`")"#);
        assert_eq!(col("x y"), r#"F.col("x y")"#);
        assert_eq!(qcol("l", "a`b"), r#"F.col("l.`a``b`")"#);
    }
}
