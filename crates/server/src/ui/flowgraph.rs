//! A project's flow as an SVG drawn on the server: datasets and recipes in columns by depth
//! (imported data on the left, each recipe right of what it reads, its outputs right of it),
//! edges dataset → recipe → dataset. Recipes are coloured by status (stale ones marked, their
//! reasons in the tooltip), datasets without data dashed; each node links to its row below.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use capstan_core::flow::{DatasetState, FlowView, RecipeStatus};

const W: i64 = 168;
const H: i64 = 46;
const COL: i64 = 208;
const ROW: i64 = 62;
const PAD: i64 = 8;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A name cut to what fits a node, whole in the tooltip.
fn fit(s: &str) -> String {
    const MAX: usize = 21;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX - 1).collect();
        format!("{cut}…")
    }
}

struct Node {
    x: i64,
    y: i64,
}

/// Where each node goes: `(column, row)` by node key (`d:NAME`, `r:NAME`).
fn layout(view: &FlowView) -> (HashMap<String, (i64, i64)>, i64, i64) {
    let mut depth: HashMap<String, i64> = HashMap::new();
    for d in &view.datasets {
        if d.producer.is_none() {
            depth.insert(format!("d:{}", d.name), 0);
        }
    }
    // Recipes come in dependency order: what a recipe reads has its depth already.
    for r in &view.recipes {
        let at = r
            .inputs
            .iter()
            .filter_map(|i| depth.get(&format!("d:{i}")))
            .max()
            .map_or(0, |d| d + 1);
        depth.insert(format!("r:{}", r.name), at);
        for o in &r.outputs {
            depth.insert(format!("d:{o}"), at + 1);
        }
    }
    // What each node is drawn right of: a recipe's inputs, a dataset's producer.
    let mut preds: HashMap<String, Vec<String>> = HashMap::new();
    for r in &view.recipes {
        preds.insert(
            format!("r:{}", r.name),
            r.inputs.iter().map(|i| format!("d:{i}")).collect(),
        );
        for o in &r.outputs {
            preds.insert(format!("d:{o}"), vec![format!("r:{}", r.name)]);
        }
    }
    let mut columns: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let keys = view
        .recipes
        .iter()
        .flat_map(|r| {
            r.inputs
                .iter()
                .map(|i| format!("d:{i}"))
                .chain(std::iter::once(format!("r:{}", r.name)))
                .chain(r.outputs.iter().map(|o| format!("d:{o}")))
                .collect::<Vec<_>>()
        })
        .chain(view.datasets.iter().map(|d| format!("d:{}", d.name)));
    for key in keys {
        if seen.insert(key.clone()) {
            let col = depth.get(&key).copied().unwrap_or(0);
            columns.entry(col).or_default().push(key);
        }
    }
    // Fewer crossings: in the first column, what others read before what stands alone; in
    // each next one, nodes in the order of the mean row of what they are drawn right of.
    let mut place: HashMap<String, (i64, i64)> = HashMap::new();
    for (col, keys) in columns.iter_mut() {
        let weight = |k: &String| -> f64 {
            match preds.get(k).filter(|p| !p.is_empty()) {
                Some(p) if *col > 0 => {
                    let rows: Vec<f64> = p
                        .iter()
                        .filter_map(|q| place.get(q).map(|(_, r)| *r as f64))
                        .collect();
                    if rows.is_empty() {
                        f64::MAX
                    } else {
                        rows.iter().sum::<f64>() / rows.len() as f64
                    }
                }
                _ => {
                    let alone = k.starts_with("r:")
                        && view
                            .recipes
                            .iter()
                            .any(|r| format!("r:{}", r.name) == *k && r.outputs.is_empty());
                    if alone { 1.0 } else { 0.0 }
                }
            }
        };
        let mut weighted: Vec<(f64, usize, String)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (weight(k), i, k.clone()))
            .collect();
        weighted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (row, (_, _, k)) in weighted.into_iter().enumerate() {
            place.insert(k, (*col, row as i64));
        }
    }
    let rows: HashMap<i64, i64> = columns.iter().map(|(c, k)| (*c, k.len() as i64)).collect();
    let cols = depth.values().max().map_or(1, |d| d + 1);
    let max_rows = rows.values().max().copied().unwrap_or(1);
    (place, cols, max_rows)
}

