//! The formula language of visual recipes: a documented subset of Dataiku's formula language
//! (itself derived from OpenRefine's GREL). A formula is one expression, computed for each row.
//!
//! This module reads a formula into an [`Expr`] ([`parse`]), checking the names and the number
//! of arguments of the functions it calls, lists the columns it reads ([`columns`]) and writes
//! it back as canonical text ([`render`]).
//!
//! # Literals
//!
//! - Integers: `0`, `42`, `-7`. They are 64-bit: `-9223372036854775808` to
//!   `9223372036854775807`; one out of that range is an error.
//! - Decimals (64-bit floats): `1.5`, `.5`, `1e3`, `2.5E-3`. A `.` or an exponent makes a
//!   decimal; a digit must follow the `.` (`1.0`, not `1.`).
//! - Strings in double or single quotes: `"red"`, `'it\'s'`. The escapes are `\"`, `\'`, `\\`,
//!   `\n` (newline), `\t` (tab) and `\r` (carriage return); any other backslash is an error.
//! - Booleans `true` and `false`, and `null`.
//! - Regexes: `/^[a-z]+$/`, `/red/i` (see below).
//!
//! `true`, `false`, `null`, `and`, `or` and `not` are keywords in any case (`NULL`, `True`).
//!
//! # Columns
//!
//! A bare name, `[A-Za-z_][A-Za-z0-9_]*`, reads the column of that name: `alcohol`,
//! `color_intensity`. Column names are case-sensitive. A column whose name is not such a name,
//! or is a keyword, is written in backquotes, `` `unit price` `` (inside, write `` \` `` for a
//! backquote and `\\` for a backslash), or as `val("unit price")`. `strval("…")` and
//! `numval("…")` are the same as `val("…")`: they read the column as it is, with no conversion.
//!
//! # Operators
//!
//! From the loosest to the tightest binding:
//!
//! 1. `||` or `or`: logical or
//! 2. `&&` or `and`: logical and
//! 3. `!` or `not` (prefix): logical not
//! 4. `==` (also `=`), `!=` (also `<>`), `<`, `<=`, `>`, `>=`: comparisons
//! 5. `+`, `-`: addition and subtraction; `+` on strings concatenates them
//! 6. `*`, `/`, `//`, `%`: multiplication; `/` is float division (`7 / 2` is `3.5`); `//` is
//!    floor division (`7 // 2` is `3`, `-7 // 2` is `-4`); `%` is the remainder, with the sign of
//!    the dividend
//! 7. `-` (prefix): negation
//!
//! Binary operators of one level group from the left: `a - b - c` is `(a - b) - c`. Comparisons
//! do not chain: `a < b < c` is an error; write `a < b && b < c`. Note that `!` binds more
//! loosely than comparisons, so `!a == b` means `!(a == b)`; write `(!a) == b` for the other
//! reading. Parentheses group as usual, and whitespace (including newlines) may go anywhere
//! between tokens.
//!
//! Null propagates: an operator with a null operand gives null, as do most functions given a
//! null argument. The exceptions are the functions about nulls (`if`, `coalesce`, `is_null`,
//! `is_not_null`, `is_blank`, `null_if`) and `min` and `max`, which ignore nulls. `&&` and `||` use SQL's three-valued logic: `false && null` is `false`,
//! `true || null` is `true`, and otherwise a null operand gives null. `if` takes its `else`
//! branch when its condition is null.
//!
//! # Regexes
//!
//! A regex literal `/pattern/` may stand wherever an operand is expected, so `a / b / c` is
//! still two divisions while `replace(name, /\s+/, " ")` passes a regex. Inside the slashes,
//! `\/` is a slash; every other escape is the regex's own (`\d`, `\.`, `\\`). The only flag is
//! `i`, for a case-insensitive match: `/red/i`. Regexes are arguments of `replace`, `matches`
//! and `regex_extract`.
//!
//! # Functions
//!
//! A call is `name(argument, …)`. Function names are case-sensitive; the camelCase names of
//! Dataiku are accepted as aliases (`toUppercase(x)` is `upper(x)`).
//!
//! - Control and nulls: `if(cond, then[, else])`, `coalesce(x, ...)`, `is_null(x)`,
//!   `is_not_null(x)`, `is_blank(x)`, `null_if(x, y)`
//! - Math: `abs(x)`, `round(x[, digits])`, `floor(x)`, `ceil(x)`, `sqrt(x)`, `pow(x, y)`,
//!   `exp(x)`, `ln(x)`, `log(x)`, `sign(x)`, `min(x, y, ...)`, `max(x, y, ...)`,
//!   `clip(x, low, high)`
//! - Strings: `length(s)`, `upper(s)`, `lower(s)`, `trim(s)`, `substring(s, from[, to])`,
//!   `left(s, n)`, `right(s, n)`, `contains(s, part)`, `starts_with(s, prefix)`,
//!   `ends_with(s, suffix)`, `replace(s, find, with)`, `matches(s, /regex/)`,
//!   `regex_extract(s, /regex/[, group])`, `concat(x, ...)`, `split_part(s, separator, n)`,
//!   `to_string(x)`, `to_number(x)`, `to_int(x)`, `sha256(s)`, `pad_left(s, length, fill)`
//! - Dates: `now()`, `year(d)`, `month(d)`, `day(d)`, `hour(d)`, `minute(d)`, `second(d)`,
//!   `day_of_week(d)`, `date_diff(d1, d2, unit)`, `date_add(d, n, unit)`,
//!   `date_trunc(d, unit)`, `parse_date(s, pattern)`, `format_date(d, pattern)`
//!
//! [`FUNCTIONS`] describes each one, with its aliases.

use std::fmt;
use std::ops::Range;

/// How deeply a formula may nest: parentheses, calls and operators, counted together. Every
/// [`Expr`] that [`parse`] returns is at most this deep.
pub const MAX_DEPTH: usize = 128;

/// An expression, with where it is in the formula's text.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    /// byte offsets into the formula text
    pub span: Range<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// `/pattern/flags` — flags only `i` (case-insensitive); store pattern without slashes, `\/` unescaped to `/`.
    Regex {
        pattern: String,
        case_insensitive: bool,
    },
    /// A column: a bare identifier (`alcohol`, `color_intensity`), or `val("any name")` / `` `any name` `` (backquoted).
    Column(String),
    Unary {
        op: UnaryOp,
        expr: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    /// A function call; `name` is the canonical name from FUNCTIONS (aliases resolved).
    Call {
        name: &'static str,
        args: Vec<Expr>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    IntDiv,
    Mod,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinaryOp {
    /// The operator as [`render`] writes it.
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::IntDiv => "//",
            BinaryOp::Mod => "%",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
        }
    }

    fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => PREC_OR,
            BinaryOp::And => PREC_AND,
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => PREC_CMP,
            BinaryOp::Add | BinaryOp::Sub => PREC_ADD,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::IntDiv | BinaryOp::Mod => PREC_MUL,
        }
    }
}

const PREC_OR: u8 = 1;
const PREC_AND: u8 = 2;
const PREC_NOT: u8 = 3;
const PREC_CMP: u8 = 4;
const PREC_ADD: u8 = 5;
const PREC_MUL: u8 = 6;
const PREC_NEG: u8 = 7;
const PREC_PRIMARY: u8 = 8;

/// Why a formula could not be read: the first problem in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormulaError {
    /// Byte offsets into the formula text (empty at the end for a formula cut short).
    pub span: Range<usize>,
    pub message: String,
    pub help: Option<String>,
}

