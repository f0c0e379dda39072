//! The Prepare steps (processors), each a small function from the DataFrame the previous
//! step left to the next.

use arrow::datatypes::{DataType, TimeUnit};
use capstan_core::visual::*;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::functions::expr_fn as fx;
use datafusion::logical_expr::{Expr, cast, lit, when};
use datafusion::prelude::ident;

use crate::formula::Typed;
use crate::plan::*;
use crate::types::*;
use crate::udf;

type R<T> = Result<T, PlanError>;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

fn null_of(t: &DataType) -> Expr {
    cast(lit(ScalarValue::Null), t.clone())
}

/// `CASE WHEN cond THEN a ELSE b END`, which cannot fail to build with a WHEN given.
fn case(cond: Expr, a: Expr, b: Expr) -> Expr {
    when(cond, a).otherwise(b).unwrap_or(lit(ScalarValue::Null))
}

fn text_of(t: &Typed) -> Expr {
    if is_string(&t.ty) {
        t.expr.clone()
    } else if is_float(&t.ty) {
        udf::float_to_string(cast(t.expr.clone(), DataType::Float64))
    } else {
        cast(t.expr.clone(), DataType::Utf8)
    }
}

fn need_kind(path: &str, t: &Typed, name: &str, ok: fn(&DataType) -> bool, what: &str) -> R<()> {
    if ok(&t.ty) {
        return Ok(());
    }
    at(
        path,
        format!(
            "`{name}` is {}, and this step needs {what}",
            type_name(&t.ty)
        ),
        None,
    )
}

