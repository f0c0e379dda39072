//! Specs compiled to DataFusion plans through the DataFrame and Expr APIs (never SQL text):
//! one plan per output. Each step is checked against the schema the previous one left, so
//! the first unknown column or type error names its place in the spec.

use std::ops::Range;

use arrow::datatypes::{DataType, TimeUnit};
use capstan_core::visual::*;
use datafusion::common::{Column, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::functions::expr_fn as fx;
use datafusion::functions_aggregate::expr_fn as agg;
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, SortExpr, WindowFrame, WindowFrameBound, WindowFrameUnits, cast, lit,
    when,
};
use datafusion::prelude::ident;

use crate::formula::{self, Typed};
use crate::types::*;
use crate::udf;

/// A problem with a spec, at a path in it (`steps[2].column`), found while planning.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub path: String,
    /// For a formula: where in its text.
    pub span: Option<Range<usize>>,
    pub message: String,
    pub help: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{}", .0.message)]
    Spec(Problem),
    #[error(transparent)]
    Engine(#[from] datafusion::error::DataFusionError),
}

type R<T> = Result<T, PlanError>;

impl PlanError {
    /// An error met while planning `path` (a step, or "" for the whole spec): DataFusion's
    /// refusals that a spec causes become a problem at that place, in the spec's terms; a
    /// spec problem keeps its own place, and anything else stays the engine's.
    pub(crate) fn within(self, path: &str) -> PlanError {
        use datafusion::common::SchemaError;
        use datafusion::error::DataFusionError;
        let PlanError::Engine(e) = self else {
            return self;
        };
        let name = match e.find_root() {
            DataFusionError::SchemaError(s, _) => match s.as_ref() {
                SchemaError::DuplicateUnqualifiedField { name }
                | SchemaError::DuplicateQualifiedField { name, .. } => name.clone(),
                _ => return PlanError::Engine(e),
            },
            // A projection naming one column twice: `… the expression "people.dept" at
            // position 0 and "people.dept" at position 1 have the same name …`.
            DataFusionError::Plan(m) if m.contains("require unique expression names") => {
                match m.split('"').nth(1) {
                    Some(q) => q.rsplit_once('.').map_or(q, |(_, n)| n).to_string(),
                    None => return PlanError::Engine(e),
                }
            }
            _ => return PlanError::Engine(e),
        };
        PlanError::Spec(Problem {
            path: path.into(),
            span: None,
            message: format!("two columns would be named `{name}`"),
            help: Some(
                "give one of them another name (a rename step before, or another output name here)"
                    .into(),
            ),
        })
    }
}

pub(crate) fn at<T>(
    path: impl Into<String>,
    message: impl Into<String>,
    help: Option<String>,
) -> R<T> {
    Err(PlanError::Spec(Problem {
        path: path.into(),
        span: None,
        message: message.into(),
        help,
    }))
}

/// How a plan is made: to check a spec (no data: steps whose columns come from the data stop
/// the schema there), or to run it (such steps read the data first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Check,
    Run,
}

/// What planning found.
pub struct Planned {
    /// One DataFrame per output, in the recipe's order of outputs.
    pub outputs: Vec<(String, DataFrame)>,
    /// In check mode: the step whose output columns depend on the data (an unfold, a pivot);
    /// the outputs' schemas are known only up to it.
    pub dynamic: Option<String>,
    /// In run mode: what two-pass steps found (`pivot: 3 values of cultivar`), kept with the
    /// run.
    pub discovered: Vec<String>,
}

pub struct Planner {
    pub mode: Mode,
    pub(crate) dynamic: Option<String>,
    pub(crate) discovered: Vec<String>,
}

/// Plans `spec` over its inputs (by name, in the recipe's order) into its outputs.
pub async fn plan(
    spec: &VisualSpec,
    inputs: Vec<(String, DataFrame)>,
    outputs: &[String],
    mode: Mode,
) -> R<Planned> {
    let mut p = Planner {
        mode,
        dynamic: None,
        discovered: Vec::new(),
    };
    let outs = p
        .spec(spec, inputs, outputs)
        .await
        .map_err(|e| e.within(""))?;
    // Each declared output gets exactly one plan: one named twice (`unmatched_left` the same
    // as the main output, say) would have one overwrite the other, and one named nowhere
    // would never be written.
    for (i, (name, _)) in outs.iter().enumerate() {
        if outs[..i].iter().any(|(n, _)| n == name) {
            return at(
                "",
                format!("output `{name}` is given two sets of rows: each output receives one"),
                Some("name a different output for the unmatched or remaining rows".into()),
            );
        }
    }
    if let Some(missing) = outputs.iter().find(|o| !outs.iter().any(|(n, _)| n == *o)) {
        return at(
            "",
            format!("output `{missing}` is declared, and nothing in the spec writes to it"),
            Some("name it in the spec (unmatched_left, unmatched_right, rest, a split rule), or remove it from `outputs`".into()),
        );
    }
    let mut out = Vec::with_capacity(outs.len());
    for (name, df) in outs {
        out.push((name, stored(df)?));
    }
    Ok(Planned {
        outputs: out,
        dynamic: p.dynamic,
        discovered: p.discovered,
    })
}