impl FormulaError {
    fn new(span: Range<usize>, message: impl Into<String>) -> FormulaError {
        FormulaError {
            span,
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> FormulaError {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for FormulaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FormulaError {}

/// A function of the language.
#[derive(Debug)]
pub struct Function {
    /// The canonical (snake_case) name.
    pub name: &'static str,
    /// Other names accepted for it (Dataiku's camelCase ones).
    pub aliases: &'static [&'static str],
    pub min_args: usize,
    /// None: variadic
    pub max_args: Option<usize>,
    pub signature: &'static str,
    pub summary: &'static str,
}

const fn f(
    name: &'static str,
    aliases: &'static [&'static str],
    min_args: usize,
    max_args: Option<usize>,
    signature: &'static str,
    summary: &'static str,
) -> Function {
    Function {
        name,
        aliases,
        min_args,
        max_args,
        signature,
        summary,
    }
}

/// Every function of the language, by group: control and nulls, math, strings, dates.
pub const FUNCTIONS: &[Function] = &[
    // Control and nulls.
    f(
        "if",
        &[],
        2,
        Some(3),
        "if(cond, then[, else])",
        "`then` where `cond` is true, else `else` (default null); a null `cond` takes `else`",
    ),
    f(
        "coalesce",
        &[],
        1,
        None,
        "coalesce(x, ...)",
        "the first argument that is not null",
    ),
    f(
        "is_null",
        &["isNull"],
        1,
        Some(1),
        "is_null(x)",
        "true where `x` is null",
    ),
    f(
        "is_not_null",
        &["isNotNull"],
        1,
        Some(1),
        "is_not_null(x)",
        "true where `x` is not null",
    ),
    f(
        "is_blank",
        &["isBlank"],
        1,
        Some(1),
        "is_blank(x)",
        "true where `x` is null or a string of only whitespace",
    ),
    f(
        "null_if",
        &[],
        2,
        Some(2),
        "null_if(x, y)",
        "null where `x` equals `y`, else `x`",
    ),
    // Math.
    f(
        "abs",
        &[],
        1,
        Some(1),
        "abs(x)",
        "the absolute value of `x`",
    ),
    f(
        "round",
        &[],
        1,
        Some(2),
        "round(x[, digits])",
        "x rounded half away from zero to `digits` decimals (default 0)",
    ),
    f(
        "floor",
        &[],
        1,
        Some(1),
        "floor(x)",
        "the largest integer not above `x`",
    ),
    f(
        "ceil",
        &[],
        1,
        Some(1),
        "ceil(x)",
        "the smallest integer not below `x`",
    ),
    f("sqrt", &[], 1, Some(1), "sqrt(x)", "the square root of `x`"),
    f(
        "pow",
        &[],
        2,
        Some(2),
        "pow(x, y)",
        "`x` raised to the power `y`",
    ),
    f(
        "exp",
        &[],
        1,
        Some(1),
        "exp(x)",
        "e raised to the power `x`",
    ),
    f(
        "ln",
        &[],
        1,
        Some(1),
        "ln(x)",
        "the natural logarithm of `x`",
    ),
    f(
        "log",
        &[],
        1,
        Some(1),
        "log(x)",
        "the base-10 logarithm of `x`",
    ),
    f(
        "sign",
        &[],
        1,
        Some(1),
        "sign(x)",
        "-1, 0 or 1 as `x` is negative, zero or positive",
    ),
    f(
        "min",
        &[],
        2,
        None,
        "min(x, y, ...)",
        "the least of the arguments, ignoring nulls",
    ),
    f(
        "max",
        &[],
        2,
        None,
        "max(x, y, ...)",
        "the greatest of the arguments, ignoring nulls",
    ),
    f(
        "clip",
        &[],
        3,
        Some(3),
        "clip(x, low, high)",
        "`x` brought into the range from `low` to `high`",
    ),
    // Strings.
    f(
        "length",
        &["len"],
        1,
        Some(1),
        "length(s)",
        "the number of characters in `s`",
    ),
    f(
        "upper",
        &["toUppercase"],
        1,
        Some(1),
        "upper(s)",
        "`s` in upper case",
    ),
    f(
        "lower",
        &["toLowercase"],
        1,
        Some(1),
        "lower(s)",
        "`s` in lower case",
    ),
    f(
        "trim",
        &["strip"],
        1,
        Some(1),
        "trim(s)",
        "`s` without leading and trailing whitespace",
    ),
    f(
        "substring",
        &["substr"],
        2,
        Some(3),
        "substring(s, from[, to])",
        "the characters of `s` from index `from` (0-based) up to, not including, `to` (default: the end)",
    ),
    f(
        "left",
        &[],
        2,
        Some(2),
        "left(s, n)",
        "the first `n` characters of `s`",
    ),
    f(
        "right",
        &[],
        2,
        Some(2),
        "right(s, n)",
        "the last `n` characters of `s`",
    ),
    f(
        "contains",
        &[],
        2,
        Some(2),
        "contains(s, part)",
        "true where `s` contains the string `part`",
    ),
    f(
        "starts_with",
        &["startsWith"],
        2,
        Some(2),
        "starts_with(s, prefix)",
        "true where `s` starts with `prefix`",
    ),
    f(
        "ends_with",
        &["endsWith"],
        2,
        Some(2),
        "ends_with(s, suffix)",
        "true where `s` ends with `suffix`",
    ),
    f(
        "replace",
        &[],
        3,
        Some(3),
        "replace(s, find, with)",
        "`s` with every match of `find` (a string or a regex) replaced by `with`",
    ),
    f(
        "matches",
        &["match"],
        2,
        Some(2),
        "matches(s, /regex/)",
        "true where `regex` matches somewhere in `s` (anchor it with `^` and `$` for all of it)",
    ),
    f(
        "regex_extract",
        &[],
        2,
        Some(3),
        "regex_extract(s, /regex/[, group])",
        "capture group `group` (default 1; 0 for the whole match) of the first match of `regex` in `s`",
    ),
    f(
        "concat",
        &[],
        1,
        None,
        "concat(x, ...)",
        "the arguments as strings, joined",
    ),
    f(
        "split_part",
        &[],
        3,
        Some(3),
        "split_part(s, separator, n)",
        "part `n` (1-based) of `s` split at each `separator`",
    ),
    f(
        "to_string",
        &["toString"],
        1,
        Some(1),
        "to_string(x)",
        "`x` as a string",
    ),
    f(
        "to_number",
        &["toNumber"],
        1,
        Some(1),
        "to_number(x)",
        "`x` as a decimal number; null where it is not one",
    ),
    f(
        "to_int",
        &[],
        1,
        Some(1),
        "to_int(x)",
        "`x` as an integer, truncated toward zero; null where it is not a number",
    ),
    f(
        "sha256",
        &[],
        1,
        Some(1),
        "sha256(s)",
        "the SHA-256 digest of `s`, as 64 lower-case hex digits",
    ),
    f(
        "pad_left",
        &[],
        3,
        Some(3),
        "pad_left(s, length, fill)",
        "`s` padded on the left with `fill` to `length` characters",
    ),
    // Dates.
    f("now", &[], 0, Some(0), "now()", "the current date and time"),
    f("year", &[], 1, Some(1), "year(d)", "the year of `d`"),
    f(
        "month",
        &[],
        1,
        Some(1),
        "month(d)",
        "the month of `d`, 1 to 12",
    ),
    f(
        "day",
        &[],
        1,
        Some(1),
        "day(d)",
        "the day of the month of `d`, 1 to 31",
    ),
    f(
        "hour",
        &[],
        1,
        Some(1),
        "hour(d)",
        "the hour of `d`, 0 to 23",
    ),
    f(
        "minute",
        &[],
        1,
        Some(1),
        "minute(d)",
        "the minute of `d`, 0 to 59",
    ),
    f(
        "second",
        &[],
        1,
        Some(1),
        "second(d)",
        "the second of `d`, 0 to 59",
    ),
    f(
        "day_of_week",
        &[],
        1,
        Some(1),
        "day_of_week(d)",
        "the day of the week of `d`: 1 = Monday … 7 = Sunday",
    ),
    f(
        "date_diff",
        &["diff"],
        3,
        Some(3),
        "date_diff(d1, d2, unit)",
        "`d1` - `d2` in whole `unit`s: \"week\", \"day\", \"hour\", \"minute\" or \"second\"",
    ),
    f(
        "date_add",
        &["inc"],
        3,
        Some(3),
        "date_add(d, n, unit)",
        "`d` plus `n` `unit`s: \"year\", \"quarter\", \"month\", \"week\", \"day\", \"hour\", \"minute\" or \"second\"",
    ),
    f(
        "date_trunc",
        &["trunc"],
        2,
        Some(2),
        "date_trunc(d, unit)",
        "`d` truncated to the start of its `unit` (such as \"month\")",
    ),
    f(
        "parse_date",
        &["asDate"],
        2,
        Some(2),
        "parse_date(s, pattern)",
        "`s` read as a date with a Java-style `pattern` (such as \"yyyy-MM-dd\"); null where it does not fit",
    ),
    f(
        "format_date",
        &["formatDate"],
        2,
        Some(2),
        "format_date(d, pattern)",
        "`d` written with a Java-style `pattern` (such as \"yyyy-MM-dd\")",
    ),
];

/// The names that read a column rather than call a function: `val("name")`.
const COLUMN_FUNCTIONS: [&str; 3] = ["val", "strval", "numval"];

/// The function of that canonical name or alias.
pub fn function(name: &str) -> Option<&'static Function> {
    FUNCTIONS
        .iter()
        .find(|f| f.name == name || f.aliases.contains(&name))
}

/// Every name a call may use: canonical names, aliases and `val` and its aliases.
fn all_function_names() -> impl Iterator<Item = &'static str> {
    FUNCTIONS
        .iter()
        .flat_map(|f| std::iter::once(f.name).chain(f.aliases.iter().copied()))
        .chain(COLUMN_FUNCTIONS)
}

