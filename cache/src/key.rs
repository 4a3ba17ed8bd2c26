//! Stage keys: what makes a stage re-run.
//!
//! A stage key is the blake3 hash of the canonical encoding of [`KeyInputs`]:
//!
//! | goes into the key                                   | why                                       |
//! |-----------------------------------------------------|-------------------------------------------|
//! | stage id                                            | two stages never share an action entry    |
//! | stage implementation version                        | bumped when a stage's code changes output |
//! | tool version (`CARGO_PKG_VERSION` of `pipe`)        | a new release may compute differently     |
//! | each knob the stage *reads*, canonical text         | changing it changes what the stage does   |
//! | content hash of each upstream artifact it reads     | early cutoff: identical bytes, same key   |
//! | device class (cpu / cuda / metal) and dtype         | numerics differ across devices            |
//!
//! | never goes into the key                             | why                                       |
//! |-----------------------------------------------------|-------------------------------------------|
//! | knobs the stage does not read                       | an unrelated edit must not re-run it      |
//! | check thresholds (`checks.*` verdict knobs)         | verdicts are cheap queries over artifacts |
//! | comments, formatting and key order of `pipe.toml`   | knobs are compared as parsed values       |
//! | upstream stage *keys*                               | only upstream bytes matter                |
//! | thread count, wall-clock time, mtimes, abs. paths   | they must not change results              |
//!
//! The encoding is line based, sorted by name, with one float format (Rust's
//! shortest round-trip `{:?}`), so `3e-4` and `0.0003` give the same key.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{ArtifactHash, StageKey};

/// The canonical text of one knob value, e.g. `f64:0.0003` or `list[int:2,int:32]`:
/// shared, so a thousand trials' keys hold one copy of each configured value.
pub type KnobValueText = Arc<str>;

/// A knob's name in a key: the schema's static name, or an owned one read back.
pub type KnobName = Cow<'static, str>;

/// Everything a stage key is made of; stored in manifests so `pipe status` can say
/// which input changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub stage: String,
    pub stage_version: u32,
    pub tool_version: String,
    pub knobs: BTreeMap<KnobName, KnobValueText>,
    /// `upstream_stage/artifact_name` -> content hash.
    pub upstream: BTreeMap<String, ArtifactHash>,
    /// Content fingerprints of external inputs such as a dataset.
    pub fingerprints: BTreeMap<String, ArtifactHash>,
    pub device: String,
    pub dtype: String,
}

/// Bytes of a key's encoding gathered before they are hashed ([`KeyInputs::key`]).
const KEY_BLOCK: usize = 64 * 1024;

impl KeyInputs {
    /// The canonical byte encoding hashed into the key. Built by pushing bytes, not by
    /// formatting: a tune's key names thousands of member artifacts, and each of its
    /// thousand trials has a key of its own.
    pub fn canonical(&self) -> String {
        let hashes = self.upstream.len() + self.fingerprints.len();
        let mut text = String::with_capacity(256 + 64 * self.knobs.len() + 128 * hashes);
        self.encode(&mut |part| text.push_str(part));
        text
    }