/// Every column as one of capstan's own types (no Utf8View, no Int32), as the store writes them.
fn stored(df: DataFrame) -> R<DataFrame> {
    let exprs: Vec<Expr> = df
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let t = stored_type(f.data_type());
            if &t == f.data_type() {
                ident(f.name())
            } else {
                cast(ident(f.name()), t).alias(f.name())
            }
        })
        .collect();
    Ok(df.select(exprs)?)
}

pub(crate) fn names(df: &DataFrame) -> Vec<String> {
    df.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

pub(crate) fn typed(df: &DataFrame, path: &str, name: &str) -> R<Typed> {
    formula::column(df.schema(), name).or_else(|(m, h)| at(path, m, h))
}

pub(crate) fn need_columns(df: &DataFrame, path: &str, cols: &[String]) -> R<()> {
    for (i, c) in cols.iter().enumerate() {
        typed(df, &format!("{path}[{i}]"), c)?;
    }
    Ok(())
}

/// The columns, with `name` set to `expr`: in place if it exists, else last.
pub(crate) fn set_column(df: DataFrame, name: &str, expr: Expr) -> R<DataFrame> {
    let mut found = false;
    let mut exprs: Vec<Expr> = names(&df)
        .into_iter()
        .map(|n| {
            if n == name {
                found = true;
                expr.clone().alias(name)
            } else {
                ident(n)
            }
        })
        .collect();
    if !found {
        exprs.push(expr.alias(name));
    }
    Ok(df.select(exprs)?)
}

pub(crate) fn fresh_name(df: &DataFrame, path: &str, name: &str) -> R<()> {
    if names(df).iter().any(|n| n == name) {
        return at(
            path,
            format!("column `{name}` exists already"),
            Some("choose another name, or remove that column first".into()),
        );
    }
    Ok(())
}

/// True where `cond` is true; null counts as false.
pub(crate) fn holds(cond: Expr) -> Expr {
    fx::coalesce(vec![cond, lit(false)])
}

/// Null, or only spaces, tabs and newlines (for text); null (for anything else).
pub(crate) fn empty(t: &Typed) -> Expr {
    if is_string(&t.ty) {
        udf::is_blank(t.expr.clone())
    } else {
        t.expr.clone().is_null()
    }
}

pub(crate) fn formula_at(
    df: &DataFrame,
    path: &str,
    text: &str,
    on_error: OnError,
    what: &str,
) -> R<Typed> {
    formula::compile(text, df.schema(), on_error, what).map_err(|p| {
        PlanError::Spec(Problem {
            path: path.to_string(),
            span: Some(p.span),
            message: p.message,
            help: p.help,
        })
    })
}

pub(crate) fn condition_at(df: &DataFrame, path: &str, text: &str, what: &str) -> R<Expr> {
    let t = formula_at(df, path, text, OnError::Null, what)?;
    if !(is_bool(&t.ty) || is_null(&t.ty)) {
        return at(
            path,
            format!(
                "this formula gives {}, and a condition must give true or false",
                type_name(&t.ty)
            ),
            Some("compare it, e.g. `x > 0` or `is_not_null(x)`".into()),
        );
    }
    Ok(t.expr)
}

/// A literal for a column of type `ty`, or why it does not fit.
pub(crate) fn literal_for(ty: &DataType, v: &Literal) -> Result<Expr, String> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    Ok(match (v, ty) {
        (Literal::Str(s), t) if is_string(t) => lit(s.as_str()),
        (Literal::Int(i), t) if is_int(t) => lit(*i),
        (Literal::Int(i), t) if is_float(t) => lit(*i as f64),
        (Literal::Float(x), t) if is_float(t) => lit(*x),
        (Literal::Bool(b), DataType::Boolean) => lit(*b),
        (Literal::Str(s), t) if is_temporal(t) => {
            match crate::dates::parse(s, &["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]) {
                Some(us) => cast(lit(ScalarValue::TimestampMicrosecond(Some(us), None)), ts),
                None => {
                    return Err(format!(
                        "{s:?} is not an ISO date (yyyy-MM-dd, or yyyy-MM-ddTHH:mm:ss)"
                    ));
                }
            }
        }
        (v, t) => return Err(format!("{v} does not fit a {} column", type_name(t))),
    })
}

/// The frame of a window aggregate: the whole partition unless the spec gives one.
fn frame(f: Option<&Frame>) -> WindowFrame {
    let bound = |n: Option<u32>, preceding: bool| match n {
        None if preceding => WindowFrameBound::Preceding(ScalarValue::UInt64(None)),
        None => WindowFrameBound::Following(ScalarValue::UInt64(None)),
        Some(0) => WindowFrameBound::CurrentRow,
        Some(n) if preceding => WindowFrameBound::Preceding(ScalarValue::UInt64(Some(n as u64))),
        Some(n) => WindowFrameBound::Following(ScalarValue::UInt64(Some(n as u64))),
    };
    let (p, f) = match f {
        Some(f) => (f.preceding, f.following),
        None => (None, None),
    };
    WindowFrame::new_bounds(WindowFrameUnits::Rows, bound(p, true), bound(f, false))
}

fn sort_exprs(df: &DataFrame, path: &str, keys: &[SortKey]) -> R<Vec<SortExpr>> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let t = typed(df, &format!("{path}[{i}].column"), &k.column)?;
            Ok(t.expr.sort(!k.descending, k.nulls_first()))
        })
        .collect()
}

