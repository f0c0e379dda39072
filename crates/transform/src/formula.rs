//! Formulas compiled to DataFusion expressions, typed against the schema they run on.
//!
//! The semantics are the reference's (docs/visual-recipes.md), and `pyspark::formula` gives
//! Spark the same ones; each rule below is chosen so both engines can honour it:
//! - null propagates through operators and functions (`coalesce`, `is_null`, `is_blank`, `if`
//!   and `concat` excepted); a condition that is null counts as false;
//! - `/` divides as floats; `//` is floor division (integers stay integers); `/`, `//` and `%`
//!   by zero give null, or fail the run where the step says `on_error = "fail"`;
//! - `+` of two strings concatenates; a string and an integer concatenate the integer's digits;
//! - comparisons need two numbers, two strings, two booleans, or dates and timestamps (a string
//!   literal compared with a date is read as an ISO date): anything else is a check error,
//!   rather than one engine's implicit cast;
//! - `round` rounds half away from zero on the number's shortest decimal form (2.675 → 2.68),
//!   as Spark does.

use std::ops::Range;

use arrow::datatypes::{DataType, TimeUnit};
use capstan_core::formula::{BinaryOp, Expr as F, ExprKind, UnaryOp};
use capstan_core::visual::OnError;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, cast, lit, when};
use datafusion::prelude::ident;

use crate::types::*;
use crate::udf;

/// A problem in a formula: where in its text, and what.
#[derive(Clone, Debug, PartialEq)]
pub struct FormulaProblem {
    pub span: Range<usize>,
    pub message: String,
    pub help: Option<String>,
}

type R<T> = Result<T, FormulaProblem>;

fn problem<T>(span: &Range<usize>, message: impl Into<String>, help: Option<String>) -> R<T> {
    Err(FormulaProblem {
        span: span.clone(),
        message: message.into(),
        help,
    })
}

/// A compiled subexpression and its type.
#[derive(Clone, Debug)]
pub struct Typed {
    pub expr: Expr,
    pub ty: DataType,
}

/// Compiles formulas against one schema.
pub struct Compiler<'s> {
    pub schema: &'s DFSchema,
    pub on_error: OnError,
    /// Names the step in run-time failures (`on_error = "fail"`).
    pub what: String,
}

/// Parses and compiles `text`.
pub fn compile(
    text: &str,
    schema: &DFSchema,
    on_error: OnError,
    what: &str,
) -> Result<Typed, FormulaProblem> {
    let ast = capstan_core::formula::parse(text).map_err(|e| FormulaProblem {
        span: e.span,
        message: e.message,
        help: e.help,
    })?;
    Compiler {
        schema,
        on_error,
        what: what.to_string(),
    }
    .expr(&ast)
}

/// A column of `schema` by name, or the problem naming the nearest one.
pub fn column(schema: &DFSchema, name: &str) -> Result<Typed, (String, Option<String>)> {
    match schema.fields().iter().find(|f| f.name() == name) {
        Some(f) => Ok(Typed {
            expr: ident(name),
            ty: f.data_type().clone(),
        }),
        None => Err(unknown_column(schema, name)),
    }
}

