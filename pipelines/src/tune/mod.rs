//! Random search (the recipe's fifth step): the search space of `tune.space`, its
//! validation against the knob schema, and the seeded sampler of trial points.
//!
//! Each entry of `tune.space` is `KNOB = DISTRIBUTION`:
//!
//! | distribution        | knob types                      | draw                                   |
//! |---------------------|---------------------------------|----------------------------------------|
//! | `log(a, b)`         | float, int, int list            | log-uniform on `[a, b]` (`0 < a < b`)  |
//! | `uniform(a, b)`     | float                           | uniform on `[a, b]`                    |
//! | `int(a, b)`         | int, int list                   | uniform integer in `a..=b`             |
//! | `choice(v1, v2..)`  | any (values as `--set` reads them) | one of the values, equally likely   |
//!
//! On an int list (`model.hidden = int(32, 256)`) the draw sets every entry of the
//! configured list, keeping its length. Floats are rounded to 4 significant digits,
//! so trial names stay readable (`overfit[train.lr=0.001234]`).
//!
//! Trial `i`'s value of knob `k` is a pure function of (`tune.seed`, `k`, its
//! distribution, `i`): it comes from its own [`Rng`] stream `tune/trial=i/k`. Raising
//! `tune.trials` keeps every earlier point, and adding a knob to the space keeps the
//! other knobs' values.

pub mod halving;
pub mod importance;

use workspace::knob::{format_float, suggest};
use workspace::{Config, Float, KnobId, KnobKind, KnobSpec, KnobValue};

use crate::rng::Rng;

/// A bad `tune.space` entry: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tune.space[{index}] (`{entry}`): {message}")]
pub struct SpaceError {
    pub index: usize,
    pub entry: String,
    pub message: String,
}

/// How one knob is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    /// Log-uniform on `[low, high]` (rounded for an integer knob).
    Log {
        low: f64,
        high: f64,
    },
    Uniform {
        low: f64,
        high: f64,
    },
    Int {
        low: i64,
        high: i64,
    },
    Choice(Vec<KnobValue>),
}

/// One searched knob.
#[derive(Debug, Clone, PartialEq)]
pub struct Dim {
    pub knob: KnobId,
    pub dist: Dist,
    /// The knob holds integers (an int or an int list): draws are rounded.
    pub integer: bool,
    /// For an int list: the number of entries every draw fills.
    pub list_len: Option<usize>,
}

/// The parsed `tune.space`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Space {
    pub dims: Vec<Dim>,
}

/// What the space may search and the configured values it needs.
pub struct Searchable<'a> {
    pub schema: &'a [KnobSpec],
    /// Knobs a trial may change (those the trained stage reads, less its budget).
    pub allowed: &'a [KnobId],
    /// Why a knob of the schema outside `allowed` cannot be searched.
    pub refused: &'a dyn Fn(KnobId) -> String,
    /// The configured value of an int-list knob (its length is kept).
    pub current: &'a dyn Fn(KnobId) -> Option<KnobValue>,
}

impl Space {
    /// Parses and validates every entry; errors name `tune.space[i]`.
    pub fn parse(entries: &[String], searchable: &Searchable<'_>) -> Result<Space, SpaceError> {
        let mut dims: Vec<Dim> = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let fail = |message: String| SpaceError { index, entry: entry.clone(), message };
            let dim = parse_entry(entry, searchable).map_err(fail)?;
            if let Some(earlier) = dims.iter().position(|d| d.knob == dim.knob) {
                return Err(fail(format!("`{}` is already searched by tune.space[{earlier}]", dim.knob)));
            }
            dims.push(dim);
        }
        Ok(Space { dims })
    }

    /// Trial `index`'s value of every searched knob, in space order.
    pub fn point(&self, seed: u64, index: usize) -> Vec<(KnobId, KnobValue)> {
        self.dims.iter().map(|dim| (dim.knob, dim.draw(seed, index))).collect()
    }
}

