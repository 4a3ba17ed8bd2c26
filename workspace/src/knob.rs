//! Knob schema and values: every knob has a dotted name, a type, an explicit default
//! and a one-line doc. Values have one canonical text form that goes into stage keys.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The dotted name of a knob (`train.lr`). Recipes declare each knob once as a
/// constant of this type, so a stage that reads a misspelt knob does not compile.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KnobId(pub &'static str);

impl KnobId {
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for KnobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for KnobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.0)
    }
}

/// A `Choice` knob's values as a Rust enum: the schema lists exactly
/// [`ChoiceKnob::OPTIONS`], config validation rejects anything else (exit 2), and
/// [`ChoiceKnob::parse`] has no fallback arm.
pub trait ChoiceKnob: Sized + Copy + PartialEq + 'static {
    const OPTIONS: &'static [&'static str];
    /// The variant at `OPTIONS[index]`.
    fn from_index(index: usize) -> Self;

    fn parse(text: &str) -> Option<Self> {
        Self::OPTIONS.iter().position(|option| *option == text).map(Self::from_index)
    }
}

/// An `f64` with bitwise equality, so knob values can be salsa inputs (`Eq + Hash`).
#[derive(Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Float(pub f64);

impl Eq for Float {}

impl std::hash::Hash for Float {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl fmt::Debug for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The value of one knob.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnobValue {
    Bool(bool),
    Int(i64),
    Float(Float),
    Str(String),
    IntList(Vec<i64>),
    FloatList(Vec<Float>),
    /// A list of strings (ladder rungs, a search space).
    StrList(Vec<String>),
}

impl KnobValue {
    /// The canonical text that goes into stage keys: typed, one float format.
    pub fn canonical(&self) -> String {
        match self {
            KnobValue::Bool(v) => format!("bool:{v}"),
            KnobValue::Int(v) => format!("int:{v}"),
            KnobValue::Float(v) => format!("f64:{:?}", v.0),
            KnobValue::Str(v) => format!("str:{v}"),
            KnobValue::IntList(v) => {
                format!("list[{}]", v.iter().map(|x| format!("int:{x}")).collect::<Vec<_>>().join(","))
            }
            KnobValue::FloatList(v) => {
                format!("list[{}]", v.iter().map(|x| format!("f64:{:?}", x.0)).collect::<Vec<_>>().join(","))
            }
            // JSON quoting, so a comma inside an item cannot be confused with a separator.
            KnobValue::StrList(v) => format!("strlist{}", serde_json::Value::from(v.clone())),
        }
    }

    /// The value as TOML would write it, for people.
    /// [`KnobValue::to_toml`] appended to `out` (an instance's name writes three per
    /// trial, and a no-op of a 1,000-trial tune names each trial several times).
    pub fn write_toml(&self, out: &mut String) {
        use std::fmt::Write as _;
        // Writing into a String cannot fail.
        match self {
            KnobValue::Bool(v) => {
                let _ = write!(out, "{v}");
            }
            KnobValue::Int(v) => {
                let _ = write!(out, "{v}");
            }
            KnobValue::Float(v) => {
                let start = out.len();
                let _ = write!(out, "{:?}", v.0);
                if !out[start..].contains(['.', 'e', 'E', 'n', 'N']) {
                    out.push_str(".0");
                }
            }
            other => out.push_str(&other.to_toml()),
        }
    }