/// "no column `x`", and the nearest name or the list of columns.
pub fn unknown_column(schema: &DFSchema, name: &str) -> (String, Option<String>) {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let help = match capstan_core::suggest(name, names.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!(
            "the columns here are: {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    (format!("no column `{name}`"), Some(help))
}

impl Compiler<'_> {
    pub fn expr(&self, f: &F) -> R<Typed> {
        let span = &f.span;
        let t = |expr: Expr, ty: DataType| Ok(Typed { expr, ty });
        match &f.kind {
            ExprKind::Null => t(lit(ScalarValue::Null), DataType::Null),
            ExprKind::Bool(b) => t(lit(*b), DataType::Boolean),
            ExprKind::Int(i) => t(lit(*i), DataType::Int64),
            ExprKind::Float(x) => t(lit(*x), DataType::Float64),
            ExprKind::Str(s) => t(lit(s.as_str()), DataType::Utf8),
            ExprKind::Regex { .. } => problem(
                span,
                "a regular expression can only be an argument of replace, matches or regex_extract",
                None,
            ),
            ExprKind::Column(name) => {
                column(self.schema, name).or_else(|(m, h)| problem(span, m, h))
            }
            ExprKind::Unary { op, expr } => {
                let a = self.expr(expr)?;
                match op {
                    UnaryOp::Neg if is_numeric(&a.ty) || is_null(&a.ty) => t(-a.expr, a.ty),
                    UnaryOp::Not if is_bool(&a.ty) || is_null(&a.ty) => {
                        t(Expr::Not(Box::new(a.expr)), DataType::Boolean)
                    }
                    UnaryOp::Neg => problem(
                        span,
                        format!("`-` needs a number, not {}", type_name(&a.ty)),
                        None,
                    ),
                    UnaryOp::Not => problem(
                        span,
                        format!("`!` needs a boolean, not {}", type_name(&a.ty)),
                        None,
                    ),
                }
            }
            ExprKind::Binary { op, left, right } => {
                let a = self.expr(left)?;
                let b = self.expr(right)?;
                self.binary(span, *op, a, b, &left.span, &right.span)
            }
            ExprKind::Call { name, args } => self.call(span, name, args),
        }
    }

    /// What a division by zero gives: null, or a run-time failure naming the step.
    fn by_zero(&self, divisor: &Expr, value: Expr, ty: &DataType) -> Expr {
        let on_zero = match self.on_error {
            OnError::Null => cast(lit(ScalarValue::Null), ty.clone()),
            OnError::Fail => cast(
                udf::fail(format!("{}: division by zero", self.what)),
                ty.clone(),
            ),
        };
        when(divisor.clone().eq(lit(0)), on_zero)
            .otherwise(value)
            .unwrap_or_else(|_| lit(ScalarValue::Null))
    }

    fn binary(
        &self,
        span: &Range<usize>,
        op: BinaryOp,
        a: Typed,
        b: Typed,
        sa: &Range<usize>,
        sb: &Range<usize>,
    ) -> R<Typed> {
        use BinaryOp::*;
        let numeric = |x: &Typed| is_numeric(&x.ty) || is_null(&x.ty);
        let both_int = (is_int(&a.ty) || is_null(&a.ty)) && (is_int(&b.ty) || is_null(&b.ty));
        let need_numbers = |sym: &str| -> R<()> {
            for (x, s) in [(&a, sa), (&b, sb)] {
                if !numeric(x) {
                    return problem(
                        s,
                        format!("`{sym}` needs numbers, and this is {}", type_name(&x.ty)),
                        (is_string(&x.ty)).then(|| "convert text with to_number(…)".to_string()),
                    );
                }
            }
            Ok(())
        };
        match op {
            Add if is_string(&a.ty) || is_string(&b.ty) => {
                for (x, s) in [(&a, sa), (&b, sb)] {
                    if !(is_string(&x.ty) || is_int(&x.ty) || is_null(&x.ty)) {
                        return problem(
                            s,
                            format!(
                                "`+` joins text with text or integers, and this is {}",
                                type_name(&x.ty)
                            ),
                            Some(
                                "format it first, e.g. with to_string(round(x, 2)) or format_date"
                                    .into(),
                            ),
                        );
                    }
                }
                let s = |x: Typed| {
                    if is_string(&x.ty) {
                        x.expr
                    } else {
                        cast(x.expr, DataType::Utf8)
                    }
                };
                Ok(Typed {
                    expr: datafusion::functions::string::expr_fn::concat(vec![s(a), s(b)])
                        .and_nulls_propagate(),
                    ty: DataType::Utf8,
                })
            }
            Add | Sub | Mul => {
                need_numbers(match op {
                    Add => "+",
                    Sub => "-",
                    _ => "*",
                })?;
                let ty = if both_int {
                    DataType::Int64
                } else {
                    DataType::Float64
                };
                let (x, y) = if both_int {
                    (conv(a, DataType::Int64), conv(b, DataType::Int64))
                } else {
                    (conv(a, DataType::Float64), conv(b, DataType::Float64))
                };
                let expr = match op {
                    Add => x + y,
                    Sub => x - y,
                    _ => x * y,
                };
                Ok(Typed { expr, ty })
            }
            Div => {
                need_numbers("/")?;
                let d = conv(b, DataType::Float64);
                let value = conv(a, DataType::Float64) / d.clone();
                Ok(Typed {
                    expr: self.by_zero(&d, value, &DataType::Float64),
                    ty: DataType::Float64,
                })
            }
            IntDiv if both_int => {
                let (x, d) = (conv(a, DataType::Int64), conv(b, DataType::Int64));
                // Exact on every 64-bit integer (no detour through floats): the truncated
                // quotient, one less where it was rounded up, i.e. where the division leaves a
                // remainder and the operands' signs differ.
                let q = x.clone() / d.clone();
                let rounded_up = (x.clone() % d.clone())
                    .not_eq(lit(0i64))
                    .and(x.lt(lit(0i64)).not_eq(d.clone().lt(lit(0i64))));
                let value = when(rounded_up, q.clone() - lit(1i64))
                    .otherwise(q)
                    .unwrap_or_else(|_| lit(ScalarValue::Null));
                Ok(Typed {
                    expr: self.by_zero(&d, value, &DataType::Int64),
                    ty: DataType::Int64,
                })
            }
            IntDiv => {
                need_numbers("//")?;
                let d = conv(b, DataType::Float64);
                let floored = datafusion::functions::math::expr_fn::floor(
                    conv(a, DataType::Float64) / d.clone(),
                );
                Ok(Typed {
                    expr: self.by_zero(&d, floored, &DataType::Float64),
                    ty: DataType::Float64,
                })
            }
            Mod => {
                need_numbers("%")?;
                let ty = if both_int {
                    DataType::Int64
                } else {
                    DataType::Float64
                };
                let (x, y) = (conv(a, ty.clone()), conv(b, ty.clone()));
                Ok(Typed {
                    expr: self.by_zero(&y, x % y.clone(), &ty),
                    ty,
                })
            }
            Eq | Ne | Lt | Le | Gt | Ge => {
                let (x, y) = self.comparable(span, a, b)?;
                let expr = match op {
                    Eq => x.eq(y),
                    Ne => x.not_eq(y),
                    Lt => x.lt(y),
                    Le => x.lt_eq(y),
                    Gt => x.gt(y),
                    _ => x.gt_eq(y),
                };
                Ok(Typed {
                    expr,
                    ty: DataType::Boolean,
                })
            }
            And | Or => {
                for (x, s) in [(&a, sa), (&b, sb)] {
                    if !(is_bool(&x.ty) || is_null(&x.ty)) {
                        return problem(
                            s,
                            format!(
                                "`{}` needs conditions, and this is {}",
                                if op == And { "&&" } else { "||" },
                                type_name(&x.ty)
                            ),
                            None,
                        );
                    }
                }
                let (x, y) = (
                    cast(a.expr, DataType::Boolean),
                    cast(b.expr, DataType::Boolean),
                );
                Ok(Typed {
                    expr: if op == And { x.and(y) } else { x.or(y) },
                    ty: DataType::Boolean,
                })
            }
        }
    }

    /// Both sides of a comparison, of one type class.
    fn comparable(&self, span: &Range<usize>, a: Typed, b: Typed) -> R<(Expr, Expr)> {
        let class = |t: &DataType| {
            if is_numeric(t) {
                "number"
            } else if is_string(t) {
                "string"
            } else if is_bool(t) {
                "bool"
            } else if is_temporal(t) {
                "date"
            } else if is_null(t) {
                "null"
            } else {
                "other"
            }
        };
        let (ca, cb) = (class(&a.ty), class(&b.ty));
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        match (ca, cb) {
            ("number", "number") => Ok((conv(a, DataType::Float64), conv(b, DataType::Float64))),
            (x, y) if x == y && x != "other" && x != "date" => Ok((a.expr, b.expr)),
            ("null", _) | (_, "null") => Ok((a.expr, b.expr)),
            ("date", "date") => Ok((cast(a.expr, ts.clone()), cast(b.expr, ts))),
            ("date", "string") | ("string", "date") => {
                let text = if ca == "string" { &a.expr } else { &b.expr };
                date_literal(span, text)?;
                Ok((cast(a.expr, ts.clone()), cast(b.expr, ts)))
            }
            _ => problem(
                span,
                format!(
                    "cannot compare {} with {}",
                    type_name(&a.ty),
                    type_name(&b.ty)
                ),
                Some(match (ca, cb) {
                    ("string", "number") | ("number", "string") => {
                        "convert the text with to_number(…), or the number with to_string(…)".into()
                    }
                    _ => "compare values of one kind: numbers, text, booleans or dates".into(),
                }),
            ),
        }
    }

    fn call(&self, span: &Range<usize>, name: &str, args: &[F]) -> R<Typed> {
        use datafusion::functions::expr_fn as fx;
        let regex_arg = |i: usize| -> Option<(String, bool)> {
            match args.get(i).map(|a| &a.kind) {
                Some(ExprKind::Regex {
                    pattern,
                    case_insensitive,
                }) => Some((pattern.clone(), *case_insensitive)),
                _ => None,
            }
        };
        // Arguments other than a regular expression, compiled.
        let mut typed = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            if regex_arg(i).is_some() {
                typed.push(Typed {
                    expr: lit(ScalarValue::Null),
                    ty: DataType::Null,
                });
            } else {
                typed.push(self.expr(a)?);
            }
        }
        let arg = |i: usize| typed[i].clone();
        let need = |i: usize, ok: fn(&DataType) -> bool, what: &str| -> R<Typed> {
            let a = arg(i);
            if ok(&a.ty) || is_null(&a.ty) {
                Ok(a)
            } else {
                problem(
                    &args[i].span,
                    format!(
                        "{name}() needs {what} here, and this is {}",
                        type_name(&a.ty)
                    ),
                    None,
                )
            }
        };
        let num =
            |i: usize| need(i, is_numeric, "a number").map(|a| cast(a.expr, DataType::Float64));
        let int_lit = |i: usize| -> R<i64> {
            match &args[i].kind {
                ExprKind::Int(n) => Ok(*n),
                ExprKind::Unary {
                    op: UnaryOp::Neg,
                    expr,
                } if matches!(expr.kind, ExprKind::Int(_)) => match expr.kind {
                    ExprKind::Int(n) => Ok(-n),
                    _ => unreachable!(),
                },
                _ => problem(
                    &args[i].span,
                    format!("{name}() takes a whole number here, written out"),
                    None,
                ),
            }
        };
        let str_lit = |i: usize| -> R<String> {
            match &args[i].kind {
                ExprKind::Str(s) => Ok(s.clone()),
                _ => problem(
                    &args[i].span,
                    format!("{name}() takes text here, written out in quotes"),
                    None,
                ),
            }
        };
        let text = |i: usize| need(i, is_string, "text").map(|a| a.expr);
        let date = |i: usize| {
            need(i, is_temporal, "a date or timestamp")
                .map(|a| cast(a.expr, DataType::Timestamp(TimeUnit::Microsecond, None)))
        };
        let unit = |i: usize| -> R<capstan_core::visual::DateUnit> {
            let s = str_lit(i)?;
            capstan_core::visual::DateUnit::parse(&s).map_or_else(
                || {
                    problem(
                        &args[i].span,
                        format!("unknown unit `{s}`"),
                        Some(capstan_core::unknown_help(
                            &s,
                            &capstan_core::visual::DateUnit::NAMES,
                            "unit",
                        )),
                    )
                },
                Ok,
            )
        };
        let t = |expr: Expr, ty: DataType| Ok(Typed { expr, ty });
        let float = DataType::Float64;
        match name {
            "if" => {
                let c = need(0, is_bool, "a condition")?;
                let then = arg(1);
                let otherwise = typed.get(2).cloned().unwrap_or(Typed {
                    expr: lit(ScalarValue::Null),
                    ty: DataType::Null,
                });
                let ty = self.common(span, &[&then, &otherwise])?;
                let e = when(cast(c.expr, DataType::Boolean), cast(then.expr, ty.clone()))
                    .otherwise(cast(otherwise.expr, ty.clone()))
                    .map_err(|e| FormulaProblem {
                        span: span.clone(),
                        message: e.to_string(),
                        help: None,
                    })?;
                t(e, ty)
            }
            "coalesce" => {
                let refs: Vec<&Typed> = typed.iter().collect();
                let ty = self.common(span, &refs)?;
                t(
                    fx::coalesce(
                        typed
                            .iter()
                            .map(|a| cast(a.expr.clone(), ty.clone()))
                            .collect(),
                    ),
                    ty,
                )
            }
            "is_null" => t(arg(0).expr.is_null(), DataType::Boolean),
            "is_not_null" => t(arg(0).expr.is_not_null(), DataType::Boolean),
            "is_blank" => {
                let a = arg(0);
                let e = if is_string(&a.ty) {
                    udf::is_blank(a.expr)
                } else {
                    a.expr.is_null()
                };
                t(e, DataType::Boolean)
            }
            "null_if" => {
                let (a, b) = (arg(0), arg(1));
                let ty = self.common(span, &[&a, &b])?;
                t(
                    fx::nullif(cast(a.expr, ty.clone()), cast(b.expr, ty.clone())),
                    ty,
                )
            }
            "abs" => {
                let a = need(0, is_numeric, "a number")?;
                t(fx::abs(a.expr), a.ty)
            }
            "round" => {
                let digits = if args.len() > 1 { int_lit(1)? } else { 0 };
                t(udf::round(num(0)?, digits), float)
            }
            "floor" => t(fx::floor(num(0)?), float),
            "ceil" => t(fx::ceil(num(0)?), float),
            "sqrt" => {
                // Of a negative number: null (Arrow's sqrt would fail the run).
                let x = num(0)?;
                t(
                    when(x.clone().gt_eq(lit(0.0)), self.nan_to_null(fx::sqrt(x)))
                        .otherwise(lit(ScalarValue::Float64(None)))
                        .unwrap_or(lit(ScalarValue::Null)),
                    float,
                )
            }
            "pow" => t(fx::power(num(0)?, num(1)?), float),
            "exp" => t(fx::exp(num(0)?), float),
            "ln" => {
                let x = num(0)?;
                t(
                    when(x.clone().gt(lit(0.0)), fx::ln(x))
                        .otherwise(lit(ScalarValue::Float64(None)))
                        .unwrap_or(lit(ScalarValue::Null)),
                    float,
                )
            }
            "log" => {
                let x = num(0)?;
                t(
                    when(x.clone().gt(lit(0.0)), fx::log10(x))
                        .otherwise(lit(ScalarValue::Float64(None)))
                        .unwrap_or(lit(ScalarValue::Null)),
                    float,
                )
            }
            "sign" => t(fx::signum(num(0)?), float),
            "min" | "max" => {
                let mut all_int = true;
                for i in 0..args.len() {
                    let a = need(i, is_numeric, "a number")?;
                    all_int &= is_int(&a.ty) || is_null(&a.ty);
                }
                let ty = if all_int { DataType::Int64 } else { float };
                let xs = typed
                    .iter()
                    .map(|a| cast(a.expr.clone(), ty.clone()))
                    .collect();
                // Nulls are skipped (SQL's least and greatest, and Spark's).
                let v = if name == "min" {
                    fx::least(xs)
                } else {
                    fx::greatest(xs)
                };
                t(v, ty)
            }
            "clip" => {
                let (x, lo, hi) = (num(0)?, num(1)?, num(2)?);
                t(
                    when(x.clone().is_null(), lit(ScalarValue::Float64(None)))
                        .otherwise(fx::least(vec![fx::greatest(vec![x, lo]), hi]))
                        .unwrap_or(lit(ScalarValue::Null)),
                    float,
                )
            }
            "length" => t(
                cast(fx::character_length(text(0)?), DataType::Int64),
                DataType::Int64,
            ),
            "upper" => t(fx::upper(text(0)?), DataType::Utf8),
            "lower" => t(fx::lower(text(0)?), DataType::Utf8),
            "trim" => t(fx::btrim(vec![text(0)?]), DataType::Utf8),
            "substring" => {
                let s = text(0)?;
                let from = int_lit(1)?.max(0);
                let e = match args.get(2) {
                    Some(_) => {
                        let to = int_lit(2)?.max(from);
                        fx::substring(s, lit(from + 1), lit(to - from))
                    }
                    None => fx::substr(s, lit(from + 1)),
                };
                t(e, DataType::Utf8)
            }
            "left" => t(fx::left(text(0)?, lit(int_lit(1)?.max(0))), DataType::Utf8),
            "right" => t(fx::right(text(0)?, lit(int_lit(1)?.max(0))), DataType::Utf8),
            "contains" => t(
                cast(fx::strpos(text(0)?, text(1)?), DataType::Int64).gt(lit(0i64)),
                DataType::Boolean,
            ),
            "starts_with" => t(fx::starts_with(text(0)?, text(1)?), DataType::Boolean),
            "ends_with" => t(fx::ends_with(text(0)?, text(1)?), DataType::Boolean),
            "replace" => {
                let s = text(0)?;
                let r = lit(str_lit(2)?);
                match regex_arg(1) {
                    Some((pattern, ci)) => {
                        self.check_regex(&args[1].span, &pattern)?;
                        t(udf::regex_replace(s, &pattern, ci, r), DataType::Utf8)
                    }
                    None => t(fx::replace(s, text(1)?, r), DataType::Utf8),
                }
            }
            "matches" => {
                let s = text(0)?;
                let (pattern, ci) = match regex_arg(1) {
                    Some(p) => p,
                    None => (str_lit(1)?, false),
                };
                self.check_regex(&args[1].span, &pattern)?;
                t(udf::regex_matches(s, &pattern, ci), DataType::Boolean)
            }
            "regex_extract" => {
                let s = text(0)?;
                let (pattern, ci) = match regex_arg(1) {
                    Some(p) => p,
                    None => (str_lit(1)?, false),
                };
                self.check_regex(&args[1].span, &pattern)?;
                let group = if args.len() > 2 { int_lit(2)? } else { 1 };
                t(udf::regex_extract(s, &pattern, ci, group), DataType::Utf8)
            }
            "concat" => {
                // Nulls count as empty, as the reference's concat does.
                let parts = typed
                    .iter()
                    .map(|a| {
                        let s = if is_string(&a.ty) {
                            a.expr.clone()
                        } else if is_float(&a.ty) {
                            udf::float_to_string(cast(a.expr.clone(), DataType::Float64))
                        } else {
                            cast(a.expr.clone(), DataType::Utf8)
                        };
                        fx::coalesce(vec![s, lit("")])
                    })
                    .collect();
                t(fx::concat(parts), DataType::Utf8)
            }
            "split_part" => {
                let part = int_lit(2)?;
                if part < 1 {
                    return problem(&args[2].span, "split_part counts parts from 1", None);
                }
                let s = text(0)?;
                let sep = str_lit(1)?;
                t(udf::split_part(s, &sep, part), DataType::Utf8)
            }
            "to_string" => {
                let a = arg(0);
                let e = if is_string(&a.ty) {
                    a.expr
                } else if is_float(&a.ty) {
                    udf::float_to_string(cast(a.expr, DataType::Float64))
                } else {
                    cast(a.expr, DataType::Utf8)
                };
                t(e, DataType::Utf8)
            }
            "to_number" => {
                let a = arg(0);
                let e = if is_string(&a.ty) {
                    udf::parse_float(fx::btrim(vec![a.expr]))
                } else {
                    cast(a.expr, DataType::Float64)
                };
                t(e, float)
            }
            "to_int" => {
                let a = arg(0);
                let e = if is_string(&a.ty) {
                    udf::parse_int(fx::btrim(vec![a.expr]))
                } else if is_float(&a.ty) {
                    udf::float_to_int(cast(a.expr, float))
                } else {
                    cast(a.expr, DataType::Int64)
                };
                t(e, DataType::Int64)
            }
            "sha256" => t(fx::encode(fx::sha256(text(0)?), lit("hex")), DataType::Utf8),
            "pad_left" => {
                let s = text(0)?;
                let n = int_lit(1)?.max(0);
                let p = str_lit(2)?;
                // lpad truncates longer strings; the reference leaves them.
                t(
                    when(
                        fx::character_length(s.clone()).gt_eq(lit(n as i32)),
                        s.clone(),
                    )
                    .otherwise(fx::lpad(vec![s, lit(n), lit(p)]))
                    .unwrap_or(lit(ScalarValue::Null)),
                    DataType::Utf8,
                )
            }
            "now" => t(
                cast(fx::now(), DataType::Timestamp(TimeUnit::Microsecond, None)),
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            "year" | "month" | "day" | "hour" | "minute" | "second" | "day_of_week" => {
                let d = date(0)?;
                t(crate::dates::part(name, d), DataType::Int64)
            }
            "date_diff" => {
                let (a, b) = (date(0)?, date(1)?);
                let u = unit(2)?;
                match crate::dates::diff(a, b, u) {
                    Some(e) => t(e, DataType::Int64),
                    None => problem(
                        &args[2].span,
                        format!(
                            "date_diff counts weeks, days, hours, minutes or seconds, not {}s",
                            u.as_str()
                        ),
                        Some("for months or years, compare month(…) and year(…)".into()),
                    ),
                }
            }
            "date_add" => {
                let d = date(0)?;
                let n = int_lit(1)?;
                let u = unit(2)?;
                t(
                    crate::dates::add(d, n, u),
                    DataType::Timestamp(TimeUnit::Microsecond, None),
                )
            }
            "date_trunc" => {
                let d = date(0)?;
                let u = unit(1)?;
                t(
                    crate::dates::trunc(d, u),
                    DataType::Timestamp(TimeUnit::Microsecond, None),
                )
            }
            "parse_date" => {
                let s = text(0)?;
                let fmt = str_lit(1)?;
                let chrono = crate::dates::java_to_chrono(&fmt).map_err(|m| FormulaProblem {
                    span: args[1].span.clone(),
                    message: m,
                    help: Some(
                        "patterns are Java-style: yyyy MM dd HH mm ss SSS, text in 'quotes'".into(),
                    ),
                })?;
                t(
                    udf::parse_timestamp(s, vec![chrono]),
                    DataType::Timestamp(TimeUnit::Microsecond, None),
                )
            }
            "format_date" => {
                let d = date(0)?;
                let fmt = str_lit(1)?;
                let chrono = crate::dates::java_to_chrono(&fmt).map_err(|m| FormulaProblem {
                    span: args[1].span.clone(),
                    message: m,
                    help: Some(
                        "patterns are Java-style: yyyy MM dd HH mm ss SSS, text in 'quotes'".into(),
                    ),
                })?;
                t(fx::to_char(d, lit(chrono)), DataType::Utf8)
            }
            other => problem(
                span,
                format!("{other}() is not available on the built-in engine"),
                None,
            ),
        }
    }

    fn nan_to_null(&self, e: Expr) -> Expr {
        when(fx_isnan(e.clone()), lit(ScalarValue::Float64(None)))
            .otherwise(e)
            .unwrap_or(lit(ScalarValue::Null))
    }

    fn check_regex(&self, span: &Range<usize>, pattern: &str) -> R<()> {
        match regex::Regex::new(pattern) {
            Ok(_) => Ok(()),
            Err(e) => problem(span, format!("not a valid regular expression: {e}"), None),
        }
    }

    /// The one type several values take (the branches of `if`, the arguments of `coalesce`).
    fn common(&self, span: &Range<usize>, xs: &[&Typed]) -> R<DataType> {
        let mut ty = DataType::Null;
        for x in xs {
            let t = &x.ty;
            ty = match (&ty, t) {
                (a, b) if is_null(b) => a.clone(),
                (a, b) if is_null(a) => stored_type(b),
                (a, b) if is_int(a) && is_int(b) => DataType::Int64,
                (a, b) if is_numeric(a) && is_numeric(b) => DataType::Float64,
                (a, b) if is_string(a) && is_string(b) => DataType::Utf8,
                (a, b) if is_bool(a) && is_bool(b) => DataType::Boolean,
                (a, b) if is_temporal(a) && is_temporal(b) => {
                    DataType::Timestamp(TimeUnit::Microsecond, None)
                }
                (a, b) => {
                    return problem(
                        span,
                        format!(
                            "the values here are {} and {}: they must be of one kind",
                            type_name(a),
                            type_name(b)
                        ),
                        None,
                    );
                }
            };
        }
        Ok(ty)
    }
}

/// Text compared with a date must be a literal that reads as one (checked now, not at run
/// time): text computed per row is read differently by each engine.
fn date_literal(span: &Range<usize>, text: &Expr) -> R<()> {
    let Expr::Literal(ScalarValue::Utf8(Some(s)), _) = text else {
        return problem(
            span,
            "a date compared with text computed for each row",
            Some("parse the text first with parse_date(…), or compare with a literal ISO date such as \"2024-01-31\"".into()),
        );
    };
    let one = arrow::array::StringArray::from(vec![s.as_str()]);
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    match arrow::compute::cast_with_options(
        &one,
        &DataType::Timestamp(TimeUnit::Microsecond, None),
        &options,
    ) {
        Ok(_) => Ok(()),
        Err(_) => problem(
            span,
            format!("{s:?} is not a date"),
            Some("write it as ISO 8601: \"2024-01-31\" or \"2024-01-31T10:00:00\"".into()),
        ),
    }
}

/// `t` as `ty`: a cast where it is not that type already (plans read better without no-op
/// casts, in `recipe explain`).
fn conv(t: Typed, ty: DataType) -> Expr {
    if t.ty == ty { t.expr } else { cast(t.expr, ty) }
}

fn fx_isnan(e: Expr) -> Expr {
    datafusion::functions::expr_fn::isnan(e)
}

/// Little extensions that keep the compiler's match arms readable.
trait ExprExt {
    /// `concat` in DataFusion skips nulls; `+` on text propagates them.
    fn and_nulls_propagate(self) -> Expr;
}

impl ExprExt for Expr {
    fn and_nulls_propagate(self) -> Expr {
        let Expr::ScalarFunction(f) = &self else {
            return self;
        };
        let any_null = f
            .args
            .iter()
            .map(|a| a.clone().is_null())
            .reduce(|x, y| x.or(y))
            .unwrap_or(lit(false));
        when(any_null, lit(ScalarValue::Utf8(None)))
            .otherwise(self)
            .unwrap_or(lit(ScalarValue::Null))
    }
}
