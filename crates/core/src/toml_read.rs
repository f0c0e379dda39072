//! A reader over spanned TOML tables that reports every problem instead of stopping at the first.
//!
//! serde's derive stops at the first unknown field or wrong type, and `check` must report all of
//! them, so each home file is parsed into `toml`'s spanned document tree and decoded by hand
//! through [`Table`]: typed getters push a diagnostic and return `None` on a bad value, and
//! [`Table::finish`] reports the keys nobody asked for, with the nearest valid name.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostics, FileId, Loc, SourceMap};
use crate::model::Sourced;
use crate::quantity::{Cpu, Duration, Memory, Quantity};

/// Where decoded values and diagnostics go, for one file.
pub(crate) struct Cx<'s> {
    pub sources: &'s SourceMap,
    pub file: FileId,
    pub diags: &'s mut Diagnostics,
}

impl Cx<'_> {
    pub fn loc(&self, span: &Range<usize>) -> Loc {
        self.sources.loc(self.file, span)
    }

    pub fn error(
        &mut self,
        span: &Range<usize>,
        field: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let loc = self.loc(span);
        self.diags.error_at(self.sources, loc, field, message, help);
    }
}

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

pub(crate) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The nearest candidate to a mistyped name, if one is close enough to be a likely typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Help text for an unknown name: the nearest match, or the list of valid ones.
pub fn unknown_help(name: &str, candidates: &[&str], what: &str) -> String {
    match suggest(name, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None if candidates.is_empty() => format!("no {what} is defined"),
        None => format!(
            "expected one of: {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A table being decoded: remembers which keys were read so the rest can be reported.
pub(crate) struct Table<'t, 'i> {
    table: &'t DeTable<'i>,
    pub span: Range<usize>,
    /// Dotted path of this table, e.g. `exec_config.small`.
    pub path: String,
    read: Vec<&'static str>,
    /// Set for tables whose keys are user-chosen names: no key is unknown there.
    open: bool,
}

impl<'t, 'i> Table<'t, 'i> {
    pub fn new(table: &'t DeTable<'i>, span: Range<usize>, path: impl Into<String>) -> Self {
        Table {
            table,
            span,
            path: path.into(),
            read: Vec::new(),
            open: false,
        }
    }

    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn get(&mut self, key: &'static str) -> Option<&'t Value<'i>> {
        self.read.push(key);
        self.table.get(key)
    }

    fn typed<T>(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
        expected: &str,
        convert: impl FnOnce(&DeValue<'i>) -> Option<Result<T, String>>,
    ) -> Option<Sourced<T>> {
        let value = self.get(key)?;
        let field = self.field(key);
        match convert(value.get_ref()) {
            Some(Ok(v)) => Some(Sourced {
                value: v,
                loc: cx.loc(&value.span()),
            }),
            Some(Err(message)) => {
                cx.error(
                    &value.span(),
                    &field,
                    message,
                    Some(format!("expected {expected}")),
                );
                None
            }
            None => {
                cx.error(
                    &value.span(),
                    &field,
                    format!("expected {expected}, found {}", type_name(value.get_ref())),
                    None,
                );
                None
            }
        }
    }

    pub fn str(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<Sourced<String>> {
        self.typed(cx, key, "a string", |v| {
            v.as_str().map(|s| Ok(s.to_string()))
        })
    }

    /// A string that must be a usable name (of a configuration, group, dataset…).
    pub fn name(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<Sourced<String>> {
        self.typed(cx, key, "a name", |v| {
            v.as_str().map(|s| check_name(s).map(|()| s.to_string()))
        })
    }

    pub fn bool(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<Sourced<bool>> {
        self.typed(cx, key, "`true` or `false`", |v| v.as_bool().map(Ok))
    }

    /// A whole number from 0 to `max` (every count has a documented maximum, so no arithmetic
    /// on it can overflow and no setting can ask for absurd amounts).
    pub fn count(&mut self, cx: &mut Cx<'_>, key: &'static str, max: u32) -> Option<Sourced<u32>> {
        self.typed(cx, key, "a whole number", |v| {
            v.as_integer().map(|i| {
                i64::from_str_radix(i.as_str(), i.radix())
                    .ok()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n <= max)
                    .ok_or_else(|| format!("`{i}` is out of range (0 to {max})"))
            })
        })
    }

    pub fn cpu(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<Sourced<Cpu>> {
        self.typed(cx, key, "a CPU quantity like `500m`, `2` or `1.5`", |v| {
            number_text(v).map(|t| Cpu::parse(&t))
        })
    }

    pub fn memory(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<Sourced<Memory>> {
        self.typed(
            cx,
            key,
            "a memory quantity like `512Mi`, `4Gi` or `2G`",
            |v| number_text(v).map(|t| Memory::parse(&t)),
        )
    }

    pub fn duration(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<Sourced<Duration>> {
        self.typed(
            cx,
            key,
            "a duration like `90s`, `30m` or `2h`",
            |v| match v {
                DeValue::Integer(_) => number_text(v).map(|t| Duration::parse(&t)),
                DeValue::String(s) => Some(Duration::parse(s)),
                _ => None,
            },
        )
    }

    pub fn string_list(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
    ) -> Option<Sourced<Vec<Sourced<String>>>> {
        let value = self.get(key)?;
        let field = self.field(key);
        let Some(array) = value.get_ref().as_array() else {
            cx.error(
                &value.span(),
                &field,
                format!(
                    "expected an array of strings, found {}",
                    type_name(value.get_ref())
                ),
                None,
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in array.iter().enumerate() {
            match item.get_ref().as_str() {
                Some(s) => out.push(Sourced {
                    value: s.to_string(),
                    loc: cx.loc(&item.span()),
                }),
                None => cx.error(
                    &item.span(),
                    &format!("{field}[{i}]"),
                    format!("expected a string, found {}", type_name(item.get_ref())),
                    None,
                ),
            }
        }
        Some(Sourced {
            value: out,
            loc: cx.loc(&value.span()),
        })
    }

    /// A table of string values (`env`, `node_selector`, `conf`…). Numbers and booleans are
    /// taken as their text, since that is what environment variables and labels hold.
    pub fn string_map(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
    ) -> BTreeMap<String, Sourced<String>> {
        let mut out = BTreeMap::new();
        let Some(mut sub) = self.sub_table(cx, key) else {
            return out;
        };
        for (k, v) in sub.entries() {
            let text = match v.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                DeValue::Integer(_) | DeValue::Float(_) => number_text(v.get_ref()),
                DeValue::Boolean(b) => Some(b.to_string()),
                _ => None,
            };
            match text {
                Some(t) => {
                    out.insert(
                        k.get_ref().to_string(),
                        Sourced {
                            value: t,
                            loc: cx.loc(&k.span()),
                        },
                    );
                }
                None => cx.error(
                    &v.span(),
                    &sub.field(k.get_ref()),
                    format!("expected a string, found {}", type_name(v.get_ref())),
                    None,
                ),
            }
        }
        sub.accept_all();
        out
    }

    /// A table of quantities (`resources = { "nvidia.com/gpu" = 1 }`).
    pub fn quantity_map(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
    ) -> BTreeMap<String, Sourced<Quantity>> {
        let mut out = BTreeMap::new();
        let Some(mut sub) = self.sub_table(cx, key) else {
            return out;
        };
        for (k, v) in sub.entries() {
            let field = sub.field(k.get_ref());
            match number_text(v.get_ref()).map(|t| Quantity::parse(&t)) {
                Some(Ok(q)) => {
                    out.insert(
                        k.get_ref().to_string(),
                        Sourced {
                            value: q,
                            loc: cx.loc(&k.span()),
                        },
                    );
                }
                Some(Err(e)) => cx.error(
                    &v.span(),
                    &field,
                    e.to_string(),
                    Some("expected a quantity like `1`, `500m` or `10Gi`".into()),
                ),
                None => cx.error(
                    &v.span(),
                    &field,
                    format!("expected a quantity, found {}", type_name(v.get_ref())),
                    None,
                ),
            }
        }
        sub.accept_all();
        out
    }

    pub fn sub_table(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<Table<'t, 'i>> {
        let value = self.get(key)?;
        let field = self.field(key);
        match value.get_ref().as_table() {
            Some(t) => Some(Table::new(t, value.span(), field)),
            None => {
                cx.error(
                    &value.span(),
                    &field,
                    format!("expected a table, found {}", type_name(value.get_ref())),
                    None,
                );
                None
            }
        }
    }

    /// A raw value, for free-form fields (a pod-spec patch) that are checked elsewhere.
    pub fn raw(&mut self, key: &'static str) -> Option<&'t Value<'i>> {
        self.get(key)
    }

    /// Every entry, for tables whose keys are names chosen by the user.
    pub fn entries(
        &self,
    ) -> impl Iterator<Item = (&'t Spanned<std::borrow::Cow<'i, str>>, &'t Value<'i>)> + use<'t, 'i>
    {
        self.table.iter()
    }

    /// Marks every key as expected (for tables whose keys are user-chosen names).
    pub fn accept_all(&mut self) {
        self.open = true;
    }

    /// Reports keys that no getter asked for.
    pub fn finish(self, cx: &mut Cx<'_>) {
        if self.open {
            return;
        }
        for (key, _) in self.table.iter() {
            let k = key.get_ref().as_ref();
            if self.read.contains(&k) {
                continue;
            }
            let help = unknown_help(k, &self.read, "field");
            cx.error(
                &key.span(),
                &self.field(k),
                format!("unknown field `{k}`"),
                Some(help),
            );
        }
    }
}

/// The text of a number or string value, so `cpu = 1.5`, `cpu = "1.5"` and `cpu = 2` all parse.
fn number_text(v: &DeValue<'_>) -> Option<String> {
    match v {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| n.to_string())
            .or_else(|| Some(i.as_str().to_string())),
        DeValue::Float(f) => Some(f.as_str().to_string()),
        _ => None,
    }
}

/// Names of configurations, groups, users, datasets, recipes: they end up in container labels,
/// image tags and file names, so keep them to a safe alphabet.
pub fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid name: use 1 to 63 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        let c = ["cpu_limit", "cpu_request", "memory_limit"];
        assert_eq!(suggest("cpu_limt", c), Some("cpu_limit"));
        assert_eq!(suggest("memory_limits", c), Some("memory_limit"));
        assert_eq!(suggest("zzz", c), None);
    }
}