/// The aggregate function of `f` over `t` (group and pivot), or why it does not apply.
fn aggregate(f: AggFn, t: &Typed, order: &[SortExpr]) -> Result<Expr, String> {
    let numeric = is_numeric(&t.ty);
    let f64c = |e: Expr| cast(e, DataType::Float64);
    Ok(match f {
        AggFn::Count => agg::count(t.expr.clone()),
        AggFn::CountDistinct => agg::count_distinct(t.expr.clone()),
        AggFn::Sum if numeric => {
            if is_int(&t.ty) {
                agg::sum(cast(t.expr.clone(), DataType::Int64))
            } else {
                agg::sum(f64c(t.expr.clone()))
            }
        }
        AggFn::Avg if numeric => agg::avg(f64c(t.expr.clone())),
        AggFn::Stddev if numeric => agg::stddev(f64c(t.expr.clone())),
        AggFn::Median if numeric => agg::median(f64c(t.expr.clone())),
        AggFn::Min => agg::min(t.expr.clone()),
        AggFn::Max => agg::max(t.expr.clone()),
        AggFn::First | AggFn::Last if order.is_empty() => {
            return Err(format!("{} needs an order: set `order_by`", f.as_str()));
        }
        AggFn::First => agg::first_value(t.expr.clone(), order.to_vec()),
        AggFn::Last => agg::last_value(t.expr.clone(), order.to_vec()),
        other => {
            return Err(format!(
                "{} needs a numeric column, and this one is {}",
                other.as_str(),
                type_name(&t.ty)
            ));
        }
    })
}

/// A value as part of a column name (pivot and unfold).
pub(crate) fn value_name(v: &ScalarValue) -> String {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.clone(),
        ScalarValue::Float64(Some(x)) => udf::float_text(*x),
        ScalarValue::Boolean(Some(b)) => b.to_string(),
        other => other.to_string(),
    }
}

impl Planner {
    pub fn new(mode: Mode) -> Planner {
        Planner {
            mode,
            dynamic: None,
            discovered: Vec::new(),
        }
    }

