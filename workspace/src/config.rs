//! `pipe.toml` parsing: strict, span-aware and driven by the knob schema.
//!
//! Every leaf of the file must be a known knob of the right type; an unknown key
//! gets a "did you mean" suggestion, and every error names `file:line:col` and the
//! dotted key. `--set KEY=VALUE` overrides go through the same validation.
//!
//! Bounded: a pipeline file is a regular file of at most [`MAX_FILE_BYTES`] (a FIFO or
//! `/dev/zero` is refused before it is read), a list knob holds at most
//! [`MAX_LIST_LEN`] values, and a key is quoted in an error only up to
//! [`MAX_SHOWN_KEY`] characters.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::knob::{suggest, Float, KnobKind, KnobSpec, KnobValue};

/// The largest pipeline file read (16 MiB; the full example is 6 KB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The most values a list knob holds (64 hidden layers, 64 overfit batch sizes).
pub const MAX_LIST_LEN: usize = 64;

/// Keys longer than this are shortened in messages.
const MAX_SHOWN_KEY: usize = 80;

/// `key`, shortened for a message when it is absurdly long.
fn shown_key(key: &str) -> String {
    if key.chars().count() <= MAX_SHOWN_KEY {
        return key.to_string();
    }
    let head: String = key.chars().take(MAX_SHOWN_KEY).collect();
    format!("{head}... ({} bytes)", key.len())
}

/// A config error, printed as `file:line:col: message` plus an optional help line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `pipe.toml:3:1` or `--set train.lr=x`.
    pub location: String,
    /// The dotted key, when the error is about one.
    pub key: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The resolved value of every knob of the schema, with where each came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub values: BTreeMap<&'static str, KnobValue>,
    /// Knobs that were not left at their default: `file:line` or `--set`.
    pub origins: BTreeMap<&'static str, String>,
    /// Where each knob not at its default was set, for errors: `file:line:col` or
    /// `--set KEY=VALUE`.
    pub locations: BTreeMap<&'static str, String>,
    pub file: Option<PathBuf>,
}

impl Config {
    /// Every knob at its default.
    pub fn defaults(schema: &[KnobSpec]) -> Config {
        Config {
            values: schema.iter().map(|spec| (spec.name, spec.default.clone())).collect(),
            origins: BTreeMap::new(),
            locations: BTreeMap::new(),
            file: None,
        }
    }

    /// A config error about `key`, located where it was set (`default` when it was not).
    pub fn error_at(&self, key: &str, message: impl Into<String>, help: Option<String>) -> ConfigError {
        let location = self
            .locations
            .iter()
            .find(|(name, _)| **name == key)
            .map_or_else(|| "default".to_string(), |(_, location)| location.clone());
        ConfigError { location, key: Some(key.to_string()), message: message.into(), help }
    }