/// The SVG of `view`.
pub fn svg(view: &FlowView) -> String {
    let (place, cols, rows) = layout(view);
    let node = |key: &str| {
        place.get(key).map(|(c, r)| Node {
            x: PAD + c * COL,
            y: PAD + r * ROW,
        })
    };
    let width = PAD * 2 + (cols - 1).max(0) * COL + W;
    let height = PAD * 2 + (rows - 1).max(0) * ROW + H;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"flow\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"the flow of {}\">",
        esc(&view.project)
    );
    s.push_str("<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0L10,5L0,10z\" class=\"arrowhead\"/></marker></defs>");
    let mut edge = |from: &str, to: &str| {
        if let (Some(a), Some(b)) = (node(from), node(to)) {
            let (x1, y1) = (a.x + W, a.y + H / 2);
            let (x2, y2) = (b.x - 2, b.y + H / 2);
            let mid = (x1 + x2) / 2;
            let _ = write!(
                s,
                "<path class=\"edge\" d=\"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}\" marker-end=\"url(#arrow)\"/>"
            );
        }
    };
    for r in &view.recipes {
        for i in &r.inputs {
            edge(&format!("d:{i}"), &format!("r:{}", r.name));
        }
        for o in &r.outputs {
            edge(&format!("r:{}", r.name), &format!("d:{o}"));
        }
    }
    for d in &view.datasets {
        let Some(n) = node(&format!("d:{}", d.name)) else {
            continue;
        };
        let (class, label) = match &d.state {
            DatasetState::Missing => ("dataset missing", "no data".to_string()),
            DatasetState::Untracked => ("dataset", "untracked".to_string()),
            DatasetState::Version { version, .. } => ("dataset", format!("v{version}")),
        };
        let _ = write!(
            s,
            "<a href=\"#dataset-{id}\"><g class=\"{class}\"><title>dataset {name}: {label}</title><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"{r}\"/><text x=\"{tx}\" y=\"{ty}\" class=\"name\">{short}</text><text x=\"{tx}\" y=\"{ty2}\" class=\"sub\">{label}</text></g></a>",
            id = esc(&d.name),
            name = esc(&d.name),
            short = esc(&fit(&d.name)),
            x = n.x,
            y = n.y,
            r = H / 2,
            tx = n.x + W / 2,
            ty = n.y + 19,
            ty2 = n.y + 36,
        );
    }
    for r in &view.recipes {
        let Some(n) = node(&format!("r:{}", r.name)) else {
            continue;
        };
        let (class, tip) = match &r.status {
            RecipeStatus::UpToDate => ("up-to-date", "up to date".to_string()),
            RecipeStatus::Stale(why) => ("stale", format!("stale: {}", why.join("; "))),
            RecipeStatus::NeverBuilt => ("never-built", "never built".to_string()),
            RecipeStatus::NoOutputs => ("no-outputs", "writes no dataset".to_string()),
        };
        let _ = write!(
            s,
            "<a href=\"#recipe-{id}\"><g class=\"recipe {class}\"><title>recipe {name} ({kind}): {tip}</title><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"6\"/><text x=\"{tx}\" y=\"{ty}\" class=\"name\">{short}</text><text x=\"{tx}\" y=\"{ty2}\" class=\"sub\">{kind} · {status}</text></g></a>",
            id = esc(&r.name),
            name = esc(&r.name),
            short = esc(&fit(&r.name)),
            kind = esc(&r.kind),
            tip = esc(&tip),
            status = r.status.as_str(),
            x = n.x,
            y = n.y,
            tx = n.x + W / 2,
            ty = n.y + 19,
            ty2 = n.y + 36,
        );
    }
    s.push_str("</svg>");
    s
}