    async fn spec(
        &mut self,
        spec: &VisualSpec,
        inputs: Vec<(String, DataFrame)>,
        outputs: &[String],
    ) -> R<Vec<(String, DataFrame)>> {
        let kind = spec.kind();
        // Inputs: exactly one, exactly two (join), or two or more (stack).
        let want = |n: usize| -> R<()> {
            let exact = kind != capstan_core::model::RecipeKind::Stack;
            if inputs.len() < n || (exact && inputs.len() > n) {
                return at(
                    "",
                    format!(
                        "a {} recipe reads {} input{}, and this one declares {}",
                        kind.as_str(),
                        match (n, exact) {
                            (1, _) => "one".to_string(),
                            (n, true) => n.to_string(),
                            (n, false) => format!("at least {n}"),
                        },
                        if n == 1 { "" } else { "s" },
                        inputs.len()
                    ),
                    None,
                );
            }
            Ok(())
        };
        let first_out = outputs.first().cloned().unwrap_or_default();
        if outputs.is_empty() {
            return at(
                "",
                format!(
                    "a {} recipe writes at least one output; declare it in `outputs`",
                    kind.as_str()
                ),
                None,
            );
        }
        let single =
            |df: DataFrame| -> R<Vec<(String, DataFrame)>> { Ok(vec![(first_out.clone(), df)]) };
        // Outputs a spec names (unmatched rows, rest, split rules) must be the recipe's.
        let check_output = |path: &str, name: &str| -> R<()> {
            if !outputs.iter().any(|o| o == name) {
                let names: Vec<&str> = outputs.iter().map(String::as_str).collect();
                return at(
                    path,
                    format!("`{name}` is not one of this recipe's outputs"),
                    Some(capstan_core::unknown_help(name, &names, "output")),
                );
            }
            Ok(())
        };
        let one = |inputs: &[(String, DataFrame)]| inputs[0].1.clone();
        match spec {
            VisualSpec::Prepare(p) => {
                want(1)?;
                let mut df = one(&inputs);
                for (i, step) in p.steps.iter().enumerate() {
                    let path = format!("steps[{i}]");
                    df = self
                        .step(df, &path, step)
                        .await
                        .map_err(|e| e.within(&path))?;
                }
                single(df)
            }
            VisualSpec::Sync(s) => {
                want(1)?;
                let df = one(&inputs);
                if s.columns.is_empty() {
                    return single(df);
                }
                need_columns(&df, "columns", &s.columns)?;
                single(df.select(s.columns.iter().map(ident).collect::<Vec<Expr>>())?)
            }
            VisualSpec::Filter(f) => {
                want(1)?;
                let mut df = one(&inputs);
                if let Some(c) = &f.condition {
                    let cond = condition_at(&df, "where", c, "filter")?;
                    df = df.filter(holds(cond))?;
                }
                if let Some(s) = &f.sample {
                    df = df.limit(0, Some(s.rows as usize))?;
                }
                single(df)
            }
            VisualSpec::Sort(s) => {
                want(1)?;
                let df = one(&inputs);
                let keys = sort_exprs(&df, "by", &s.by)?;
                single(df.sort(keys)?)
            }
            VisualSpec::Distinct(d) => {
                want(1)?;
                let df = one(&inputs);
                let cols = if d.columns.is_empty() {
                    names(&df)
                } else {
                    d.columns.clone()
                };
                need_columns(&df, "columns", &cols)?;
                match &d.count_column {
                    Some(c) => {
                        if cols.contains(c) {
                            return at(
                                "count_column",
                                format!("column `{c}` exists already"),
                                None,
                            );
                        }
                        single(df.aggregate(
                            cols.iter().map(ident).collect::<Vec<Expr>>(),
                            vec![agg::count(lit(1)).alias(c)],
                        )?)
                    }
                    None => single(
                        df.select(cols.iter().map(ident).collect::<Vec<Expr>>())?
                            .distinct()?,
                    ),
                }
            }
            VisualSpec::Group(g) => {
                want(1)?;
                let df = one(&inputs);
                need_columns(&df, "keys", &g.keys)?;
                let order = sort_exprs(&df, "order_by", &g.order_by)?;
                let mut aggs = Vec::new();
                if g.count {
                    aggs.push(agg::count(lit(1)).alias("count"));
                }
                for (i, a) in g.aggregates.iter().enumerate() {
                    let t = typed(&df, &format!("aggregates[{i}].column"), &a.column)?;
                    for (j, f) in a.functions.iter().enumerate() {
                        let e = aggregate(*f, &t, &order)
                            .or_else(|m| at(format!("aggregates[{i}].functions[{j}]"), m, None))?;
                        aggs.push(e.alias(format!("{}_{}", a.column, f.as_str())));
                    }
                }
                if aggs.is_empty() && g.keys.is_empty() {
                    return at("", "a group recipe needs keys, aggregates or count", None);
                }
                let keys: Vec<Expr> = g.keys.iter().map(ident).collect();
                single(df.aggregate(keys, aggs)?)
            }
            VisualSpec::Window(w) => {
                want(1)?;
                let df = one(&inputs);
                need_columns(&df, "partition_by", &w.partition_by)?;
                let order = sort_exprs(&df, "order_by", &w.order_by)?;
                let part: Vec<Expr> = w.partition_by.iter().map(ident).collect();
                let mut exprs = Vec::new();
                for (i, c) in w.compute.iter().enumerate() {
                    let path = format!("compute[{i}]");
                    fresh_name(&df, &format!("{path}.to"), &c.to)?;
                    let e = self.window_fn(&df, &path, c, &part, &order, w.frame.as_ref())?;
                    exprs.push(e.alias(&c.to));
                }
                single(df.window(exprs)?)
            }
            VisualSpec::TopN(t) => {
                want(1)?;
                let df = one(&inputs);
                need_columns(&df, "partition_by", &t.partition_by)?;
                let mut order = sort_exprs(&df, "by", &t.by)?;
                // Ties broken by every other column, so that each engine keeps the same rows.
                for n in names(&df) {
                    if !t.by.iter().any(|k| k.column == n) && !t.partition_by.contains(&n) {
                        order.push(ident(n).sort(true, true));
                    }
                }
                let rn = "__capstan_rank";
                let ranked = df.clone().window(vec![
                    datafusion::functions_window::expr_fn::row_number()
                        .partition_by(t.partition_by.iter().map(ident).collect())
                        .order_by(order)
                        .build()?
                        .alias(rn),
                ])?;
                let cols: Vec<Expr> = names(&df).into_iter().map(ident).collect();
                let top = ranked
                    .clone()
                    .filter(ident(rn).lt_eq(lit(t.top)))?
                    .select(cols.clone())?;
                let mut out = vec![(first_out.clone(), top)];
                if let Some(rest) = &t.rest {
                    check_output("rest", rest)?;
                    out.push((
                        rest.clone(),
                        ranked.filter(ident(rn).gt(lit(t.top)))?.select(cols)?,
                    ));
                }
                Ok(out)
            }
            VisualSpec::Split(s) => {
                want(1)?;
                let df = one(&inputs);
                let mut taken: Option<Expr> = None;
                let mut out: Vec<(String, DataFrame)> = Vec::new();
                for (i, r) in s.rules.iter().enumerate() {
                    check_output(&format!("rules[{i}].output"), &r.output)?;
                    let cond = holds(condition_at(
                        &df,
                        &format!("rules[{i}].when"),
                        &r.when,
                        "split",
                    )?);
                    let mine = match &taken {
                        Some(t) => cond.clone().and(Expr::Not(Box::new(t.clone()))),
                        None => cond.clone(),
                    };
                    taken = Some(match taken {
                        Some(t) => t.or(cond),
                        None => cond,
                    });
                    // Two rules may send rows to one output: their rows are stacked.
                    let part = df.clone().filter(mine)?;
                    match out.iter_mut().find(|(n, _)| n == &r.output) {
                        Some((_, d)) => *d = d.clone().union(part)?,
                        None => out.push((r.output.clone(), part)),
                    }
                }
                if let Some(o) = &s.otherwise {
                    check_output("otherwise", o)?;
                    let rest = match taken {
                        Some(t) => df.clone().filter(Expr::Not(Box::new(t)))?,
                        None => df.clone(),
                    };
                    match out.iter_mut().find(|(n, _)| n == o) {
                        Some((_, d)) => *d = d.clone().union(rest)?,
                        None => out.push((o.clone(), rest)),
                    }
                }
                // Outputs no rule names get no rows, with the input's columns.
                for o in outputs {
                    if !out.iter().any(|(n, _)| n == o) {
                        out.push((o.clone(), df.clone().limit(0, Some(0))?));
                    }
                }
                out.sort_by_key(|(n, _)| outputs.iter().position(|o| o == n));
                Ok(out)
            }
            VisualSpec::Stack(s) => {
                want(2)?;
                self.stack(inputs, s).and_then(single)
            }
            VisualSpec::Join(j) => {
                want(2)?;
                let (ln, left) = inputs[0].clone();
                let (rn, right) = inputs[1].clone();
                let mut out = vec![(
                    first_out.clone(),
                    self.join(&ln, left.clone(), &rn, right.clone(), j)?,
                )];
                if let Some(u) = &j.unmatched_left {
                    check_output("unmatched_left", u)?;
                    let anti = JoinSpec {
                        join_type: JoinType::LeftAnti,
                        ..j.clone()
                    };
                    out.push((
                        u.clone(),
                        self.join(&ln, left.clone(), &rn, right.clone(), &anti)?,
                    ));
                }
                if let Some(u) = &j.unmatched_right {
                    check_output("unmatched_right", u)?;
                    let anti = JoinSpec {
                        join_type: JoinType::RightAnti,
                        ..j.clone()
                    };
                    out.push((u.clone(), self.join(&ln, left, &rn, right, &anti)?));
                }
                Ok(out)
            }
            VisualSpec::Pivot(p) => {
                want(1)?;
                let df = one(&inputs);
                single(self.pivot(df, p).await?)
            }
        }
    }