/// Reads a formula.
pub fn parse(src: &str) -> Result<Expr, FormulaError> {
    let mut p = Parser {
        src,
        lex: Lexer { src, pos: 0 },
        peeked: None,
        nest: 0,
    };
    if p.peek()?.tok == Tok::Eof {
        return Err(FormulaError::new(0..src.len(), "empty formula"));
    }
    let node = p.expr()?;
    let t = p.bump()?;
    if t.tok != Tok::Eof {
        let err = FormulaError::new(t.span.clone(), format!("unexpected {}", p.describe(&t)));
        return Err(match t.tok {
            Tok::RParen => err.help("no `(` before it is left open"),
            _ if starts_operand(&t.tok) => {
                err.help("an operator (such as `+` or `&&`) or a `,` is missing before it")
            }
            _ => err,
        });
    }
    Ok(node.expr)
}

/// Every column the expression reads, in order of appearance, with its span (duplicates kept).
pub fn columns(expr: &Expr) -> Vec<(&str, Range<usize>)> {
    fn walk<'e>(e: &'e Expr, out: &mut Vec<(&'e str, Range<usize>)>) {
        match &e.kind {
            ExprKind::Column(name) => out.push((name, e.span.clone())),
            ExprKind::Unary { expr, .. } => walk(expr, out),
            ExprKind::Binary { left, right, .. } => {
                walk(left, out);
                walk(right, out);
            }
            ExprKind::Call { args, .. } => args.iter().for_each(|a| walk(a, out)),
            ExprKind::Null
            | ExprKind::Bool(_)
            | ExprKind::Int(_)
            | ExprKind::Float(_)
            | ExprKind::Str(_)
            | ExprKind::Regex { .. } => {}
        }
    }
    let mut out = Vec::new();
    walk(expr, &mut out);
    out
}

/// Writes the expression back as canonical formula text: `&&`, `||`, `!` and `==` for the
/// operators, canonical function names, double-quoted strings, bare or backquoted column names,
/// spaces around binary operators and only the parentheses the grammar needs (plus some around
/// the operand of a prefix operator, for the reader). Reading the text back with [`parse`] gives
/// an equal expression, spans aside.
///
/// The few expressions [`parse`] never makes have no exact text: an empty column name or regex,
/// a regex ending in a lone `\` or with a `\` before a `/`, and a float that is not finite.
pub fn render(expr: &Expr) -> String {
    let mut out = String::new();
    write_expr(&mut out, expr);
    out
}

fn precedence(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Binary { op, .. } => op.precedence(),
        ExprKind::Unary {
            op: UnaryOp::Not, ..
        } => PREC_NOT,
        ExprKind::Unary {
            op: UnaryOp::Neg, ..
        } => PREC_NEG,
        // A negative number is written with its `-`, which reads like a negation.
        ExprKind::Int(v) if *v < 0 => PREC_NEG,
        ExprKind::Float(v) if v.is_sign_negative() => PREC_NEG,
        _ => PREC_PRIMARY,
    }
}

fn write_operand(out: &mut String, e: &Expr, min: u8) {
    if precedence(e) < min {
        out.push('(');
        write_expr(out, e);
        out.push(')');
    } else {
        write_expr(out, e);
    }
}