    /// The blake3 hash of [`KeyInputs::canonical`]. The pieces are gathered in one
    /// buffer per thread, kept between calls, and hashed a block of [`KEY_BLOCK`]
    /// bytes at a time: blake3 fed a few bytes at a time costs a call per piece (a
    /// 1,000-trial tune: 250,000 of them), fed a block it hashes 16 chunks per
    /// instruction. A tune's encoding is megabytes; a buffer of all of it was the
    /// largest allocation of a no-op build (fresh pages the kernel must zero), so the
    /// buffer stops at one block. blake3 streams: the hash is the same.
    pub fn key(&self) -> StageKey {
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            buffer.clear();
            buffer.reserve(KEY_BLOCK);
            let mut hasher: Option<blake3::Hasher> = None;
            self.encode(&mut |part| {
                if buffer.len() + part.len() > KEY_BLOCK && !buffer.is_empty() {
                    hasher.get_or_insert_with(blake3::Hasher::new).update(&buffer);
                    buffer.clear();
                }
                buffer.extend_from_slice(part.as_bytes());
            });
            let hash = match hasher {
                None => blake3::hash(&buffer),
                Some(mut hasher) => hasher.update(&buffer).finalize(),
            };
            StageKey::from_bytes(*hash.as_bytes())
        })
    }

    /// The canonical encoding, handed to `out` in pieces.
    fn encode(&self, out: &mut dyn FnMut(&str)) {
        let mut hex = [0u8; 64];
        let mut hash_line = |out: &mut dyn FnMut(&str), what: &str, name: &str, hash: &ArtifactHash| {
            crate::digest::hex_into(hash.as_bytes(), &mut hex);
            out(what);
            out(name);
            out("=");
            // Only ASCII hex digits were written.
            out(std::str::from_utf8(&hex).unwrap_or_default());
            out("\n");
        };
        out("pipe-key-v1\nstage=");
        out(&self.stage);
        out("\nstage_version=");
        out(&self.stage_version.to_string());
        out("\ntool_version=");
        out(&self.tool_version);
        out("\n");
        for (name, value) in &self.knobs {
            out("knob ");
            out(name);
            out("=");
            out(value);
            out("\n");
        }
        for (name, hash) in &self.upstream {
            hash_line(out, "upstream ", name, hash);
        }
        for (name, hash) in &self.fingerprints {
            hash_line(out, "fingerprint ", name, hash);
        }
        out("device=");
        out(&self.device);
        out("\ndtype=");
        out(&self.dtype);
        out("\n");
    }

    /// Human-readable reasons why `self` (the current inputs) differ from `before`.
    pub fn explain_change(&self, before: &KeyInputs) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.stage_version != before.stage_version || self.tool_version != before.tool_version {
            reasons.push(format!(
                "implementation changed (stage v{} -> v{}, pipe {} -> {})",
                before.stage_version, self.stage_version, before.tool_version, self.tool_version
            ));
        }
        diff_maps(&before.knobs, &self.knobs, "knob", &mut reasons, |v| value_text(v));
        reasons.extend(upstream_changes(&before.upstream, &self.upstream));
        diff_maps(&before.fingerprints, &self.fingerprints, "input", &mut reasons, |h| h.short());
        if self.device != before.device || self.dtype != before.dtype {
            reasons.push(format!("device {}/{} -> {}/{}", before.device, before.dtype, self.device, self.dtype));
        }
        reasons
    }
}

/// `f64:0.0003` -> `0.0003`, `list[int:2,int:32]` -> `[2, 32]`: the value as a person writes it.
pub fn value_text(text: &str) -> String {
    if let Some(items) = text.strip_prefix("list[").and_then(|rest| rest.strip_suffix(']')) {
        let items: Vec<String> = items.split(',').filter(|item| !item.is_empty()).map(value_text).collect();
        return format!("[{}]", items.join(", "));
    }
    match text.split_once(':') {
        Some(("f64" | "int" | "str" | "bool", value)) => value.to_string(),
        _ => text.to_string(),
    }
}

/// Upstream artifact changes, one line per upstream stage: a stage that rewrote many
/// artifacts is one reason, not one per file.
fn upstream_changes(before: &BTreeMap<String, ArtifactHash>, after: &BTreeMap<String, ArtifactHash>) -> Vec<String> {
    let mut lines = Vec::new();
    diff_maps(before, after, "upstream", &mut lines, |h| h.short());
    let stage_of = |line: &str| line.split('`').nth(1).and_then(|name| name.split('/').next()).map(str::to_string);
    let mut grouped: Vec<(Option<String>, Vec<String>)> = Vec::new();
    for line in lines {
        let stage = stage_of(&line);
        match grouped.last_mut() {
            Some((last, group)) if *last == stage => group.push(line),
            _ => grouped.push((stage, vec![line])),
        }
    }
    grouped
        .into_iter()
        .flat_map(|(stage, group)| match (stage, group.len()) {
            (Some(stage), n) if n > 2 => vec![format!("upstream `{stage}` rewrote {n} artifacts")],
            _ => group,
        })
        .collect()
}