    /// Reads and validates a `pipe.toml`.
    pub fn load(schema: &[KnobSpec], path: &Path) -> Result<Config, ConfigError> {
        let text = cache::read_input_text(path, MAX_FILE_BYTES, "a pipeline file").map_err(|err| ConfigError {
            location: path.display().to_string(),
            key: None,
            message: format!("cannot read pipeline file: {err}"),
            help: None,
        })?;
        let mut config = Config::parse(schema, &text, &path.display().to_string())?;
        config.file = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses the text of a `pipe.toml`; `file` names it in errors.
    pub fn parse(schema: &[KnobSpec], text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut config = Config::defaults(schema);
        let table = DeTable::parse(text).map_err(|err| {
            let (line, col) = err.span().map_or((1, 1), |span| line_col(text, span.start));
            ConfigError {
                location: format!("{file}:{line}:{col}"),
                key: None,
                message: format!("invalid TOML: {}", err.message().trim()),
                help: None,
            }
        })?;
        let mut leaves = Vec::new();
        flatten(table.get_ref(), "", &mut leaves);
        for (key, value) in leaves {
            let (line, col) = line_col(text, value.span().start);
            let location = format!("{file}:{line}:{col}");
            let spec = find_spec(schema, &key, &location)?;
            let parsed = convert(spec, value.get_ref(), &location)?;
            config.values.insert(spec.name, parsed);
            config.origins.insert(spec.name, format!("{file}:{line}"));
            config.locations.insert(spec.name, location);
        }
        Ok(config)
    }

    /// Applies one `KEY=VALUE` override. A value that is not valid TOML is read as
    /// a bare string, so `--set data.source=builtin:digits` works unquoted.
    pub fn set(&mut self, schema: &[KnobSpec], assignment: &str) -> Result<(), ConfigError> {
        let location = format!("--set {}", shown_key(assignment));
        let Some((key, raw)) = assignment.split_once('=') else {
            return Err(ConfigError {
                location,
                key: None,
                message: "expected KEY=VALUE".into(),
                help: Some("for example `--set train.lr=1e-3`".into()),
            });
        };
        let key = key.trim();
        let spec = find_spec(schema, key, &location)?;
        let parsed = match DeValue::parse(raw.trim()) {
            Ok(value) => convert(spec, value.get_ref(), &location)?,
            Err(_) => convert(spec, &DeValue::String(raw.trim().into()), &location)?,
        };
        self.values.insert(spec.name, parsed);
        self.origins.insert(spec.name, "--set".into());
        self.locations.insert(spec.name, location);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&KnobValue> {
        self.values.get(name)
    }

    /// Canonical text of every knob, for run records.
    pub fn canonical(&self) -> BTreeMap<String, String> {
        self.values.iter().map(|(name, value)| (name.to_string(), value.canonical())).collect()
    }
}

fn find_spec<'s>(schema: &'s [KnobSpec], key: &str, location: &str) -> Result<&'s KnobSpec, ConfigError> {
    if let Some(spec) = schema.iter().find(|spec| spec.name == key) {
        return Ok(spec);
    }
    let is_section = schema.iter().any(|spec| spec.name.starts_with(&format!("{key}.")));
    let shown = shown_key(key);
    let message = if is_section {
        format!("`{shown}` is a section, not a value")
    } else {
        match suggest(key, schema.iter().map(|spec| spec.name)) {
            Some(close) => format!("unknown key {shown}, did you mean {close}?"),
            None => format!("unknown key {shown}"),
        }
    };
    let section = key.rsplit_once('.').map_or("", |(section, _)| section);
    let siblings: Vec<&str> = schema
        .iter()
        .filter_map(|spec| spec.name.strip_prefix(section)?.strip_prefix('.'))
        .filter(|rest| !rest.contains('.'))
        .collect();
    let help = (!is_section && !siblings.is_empty() && !section.is_empty())
        .then(|| format!("known keys in [{section}]: {}", siblings.join(", ")));
    Err(ConfigError { location: location.to_string(), key: Some(shown), message, help })
}