impl Planner {
    /// Applies one Prepare step (`path` is its place in the spec, `steps[2]`).
    pub async fn step(&mut self, df: DataFrame, path: &str, step: &Step) -> R<DataFrame> {
        let p = |field: &str| format!("{path}.{field}");
        let what = format!("{path} ({})", step.type_name());
        match step {
            Step::Rename { columns } => {
                for (from, to) in columns {
                    typed(&df, &p(&format!("columns.{from}")), from)?;
                    if from != to && names(&df).contains(to) && !columns.contains_key(to) {
                        return at(
                            p(&format!("columns.{from}")),
                            format!("column `{to}` exists already"),
                            None,
                        );
                    }
                }
                let exprs: Vec<Expr> = names(&df)
                    .into_iter()
                    .map(|n| match columns.get(&n) {
                        Some(to) => ident(&n).alias(to),
                        None => ident(n),
                    })
                    .collect();
                Ok(df.select(exprs)?)
            }
            Step::Keep { columns } => {
                need_columns(&df, &p("columns"), columns)?;
                Ok(df.select(columns.iter().map(ident).collect::<Vec<Expr>>())?)
            }
            Step::Remove { columns } => {
                need_columns(&df, &p("columns"), columns)?;
                let kept: Vec<Expr> = names(&df)
                    .into_iter()
                    .filter(|n| !columns.contains(n))
                    .map(ident)
                    .collect();
                Ok(df.select(kept)?)
            }
            Step::Reorder { columns } => {
                need_columns(&df, &p("columns"), columns)?;
                let mut exprs: Vec<Expr> = columns.iter().map(ident).collect();
                exprs.extend(
                    names(&df)
                        .into_iter()
                        .filter(|n| !columns.contains(n))
                        .map(ident),
                );
                Ok(df.select(exprs)?)
            }
            Step::Copy { column, to } => {
                let t = typed(&df, &p("column"), column)?;
                fresh_name(&df, &p("to"), to)?;
                set_column(df, to, t.expr)
            }
            Step::Formula {
                column,
                expression,
                on_error,
            } => {
                let t = formula_at(&df, &p("expression"), expression, *on_error, &what)?;
                let e = if is_null(&t.ty) {
                    null_of(&DataType::Utf8)
                } else {
                    t.expr
                };
                set_column(df, column, e)
            }
            Step::IfThenElse {
                to,
                rules,
                otherwise,
            } => {
                if rules.is_empty() {
                    return at(p("rules"), "if_then_else needs at least one rule", None);
                }
                let mut branches = Vec::new();
                for (i, r) in rules.iter().enumerate() {
                    let c = condition_at(&df, &p(&format!("rules[{i}].when")), &r.when, &what)?;
                    let v = formula_at(
                        &df,
                        &p(&format!("rules[{i}].then")),
                        &r.then,
                        OnError::Null,
                        &what,
                    )?;
                    branches.push((c, v));
                }
                let other = match otherwise {
                    Some(e) => Some(formula_at(&df, &p("else"), e, OnError::Null, &what)?),
                    None => None,
                };
                let mut ty = DataType::Null;
                for v in branches.iter().map(|(_, v)| v).chain(other.iter()) {
                    ty = match (&ty, &v.ty) {
                        (a, b) if is_null(b) => a.clone(),
                        (a, b) if is_null(a) => stored_type(b),
                        (a, b) if is_int(a) && is_int(b) => DataType::Int64,
                        (a, b) if is_numeric(a) && is_numeric(b) => DataType::Float64,
                        (a, b) if stored_type(a) == stored_type(b) => stored_type(a),
                        (a, b) => {
                            return at(
                                p("rules"),
                                format!(
                                    "the rules give {} and {}: they must give one kind of value",
                                    type_name(a),
                                    type_name(b)
                                ),
                                None,
                            );
                        }
                    };
                }
                if is_null(&ty) {
                    ty = DataType::Utf8;
                }
                let mut iter = branches.into_iter();
                let (c0, v0) = iter.next().unwrap_or_else(|| unreachable!());
                let mut b = when(holds(c0), cast(v0.expr, ty.clone()));
                for (c, v) in iter {
                    b = b.when(holds(c), cast(v.expr, ty.clone()));
                }
                let e = b.otherwise(match other {
                    Some(o) => cast(o.expr, ty.clone()),
                    None => null_of(&ty),
                })?;
                set_column(df, to, e)
            }
            Step::FilterValue {
                column,
                values,
                matching,
                action,
                flag_column,
            } => {
                let t = typed(&df, &p("column"), column)?;
                if values.is_empty() {
                    return at(p("values"), "give at least one value", None);
                }
                let mut conds = Vec::new();
                for (i, v) in values.iter().enumerate() {
                    let vp = p(&format!("values[{i}]"));
                    let c = match matching {
                        Matching::Exact => literal_for(&t.ty, v)
                            .map(|l| t.expr.clone().eq(l))
                            .or_else(|m| at(&vp, m, None))?,
                        Matching::Substring | Matching::Regex => {
                            need_kind(
                                &p("column"),
                                &t,
                                column,
                                is_string,
                                "text (for substring or regex matching)",
                            )?;
                            let Literal::Str(s) = v else {
                                return at(
                                    &vp,
                                    "substring and regex matching take text values",
                                    None,
                                );
                            };
                            if *matching == Matching::Substring {
                                cast(fx::strpos(t.expr.clone(), lit(s.as_str())), DataType::Int64)
                                    .gt(lit(0i64))
                            } else {
                                if let Err(e) = regex::Regex::new(s) {
                                    return at(
                                        &vp,
                                        format!("not a valid regular expression: {e}"),
                                        None,
                                    );
                                }
                                udf::regex_matches(t.expr.clone(), s, false)
                            }
                        }
                    };
                    conds.push(c);
                }
                let cond = conds
                    .into_iter()
                    .reduce(|a, b| a.or(b))
                    .unwrap_or(lit(false));
                self.act(
                    df,
                    path,
                    cond,
                    *action,
                    Some(column),
                    flag_column.as_deref(),
                )
            }
            Step::FilterRange {
                column,
                min,
                max,
                action,
                flag_column,
            } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_numeric, "numbers")?;
                if min.is_none() && max.is_none() {
                    return at(path, "give `min`, `max` or both", None);
                }
                let x = cast(t.expr, DataType::Float64);
                let mut cond = lit(true);
                if let Some(lo) = min {
                    cond = cond.and(x.clone().gt_eq(lit(*lo)));
                }
                if let Some(hi) = max {
                    cond = cond.and(x.lt_eq(lit(*hi)));
                }
                self.act(
                    df,
                    path,
                    cond,
                    *action,
                    Some(column),
                    flag_column.as_deref(),
                )
            }
            Step::FilterDate {
                column,
                from,
                to,
                action,
                flag_column,
            } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(
                    &p("column"),
                    &t,
                    column,
                    is_temporal,
                    "dates (parse text with parse_date first)",
                )?;
                if from.is_none() && to.is_none() {
                    return at(path, "give `from`, `to` or both", None);
                }
                let x = cast(t.expr, ts());
                let mut cond = lit(true);
                for (bound, field, lower) in [(from, "from", true), (to, "to", false)] {
                    if let Some(b) = bound {
                        let l = literal_for(&ts(), &Literal::Str(b.clone()))
                            .or_else(|m| at(p(field), m, None))?;
                        cond = cond.and(if lower {
                            x.clone().gt_eq(l)
                        } else {
                            x.clone().lt_eq(l)
                        });
                    }
                }
                self.act(
                    df,
                    path,
                    cond,
                    *action,
                    Some(column),
                    flag_column.as_deref(),
                )
            }
            Step::FilterFormula {
                expression,
                action,
                flag_column,
            } => {
                let cond = condition_at(&df, &p("expression"), expression, &what)?;
                self.act(df, path, cond, *action, None, flag_column.as_deref())
            }
            Step::RemoveEmpty { columns, how } => {
                need_columns(&df, &p("columns"), columns)?;
                let empties: Vec<Expr> = columns
                    .iter()
                    .map(|c| empty(&typed(&df, "", c).unwrap_or_else(|_| unreachable!())))
                    .collect();
                let cond = match how {
                    EmptyHow::Any => empties.into_iter().reduce(|a, b| a.or(b)),
                    EmptyHow::All => empties.into_iter().reduce(|a, b| a.and(b)),
                }
                .unwrap_or(lit(false));
                Ok(df.filter(Expr::Not(Box::new(cond)))?)
            }
            Step::FillEmpty { columns, value } => {
                need_columns(&df, &p("columns"), columns)?;
                let mut df = df;
                for c in columns {
                    let t = typed(&df, &p("columns"), c)?;
                    let v = literal_for(&t.ty, value)
                        .or_else(|m| at(p("value"), format!("{m} (`{c}`)"), None))?;
                    let e = case(
                        empty(&t),
                        cast(v, stored_type(&t.ty)),
                        cast(t.expr.clone(), stored_type(&t.ty)),
                    );
                    df = set_column(df, c, e)?;
                }
                Ok(df)
            }
            Step::FindReplace {
                column,
                replacements,
                matching,
                to,
            } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_string, "text")?;
                let mut e = t.expr.clone();
                match matching {
                    Matching::Exact => {
                        if let Some((first, rest)) = replacements.split_first() {
                            let mut b = when(
                                t.expr.clone().eq(lit(first.find.as_str())),
                                lit(first.replace.as_str()),
                            );
                            for r in rest {
                                b = b.when(
                                    t.expr.clone().eq(lit(r.find.as_str())),
                                    lit(r.replace.as_str()),
                                );
                            }
                            e = b.otherwise(t.expr.clone())?;
                        }
                    }
                    Matching::Substring => {
                        for r in replacements {
                            if r.find.is_empty() {
                                return at(p("replacements"), "`find` is empty", None);
                            }
                            e = fx::replace(e, lit(r.find.as_str()), lit(r.replace.as_str()));
                        }
                    }
                    Matching::Regex => {
                        for (i, r) in replacements.iter().enumerate() {
                            if let Err(err) = regex::Regex::new(&r.find) {
                                return at(
                                    p(&format!("replacements[{i}].find")),
                                    format!("not a valid regular expression: {err}"),
                                    None,
                                );
                            }
                            e = udf::regex_replace(e, &r.find, false, lit(r.replace.as_str()));
                        }
                    }
                }
                set_column(df, to.as_deref().unwrap_or(column), e)
            }
            Step::StringTransform { columns, mode } => {
                need_columns(&df, &p("columns"), columns)?;
                let mut df = df;
                for c in columns {
                    let t = typed(&df, &p("columns"), c)?;
                    need_kind(&p("columns"), &t, c, is_string, "text")?;
                    let e = match mode {
                        StringMode::Upper => fx::upper(t.expr),
                        StringMode::Lower => fx::lower(t.expr),
                        StringMode::Trim => fx::btrim(vec![t.expr]),
                        StringMode::NormalizeSpaces => fx::btrim(vec![udf::regex_replace(
                            t.expr,
                            "[ \\t\\n\\r]+",
                            false,
                            lit(" "),
                        )]),
                    };
                    df = set_column(df, c, e)?;
                }
                Ok(df)
            }
            Step::RegexExtract {
                column,
                pattern,
                to,
            } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_string, "text")?;
                let re = regex::Regex::new(pattern).or_else(|e| {
                    at(
                        p("pattern"),
                        format!("not a valid regular expression: {e}"),
                        None,
                    )
                })?;
                let groups = re.captures_len() - 1;
                if to.is_empty() || to.len() > groups.max(1) {
                    return at(
                        p("to"),
                        format!(
                            "the pattern has {groups} group{}, and `to` names {} column{}",
                            if groups == 1 { "" } else { "s" },
                            to.len(),
                            if to.len() == 1 { "" } else { "s" }
                        ),
                        Some("name one column per (group) of the pattern".into()),
                    );
                }
                let mut df = df;
                for (i, out) in to.iter().enumerate() {
                    let group = if groups == 0 { 0 } else { i as i64 + 1 };
                    df = set_column(
                        df,
                        out,
                        udf::regex_extract(t.expr.clone(), pattern, false, group),
                    )?;
                }
                Ok(df)
            }
            Step::SplitColumn {
                column,
                separator,
                to,
            } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_string, "text")?;
                if separator.is_empty() {
                    return at(p("separator"), "the separator is empty", None);
                }
                let mut df = df;
                for (i, out) in to.iter().enumerate() {
                    df = set_column(
                        df,
                        out,
                        udf::split_part(t.expr.clone(), separator, i as i64 + 1),
                    )?;
                }
                Ok(df)
            }
            Step::Concat {
                columns,
                separator,
                to,
            } => {
                need_columns(&df, &p("columns"), columns)?;
                let parts = columns
                    .iter()
                    .map(|c| text_of(&typed(&df, "", c).unwrap_or_else(|_| unreachable!())))
                    .collect();
                set_column(df, to, fx::concat_ws(lit(separator.as_str()), parts))
            }
            Step::Round {
                columns,
                digits,
                mode,
            } => {
                need_columns(&df, &p("columns"), columns)?;
                let mut df = df;
                for c in columns {
                    let t = typed(&df, &p("columns"), c)?;
                    need_kind(&p("columns"), &t, c, is_numeric, "numbers")?;
                    if is_int(&t.ty) && *digits >= 0 {
                        continue;
                    }
                    let x = cast(t.expr, DataType::Float64);
                    let scale = 10f64.powi(*digits);
                    let e = match mode {
                        RoundMode::Round => udf::round(x, *digits as i64),
                        RoundMode::Floor => fx::floor(x * lit(scale)) / lit(scale),
                        RoundMode::Ceil => fx::ceil(x * lit(scale)) / lit(scale),
                    };
                    df = set_column(df, c, e)?;
                }
                Ok(df)
            }
            Step::Clip { column, min, max } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_numeric, "numbers")?;
                let mut x = cast(t.expr.clone(), DataType::Float64);
                if let Some(lo) = min {
                    x = case(x.clone().lt(lit(*lo)), lit(*lo), x);
                }
                if let Some(hi) = max {
                    x = case(x.clone().gt(lit(*hi)), lit(*hi), x);
                }
                set_column(df, column, x)
            }
            Step::Bin { column, width, to } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_numeric, "numbers")?;
                if !(*width > 0.0 && width.is_finite()) {
                    return at(p("width"), "the width must be a positive number", None);
                }
                let x = cast(t.expr, DataType::Float64);
                set_column(
                    df,
                    to.as_deref().unwrap_or(column),
                    fx::floor(x / lit(*width)) * lit(*width),
                )
            }
            Step::Convert {
                column,
                to,
                on_error,
            } => {
                let t = typed(&df, &p("column"), column)?;
                let target = arrow_type(*to);
                let e = self.convert(&t, *to, &p("to"))?;
                let e = match on_error {
                    OnError::Null => e,
                    OnError::Fail => case(
                        t.expr.clone().is_not_null().and(e.clone().is_null()),
                        cast(
                            udf::fail(format!(
                                "{what}: a value of `{column}` is not a valid {}",
                                to.as_str()
                            )),
                            target.clone(),
                        ),
                        e,
                    ),
                };
                set_column(df, column, e)
            }
            Step::Hash { columns } => {
                need_columns(&df, &p("columns"), columns)?;
                let mut df = df;
                for c in columns {
                    let t = typed(&df, &p("columns"), c)?;
                    df = set_column(df, c, fx::encode(fx::sha256(text_of(&t)), lit("hex")))?;
                }
                Ok(df)
            }
            Step::ParseDate {
                column,
                formats,
                to,
            } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_string, "text")?;
                if formats.is_empty() {
                    return at(
                        p("formats"),
                        "give at least one format, e.g. \"yyyy-MM-dd\"",
                        None,
                    );
                }
                let mut chrono = Vec::new();
                for (i, f) in formats.iter().enumerate() {
                    chrono.push(
                        crate::dates::java_to_chrono(f)
                            .or_else(|m| at(p(&format!("formats[{i}]")), m, None))?,
                    );
                }
                set_column(
                    df,
                    to.as_deref().unwrap_or(column),
                    udf::parse_timestamp(t.expr, chrono),
                )
            }
            Step::FormatDate { column, format, to } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_temporal, "dates")?;
                let f =
                    crate::dates::java_to_chrono(format).or_else(|m| at(p("format"), m, None))?;
                set_column(
                    df,
                    to.as_deref().unwrap_or(column),
                    fx::to_char(cast(t.expr, ts()), lit(f)),
                )
            }
            Step::DatePart { column, parts } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_temporal, "dates")?;
                let mut df = df;
                for part in parts {
                    let out = format!("{column}_{}", part.as_str());
                    fresh_name(&df, &p("parts"), &out)?;
                    let e = match part {
                        DatePart::Quarter => cast(
                            fx::date_part(lit("quarter"), cast(t.expr.clone(), ts())),
                            DataType::Int64,
                        ),
                        other => crate::dates::part(other.as_str(), cast(t.expr.clone(), ts())),
                    };
                    df = set_column(df, &out, e)?;
                }
                Ok(df)
            }
            Step::DateDiff {
                column,
                other,
                unit,
                to,
            } => {
                let a = typed(&df, &p("column"), column)?;
                let b = typed(&df, &p("other"), other)?;
                need_kind(&p("column"), &a, column, is_temporal, "dates")?;
                need_kind(&p("other"), &b, other, is_temporal, "dates")?;
                let Some(e) = crate::dates::diff(cast(a.expr, ts()), cast(b.expr, ts()), *unit)
                else {
                    return at(
                        p("unit"),
                        format!(
                            "date_diff counts weeks, days, hours, minutes or seconds, not {}s",
                            unit.as_str()
                        ),
                        None,
                    );
                };
                set_column(df, to, e)
            }
            Step::DateTrunc { column, unit, to } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_temporal, "dates")?;
                set_column(
                    df,
                    to.as_deref().unwrap_or(column),
                    crate::dates::trunc(cast(t.expr, ts()), *unit),
                )
            }
            Step::UnixTime { column, unit, to } => {
                let t = typed(&df, &p("column"), column)?;
                need_kind(&p("column"), &t, column, is_numeric, "numbers")?;
                let per = match unit {
                    EpochUnit::Seconds => 1_000_000i64,
                    EpochUnit::Milliseconds => 1_000,
                };
                let micros = if is_int(&t.ty) {
                    cast(t.expr, DataType::Int64) * lit(per)
                } else {
                    udf::float_to_int(cast(t.expr, DataType::Float64) * lit(per as f64))
                };
                set_column(df, to.as_deref().unwrap_or(column), cast(micros, ts()))
            }
            Step::Fold {
                columns,
                key_column,
                value_column,
            } => {
                need_columns(&df, &p("columns"), columns)?;
                if columns.is_empty() {
                    return at(p("columns"), "give the columns to fold", None);
                }
                let kept: Vec<String> = names(&df)
                    .into_iter()
                    .filter(|n| !columns.contains(n))
                    .collect();
                for (f, n) in [("key_column", key_column), ("value_column", value_column)] {
                    if kept.contains(n) {
                        return at(p(f), format!("column `{n}` exists already"), None);
                    }
                }
                let types: Vec<Typed> = columns
                    .iter()
                    .map(|c| typed(&df, "", c).unwrap_or_else(|_| unreachable!()))
                    .collect();
                let all = |f: fn(&DataType) -> bool| types.iter().all(|t| f(&t.ty));
                let vt = if all(is_int) {
                    Some(DataType::Int64)
                } else if all(is_numeric) {
                    Some(DataType::Float64)
                } else if types
                    .iter()
                    .all(|t| stored_type(&t.ty) == stored_type(&types[0].ty))
                {
                    Some(stored_type(&types[0].ty))
                } else {
                    None
                };
                let mut out: Option<DataFrame> = None;
                for t in &types {
                    let name = match &t.expr {
                        Expr::Column(c) => c.name.clone(),
                        _ => String::new(),
                    };
                    let mut exprs: Vec<Expr> = kept.iter().map(ident).collect();
                    exprs.push(lit(name).alias(key_column));
                    exprs.push(match &vt {
                        Some(vt) => cast(t.expr.clone(), vt.clone()).alias(value_column),
                        None => text_of(t).alias(value_column),
                    });
                    let d = df.clone().select(exprs)?;
                    out = Some(match out {
                        None => d,
                        Some(o) => o.union(d)?,
                    });
                }
                Ok(out.unwrap_or(df))
            }
            Step::Unfold {
                column,
                value_column,
                prefix,
                max_columns,
            } => {
                let t = typed(&df, &p("column"), column)?;
                let v = match value_column {
                    Some(v) => Some(typed(&df, &p("value_column"), v)?),
                    None => None,
                };
                let Some(values) = self
                    .distinct_values(&df, column, max_columns.unwrap_or(100), path)
                    .await?
                else {
                    return Ok(df);
                };
                let prefix = prefix.clone().unwrap_or_else(|| format!("{column}_"));
                let mut df = df;
                for val in values {
                    let name = format!("{prefix}{}", crate::plan::value_name(&val));
                    let then = match &v {
                        Some(v) => v.expr.clone(),
                        None => lit(1i64),
                    };
                    let e = when(t.expr.clone().eq(lit(val)), then).end()?;
                    df = set_column(df, &name, e)?;
                }
                Ok(df)
            }
        }
    }

    /// A filter's action on the rows where `cond` holds.
    fn act(
        &self,
        df: DataFrame,
        path: &str,
        cond: Expr,
        action: RowAction,
        column: Option<&str>,
        flag: Option<&str>,
    ) -> R<DataFrame> {
        match action {
            RowAction::Keep => Ok(df.filter(holds(cond))?),
            RowAction::Remove => Ok(df.filter(Expr::Not(Box::new(holds(cond))))?),
            RowAction::Flag => {
                let Some(f) = flag else {
                    return at(
                        path,
                        "action = \"flag\" needs `flag_column`, the column that says whether a row matched",
                        None,
                    );
                };
                set_column(df, f, holds(cond))
            }
            RowAction::Clear => {
                let Some(c) = column else {
                    return at(
                        path,
                        "action = \"clear\" clears the cells of one column; a formula filter has none",
                        Some("use `keep`, `remove` or `flag`".into()),
                    );
                };
                let t = typed(&df, &format!("{path}.column"), c)?;
                let e = case(
                    holds(cond),
                    null_of(&stored_type(&t.ty)),
                    cast(t.expr, stored_type(&t.ty)),
                );
                set_column(df, c, e)
            }
        }
    }

    fn convert(&self, t: &Typed, to: ColumnType, path: &str) -> R<Expr> {
        let e = t.expr.clone();
        let from = &t.ty;
        Ok(match to {
            ColumnType::String => text_of(t),
            ColumnType::Int64 if is_string(from) => udf::parse_int(fx::btrim(vec![e])),
            ColumnType::Int64 if is_float(from) => udf::float_to_int(cast(e, DataType::Float64)),
            ColumnType::Int64 if is_int(from) || is_bool(from) => cast(e, DataType::Int64),
            ColumnType::Float64 if is_string(from) => udf::parse_float(fx::btrim(vec![e])),
            ColumnType::Float64 if is_numeric(from) => cast(e, DataType::Float64),
            ColumnType::Bool if is_string(from) => {
                let l = fx::lower(fx::btrim(vec![e]));
                case(
                    l.clone().eq(lit("true")),
                    lit(true),
                    case(l.eq(lit("false")), lit(false), null_of(&DataType::Boolean)),
                )
            }
            ColumnType::Bool if is_numeric(from) => cast(e, DataType::Float64).not_eq(lit(0.0)),
            ColumnType::Bool if is_bool(from) => e,
            ColumnType::Date | ColumnType::Timestamp if is_string(from) => {
                let formats = [
                    "%Y-%m-%d",
                    "%Y-%m-%dT%H:%M:%S",
                    "%Y-%m-%d %H:%M:%S",
                    "%Y-%m-%dT%H:%M:%S%.f",
                    "%Y-%m-%d %H:%M:%S%.f",
                ];
                let parsed = udf::parse_timestamp(
                    fx::btrim(vec![e]),
                    formats.iter().map(|s| s.to_string()).collect(),
                );
                if to == ColumnType::Date {
                    cast(parsed, DataType::Date32)
                } else {
                    parsed
                }
            }
            ColumnType::Date if is_temporal(from) => cast(e, DataType::Date32),
            ColumnType::Timestamp if is_temporal(from) => cast(e, ts()),
            other => {
                return at(
                    path,
                    format!(
                        "a {} column does not convert to {}",
                        type_name(from),
                        other.as_str()
                    ),
                    None,
                );
            }
        })
    }
}