impl Dim {
    /// Trial `index`'s value, from the stream `tune/trial=index/knob`.
    pub fn draw(&self, seed: u64, index: usize) -> KnobValue {
        let u = Rng::new(seed, &format!("tune/trial={index}/{}", self.knob)).uniform();
        let whole = match &self.dist {
            Dist::Choice(values) => return values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone(),
            Dist::Int { low, high } => low + ((u * (high - low + 1) as f64) as i64).min(high - low),
            &Dist::Log { low, high } => {
                let v = (low.ln() + u * (high.ln() - low.ln())).exp();
                if !self.integer {
                    return KnobValue::Float(Float(round_sig(v).clamp(low, high)));
                }
                v.round().clamp(low, high) as i64
            }
            &Dist::Uniform { low, high } => {
                return KnobValue::Float(Float(round_sig(low + u * (high - low)).clamp(low, high)))
            }
        };
        match self.list_len {
            None => KnobValue::Int(whole),
            Some(len) => KnobValue::IntList(vec![whole; len]),
        }
    }

    /// The sampled range of a range distribution (not a choice).
    pub fn range(&self) -> Option<(f64, f64)> {
        match self.dist {
            Dist::Log { low, high } | Dist::Uniform { low, high } => Some((low, high)),
            Dist::Int { low, high } => Some((low as f64, high as f64)),
            Dist::Choice(_) => None,
        }
    }

    pub fn is_log(&self) -> bool {
        matches!(self.dist, Dist::Log { .. })
    }

    /// Where `value` lies in the sampled range, 0 at the low end and 1 at the high end
    /// (in log space for `log`); for a choice, the option's index over the last index.
    pub fn position(&self, value: &KnobValue) -> Option<f64> {
        if let Dist::Choice(values) = &self.dist {
            let at = values.iter().position(|v| v == value)?;
            return Some(if values.len() > 1 { at as f64 / (values.len() - 1) as f64 } else { 0.5 });
        }
        let (low, high) = self.range()?;
        let v = scalar(value)?;
        Some(if self.is_log() {
            (v.ln() - low.ln()) / (high.ln() - low.ln())
        } else if high > low {
            (v - low) / (high - low)
        } else {
            0.5
        })
    }

    /// The value as one number for charts: the value itself (first entry of a list),
    /// or the option's index for a choice.
    pub fn coordinate(&self, value: &KnobValue) -> Option<f64> {
        match &self.dist {
            Dist::Choice(values) => values.iter().position(|v| v == value).map(|i| i as f64),
            _ => scalar(value),
        }
    }
}

/// A knob value as one number (the first entry of an int list).
fn scalar(value: &KnobValue) -> Option<f64> {
    match value {
        KnobValue::IntList(list) => list.first().map(|&v| v as f64),
        other => other.as_f64(),
    }
}

/// `value` rounded to 4 significant digits, as the nearest double to that decimal.
fn round_sig(value: f64) -> f64 {
    format!("{value:.3e}").parse().unwrap_or(value)
}