fn flatten<'a, 'i>(table: &'a DeTable<'i>, prefix: &str, leaves: &mut Vec<(String, &'a Spanned<DeValue<'i>>)>) {
    for (key, value) in table.iter() {
        let name = if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
        match value.get_ref() {
            DeValue::Table(inner) => flatten(inner, &name, leaves),
            _ => leaves.push((name, value)),
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| before[nl + 1..].chars().count()) + 1;
    (line, col)
}

fn convert(spec: &KnobSpec, value: &DeValue<'_>, location: &str) -> Result<KnobValue, ConfigError> {
    let wrong = |found: &str| ConfigError {
        location: location.to_string(),
        key: Some(spec.name.to_string()),
        message: format!("`{}` expects {}, found {found}", spec.name, spec.kind.describe()),
        help: Some(format!("default: {} = {}", spec.name, spec.default.to_toml())),
    };
    let found = describe_value(value);
    match spec.kind {
        KnobKind::Bool => value.as_bool().map(KnobValue::Bool).ok_or_else(|| wrong(&found)),
        KnobKind::Int { min, max } => {
            let v = integer(value).ok_or_else(|| wrong(&found))?;
            if (min..=max).contains(&v) {
                Ok(KnobValue::Int(v))
            } else {
                Err(wrong(&found))
            }
        }
        KnobKind::Float { min, max } => {
            let v = number(value).ok_or_else(|| wrong(&found))?;
            if v.is_finite() && v >= min && v <= max {
                Ok(KnobValue::Float(Float(v)))
            } else {
                Err(wrong(&found))
            }
        }
        KnobKind::Str => value.as_str().map(|s| KnobValue::Str(s.to_string())).ok_or_else(|| wrong(&found)),
        KnobKind::Choice(options) => {
            let text = value.as_str().ok_or_else(|| wrong(&found))?;
            if options.contains(&text) {
                Ok(KnobValue::Str(text.to_string()))
            } else {
                let mut err = wrong(&found);
                if let Some(close) = suggest(text, options.iter().copied()) {
                    err.help = Some(format!("did you mean \"{close}\"?"));
                }
                Err(err)
            }
        }
        KnobKind::IntList { .. } | KnobKind::FloatList { .. } | KnobKind::StrList if matches!(value, DeValue::Array(array) if array.len() > MAX_LIST_LEN) =>
        {
            let mut err = wrong(&found);
            err.message = format!("`{}` holds {found}: at most {MAX_LIST_LEN} values", spec.name);
            Err(err)
        }
        KnobKind::IntList { min, max } => {
            let items: Vec<i64> = match value {
                DeValue::Array(array) => array
                    .iter()
                    .map(|item| integer(item.get_ref()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| wrong(&found))?,
                other => vec![integer(other).ok_or_else(|| wrong(&found))?],
            };
            // An empty list only where the default is one (`model.dense = []`: none).
            let empty_ok = spec.default == KnobValue::IntList(Vec::new());
            if (items.is_empty() && !empty_ok) || items.iter().any(|v| !(min..=max).contains(v)) {
                return Err(wrong(&found));
            }
            Ok(KnobValue::IntList(items))
        }
        KnobKind::FloatList { min, max } => {
            let DeValue::Array(array) = value else { return Err(wrong(&found)) };
            let items: Vec<f64> = array
                .iter()
                .map(|item| number(item.get_ref()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| wrong(&found))?;
            if items.is_empty() || items.iter().any(|v| !v.is_finite() || *v < min || *v > max) {
                return Err(wrong(&found));
            }
            Ok(KnobValue::FloatList(items.into_iter().map(Float).collect()))
        }
        KnobKind::StrList => {
            let DeValue::Array(array) = value else { return Err(wrong(&found)) };
            let items: Vec<String> = array
                .iter()
                .map(|item| item.get_ref().as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| wrong(&found))?;
            Ok(KnobValue::StrList(items))
        }
    }
}

fn describe_value(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("string \"{}\"", shown_key(s)),
        DeValue::Integer(i) => format!("integer {}", i.as_str()),
        DeValue::Float(f) => format!("float {}", f.as_str()),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
        DeValue::Array(array) if array.len() > MAX_LIST_LEN => format!("an array of {} values", array.len()),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

fn integer(value: &DeValue<'_>) -> Option<i64> {
    let DeValue::Integer(int) = value else { return None };
    let text = int.as_str().replace('_', "");
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest.to_string()),
        None => (1, text.trim_start_matches('+').to_string()),
    };
    let digits = if int.radix() == 10 { digits.as_str() } else { digits.get(2..)? };
    i64::from_str_radix(digits, int.radix()).ok().map(|v| sign * v)
}

fn number(value: &DeValue<'_>) -> Option<f64> {
    match value {
        DeValue::Float(float) => {
            let text = float.as_str().replace('_', "");
            match text.trim_start_matches(['+', '-']) {
                "inf" | "nan" => None,
                _ => text.parse().ok(),
            }
        }
        DeValue::Integer(_) => integer(value).map(|v| v as f64),
        _ => None,
    }
}

/// Renders the schema as a commented `pipe.toml` with every knob at its default,
/// one table per section in order of first appearance (TOML forbids a table twice).
pub fn example_toml(schema: &[KnobSpec]) -> String {
    let section_of = |spec: &KnobSpec| spec.name.rsplit_once('.').map_or("", |(section, _)| section);
    let mut sections: Vec<&str> = Vec::new();
    for spec in schema {
        if !sections.contains(&section_of(spec)) {
            sections.push(section_of(spec));
        }
    }
    let mut text = String::new();
    for section in sections {
        text.push_str(&format!("\n[{section}]\n"));
        for spec in schema.iter().filter(|spec| section_of(spec) == section) {
            let leaf = spec.name.rsplit_once('.').map_or(spec.name, |(_, leaf)| leaf);
            text.push_str(&format!("# {} ({})\n", spec.doc, spec.kind.describe()));
            text.push_str(&format!("{leaf} = {}\n", spec.default.to_toml()));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knob::format_float;

    fn schema() -> Vec<KnobSpec> {
        vec![
            KnobSpec::new("train.lr", KnobKind::Float { min: 0.0, max: 10.0 }, KnobValue::Float(Float(3e-4)), "lr"),
            KnobSpec::new("train.steps", KnobKind::Int { min: 1, max: 1_000_000 }, KnobValue::Int(100), "steps"),
            KnobSpec::new("model.kind", KnobKind::Choice(&["linear", "mlp"]), KnobValue::Str("mlp".into()), "kind"),
            KnobSpec::new(
                "checks.overfit_batch.size",
                KnobKind::IntList { min: 1, max: 512 },
                KnobValue::IntList(vec![2]),
                "sizes",
            ),
            KnobSpec::new("model.dense", KnobKind::IntList { min: 1, max: 64 }, KnobValue::IntList(vec![]), "widths"),
            KnobSpec::new(
                "data.split",
                KnobKind::FloatList { min: 0.0, max: 1.0 },
                KnobValue::FloatList(vec![Float(0.6), Float(0.4)]),
                "split",
            ),
        ]
    }

    #[test]
    fn parses_values_and_ignores_comments() {
        let text =
            "# a comment\n[train]\nlr = 1e-3 # trailing\nsteps = 1_000\n[checks.overfit_batch]\nsize = [2, 32]\n";
        let config = Config::parse(&schema(), text, "pipe.toml").unwrap();
        assert_eq!(config.get("train.lr"), Some(&KnobValue::Float(Float(1e-3))));
        assert_eq!(config.get("train.steps"), Some(&KnobValue::Int(1000)));
        assert_eq!(config.get("checks.overfit_batch.size"), Some(&KnobValue::IntList(vec![2, 32])));
        assert_eq!(config.get("model.kind"), Some(&KnobValue::Str("mlp".into())));
        assert_eq!(config.origins["train.lr"], "pipe.toml:3");
        // Integers are accepted where floats are expected; a single size is a list.
        let config = Config::parse(&schema(), "train.lr = 1\n", "p").unwrap();
        assert_eq!(config.get("train.lr"), Some(&KnobValue::Float(Float(1.0))));
    }

    #[test]
    fn an_empty_list_only_where_the_default_is_empty() {
        let config = Config::parse(&schema(), "[model]\ndense = []\n", "p").unwrap();
        assert_eq!(config.get("model.dense"), Some(&KnobValue::IntList(vec![])));
        let err = Config::parse(&schema(), "[checks.overfit_batch]\nsize = []\n", "p").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("checks.overfit_batch.size"));
    }

    #[test]
    fn unknown_key_has_location_and_suggestion() {
        let err = Config::parse(&schema(), "[train]\nsteps = 5\nlrr = 0.1\n", "pipe.toml").unwrap_err();
        assert_eq!(err.location, "pipe.toml:3:7");
        assert_eq!(err.key.as_deref(), Some("train.lrr"));
        assert_eq!(err.message, "unknown key train.lrr, did you mean train.lr?");
    }

    #[test]
    fn wrong_type_and_range() {
        let err = Config::parse(&schema(), "[train]\nlr = \"fast\"\n", "pipe.toml").unwrap_err();
        assert_eq!(err.location, "pipe.toml:2:6");
        assert!(err.message.contains("`train.lr` expects a number"), "{err}");
        let err = Config::parse(&schema(), "model.kind = \"mpl\"\n", "p").unwrap_err();
        assert_eq!(err.help.as_deref(), Some("did you mean \"mlp\"?"));
        assert!(Config::parse(&schema(), "train.steps = 0\n", "p").is_err());
        assert!(Config::parse(&schema(), "train.lr = nan\n", "p").is_err());
        let err = Config::parse(&schema(), "[train\n", "p").unwrap_err();
        assert!(err.message.starts_with("invalid TOML"), "{err}");
    }

    #[test]
    fn set_overrides_with_same_validation() {
        let mut config = Config::defaults(&schema());
        config.set(&schema(), "train.lr=0.001").unwrap();
        assert_eq!(config.get("train.lr"), Some(&KnobValue::Float(Float(0.001))));
        config.set(&schema(), "model.kind=linear").unwrap();
        assert_eq!(config.get("model.kind"), Some(&KnobValue::Str("linear".into())));
        let err = config.set(&schema(), "train.lrr=1").unwrap_err();
        assert_eq!(err.message, "unknown key train.lrr, did you mean train.lr?");
        assert!(config.set(&schema(), "train.steps=abc").is_err());
        assert!(config.set(&schema(), "train.steps").is_err());
    }

    #[test]
    fn example_round_trips_to_defaults() {
        let text = example_toml(&schema());
        let config = Config::parse(&schema(), &text, "example").unwrap();
        assert_eq!(config.values, Config::defaults(&schema()).values);
    }

    #[test]
    fn float_format_is_stable() {
        assert_eq!(format_float(0.0003), "0.0003");
    }

    #[test]
    fn huge_key_and_long_list_are_bounded() {
        let started = std::time::Instant::now();
        let key = "x".repeat(10 << 20);
        let err = Config::parse(&schema(), &format!("[train]\n{key} = 1\n"), "pipe.toml").unwrap_err();
        assert!(started.elapsed().as_secs_f64() < 2.0, "{:?}", started.elapsed());
        assert_eq!(err.location, "pipe.toml:2:10485764");
        assert!(err.message.starts_with("unknown key train.xxx") && err.message.len() < 200, "{}", err.message);
        let mut config = Config::defaults(&schema());
        let err = config.set(&schema(), &format!("{key}=1")).unwrap_err();
        assert!(err.to_string().len() < 1000, "a --set is not echoed whole either");
        let list = format!("checks.overfit_batch.size = [{}]\n", vec!["2"; 65].join(", "));
        let err = Config::parse(&schema(), &list, "pipe.toml").unwrap_err();
        assert!(err.message.contains("holds an array of 65 values: at most 64 values"), "{err}");
        let list = format!("checks.overfit_batch.size = [{}]\n", vec!["2"; 64].join(", "));
        assert!(Config::parse(&schema(), &list, "pipe.toml").is_ok());
    }

    #[test]
    fn pipeline_file_must_be_a_bounded_regular_file() {
        let err = Config::load(&schema(), Path::new("/dev/zero")).unwrap_err();
        assert!(err.message.contains("not a regular file (a character device)"), "{err}");
        let dir = std::env::temp_dir().join(format!("pipe-config-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("pipe.toml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let err = Config::load(&schema(), &big).unwrap_err();
        assert!(err.message.contains("more than a pipeline file may hold"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn data_errors_point_at_where_the_knob_was_set() {
        let mut config = Config::parse(&schema(), "\n[train]\nlr = 0.5\n", "pipe.toml").unwrap();
        assert_eq!(config.error_at("train.lr", "too fast", None).location, "pipe.toml:3:6");
        assert_eq!(config.error_at("train.steps", "x", None).location, "default");
        config.set(&schema(), "train.steps=7").unwrap();
        assert_eq!(config.error_at("train.steps", "x", None).location, "--set train.steps=7");
    }
}