fn diff_maps<K: Ord + std::fmt::Display, V: PartialEq>(
    before: &BTreeMap<K, V>,
    after: &BTreeMap<K, V>,
    what: &str,
    reasons: &mut Vec<String>,
    show: impl Fn(&V) -> String,
) {
    for (name, new) in after {
        match before.get(name) {
            Some(old) if old == new => {}
            Some(old) => reasons.push(format!("{what} `{name}` {} -> {}", show(old), show(new))),
            None => reasons.push(format!("{what} `{name}` is new ({})", show(new))),
        }
    }
    for name in before.keys().filter(|name| !after.contains_key(*name)) {
        reasons.push(format!("{what} `{name}` no longer read"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> KeyInputs {
        KeyInputs {
            stage: "overfit".into(),
            stage_version: 1,
            tool_version: "0.1.0".into(),
            knobs: BTreeMap::from([("train.lr".into(), "f64:0.0003".into())]),
            upstream: BTreeMap::from([("data/dataset".to_string(), ArtifactHash::of(b"x"))]),
            fingerprints: BTreeMap::new(),
            device: "cpu".into(),
            dtype: "f32".into(),
        }
    }

    /// The encoding as it was first written (with `write!`): keys never change.
    fn formatted(inputs: &KeyInputs) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        let _ = write!(text, "pipe-key-v1\nstage={}\nstage_version={}\n", inputs.stage, inputs.stage_version);
        let _ = writeln!(text, "tool_version={}", inputs.tool_version);
        for (name, value) in &inputs.knobs {
            let _ = writeln!(text, "knob {name}={value}");
        }
        for (name, hash) in &inputs.upstream {
            let _ = writeln!(text, "upstream {name}={hash}");
        }
        for (name, hash) in &inputs.fingerprints {
            let _ = writeln!(text, "fingerprint {name}={hash}");
        }
        let _ = write!(text, "device={}\ndtype={}\n", inputs.device, inputs.dtype);
        text
    }

    #[test]
    fn the_canonical_text_is_the_formatted_one() {
        let mut many = inputs();
        many.stage_version = 1234;
        many.knobs.insert("model.hidden".into(), "list[int:64]".into());
        many.upstream.insert("tune/b.json".into(), ArtifactHash::of(b"b"));
        many.fingerprints.insert("dataset".into(), ArtifactHash::of(b"d"));
        // A tune's encoding: many blocks of KEY_BLOCK, streamed into the hash.
        let mut tune = inputs();
        for member in 0..2_000 {
            tune.upstream
                .insert(format!("overfit[train.seed={member}]/metrics.json"), ArtifactHash::of(&[member as u8]));
        }
        assert!(tune.canonical().len() > 2 * KEY_BLOCK);
        for inputs in [inputs(), many, tune] {
            assert_eq!(inputs.canonical(), formatted(&inputs));
            // The streamed hash is the hash of the whole text.
            assert_eq!(inputs.key(), StageKey::from_bytes(*blake3::hash(formatted(&inputs).as_bytes()).as_bytes()));
        }
        // A key written before this encoding: the same bytes, the same key.
        assert_eq!(
            inputs().key().to_hex(),
            StageKey::from_bytes(*blake3::hash(formatted(&inputs()).as_bytes()).as_bytes()).to_hex()
        );
    }

    #[test]
    fn key_changes_with_each_input_and_explains_why() {
        let base = inputs();
        assert_eq!(base.key(), inputs().key());
        let mut lr = inputs();
        lr.knobs.insert("train.lr".into(), "f64:0.001".into());
        assert_ne!(lr.key(), base.key());
        assert_eq!(lr.explain_change(&base), vec!["knob `train.lr` 0.0003 -> 0.001"]);
        let mut hidden = inputs();
        hidden.knobs.insert("model.hidden".into(), "list[int:64]".into());
        assert_eq!(hidden.explain_change(&base), vec!["knob `model.hidden` is new ([64])"]);
        let mut up = inputs();
        up.upstream.insert("data/dataset".into(), ArtifactHash::of(b"y"));
        assert_ne!(up.key(), base.key());
        assert!(up.explain_change(&base)[0].starts_with("upstream `data/dataset`"));
        let mut many = inputs();
        for name in ["overfit/a.json", "overfit/b.svg", "overfit/c.png"] {
            many.upstream.insert(name.into(), ArtifactHash::of(name.as_bytes()));
        }
        let mut rewritten = many.clone();
        for hash in rewritten.upstream.values_mut() {
            *hash = ArtifactHash::of(b"new");
        }
        let reasons = rewritten.explain_change(&many);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].starts_with("upstream `data/dataset` "), "{reasons:?}");
        assert_eq!(reasons[1], "upstream `overfit` rewrote 3 artifacts");
        let mut dev = inputs();
        dev.device = "cuda".into();
        assert_ne!(dev.key(), base.key());
    }
}