    fn window_fn(
        &self,
        df: &DataFrame,
        path: &str,
        c: &WindowCompute,
        part: &[Expr],
        order: &[SortExpr],
        f: Option<&Frame>,
    ) -> R<Expr> {
        use datafusion::functions_window::expr_fn as wf;
        use datafusion::logical_expr::expr::WindowFunction;
        let column = |need: bool| -> R<Option<Typed>> {
            match &c.column {
                Some(n) => typed(df, &format!("{path}.column"), n).map(Some),
                None if need => at(
                    path,
                    format!("{} needs a `column`", c.function.as_str()),
                    None,
                ),
                None => Ok(None),
            }
        };
        if c.function.is_ranking() && order.is_empty() {
            return at(
                path,
                format!(
                    "{} numbers rows in an order: set `order_by`",
                    c.function.as_str()
                ),
                None,
            );
        }
        let built = match c.function {
            WindowFn::RowNumber => wf::row_number(),
            WindowFn::Rank => wf::rank(),
            WindowFn::DenseRank => wf::dense_rank(),
            WindowFn::Lag | WindowFn::Lead => {
                let t = column(true)?.unwrap_or_else(|| unreachable!());
                let n = c.offset.unwrap_or(1) as i64;
                if c.function == WindowFn::Lag {
                    wf::lag(t.expr, Some(n), None)
                } else {
                    wf::lead(t.expr, Some(n), None)
                }
            }
            agg_fn => {
                let t = column(agg_fn != WindowFn::Count)?;
                let arg = t.as_ref().map(|t| t.expr.clone()).unwrap_or(lit(1));
                let numeric = t.as_ref().is_none_or(|t| is_numeric(&t.ty));
                let f64c = |e: Expr| cast(e, DataType::Float64);
                let e = match agg_fn {
                    WindowFn::Sum | WindowFn::Avg if !numeric => {
                        return at(
                            format!("{path}.column"),
                            format!("{} needs a numeric column", agg_fn.as_str()),
                            None,
                        );
                    }
                    WindowFn::Sum if t.as_ref().is_some_and(|t| is_int(&t.ty)) => {
                        agg::sum(cast(arg, DataType::Int64))
                    }
                    WindowFn::Sum => agg::sum(f64c(arg)),
                    WindowFn::Avg => agg::avg(f64c(arg)),
                    WindowFn::Min => agg::min(arg),
                    WindowFn::Max => agg::max(arg),
                    WindowFn::Count => agg::count(arg),
                    WindowFn::First | WindowFn::Last if order.is_empty() => {
                        return at(
                            path,
                            format!("{} needs an order: set `order_by`", agg_fn.as_str()),
                            None,
                        );
                    }
                    // The window functions, not the aggregates: those cannot slide a frame.
                    WindowFn::First | WindowFn::Last => {
                        let w = if agg_fn == WindowFn::First {
                            datafusion::functions_window::expr_fn::first_value(arg)
                        } else {
                            datafusion::functions_window::expr_fn::last_value(arg)
                        };
                        return Ok(w
                            .partition_by(part.to_vec())
                            .order_by(order.to_vec())
                            .window_frame(frame(f))
                            .build()?);
                    }
                    _ => unreachable!("ranking functions are handled above"),
                };
                let Expr::AggregateFunction(a) = e else {
                    return at(path, "internal: not an aggregate", None);
                };
                return Ok(
                    Expr::from(WindowFunction::new(a.func.clone(), a.params.args.clone()))
                        .partition_by(part.to_vec())
                        .order_by(order.to_vec())
                        .window_frame(frame(f))
                        .build()?,
                );
            }
        };
        Ok(built
            .partition_by(part.to_vec())
            .order_by(order.to_vec())
            .build()?)
    }