fn write_expr(out: &mut String, e: &Expr) {
    match &e.kind {
        ExprKind::Null => out.push_str("null"),
        ExprKind::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        ExprKind::Int(v) => out.push_str(&v.to_string()),
        // Debug writes the shortest text that reads back as the same float, always with a `.`
        // or an exponent.
        ExprKind::Float(v) => out.push_str(&format!("{v:?}")),
        ExprKind::Str(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        ExprKind::Regex {
            pattern,
            case_insensitive,
        } => {
            out.push('/');
            let mut chars = pattern.chars();
            while let Some(c) = chars.next() {
                match c {
                    '/' => out.push_str("\\/"),
                    '\\' => {
                        out.push('\\');
                        if let Some(next) = chars.next() {
                            out.push(next);
                        }
                    }
                    c => out.push(c),
                }
            }
            out.push('/');
            if *case_insensitive {
                out.push('i');
            }
        }
        ExprKind::Column(name) => {
            if is_identifier(name) && keyword(name).is_none() {
                out.push_str(name);
            } else {
                out.push('`');
                for c in name.chars() {
                    if c == '`' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('`');
            }
        }
        ExprKind::Unary { op, expr } => {
            out.push(match op {
                UnaryOp::Neg => '-',
                UnaryOp::Not => '!',
            });
            let bare = match op {
                // `-(5)` is not the literal `-5`.
                UnaryOp::Neg => {
                    precedence(expr) == PREC_PRIMARY
                        && !matches!(expr.kind, ExprKind::Int(_) | ExprKind::Float(_))
                }
                // `!(a == b)`, `!(a + b)`: the operator covers all of it, which `!a == b` hides.
                UnaryOp::Not => !matches!(expr.kind, ExprKind::Binary { .. }),
            };
            if bare {
                write_expr(out, expr);
            } else {
                out.push('(');
                write_expr(out, expr);
                out.push(')');
            }
        }
        ExprKind::Binary { op, left, right } => {
            let p = op.precedence();
            // Left-associative levels take an operand of their own level on the left;
            // comparisons, which do not chain, on neither side.
            let left_min = if p == PREC_CMP { p + 1 } else { p };
            write_operand(out, left, left_min);
            out.push(' ');
            out.push_str(op.symbol());
            out.push(' ');
            write_operand(out, right, p + 1);
        }
        ExprKind::Call { name, args } => {
            out.push_str(name);
            out.push('(');
            for (i, arg) in args.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_expr(out, arg);
            }
            out.push(')');
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn keyword(word: &str) -> Option<Tok> {
    let kw = [
        ("true", Tok::True),
        ("false", Tok::False),
        ("null", Tok::Null),
        ("and", Tok::And),
        ("or", Tok::Or),
        ("not", Tok::Not),
    ];
    kw.into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(word))
        .map(|(_, t)| t)
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// Digits only, so never negative; whether it fits an `i64` is the parser's concern, as a
    /// `-` before it may make it `i64::MIN`.
    Int(u64),
    Float(f64),
    Str(String),
    /// A backquoted column name.
    Quoted(String),
    Ident,
    True,
    False,
    Null,
    And,
    Or,
    Not,
    OrOr,
    AndAnd,
    Bang,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    SlashSlash,
    Percent,
    LParen,
    RParen,
    Comma,
    Eof,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    span: Range<usize>,
}

/// Whether a token can begin an operand (for the help of an error).
fn starts_operand(t: &Tok) -> bool {
    matches!(
        t,
        Tok::Int(_)
            | Tok::Float(_)
            | Tok::Str(_)
            | Tok::Quoted(_)
            | Tok::Ident
            | Tok::True
            | Tok::False
            | Tok::Null
            | Tok::LParen
    )
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_char_at(&self, offset: usize) -> Option<char> {
        self.src.get(self.pos + offset..)?.chars().next()
    }

    fn bump_char(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Lexes the next token where an operator may stand (so `/` is a slash).
    fn next(&mut self) -> Result<Token, FormulaError> {
        while let Some(c) = self.peek_char() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
        let start = self.pos;
        let Some(c) = self.bump_char() else {
            return Ok(Token {
                tok: Tok::Eof,
                span: start..start,
            });
        };
        let next = self.peek_char();
        // A two-character operator, whose second character is ASCII.
        let two = |tok: Tok, this: &mut Self| {
            this.pos += 1;
            tok
        };
        let tok = match c {
            '0'..='9' => return self.number(start),
            '.' if next.is_some_and(|n| n.is_ascii_digit()) => return self.number(start),
            '"' | '\'' => return self.string(start, c),
            '`' => return self.quoted(start),
            c if c.is_ascii_alphabetic() || c == '_' => {
                while self
                    .peek_char()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.pos += 1;
                }
                keyword(&self.src[start..self.pos]).unwrap_or(Tok::Ident)
            }
            '|' if next == Some('|') => two(Tok::OrOr, self),
            '&' if next == Some('&') => two(Tok::AndAnd, self),
            '|' | '&' => {
                let (op, word) = if c == '|' {
                    ("||", "or")
                } else {
                    ("&&", "and")
                };
                return Err(
                    FormulaError::new(start..self.pos, format!("unexpected `{c}`"))
                        .help(format!("logical {word} is `{op}` (or `{word}`)")),
                );
            }
            '!' if next == Some('=') => two(Tok::Ne, self),
            '!' => Tok::Bang,
            '=' if next == Some('=') => two(Tok::Eq, self),
            '=' => Tok::Eq,
            '<' if next == Some('=') => two(Tok::Le, self),
            '<' if next == Some('>') => two(Tok::Ne, self),
            '<' => Tok::Lt,
            '>' if next == Some('=') => two(Tok::Ge, self),
            '>' => Tok::Gt,
            '+' => Tok::Plus,
            '-' => Tok::Minus,
            '*' => Tok::Star,
            '/' if next == Some('/') => two(Tok::SlashSlash, self),
            '/' => Tok::Slash,
            '%' => Tok::Percent,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            c => {
                let err = FormulaError::new(start..self.pos, format!("unexpected character `{c}`"));
                return Err(if c.is_alphanumeric() {
                    err.help(
                        "a bare column name is ASCII letters, digits and `_`; \
                         write others in backquotes: `name`",
                    )
                } else {
                    err
                });
            }
        };
        Ok(Token {
            tok,
            span: start..self.pos,
        })
    }

    fn skip_digits(&mut self) -> usize {
        let from = self.pos;
        while self.peek_char().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - from
    }

    /// A number starting at `start`, whose first character is consumed.
    fn number(&mut self, start: usize) -> Result<Token, FormulaError> {
        self.pos = start;
        self.skip_digits();
        let mut float = false;
        if self.peek_char() == Some('.') && self.peek_char_at(1).is_some_and(|c| c.is_ascii_digit())
        {
            self.pos += 1;
            self.skip_digits();
            float = true;
        }
        if matches!(self.peek_char(), Some('e' | 'E')) {
            let mark = self.pos;
            self.pos += 1;
            if matches!(self.peek_char(), Some('+' | '-')) {
                self.pos += 1;
            }
            if self.skip_digits() > 0 {
                float = true;
            } else {
                self.pos = mark;
            }
        }
        // A number runs into letters, digits, `_` or `.`: `12abc`, `1.`, `1e`, `1.2.3`.
        if self
            .peek_char()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
        {
            while self
                .peek_char()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
            {
                self.bump_char();
            }
            let text = &self.src[start..self.pos];
            return Err(
                FormulaError::new(start..self.pos, format!("invalid number `{text}`")).help(
                    "a number is digits, with an optional `.` and digits and an optional \
                     exponent: `12`, `1.5`, `.5`, `1e3`",
                ),
            );
        }
        let span = start..self.pos;
        let text = &self.src[span.clone()];
        let tok = if float {
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Tok::Float(v),
                _ => {
                    return Err(
                        FormulaError::new(span, format!("number `{text}` is too large"))
                            .help("decimals are 64-bit floats, at most about 1.8e308"),
                    );
                }
            }
        } else {
            match text.parse::<u64>() {
                Ok(v) => Tok::Int(v),
                Err(_) => return Err(int_range_error(text, span)),
            }
        };
        Ok(Token { tok, span })
    }

    /// A quoted string starting at `start`, whose opening quote is consumed.
    fn string(&mut self, start: usize, quote: char) -> Result<Token, FormulaError> {
        let mut out = String::new();
        loop {
            let at = self.pos;
            match self.bump_char() {
                None => return Err(unterminated(start, self.src.len(), "string", quote)),
                Some(c) if c == quote => break,
                Some('\\') => match self.bump_char() {
                    Some('"') => out.push('"'),
                    Some('\'') => out.push('\''),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    None => return Err(unterminated(start, self.src.len(), "string", quote)),
                    Some(c) => {
                        return Err(FormulaError::new(
                            at..self.pos,
                            format!("unknown escape `\\{c}` in a string"),
                        )
                        .help(
                            "the escapes are \\\" \\' \\\\ \\n \\t and \\r; \
                             write a backslash as \\\\",
                        ));
                    }
                },
                Some(c) => out.push(c),
            }
        }
        Ok(Token {
            tok: Tok::Str(out),
            span: start..self.pos,
        })
    }

    /// A backquoted column name starting at `start`, whose opening backquote is consumed.
    fn quoted(&mut self, start: usize) -> Result<Token, FormulaError> {
        let mut out = String::new();
        loop {
            let at = self.pos;
            match self.bump_char() {
                None => return Err(unterminated(start, self.src.len(), "column name", '`')),
                Some('`') => break,
                Some('\\') => match self.bump_char() {
                    Some(c @ ('`' | '\\')) => out.push(c),
                    None => return Err(unterminated(start, self.src.len(), "column name", '`')),
                    Some(c) => {
                        return Err(FormulaError::new(
                            at..self.pos,
                            format!("unknown escape `\\{c}` in a column name"),
                        )
                        .help("in backquotes, the escapes are \\` and \\\\"));
                    }
                },
                Some(c) => out.push(c),
            }
        }
        if out.is_empty() {
            return Err(FormulaError::new(start..self.pos, "empty column name"));
        }
        Ok(Token {
            tok: Tok::Quoted(out),
            span: start..self.pos,
        })
    }

    /// A regex literal starting at `start`, on its opening `/`.
    fn regex(&mut self, start: usize) -> Result<Expr, FormulaError> {
        self.pos = start + 1;
        let mut pattern = String::new();
        loop {
            match self.bump_char() {
                None => return Err(unterminated(start, self.src.len(), "regex", '/')),
                Some('/') => break,
                Some('\\') => match self.bump_char() {
                    Some('/') => pattern.push('/'),
                    Some(c) => {
                        pattern.push('\\');
                        pattern.push(c);
                    }
                    None => return Err(unterminated(start, self.src.len(), "regex", '/')),
                },
                Some(c) => pattern.push(c),
            }
        }
        let flags_start = self.pos;
        while self
            .peek_char()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            self.bump_char();
        }
        let flags = &self.src[flags_start..self.pos];
        if pattern.is_empty() {
            return Err(FormulaError::new(start..self.pos, "empty regex")
                .help("`//` is floor division; a regex has a pattern between its slashes"));
        }
        let case_insensitive = match flags {
            "" => false,
            "i" => true,
            _ => {
                return Err(FormulaError::new(
                    flags_start..self.pos,
                    format!("unknown regex flags `{flags}`"),
                )
                .help("the only flag is `i`, for a case-insensitive match"));
            }
        };
        Ok(Expr {
            kind: ExprKind::Regex {
                pattern,
                case_insensitive,
            },
            span: start..self.pos,
        })
    }
}

fn unterminated(start: usize, end: usize, what: &str, quote: char) -> FormulaError {
    FormulaError::new(start..end, format!("unterminated {what}"))
        .help(format!("it needs a closing {quote}"))
}

fn int_range_error(text: &str, span: Range<usize>) -> FormulaError {
    FormulaError::new(span, format!("integer `{text}` is out of range")).help(format!(
        "integers are 64-bit, from -9223372036854775808 to 9223372036854775807; \
         write `{text}.0` for a decimal"
    ))
}

// ---------------------------------------------------------------------------------------------
// Parser

/// A parsed expression, with the depth of its tree and its extent in the text including any
/// parentheses around it.
struct Node {
    expr: Expr,
    depth: usize,
    outer: Range<usize>,
}

impl Node {
    fn leaf(kind: ExprKind, span: Range<usize>) -> Node {
        Node {
            expr: Expr {
                kind,
                span: span.clone(),
            },
            depth: 1,
            outer: span,
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    lex: Lexer<'a>,
    peeked: Option<Token>,
    /// How many parentheses, calls and prefix operators enclose the current position.
    nest: usize,
}

fn too_deep(span: Range<usize>) -> FormulaError {
    FormulaError::new(
        span,
        format!("the formula nests more than {MAX_DEPTH} levels deep"),
    )
    .help("every parenthesis, call and operator counts a level; split the formula into steps")
}

impl Parser<'_> {
    // The functions that recurse (`binary_expr`, `prefix`, `primary`, `call`) keep their frames
    // small, building their errors in other functions, so that `MAX_DEPTH` levels fit a
    // thread's stack even in a debug build.

    fn peek(&mut self) -> Result<&Token, FormulaError> {
        let t = match self.peeked.take() {
            Some(t) => t,
            None => self.lex.next()?,
        };
        Ok(self.peeked.insert(t))
    }

    fn peek_tok(&mut self) -> Result<&Tok, FormulaError> {
        Ok(&self.peek()?.tok)
    }

    fn bump(&mut self) -> Result<Token, FormulaError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex.next(),
        }
    }

    fn describe(&self, t: &Token) -> String {
        describe(self.src, t)
    }

    fn enter(&mut self, span: &Range<usize>) -> Result<(), FormulaError> {
        self.nest += 1;
        if self.nest > MAX_DEPTH {
            return Err(too_deep(span.clone()));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nest -= 1;
    }

    fn expr(&mut self) -> Result<Node, FormulaError> {
        self.binary_expr(PREC_OR)
    }

    /// An expression of binary operators binding at least as tightly as `min`, by precedence
    /// climbing: each operator's right operand binds more tightly than it, so one level groups
    /// from the left.
    fn binary_expr(&mut self, min: u8) -> Result<Node, FormulaError> {
        let mut left = self.prefix(min)?;
        loop {
            let Some(op) = binary_op(self.peek_tok()?) else {
                return Ok(left);
            };
            let p = op.precedence();
            if p < min {
                return Ok(left);
            }
            self.bump()?;
            let right = self.binary_expr(p + 1)?;
            left = binary_node(op, left, right)?;
            if p == PREC_CMP
                && let Some(next) = binary_op(self.peek_tok()?)
                && next.precedence() == PREC_CMP
            {
                return Err(chained_comparison(self.peek()?.span.clone()));
            }
        }
    }

    /// A prefix operator and its operand, or a primary. `!` stands only where an operand of
    /// `min` = [`PREC_NOT`] or looser is expected: `a == !b` is an error.
    fn prefix(&mut self, min: u8) -> Result<Node, FormulaError> {
        match self.peek_tok()? {
            Tok::Bang | Tok::Not if min <= PREC_NOT => {
                let bang = self.bump()?;
                self.enter(&bang.span)?;
                let operand = self.binary_expr(PREC_NOT)?;
                self.leave();
                unary_node(UnaryOp::Not, bang.span.start, operand)
            }
            Tok::Minus => {
                let minus = self.bump()?;
                // A `-` right before a number is part of it: `-5` is the integer -5, and
                // `-9223372036854775808` is in range.
                match *self.peek_tok()? {
                    Tok::Int(v) => {
                        let t = self.bump()?;
                        return negative_int(v, minus.span.start..t.span.end);
                    }
                    Tok::Float(v) => {
                        let t = self.bump()?;
                        let span = minus.span.start..t.span.end;
                        return Ok(Node::leaf(ExprKind::Float(-v), span));
                    }
                    _ => {}
                }
                self.enter(&minus.span)?;
                let operand = self.prefix(PREC_NEG)?;
                self.leave();
                unary_node(UnaryOp::Neg, minus.span.start, operand)
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Node, FormulaError> {
        let t = self.bump()?;
        match t.tok {
            Tok::LParen => {
                self.enter(&t.span)?;
                let inner = self.expr()?;
                let close = self.bump()?;
                if close.tok != Tok::RParen {
                    return Err(unclosed_paren(self.src, &t, &close, None));
                }
                self.leave();
                Ok(Node {
                    outer: t.span.start..close.span.end,
                    ..inner
                })
            }
            Tok::Ident if *self.peek_tok()? == Tok::LParen => self.call(t.span),
            _ => self.operand(t),
        }
    }

    /// An operand that is a single token (or a regex, which starts with one).
    fn operand(&mut self, t: Token) -> Result<Node, FormulaError> {
        let span = t.span.clone();
        let kind = match t.tok {
            Tok::Int(v) => match i64::try_from(v) {
                Ok(v) => ExprKind::Int(v),
                Err(_) => return Err(int_range_error(&self.src[span.clone()], span)),
            },
            Tok::Float(v) => ExprKind::Float(v),
            Tok::Str(s) => ExprKind::Str(s),
            Tok::Quoted(name) => ExprKind::Column(name),
            Tok::Ident => ExprKind::Column(self.src[span.clone()].to_string()),
            Tok::True => ExprKind::Bool(true),
            Tok::False => ExprKind::Bool(false),
            Tok::Null => ExprKind::Null,
            Tok::Slash | Tok::SlashSlash => {
                let e = self.lex.regex(span.start)?;
                return Ok(Node::leaf(e.kind, e.span));
            }
            _ => return Err(expected_expression(self.src, &t)),
        };
        Ok(Node::leaf(kind, span))
    }

    /// A call of the function named at `name_span`, with the `(` next.
    fn call(&mut self, name_span: Range<usize>) -> Result<Node, FormulaError> {
        let src = self.src;
        let name = &src[name_span.clone()];
        let function = if COLUMN_FUNCTIONS.contains(&name) {
            None
        } else {
            match function(name) {
                Some(f) => Some(f),
                None => return Err(unknown_function(name, name_span)),
            }
        };
        let open = self.bump()?;
        self.enter(&open.span)?;
        let mut args = Vec::new();
        let mut depth = 0;
        let close = if *self.peek_tok()? == Tok::RParen {
            self.bump()?
        } else {
            loop {
                let arg = self.expr()?;
                depth = depth.max(arg.depth);
                args.push(arg.expr);
                let t = self.bump()?;
                match t.tok {
                    Tok::Comma => {}
                    Tok::RParen => break t,
                    _ => return Err(unclosed_paren(src, &open, &t, Some(name))),
                }
            }
        };
        self.leave();
        let span = name_span.start..close.span.end;
        match function {
            None => column_call(name, args, span),
            Some(function) => call_node(name, function, args, depth, span),
        }
    }
}

fn binary_op(t: &Tok) -> Option<BinaryOp> {
    Some(match t {
        Tok::OrOr | Tok::Or => BinaryOp::Or,
        Tok::AndAnd | Tok::And => BinaryOp::And,
        Tok::Eq => BinaryOp::Eq,
        Tok::Ne => BinaryOp::Ne,
        Tok::Lt => BinaryOp::Lt,
        Tok::Le => BinaryOp::Le,
        Tok::Gt => BinaryOp::Gt,
        Tok::Ge => BinaryOp::Ge,
        Tok::Plus => BinaryOp::Add,
        Tok::Minus => BinaryOp::Sub,
        Tok::Star => BinaryOp::Mul,
        Tok::Slash => BinaryOp::Div,
        Tok::SlashSlash => BinaryOp::IntDiv,
        Tok::Percent => BinaryOp::Mod,
        _ => return None,
    })
}

fn binary_node(op: BinaryOp, left: Node, right: Node) -> Result<Node, FormulaError> {
    let outer = left.outer.start..right.outer.end;
    let depth = 1 + left.depth.max(right.depth);
    if depth > MAX_DEPTH {
        return Err(too_deep(outer));
    }
    Ok(Node {
        expr: Expr {
            kind: ExprKind::Binary {
                op,
                left: Box::new(left.expr),
                right: Box::new(right.expr),
            },
            span: outer.clone(),
        },
        depth,
        outer,
    })
}

fn unary_node(op: UnaryOp, start: usize, operand: Node) -> Result<Node, FormulaError> {
    let outer = start..operand.outer.end;
    let depth = 1 + operand.depth;
    if depth > MAX_DEPTH {
        return Err(too_deep(outer));
    }
    Ok(Node {
        expr: Expr {
            kind: ExprKind::Unary {
                op,
                expr: Box::new(operand.expr),
            },
            span: outer.clone(),
        },
        depth,
        outer,
    })
}

fn negative_int(v: u64, span: Range<usize>) -> Result<Node, FormulaError> {
    match i64::try_from(-i128::from(v)) {
        Ok(v) => Ok(Node::leaf(ExprKind::Int(v), span)),
        Err(_) => Err(int_range_error(&format!("-{v}"), span)),
    }
}

/// `val("name")`: the column of that name.
fn column_call(name: &str, args: Vec<Expr>, span: Range<usize>) -> Result<Node, FormulaError> {
    match <[Expr; 1]>::try_from(args) {
        Ok(
            [
                Expr {
                    kind: ExprKind::Str(column),
                    span: arg_span,
                },
            ],
        ) => {
            if column.is_empty() {
                Err(FormulaError::new(arg_span, "empty column name"))
            } else {
                Ok(Node::leaf(ExprKind::Column(column), span))
            }
        }
        _ => Err(
            FormulaError::new(span, format!("{name}() takes a column name as a string")).help(
                format!("such as {name}(\"unit price\"), or write the column as `unit price`"),
            ),
        ),
    }
}

fn call_node(
    name: &str,
    function: &'static Function,
    args: Vec<Expr>,
    depth: usize,
    span: Range<usize>,
) -> Result<Node, FormulaError> {
    let n = args.len();
    if n < function.min_args || function.max_args.is_some_and(|max| n > max) {
        return Err(FormulaError::new(
            span,
            format!("`{name}` takes {}, got {n}", arity(function)),
        )
        .help(function.signature));
    }
    if depth + 1 > MAX_DEPTH {
        return Err(too_deep(span));
    }
    Ok(Node {
        expr: Expr {
            kind: ExprKind::Call {
                name: function.name,
                args,
            },
            span: span.clone(),
        },
        depth: depth + 1,
        outer: span,
    })
}

/// How a token is named in a message.
fn describe(src: &str, t: &Token) -> String {
    match t.tok {
        Tok::Eof => "end of formula".to_string(),
        Tok::Str(_) => "a string".to_string(),
        Tok::Quoted(_) => "a column name".to_string(),
        _ => format!("`{}`", &src[t.span.clone()]),
    }
}

fn chained_comparison(span: Range<usize>) -> FormulaError {
    FormulaError::new(span, "comparisons do not chain; use &&")
        .help("write `a < b && b < c` for `a < b < c`")
}

/// The error where `close` was found instead of the `)` closing `open` (of a call of `call`,
/// where a `,` also fits).
fn unclosed_paren(src: &str, open: &Token, close: &Token, call: Option<&str>) -> FormulaError {
    match (close.tok == Tok::Eof, call) {
        (true, None) => FormulaError::new(open.span.clone(), "unclosed `(`")
            .help("it needs a `)` before the end of the formula"),
        (true, Some(name)) => FormulaError::new(open.span.clone(), "unclosed `(`")
            .help(format!("the call of `{name}` needs a `)`")),
        (false, None) => FormulaError::new(
            close.span.clone(),
            format!("expected `)`, found {}", describe(src, close)),
        ),
        (false, Some(_)) => FormulaError::new(
            close.span.clone(),
            format!("expected `,` or `)`, found {}", describe(src, close)),
        ),
    }
}

fn expected_expression(src: &str, t: &Token) -> FormulaError {
    let err = FormulaError::new(
        t.span.clone(),
        format!("expected an expression, found {}", describe(src, t)),
    );
    match t.tok {
        Tok::Bang | Tok::Not => err.help(
            "`!` binds more loosely than comparisons and arithmetic; \
             put it in parentheses: `(!x)`",
        ),
        Tok::And | Tok::Or => {
            err.help("it is a keyword; write a column of that name in backquotes")
        }
        _ => err,
    }
}

fn arguments(n: usize) -> String {
    if n == 1 {
        "1 argument".to_string()
    } else {
        format!("{n} arguments")
    }
}

/// How many arguments a function takes, in words: "1 or 2 arguments".
fn arity(f: &Function) -> String {
    match f.max_args {
        Some(0) => "no arguments".to_string(),
        Some(max) if max == f.min_args => arguments(max),
        Some(max) if max == f.min_args + 1 => format!("{} or {}", f.min_args, arguments(max)),
        Some(max) => format!("{} to {}", f.min_args, arguments(max)),
        None => format!("at least {}", arguments(f.min_args)),
    }
}

fn unknown_function(name: &str, span: Range<usize>) -> FormulaError {
    let err = FormulaError::new(span, format!("unknown function `{name}`"));
    let near = all_function_names()
        .find(|c| c.eq_ignore_ascii_case(name))
        .or_else(|| crate::suggest(name, all_function_names()));
    match near {
        Some(near) => err.help(format!("did you mean `{near}`?")),
        None => err.help("the functions are listed in the formula language reference"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The expression with every span emptied, to compare trees alone.
    fn strip(e: &Expr) -> Expr {
        let kind = match &e.kind {
            ExprKind::Unary { op, expr } => ExprKind::Unary {
                op: *op,
                expr: Box::new(strip(expr)),
            },
            ExprKind::Binary { op, left, right } => ExprKind::Binary {
                op: *op,
                left: Box::new(strip(left)),
                right: Box::new(strip(right)),
            },
            ExprKind::Call { name, args } => ExprKind::Call {
                name,
                args: args.iter().map(strip).collect(),
            },
            other => other.clone(),
        };
        Expr { kind, span: 0..0 }
    }

    fn rendered(src: &str) -> String {
        match parse(src) {
            Ok(e) => render(&e),
            Err(e) => panic!("{src:?}: {e} at {:?}", e.span),
        }
    }

    const RENDERINGS: &[(&str, &str)] = &[
        // Precedence.
        ("1 + 2 * 3", "1 + 2 * 3"),
        ("(1 + 2) * 3", "(1 + 2) * 3"),
        ("a || b && c", "a || b && c"),
        ("(a || b) && c", "(a || b) && c"),
        ("a and b or not c", "a && b || !c"),
        ("a + b == c * d", "a + b == c * d"),
        ("!a == b", "!(a == b)"),
        ("(!a) == b", "(!a) == b"),
        ("a == b && c != d", "a == b && c != d"),
        ("a = 1 or b <> 2", "a == 1 || b != 2"),
        ("x>=1&&x<=10", "x >= 1 && x <= 10"),
        ("((a))", "a"),
        // Left associativity.
        ("a - b - c", "a - b - c"),
        ("a - (b - c)", "a - (b - c)"),
        ("a // b % c * d", "a // b % c * d"),
        ("a * (b / c)", "a * (b / c)"),
        ("a || (b || c)", "a || (b || c)"),
        ("(a < b) == c", "(a < b) == c"),
        // Unary minus against subtraction.
        ("-a - -b", "-a - -b"),
        ("a-1", "a - 1"),
        ("a -1", "a - 1"),
        ("- 5", "-5"),
        ("-(5)", "-(5)"),
        ("--a", "-(-a)"),
        ("-(a + b) * c", "-(a + b) * c"),
        ("2 * -3", "2 * -3"),
        ("-9223372036854775808", "-9223372036854775808"),
        ("!!a", "!!a"),
        ("not -x", "!-x"),
        // Regexes against division.
        ("a / b / c", "a / b / c"),
        ("a/b", "a / b"),
        ("replace(s, /a\\/b/i, \"x\")", "replace(s, /a\\/b/i, \"x\")"),
        ("matches(s, /^\\d+$/)", "matches(s, /^\\d+$/)"),
        ("a / /x/", "a / /x/"),
        // Numbers.
        ("1.5 + .5 + 1e3 + 2.5E-3", "1.5 + 0.5 + 1000.0 + 0.0025"),
        ("007", "7"),
        // Strings.
        ("'it\\'s'", "\"it's\""),
        (
            "\"say \\\"hi\\\"\\n\\t\\\\\"",
            "\"say \\\"hi\\\"\\n\\t\\\\\"",
        ),
        ("\"a\" + 'b'", "\"a\" + \"b\""),
        // Columns.
        ("val(\"col with space\")", "`col with space`"),
        ("numval('price')", "price"),
        ("`unit price` * 2", "`unit price` * 2"),
        ("`a\\`b\\\\c`", "`a\\`b\\\\c`"),
        ("`and` || `NULL`", "`and` || `NULL`"),
        ("color_intensity", "color_intensity"),
        // Functions and aliases.
        ("toUppercase(x)", "upper(x)"),
        ("isNull(x) || len(y) > 3", "is_null(x) || length(y) > 3"),
        ("if(a > 1, 'big', null)", "if(a > 1, \"big\", null)"),
        ("round( x , 2 )", "round(x, 2)"),
        ("now ( )", "now()"),
        ("coalesce(a, b, c, 0)", "coalesce(a, b, c, 0)"),
        ("-abs(x)", "-abs(x)"),
        // Keywords in any case.
        ("TRUE && False || NULL", "true && false || null"),
        ("NOT a AND b", "!a && b"),
        ("\n a\t+\r\nb ", "a + b"),
    ];

    #[test]
    fn renderings() {
        for (src, want) in RENDERINGS {
            assert_eq!(rendered(src), *want, "{src:?}");
            // The canonical text is its own rendering.
            assert_eq!(rendered(want), *want, "{want:?}");
        }
    }

    #[test]
    fn trees() {
        let e = parse("a - b * -c").unwrap();
        let ExprKind::Binary {
            op: BinaryOp::Sub,
            left,
            right,
        } = &e.kind
        else {
            panic!("{e:?}")
        };
        assert_eq!(left.kind, ExprKind::Column("a".into()));
        let ExprKind::Binary {
            op: BinaryOp::Mul,
            right: neg,
            ..
        } = &right.kind
        else {
            panic!("{right:?}")
        };
        assert!(matches!(
            neg.kind,
            ExprKind::Unary {
                op: UnaryOp::Neg,
                ..
            }
        ));
        assert_eq!(parse("-5").unwrap().kind, ExprKind::Int(-5));
        assert_eq!(parse("-1.5").unwrap().kind, ExprKind::Float(-1.5));
        assert_eq!(
            parse("-9223372036854775808").unwrap().kind,
            ExprKind::Int(i64::MIN)
        );
        assert_eq!(
            parse("9223372036854775807").unwrap().kind,
            ExprKind::Int(i64::MAX)
        );
        assert_eq!(parse("1e3").unwrap().kind, ExprKind::Float(1000.0));
        assert_eq!(
            parse("/a\\/b\\d/i").unwrap().kind,
            ExprKind::Regex {
                pattern: "a/b\\d".into(),
                case_insensitive: true
            }
        );
        assert_eq!(parse("'a\\tb'").unwrap().kind, ExprKind::Str("a\tb".into()));
        assert_eq!(
            parse("strval(\"x y\")").unwrap(),
            Expr {
                kind: ExprKind::Column("x y".into()),
                span: 0..13
            }
        );
        let call = parse("substr(s, 1)").unwrap();
        assert!(
            matches!(call.kind, ExprKind::Call { name: "substring", ref args } if args.len() == 2)
        );
        assert_eq!(call.span, 0..12);
    }

    #[test]
    fn spans() {
        let src = "(a + b) * round(c)";
        let e = parse(src).unwrap();
        assert_eq!(e.span, 0..src.len());
        let ExprKind::Binary { left, right, .. } = &e.kind else {
            panic!()
        };
        // A parenthesised expression's span is inside its parentheses; the operator's covers them.
        assert_eq!(&src[left.span.clone()], "a + b");
        assert_eq!(&src[right.span.clone()], "round(c)");
        let e = parse(" - x").unwrap();
        assert_eq!(e.span, 1..4);
        let e = parse("-(x)").unwrap();
        assert_eq!(e.span, 0..4);
    }

    #[test]
    fn columns_in_order() {
        let src = "if(`unit price` > 0, a + val(\"b c\"), a) // x";
        let e = parse(src).unwrap();
        let cols = columns(&e);
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["unit price", "a", "b c", "a", "x"]);
        let texts: Vec<&str> = cols.iter().map(|(_, s)| &src[s.clone()]).collect();
        assert_eq!(texts, ["`unit price`", "a", "val(\"b c\")", "a", "x"]);
        assert!(columns(&parse("now() + 1").unwrap()).is_empty());
    }

    /// (source, message, span).
    const ERRORS: &[(&str, &str, Range<usize>)] = &[
        ("", "empty formula", 0..0),
        ("  \n", "empty formula", 0..3),
        ("a < b < c", "comparisons do not chain; use &&", 6..7),
        ("a == b != c", "comparisons do not chain; use &&", 7..9),
        ("foo(1)", "unknown function `foo`", 0..3),
        ("rnd(1)", "unknown function `rnd`", 0..3),
        (
            "round(1, 2, 3)",
            "`round` takes 1 or 2 arguments, got 3",
            0..14,
        ),
        ("abs()", "`abs` takes 1 argument, got 0", 0..5),
        ("now(1)", "`now` takes no arguments, got 1", 0..6),
        ("min(1)", "`min` takes at least 2 arguments, got 1", 0..6),
        ("val(a)", "val() takes a column name as a string", 0..6),
        (
            "val('a', 'b')",
            "val() takes a column name as a string",
            0..13,
        ),
        ("val('')", "empty column name", 4..6),
        ("a)", "unexpected `)`", 1..2),
        ("a b", "unexpected `b`", 2..3),
        ("1 +", "expected an expression, found end of formula", 3..3),
        ("f(1,)", "unknown function `f`", 0..1),
        ("abs(1,)", "expected an expression, found `)`", 6..7),
        ("abs(1 2)", "expected `,` or `)`, found `2`", 6..7),
        ("(a + b", "unclosed `(`", 0..1),
        ("(a b)", "expected `)`, found `b`", 3..4),
        ("x + \"abc", "unterminated string", 4..8),
        ("'ab\\'", "unterminated string", 0..5),
        ("replace(s, /ab, 'x')", "unterminated regex", 11..20),
        ("`a b", "unterminated column name", 0..4),
        ("\"a\\qb\"", "unknown escape `\\q` in a string", 2..4),
        (
            "9223372036854775808",
            "integer `9223372036854775808` is out of range",
            0..19,
        ),
        (
            "-9223372036854775809",
            "integer `-9223372036854775809` is out of range",
            0..20,
        ),
        (
            "99999999999999999999999",
            "integer `99999999999999999999999` is out of range",
            0..23,
        ),
        ("1e999", "number `1e999` is too large", 0..5),
        ("12abc", "invalid number `12abc`", 0..5),
        ("1.", "invalid number `1.`", 0..2),
        ("matches(s, /a/g)", "unknown regex flags `g`", 14..15),
        ("f(//)", "unknown function `f`", 0..1),
        ("abs(//)", "empty regex", 4..6),
        ("a | b", "unexpected `|`", 2..3),
        ("a == !b", "expected an expression, found `!`", 5..6),
        ("a && or", "expected an expression, found `or`", 5..7),
        ("prix × 2", "unexpected character `×`", 5..7),
        ("``", "empty column name", 0..2),
        ("a # b", "unexpected character `#`", 2..3),
    ];

    #[test]
    fn errors() {
        for (src, message, span) in ERRORS {
            let err = match parse(src) {
                Ok(e) => panic!("{src:?} parsed as {e:?}"),
                Err(err) => err,
            };
            assert_eq!(
                (err.message.as_str(), err.span.clone()),
                (*message, span.clone()),
                "{src:?}"
            );
            assert_eq!(err.to_string(), *message);
        }
    }

    #[test]
    fn error_helps() {
        let help = |src: &str| parse(src).unwrap_err().help;
        assert_eq!(help("rond(1)").as_deref(), Some("did you mean `round`?"));
        assert_eq!(help("Upper(1)").as_deref(), Some("did you mean `upper`?"));
        assert_eq!(
            help("toUpperCase(x)").as_deref(),
            Some("did you mean `toUppercase`?")
        );
        assert_eq!(
            help("qqqqqq(1)").as_deref(),
            Some("the functions are listed in the formula language reference")
        );
        assert_eq!(
            help("round(1, 2, 3)").as_deref(),
            Some("round(x[, digits])")
        );
        assert_eq!(
            help("substr(1)").as_deref(),
            Some("substring(s, from[, to])")
        );
        assert!(help("a b").unwrap().contains("operator"));
    }

    #[test]
    fn nesting_is_limited() {
        let parens = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&parens(MAX_DEPTH)).is_ok());
        let err = parse(&parens(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(err.span, MAX_DEPTH..MAX_DEPTH + 1);
        assert!(err.message.contains("nests more than 128"), "{err}");
        assert!(parse(&parens(100_000)).is_err());

        let calls = |n: usize| format!("{}a{}", "abs(".repeat(n), ")".repeat(n));
        assert!(parse(&calls(MAX_DEPTH - 1)).is_ok());
        assert!(parse(&calls(MAX_DEPTH)).is_err());
        assert!(parse(&calls(50_000)).is_err());

        for op in ["-", "!", "not "] {
            assert!(
                parse(&format!("{}a", op.repeat(MAX_DEPTH - 1))).is_ok(),
                "{op}"
            );
            assert!(
                parse(&format!("{}a", op.repeat(MAX_DEPTH))).is_err(),
                "{op}"
            );
            assert!(parse(&format!("{}a", op.repeat(100_000))).is_err(), "{op}");
        }

        // A long chain is a deep tree too.
        let chain = |n: usize| vec!["a"; n].join(" + ");
        assert!(parse(&chain(MAX_DEPTH)).is_ok());
        assert!(parse(&chain(MAX_DEPTH + 1)).is_err());
        assert!(parse(&chain(100_000)).is_err());
        let ors = vec!["x == 1"; 100_000].join(" || ");
        assert!(parse(&ors).is_err());
    }

    #[test]
    fn function_table() {
        let mut names: Vec<&str> = all_function_names().collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a name is given twice");
        // The module docs list every signature.
        let docs: String = include_str!("formula.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!"))
            .collect::<Vec<_>>()
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for f in FUNCTIONS {
            assert!(
                is_identifier(f.name) && keyword(f.name).is_none(),
                "{}",
                f.name
            );
            assert!(
                f.aliases
                    .iter()
                    .all(|a| is_identifier(a) && keyword(a).is_none())
            );
            assert!(
                f.signature.starts_with(&format!("{}(", f.name)),
                "{}",
                f.name
            );
            assert!(f.max_args.is_none_or(|max| max >= f.min_args));
            assert!(
                docs.contains(&format!("`{}`", f.signature)),
                "{}",
                f.signature
            );
            assert!(!f.summary.is_empty());
            for name in std::iter::once(f.name).chain(f.aliases.iter().copied()) {
                assert_eq!(function(name).map(|g| g.name), Some(f.name));
            }
        }
        assert!(function("val").is_none());
        assert!(function("Round").is_none());
        assert_eq!(function("asDate").unwrap().name, "parse_date");
    }

    // Generated trees for the round trip.

    fn column_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z_][a-z0-9_]{0,6}",
            "[A-Za-z0-9 `\\\\é()\"']{1,6}",
            prop::sample::select(vec!["and", "NULL", "True", "not", "val", "round"])
                .prop_map(String::from),
        ]
    }

    fn leaf() -> impl Strategy<Value = ExprKind> {
        prop_oneof![
            Just(ExprKind::Null),
            any::<bool>().prop_map(ExprKind::Bool),
            any::<i64>().prop_map(ExprKind::Int),
            (-1000i64..1000).prop_map(ExprKind::Int),
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(ExprKind::Float),
            "\\PC{0,6}".prop_map(ExprKind::Str),
            "[a\"'\\\\\n\t\r/]{0,6}".prop_map(ExprKind::Str),
            ("[a-z./*+?()\\[\\] ^$]{1,6}", any::<bool>()).prop_map(
                |(pattern, case_insensitive)| {
                    ExprKind::Regex {
                        pattern,
                        case_insensitive,
                    }
                }
            ),
            Just(ExprKind::Regex {
                pattern: "\\d+\\\\".into(),
                case_insensitive: false
            }),
            column_name().prop_map(ExprKind::Column),
        ]
    }

    fn expr() -> impl Strategy<Value = Expr> {
        let to_expr = |kind| Expr { kind, span: 0..0 };
        leaf()
            .prop_map(to_expr)
            .prop_recursive(6, 64, 4, move |inner| {
                let unary = prop_oneof![Just(UnaryOp::Neg), Just(UnaryOp::Not)];
                let binary = prop::sample::select(vec![
                    BinaryOp::Add,
                    BinaryOp::Sub,
                    BinaryOp::Mul,
                    BinaryOp::Div,
                    BinaryOp::IntDiv,
                    BinaryOp::Mod,
                    BinaryOp::Eq,
                    BinaryOp::Ne,
                    BinaryOp::Lt,
                    BinaryOp::Le,
                    BinaryOp::Gt,
                    BinaryOp::Ge,
                    BinaryOp::And,
                    BinaryOp::Or,
                ]);
                let args = inner.clone();
                let call = (0..FUNCTIONS.len()).prop_flat_map(move |i| {
                    let f = &FUNCTIONS[i];
                    let most = f.max_args.unwrap_or(f.min_args + 3);
                    prop::collection::vec(args.clone(), f.min_args..=most)
                        .prop_map(move |args| ExprKind::Call { name: f.name, args })
                });
                prop_oneof![
                    (unary, inner.clone()).prop_map(|(op, e)| ExprKind::Unary {
                        op,
                        expr: Box::new(e)
                    }),
                    (binary, inner.clone(), inner).prop_map(|(op, l, r)| ExprKind::Binary {
                        op,
                        left: Box::new(l),
                        right: Box::new(r)
                    }),
                    call,
                ]
                .prop_map(to_expr)
            })
    }

    fn tokens() -> impl Strategy<Value = String> {
        let token = prop::sample::select(vec![
            "a",
            "b1",
            "1",
            "12",
            "1.5",
            ".5",
            "1e3",
            "9223372036854775808",
            "\"s\"",
            "'t'",
            "'",
            "\"",
            "`",
            "`c d`",
            "\\",
            "/",
            "//",
            "/a/i",
            "(",
            ")",
            ",",
            "+",
            "-",
            "*",
            "%",
            "==",
            "=",
            "!=",
            "<>",
            "<",
            "<=",
            ">",
            ">=",
            "!",
            "&&",
            "||",
            "&",
            "|",
            "and",
            "or",
            "not",
            "NULL",
            "true",
            "round",
            "abs",
            "now",
            "val",
            "if",
            "foo",
            " ",
            "\n",
            "é",
            ".",
            "e",
            "i",
        ]);
        prop::collection::vec(token, 0..24).prop_map(|v| v.concat())
    }

    /// What must hold for any text: no panic; an error's span lies in the text; a formula that
    /// reads renders to text that reads back the same.
    fn check_any(src: &str) -> Result<(), TestCaseError> {
        match parse(src) {
            Ok(e) => {
                let text = render(&e);
                let again = parse(&text);
                prop_assert!(
                    again.is_ok(),
                    "{:?} rendered as {:?}: {:?}",
                    src,
                    text,
                    again
                );
                prop_assert_eq!(strip(&again.unwrap()), strip(&e), "{:?} -> {:?}", src, text);
                for (_, span) in columns(&e) {
                    prop_assert!(src.get(span).is_some());
                }
            }
            Err(err) => {
                prop_assert!(src.get(err.span.clone()).is_some(), "{:?}: {:?}", src, err);
                prop_assert!(!err.message.is_empty());
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn parse_never_panics(src in "\\PC*") {
            check_any(&src)?;
        }

        #[test]
        fn parse_never_panics_on_tokens(src in tokens()) {
            check_any(&src)?;
        }

        #[test]
        fn render_round_trips(e in expr()) {
            let text = render(&e);
            let back = parse(&text);
            prop_assert!(back.is_ok(), "{:?}: {:?}", text, back);
            prop_assert_eq!(strip(&back.unwrap()), e, "{}", text);
        }
    }
}