    pub fn to_toml(&self) -> String {
        match self {
            KnobValue::Bool(v) => v.to_string(),
            KnobValue::Int(v) => v.to_string(),
            KnobValue::Float(v) => format_float(v.0),
            KnobValue::Str(v) => format!("{v:?}"),
            KnobValue::IntList(v) => {
                format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
            }
            KnobValue::FloatList(v) => {
                format!("[{}]", v.iter().map(|x| format_float(x.0)).collect::<Vec<_>>().join(", "))
            }
            KnobValue::StrList(v) => {
                format!("[{}]", v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(", "))
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            KnobValue::Bool(v) => Value::Bool(*v),
            KnobValue::Int(v) => Value::from(*v),
            KnobValue::Float(v) => Value::from(v.0),
            KnobValue::Str(v) => Value::from(v.clone()),
            KnobValue::IntList(v) => Value::from(v.clone()),
            KnobValue::FloatList(v) => Value::from(v.iter().map(|x| x.0).collect::<Vec<_>>()),
            KnobValue::StrList(v) => Value::from(v.clone()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            KnobValue::Float(v) => Some(v.0),
            KnobValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            KnobValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            KnobValue::Bool(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            KnobValue::Str(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_int_list(&self) -> Option<&[i64]> {
        match self {
            KnobValue::IntList(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str_list(&self) -> Option<&[String]> {
        match self {
            KnobValue::StrList(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_float_list(&self) -> Option<Vec<f64>> {
        match self {
            KnobValue::FloatList(v) => Some(v.iter().map(|x| x.0).collect()),
            _ => None,
        }
    }
}

impl fmt::Display for KnobValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

/// Floats print as Rust's shortest round-trip form, always with a `.` or exponent.
pub fn format_float(value: f64) -> String {
    let text = format!("{value:?}");
    if text.contains(['.', 'e', 'E', 'n', 'N']) {
        text
    } else {
        format!("{text}.0")
    }
}

/// The type of a knob and what values it accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KnobKind {
    Bool,
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// A float in `min..=max` (finite).
    Float {
        min: f64,
        max: f64,
    },
    /// Any string.
    Str,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// A list of integers in `min..=max`; a single integer is read as a one-element list.
    IntList {
        min: i64,
        max: i64,
    },
    /// A list of floats in `min..=max`.
    FloatList {
        min: f64,
        max: f64,
    },
    /// A list of strings (possibly empty), each checked by the stage that reads it.
    StrList,
}

impl KnobKind {
    pub fn describe(&self) -> String {
        match self {
            KnobKind::Bool => "a boolean".into(),
            KnobKind::Int { min, max } => format!("an integer in {min}..={max}"),
            KnobKind::Float { min, max } => format!("a number in {}..={}", format_float(*min), format_float(*max)),
            KnobKind::Str => "a string".into(),
            KnobKind::Choice(options) => {
                format!("one of {}", options.iter().map(|o| format!("\"{o}\"")).collect::<Vec<_>>().join(", "))
            }
            KnobKind::IntList { min, max } => format!("an integer or a list of integers in {min}..={max}"),
            KnobKind::FloatList { min, max } => {
                format!("a list of numbers in {}..={}", format_float(*min), format_float(*max))
            }
            KnobKind::StrList => "a list of strings".into(),
        }
    }
}

/// One knob of the schema.
#[derive(Clone, Debug)]
pub struct KnobSpec {
    /// Dotted path, e.g. `train.lr`.
    pub name: &'static str,
    pub kind: KnobKind,
    pub default: KnobValue,
    /// One line for the example file and the README's knob reference.
    pub doc: &'static str,
}

impl KnobSpec {
    pub fn new(name: &'static str, kind: KnobKind, default: KnobValue, doc: &'static str) -> KnobSpec {
        KnobSpec { name, kind, default, doc }
    }

    pub fn id(&self) -> KnobId {
        KnobId(self.name)
    }

    /// A `Choice` knob whose options are the variants of `C`.
    pub fn choice<C: ChoiceKnob>(id: KnobId, default: C, doc: &'static str) -> KnobSpec {
        let index = (0..C::OPTIONS.len()).find(|&i| C::from_index(i) == default);
        let text = index.map_or("", |i| C::OPTIONS[i]);
        KnobSpec::new(id.0, KnobKind::Choice(C::OPTIONS), KnobValue::Str(text.to_string()), doc)
    }
}

/// Edit distance with adjacent transpositions (optimal string alignment), for
/// "did you mean" suggestions: `mpl` is one edit from `mlp`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut table = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in table.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in table[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (table[i - 1][j] + 1).min(table[i][j - 1] + 1).min(table[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(table[i - 2][j - 2] + 1);
            }
            table[i][j] = best;
        }
    }
    table[a.len()][b.len()]
}

/// The closest candidate to `name` if it is close enough to be a likely typo.
///
/// Bounded: the edit distance is at least the difference in length, so a candidate
/// whose length differs by more than the limit is skipped without comparing, and a
/// name of more than 256 bytes gets no suggestion at all (a 10 MB unknown key answers
/// at once instead of filling a 10M x 20 table).
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // No knob, stage or choice is near this long.
    const MAX_SUGGEST_LEN: usize = 256;
    if name.len() > MAX_SUGGEST_LEN {
        return None;
    }
    let limit = (name.len() / 3).clamp(1, 4);
    let length = name.chars().count();
    candidates
        .into_iter()
        .filter(|candidate| candidate.chars().count().abs_diff(length) <= limit)
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, candidate)| (*distance, *candidate))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(KnobValue::Float(Float(3e-4)).canonical(), "f64:0.0003");
        assert_eq!(KnobValue::Float(Float(0.0003)).canonical(), KnobValue::Float(Float(3e-4)).canonical());
        assert_eq!(KnobValue::IntList(vec![2, 32]).canonical(), "list[int:2,int:32]");
        assert_eq!(KnobValue::Float(Float(1.0)).to_toml(), "1.0");
        let list = KnobValue::StrList(vec!["a=1,b=2".into(), "c".into()]);
        assert_eq!(list.canonical(), r#"strlist["a=1,b=2","c"]"#);
        assert_ne!(list.canonical(), KnobValue::StrList(vec!["a=1".into(), "b=2,c".into()]).canonical());
        assert_eq!(list.to_toml(), r#"["a=1,b=2", "c"]"#);
        // Appended in place, the same text.
        let values = [
            KnobValue::Float(Float(1.0)),
            KnobValue::Float(Float(1e-7)),
            KnobValue::Float(Float(f64::INFINITY)),
            KnobValue::Float(Float(-2.5e20)),
            KnobValue::Int(-3),
            KnobValue::Bool(true),
            KnobValue::Str("a\"b".into()),
            list,
        ];
        for value in values {
            let mut out = String::from("x=");
            value.write_toml(&mut out);
            assert_eq!(out, format!("x={}", value.to_toml()), "{value:?}");
        }
    }

    #[test]
    fn suggestions() {
        let names = ["train.lr", "train.steps", "model.hidden"];
        assert_eq!(suggest("train.lrr", names), Some("train.lr"));
        assert_eq!(suggest("trian.steps", names), Some("train.steps"));
        assert_eq!(suggest("data.completely_else", names), None);
    }
}