    fn stack(&self, inputs: Vec<(String, DataFrame)>, s: &StackSpec) -> R<DataFrame> {
        // Columns by name, in order of first appearance; each of one type across inputs.
        let mut columns: Vec<(String, DataType)> = Vec::new();
        for (i, (input, df)) in inputs.iter().enumerate() {
            for f in df.schema().fields() {
                let t = stored_type(f.data_type());
                match columns.iter_mut().find(|(n, _)| n == f.name()) {
                    None => columns.push((f.name().clone(), t)),
                    Some((_, have)) if *have == t => {}
                    Some((_, have)) if is_numeric(have) && is_numeric(&t) => {
                        *have = DataType::Float64
                    }
                    Some((n, have)) => {
                        return at(
                            "",
                            format!(
                                "column `{n}` is {} in the first inputs and {} in `{input}` (input {})",
                                type_name(have),
                                type_name(&t),
                                i + 1
                            ),
                            Some(
                                "convert it in a prepare recipe first, so that every input agrees"
                                    .into(),
                            ),
                        );
                    }
                }
            }
        }
        if let Some(o) = &s.origin_column
            && columns.iter().any(|(n, _)| n == o)
        {
            return at(
                "origin_column",
                format!("column `{o}` exists already"),
                None,
            );
        }
        let mut out: Option<DataFrame> = None;
        for (input, df) in inputs {
            let have = names(&df);
            let mut exprs: Vec<Expr> = columns
                .iter()
                .map(|(n, t)| {
                    if have.contains(n) {
                        cast(ident(n), t.clone()).alias(n)
                    } else {
                        cast(lit(ScalarValue::Null), t.clone()).alias(n)
                    }
                })
                .collect();
            if let Some(o) = &s.origin_column {
                exprs.push(lit(input.clone()).alias(o));
            }
            let d = df.select(exprs)?;
            out = Some(match out {
                None => d,
                Some(o) => o.union(d)?,
            });
        }
        out.ok_or_else(|| {
            PlanError::Spec(Problem {
                path: String::new(),
                span: None,
                message: "no inputs".into(),
                help: None,
            })
        })
    }