/// Parses `KNOB = DIST(ARGS)`.
fn parse_entry(entry: &str, searchable: &Searchable<'_>) -> Result<Dim, String> {
    let (name, rhs) =
        entry.split_once('=').ok_or("expected `KNOB = DISTRIBUTION`, e.g. `train.lr = log(1e-4, 1e-2)`")?;
    let name = name.trim();
    let spec = searchable.schema.iter().find(|spec| spec.name == name).ok_or_else(|| {
        match suggest(name, searchable.allowed.iter().map(|id| id.as_str())) {
            Some(close) => format!("unknown knob `{name}`, did you mean `{close}`?"),
            None => format!("unknown knob `{name}`"),
        }
    })?;
    if !searchable.allowed.contains(&spec.id()) {
        return Err((searchable.refused)(spec.id()));
    }
    let rhs = rhs.trim();
    let (function, args) = rhs
        .strip_suffix(')')
        .and_then(|rest| rest.split_once('('))
        .ok_or("expected a distribution: log(a, b), uniform(a, b), int(a, b) or choice(v1, v2, ...)")?;
    let args = split_args(args)?;
    let dist = match function.trim() {
        "log" | "uniform" | "int" => range_dist(function.trim(), spec, &args)?,
        "choice" => Dist::Choice(choice_values(spec, &args)?),
        other => {
            return Err(format!(
                "unknown distribution `{other}`: use log(a, b), uniform(a, b), int(a, b) or choice(v1, v2, ...)"
            ))
        }
    };
    let list_len = match (spec.kind, &dist) {
        (KnobKind::IntList { .. }, Dist::Log { .. } | Dist::Int { .. }) => {
            let current = (searchable.current)(spec.id());
            Some(current.as_ref().and_then(|v| v.as_int_list()).map_or(1, |list| list.len().max(1)))
        }
        _ => None,
    };
    let integer = matches!(spec.kind, KnobKind::Int { .. } | KnobKind::IntList { .. });
    Ok(Dim { knob: spec.id(), dist, integer, list_len })
}

/// The arguments between the parentheses, split at commas outside brackets and quotes.
fn split_args(args: &str) -> Result<Vec<String>, String> {
    let (mut parts, mut current, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for ch in args.chars() {
        match ch {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    parts.push(current.trim().to_string());
    if quoted || depth != 0 || parts.iter().any(String::is_empty) {
        return Err("unbalanced quotes or brackets, or an empty argument".into());
    }
    Ok(parts)
}

/// `log`, `uniform` or `int` over `spec`, checked against its type and range.
fn range_dist(function: &str, spec: &KnobSpec, args: &[String]) -> Result<Dist, String> {
    let name = spec.name;
    let (min, max, integer) = match spec.kind {
        KnobKind::Float { min, max } => (min, max, false),
        KnobKind::Int { min, max } | KnobKind::IntList { min, max } => (min as f64, max as f64, true),
        kind => return Err(format!("`{name}` is {}: only choice(...) can search it", kind.describe())),
    };
    let [low, high] = args else {
        return Err(format!("{function}(a, b) takes two numbers, got {}", args.len()));
    };
    let number = |text: &str| -> Result<f64, String> {
        text.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| format!("`{text}` is not a number"))
    };
    let (low, high) = (number(low)?, number(high)?);
    if low >= high {
        return Err(format!("the range is empty: {} is not below {}", format_float(low), format_float(high)));
    }
    if low < min || high > max {
        return Err(format!("`{name}` is {}, so {function}({low}, {high}) leaves its range", spec.kind.describe()));
    }
    match function {
        "log" if low <= 0.0 => Err(format!("log(a, b) needs 0 < a; use uniform or int to include {low}")),
        "log" => Ok(Dist::Log { low, high }),
        "uniform" if integer => Err(format!("`{name}` is an integer: use int(a, b) or log(a, b)")),
        "uniform" => Ok(Dist::Uniform { low, high }),
        _ if !integer => Err(format!("`{name}` is a number, not an integer: use uniform(a, b) or log(a, b)")),
        _ if low.fract() != 0.0 || high.fract() != 0.0 => Err("int(a, b) takes two integers".into()),
        _ => Ok(Dist::Int { low: low as i64, high: high as i64 }),
    }
}

/// The values of `choice(...)`, each read and checked as `--set KNOB=VALUE` would be.
fn choice_values(spec: &KnobSpec, args: &[String]) -> Result<Vec<KnobValue>, String> {
    let schema = std::slice::from_ref(spec);
    let mut values: Vec<KnobValue> = Vec::new();
    for arg in args {
        let mut config = Config::defaults(schema);
        config.set(schema, &format!("{}={arg}", spec.name)).map_err(|error| error.message)?;
        let value = config.get(spec.name).cloned().ok_or("no value")?;
        if values.contains(&value) {
            return Err(format!("choice lists `{arg}` twice"));
        }
        values.push(value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests;
