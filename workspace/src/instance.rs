//! Stage instances: a stage under knob overrides (a tuning trial, a regularization
//! rung, an ensemble member). An instance's name is its stage id, followed by its
//! overrides in brackets when it has any: `overfit[train.lr=0.001,train.seed=2]`.

use std::collections::BTreeSet;
use std::fmt;

use crate::config::Config;
use crate::knob::{KnobId, KnobSpec, KnobValue};
use crate::recipe::{Recipe, StageId};

/// A stage and the knob values that override the config for it, sorted by knob.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct InstanceSpec {
    pub stage: StageId,
    pub overrides: Vec<(KnobId, KnobValue)>,
}

/// A fast, unkeyed hasher for maps keyed by [`InstanceSpec`] (a multiply-rotate over
/// 8-byte words, as rustc's FxHash). The keys are the build's own instances, not
/// input an attacker picks, and SipHash over a trial's overrides was a tenth of a
/// no-op build of a 1,000-trial tune.
#[derive(Default, Clone, Copy)]
pub struct SpecHasher(u64);

impl std::hash::Hasher for SpecHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }
}

impl SpecHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// The hasher of [`SpecMap`] and [`SpecSet`].
pub type SpecBuild = std::hash::BuildHasherDefault<SpecHasher>;
/// A hash map keyed by instances ([`SpecHasher`]).
pub type SpecMap<K, V> = std::collections::HashMap<K, V, SpecBuild>;
/// A hash set of instances ([`SpecHasher`]).
pub type SpecSet<K> = std::collections::HashSet<K, SpecBuild>;

/// The readable, stable name of an instance, used in output and under `.pipe/out`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct InstanceName(pub String);

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl InstanceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl InstanceSpec {
    /// The plain stage, as the config says.
    pub fn plain(stage: StageId) -> InstanceSpec {
        InstanceSpec { stage, overrides: Vec::new() }
    }

    /// `stage` under `overrides` (later entries win; kept sorted by knob).
    pub fn new(stage: StageId, overrides: impl IntoIterator<Item = (KnobId, KnobValue)>) -> InstanceSpec {
        let mut sorted: Vec<(KnobId, KnobValue)> = Vec::new();
        for (knob, value) in overrides {
            sorted.retain(|(k, _)| *k != knob);
            sorted.push((knob, value));
        }
        sorted.sort_by_key(|(knob, _)| *knob);
        InstanceSpec { stage, overrides: sorted }
    }

    pub fn name(&self) -> InstanceName {
        if self.overrides.is_empty() {
            return InstanceName(self.stage.0.to_string());
        }
        // One buffer, no formatting machinery: a 1,000-trial tune names each trial
        // several times per build.
        let mut name = String::with_capacity(self.stage.0.len() + 2 + 32 * self.overrides.len());
        name.push_str(self.stage.0);
        name.push('[');
        for (index, (knob, value)) in self.overrides.iter().enumerate() {
            if index > 0 {
                name.push(',');
            }
            name.push_str(knob.0);
            name.push('=');
            value.write_toml(&mut name);
        }
        name.push(']');
        InstanceName(name)
    }

    pub fn override_of(&self, knob: KnobId) -> Option<&KnobValue> {
        self.overrides.iter().find(|(k, _)| *k == knob).map(|(_, value)| value)
    }

    /// The instance of `upstream` this instance reads: the same overrides, less those
    /// that cannot change `upstream`'s key, so a trial that only changes `train.lr`
    /// shares the plain `data` stage.
    pub fn upstream(&self, recipe: &Recipe, upstream: StageId) -> InstanceSpec {
        self.upstream_in(upstream, &recipe.transitive_knobs(upstream))
    }

    /// [`InstanceSpec::upstream`] given `relevant`, the upstream stage's transitive knobs.
    pub fn upstream_in(&self, upstream: StageId, relevant: &BTreeSet<KnobId>) -> InstanceSpec {
        InstanceSpec {
            stage: upstream,
            overrides: self.overrides.iter().filter(|(knob, _)| relevant.contains(knob)).cloned().collect(),
        }
    }

    /// The instance a member spec returned by this instance's stage stands for: this
    /// instance's overrides, then the member's own (which win), normalized to
    /// `relevant`, the member stage's transitive knobs (see [`crate::Engine::member_of`]).
    pub fn member_in(&self, member: &InstanceSpec, relevant: &BTreeSet<KnobId>) -> InstanceSpec {
        InstanceSpec::new(member.stage, self.overrides.iter().chain(&member.overrides).cloned())
            .upstream_in(member.stage, relevant)
    }

    /// Drops overrides no stage upstream of (or at) this one reads.
    pub fn normalized(&self, recipe: &Recipe) -> InstanceSpec {
        self.upstream(recipe, self.stage)
    }
}

/// Parses `stage` or `stage[knob=value,knob=value]` against the recipe and schema.
pub fn parse_instance(recipe: &Recipe, text: &str) -> Result<Option<InstanceSpec>, String> {
    let (stage, overrides) = match text.split_once('[') {
        None => (text, None),
        Some((stage, rest)) => {
            let inner = rest
                .strip_suffix(']')
                .ok_or_else(|| format!("`{text}`: an instance is written stage[knob=value,...] with a closing `]`"))?;
            (stage, Some(inner))
        }
    };
    let Some(spec) = recipe.spec(stage) else { return Ok(None) };
    let Some(inner) = overrides else { return Ok(Some(InstanceSpec::plain(spec.id))) };
    let mut config = Config::defaults(&recipe.schema);
    let mut values = Vec::new();
    for assignment in top_level_parts(inner).into_iter().map(str::trim).filter(|part| !part.is_empty()) {
        config.set(&recipe.schema, assignment).map_err(|error| format!("`{text}`: {error}"))?;
        let name = assignment.split_once('=').map_or(assignment, |(name, _)| name.trim());
        let knob: &KnobSpec = recipe
            .schema
            .iter()
            .find(|knob| knob.name == name)
            .ok_or_else(|| format!("`{text}`: unknown knob `{name}`"))?;
        let value = config.get(knob.name).cloned().ok_or_else(|| format!("`{text}`: no value for `{name}`"))?;
        values.push((knob.id(), value));
    }
    Ok(Some(InstanceSpec::new(spec.id, values).normalized(recipe)))
}

/// `inner` split at the commas that separate assignments: not those inside a list
/// value (`regularize.rungs=["dropout=0.1", "augment"]`) or a quoted string.
fn top_level_parts(inner: &str) -> Vec<&str> {
    let (mut parts, mut start, mut depth, mut quote) = (Vec::new(), 0, 0usize, None);
    let mut chars = inner.char_indices();
    while let Some((at, ch)) = chars.next() {
        match (quote, ch) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(open), ch) if ch == open => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(ch),
            (None, '[') => depth += 1,
            (None, ']') => depth = depth.saturating_sub(1),
            (None, ',') if depth == 0 => {
                parts.push(&inner[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::top_level_parts;

    #[test]
    fn assignments_split_at_top_level_commas_only() {
        assert_eq!(top_level_parts("a=1,b=2"), ["a=1", "b=2"]);
        assert_eq!(top_level_parts(r#"r=["x=1, y", "z"],train.lr=0.1"#), [r#"r=["x=1, y", "z"]"#, "train.lr=0.1"]);
        assert_eq!(top_level_parts(r#"s="a,]b",t='c,d'"#), [r#"s="a,]b""#, "t='c,d'"]);
        assert_eq!(top_level_parts(r#"s="a\",b",t=1"#), [r#"s="a\",b""#, "t=1"]);
    }
}