    fn join(
        &self,
        ln: &str,
        left: DataFrame,
        rn: &str,
        right: DataFrame,
        j: &JoinSpec,
    ) -> R<DataFrame> {
        let (lq, rq) = ("__capstan_left", "__capstan_right");
        let lcols = names(&left);
        let rcols = names(&right);
        if j.join_type == JoinType::Cross && !j.on.is_empty() {
            return at("on", "a cross join takes no `on` conditions", None);
        }
        if j.join_type != JoinType::Cross && j.on.is_empty() {
            return at(
                "on",
                "a join needs `on` conditions (or `type = \"cross\"`)",
                Some("e.g. on = [{ left = \"id\", right = \"customer_id\" }]".into()),
            );
        }
        let mut on = Vec::new();
        for (i, k) in j.on.iter().enumerate() {
            let a =
                typed(&left, &format!("on[{i}].left"), &k.left).map_err(|e| name_input(e, ln))?;
            let b = typed(&right, &format!("on[{i}].right"), &k.right)
                .map_err(|e| name_input(e, rn))?;
            let class = |t: &DataType| {
                if is_numeric(t) {
                    "number"
                } else if is_string(t) {
                    "string"
                } else if is_temporal(t) {
                    "date"
                } else {
                    "other"
                }
            };
            if class(&a.ty) != class(&b.ty) {
                return at(
                    format!("on[{i}]"),
                    format!(
                        "`{}` is {} and `{}` is {}: keys must be of one kind",
                        k.left,
                        type_name(&a.ty),
                        k.right,
                        type_name(&b.ty)
                    ),
                    None,
                );
            }
            on.push((k.left.clone(), k.right.clone()));
        }
        let l = left.alias(lq)?;
        let r = right.alias(rq)?;
        let qcol = |q: &str, n: &str| Expr::Column(Column::new(Some(q), n));
        use datafusion::common::JoinType as DJ;
        let jt = match j.join_type {
            JoinType::Inner | JoinType::Cross => DJ::Inner,
            JoinType::Left => DJ::Left,
            JoinType::Right => DJ::Right,
            JoinType::Full => DJ::Full,
            JoinType::LeftAnti => DJ::LeftAnti,
            JoinType::RightAnti => DJ::RightAnti,
        };
        let joined = if j.join_type == JoinType::Cross {
            l.join_on(r, DJ::Inner, vec![lit(true)])?
        } else {
            let conds: Vec<Expr> = on
                .iter()
                .map(|(a, b)| qcol(lq, a).eq(qcol(rq, b)))
                .collect();
            l.join_on(r, jt, conds)?
        };
        // The output's columns: the first input's, then the second's; a key of the same name
        // on both sides appears once (from whichever side has the row); other clashes take
        // the second input's name as prefix.
        let mut exprs = Vec::new();
        let same_key = |n: &str| on.iter().any(|(a, b)| a == n && b == n);
        match j.join_type {
            JoinType::LeftAnti => exprs.extend(lcols.iter().map(|n| qcol(lq, n).alias(n))),
            JoinType::RightAnti => exprs.extend(rcols.iter().map(|n| qcol(rq, n).alias(n))),
            _ => {
                for n in &lcols {
                    let e =
                        if same_key(n) && matches!(j.join_type, JoinType::Right | JoinType::Full) {
                            fx::coalesce(vec![qcol(lq, n), qcol(rq, n)])
                        } else {
                            qcol(lq, n)
                        };
                    exprs.push(e.alias(n));
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
                    if lcols.contains(&out) {
                        return at(
                            "",
                            format!("both inputs have a column `{n}`, and `{out}` exists too"),
                            Some("rename one in a prepare recipe first".into()),
                        );
                    }
                    exprs.push(qcol(rq, n).alias(out));
                }
            }
        }
        Ok(joined.select(exprs)?)
    }

    pub(crate) async fn distinct_values(
        &mut self,
        df: &DataFrame,
        column: &str,
        max: u32,
        path: &str,
    ) -> R<Option<Vec<ScalarValue>>> {
        if self.mode == Mode::Check {
            self.dynamic.get_or_insert_with(|| path.to_string());
            return Ok(None);
        }
        let batches = df
            .clone()
            .select(vec![ident(column)])?
            .filter(ident(column).is_not_null())?
            .distinct()?
            .sort(vec![ident(column).sort(true, true)])?
            .limit(0, Some(max as usize + 1))?
            .collect()
            .await?;
        let mut values = Vec::new();
        for b in &batches {
            for i in 0..b.num_rows() {
                values.push(ScalarValue::try_from_array(b.column(0), i)?);
            }
        }
        if values.len() > max as usize {
            return at(
                path,
                format!(
                    "`{column}` has more than {max} distinct values, each of which would become a column"
                ),
                Some("raise `max_columns`, or group the values first".into()),
            );
        }
        self.discovered.push(format!(
            "{path}: {} value{} of `{column}`: {}",
            values.len(),
            if values.len() == 1 { "" } else { "s" },
            values.iter().map(value_name).collect::<Vec<_>>().join(", ")
        ));
        Ok(Some(values))
    }

    async fn pivot(&mut self, df: DataFrame, p: &PivotSpec) -> R<DataFrame> {
        need_columns(&df, "index", &p.index)?;
        let pc = typed(&df, "column", &p.column)?;
        let mut measures = Vec::new();
        for (i, a) in p.aggregates.iter().enumerate() {
            let t = typed(&df, &format!("aggregates[{i}].column"), &a.column)?;
            for (j, f) in a.functions.iter().enumerate() {
                if matches!(f, AggFn::First | AggFn::Last) {
                    return at(
                        format!("aggregates[{i}].functions[{j}]"),
                        "first and last have no order in a pivot",
                        None,
                    );
                }
                aggregate(*f, &t, &[])
                    .or_else(|m| at(format!("aggregates[{i}].functions[{j}]"), m, None))?;
                measures.push((t.clone(), *f, a.column.clone()));
            }
        }
        let Some(values) = self
            .distinct_values(&df, &p.column, p.max_columns.unwrap_or(100), "column")
            .await?
        else {
            // Checking: the index columns are all that is known.
            let keys: Vec<Expr> = p.index.iter().map(ident).collect();
            return Ok(df.aggregate(keys, vec![])?);
        };
        let mut aggs = Vec::new();
        for v in &values {
            let is_v = pc.expr.clone().eq(lit(v.clone()));
            let vn = value_name(v);
            if measures.is_empty() {
                aggs.push(
                    agg::count(when(is_v.clone(), lit(1)).end()?).alias(format!("{vn}_count")),
                );
            }
            for (t, f, c) in &measures {
                let masked = Typed {
                    expr: when(is_v.clone(), t.expr.clone()).end()?,
                    ty: t.ty.clone(),
                };
                let e = aggregate(*f, &masked, &[]).unwrap_or(lit(ScalarValue::Null));
                aggs.push(e.alias(format!("{vn}_{c}_{}", f.as_str())));
            }
        }
        let keys: Vec<Expr> = p.index.iter().map(ident).collect();
        Ok(df.aggregate(keys, aggs)?)
    }
}

/// A column problem on a join's side names the input it looked in.
fn name_input(e: PlanError, input: &str) -> PlanError {
    match e {
        PlanError::Spec(mut p) => {
            p.message = format!("{} in input `{input}`", p.message);
            PlanError::Spec(p)
        }
        other => other,
    }
}
