//! The member record's file format (`out/.members.txt`, [`crate::MemberRecord`]).
//!
//! A no-op build of a 1,000-trial tune reads the whole record, and as one JSON value
//! its parse was a tenth of the build's work (serde over 1.4 MB). The format is lines
//! of tab-separated fields, read in one pass:
//!
//! ```text
//! pipe-members v2
//! m <instance name> <key hex>
//! a <artifact name> <hash hex> <bytes>      (the artifacts of the member above)
//! x <metric name> <value>                   (its metrics; `{:?}` of the f64: exact)
//! <blake3 hex of every line above, each with its newline>
//! ```
//!
//! A name that holds a tab or a newline is not written (its member is settled from its
//! action entry instead); a line that does not parse, or a wrong digest, makes the
//! whole record untrusted (read as empty), as a torn or hand-edited file should.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{ArtifactHash, ArtifactRef, RecordedMember, StageKey};

const HEADER: &str = "pipe-members v2\n";

fn plain(name: &str) -> bool {
    !name.contains(['\t', '\n'])
}

/// The file's bytes for `members`.
pub(crate) fn encode(members: &BTreeMap<String, RecordedMember>) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(HEADER.len() + members.len() * 1200);
    text.push_str(HEADER);
    for (name, member) in members {
        let names_plain = plain(name)
            && member.artifacts.keys().all(|name| plain(name))
            && member.metrics.keys().all(|name| plain(name));
        if !names_plain {
            continue;
        }
        // Writing into a String cannot fail.
        let _ = writeln!(text, "m\t{name}\t{}", member.key);
        for (name, artifact) in member.artifacts.iter() {
            let _ = writeln!(text, "a\t{name}\t{}\t{}", artifact.hash, artifact.bytes);
        }
        for (name, value) in member.metrics.iter() {
            let _ = writeln!(text, "x\t{name}\t{value:?}");
        }
    }
    let digest = ArtifactHash::of(text.as_bytes());
    let _ = writeln!(text, "{digest}");
    text.into_bytes()
}

/// The member being read: its name, key, artifacts and metrics, in file order (sorted,
/// as the maps wrote them: each map is then built in one pass, not by inserts).
type Current<'a> = (&'a str, StageKey, Vec<(String, ArtifactRef)>, Vec<(String, f64)>);

/// The members in `bytes`, or `None` when the file is not a whole, unedited record.
pub(crate) fn decode(bytes: &[u8]) -> Option<BTreeMap<String, RecordedMember>> {
    let body_end = bytes.strip_suffix(b"\n")?.iter().rposition(|b| *b == b'\n')? + 1;
    let (body, digest) = bytes.split_at(body_end);
    let digest = std::str::from_utf8(digest).ok()?.trim_end().parse::<ArtifactHash>().ok()?;
    if ArtifactHash::of(body) != digest {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?.strip_prefix(HEADER)?;
    let mut members: Vec<(String, RecordedMember)> = Vec::new();
    let finish = |members: &mut Vec<(String, RecordedMember)>, current: Option<Current<'_>>| {
        if let Some((name, key, artifacts, metrics)) = current {
            let artifacts = Arc::new(artifacts.into_iter().collect());
            let metrics = Arc::new(metrics.into_iter().collect());
            members.push((name.to_string(), RecordedMember { key, artifacts, metrics }));
        }
    };
    let mut current: Option<Current<'_>> = None;
    for line in crate::lines::lines(text.as_bytes()) {
        let mut fields = Fields(Some(&text[line]));
        match (fields.next()?, fields.next()?) {
            ("m", name) => {
                let key = fields.next()?.parse::<StageKey>().ok()?;
                finish(&mut members, current.take());
                current = Some((name, key, Vec::with_capacity(16), Vec::with_capacity(16)));
            }
            ("a", name) => {
                let hash = fields.next()?.parse::<ArtifactHash>().ok()?;
                let bytes = fields.next()?.parse::<u64>().ok()?;
                current.as_mut()?.2.push((name.to_string(), ArtifactRef { hash, bytes }));
            }
            ("x", name) => {
                let value = fields.next()?.parse::<f64>().ok()?;
                current.as_mut()?.3.push((name.to_string(), value));
            }
            _ => return None,
        }
        if fields.next().is_some() {
            return None;
        }
    }
    finish(&mut members, current.take());
    Some(members.into_iter().collect())
}

/// The tab-separated fields of a line, as `str::split('\t')` gives them (by `memchr`,
/// not a `char` pattern: a record holds tens of thousands of fields).
struct Fields<'a>(Option<&'a str>);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match memchr::memchr(b'\t', rest.as_bytes()) {
            Some(at) => {
                self.0 = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metrics;

    fn member(seed: u8, metric: f64) -> RecordedMember {
        let artifacts = BTreeMap::from([
            ("checkpoint.safetensors".to_string(), ArtifactRef { hash: ArtifactHash::of(&[seed]), bytes: 1760 }),
            ("metrics.json".to_string(), ArtifactRef { hash: ArtifactHash::of(&[seed, 1]), bytes: 532 }),
        ]);
        let metrics = Metrics::from([("val_acc".to_string(), metric), ("steps".to_string(), 2.0)]);
        RecordedMember {
            key: StageKey::from_bytes([seed; 32]),
            artifacts: Arc::new(artifacts),
            metrics: Arc::new(metrics),
        }
    }

    #[test]
    fn round_trips_exactly_and_refuses_damage() {
        let mut members = BTreeMap::new();
        members.insert("overfit[train.lr=0.001]".to_string(), member(1, 0.097_493_036_211_699_16));
        members.insert("overfit[model.kind=\"mlp\"]".to_string(), member(2, f64::NAN));
        members.insert("overfit[train.lr=1e-7]".to_string(), member(3, -0.0));
        members.insert(
            "empty".to_string(),
            RecordedMember { key: StageKey::from_bytes([4; 32]), artifacts: Arc::default(), metrics: Arc::default() },
        );
        let bytes = encode(&members);
        let back = decode(&bytes).expect("a record it wrote");
        assert_eq!(back.len(), members.len());
        for (name, member) in &members {
            let read = &back[name];
            assert_eq!((read.key, &read.artifacts), (member.key, &member.artifacts), "{name}");
            // Bit for bit, NaN and the sign of zero included.
            let bits = |m: &Metrics| m.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&read.metrics), bits(&member.metrics), "{name}");
        }
        assert_eq!(decode(&encode(&BTreeMap::new())).map(|m| m.len()), Some(0));
        let text = String::from_utf8(bytes.clone()).unwrap();
        // An edit (the digest no longer matches), a torn file, another format: untrusted.
        assert!(decode(text.replacen("1760", "1761", 1).as_bytes()).is_none());
        assert!(decode(&bytes[..bytes.len() / 2]).is_none());
        assert!(decode(b"{\"a\":1}\n").is_none());
        assert!(decode(b"").is_none());
        // A line that does not parse, under a matching digest, is refused too.
        let body = format!("{HEADER}m\tx\t{}\nq\tz\n", StageKey::from_bytes([1; 32]));
        let forged = format!("{body}{}\n", ArtifactHash::of(body.as_bytes()));
        assert!(decode(forged.as_bytes()).is_none());
        for line in ["", "a", "a\tb", "a\t\tb\t", "\t"] {
            assert_eq!(Fields(Some(line)).collect::<Vec<_>>(), line.split('\t').collect::<Vec<_>>(), "{line:?}");
        }
        // A name with a tab is left out (its member settles from its entry), not misread.
        members.insert("bad\tname".to_string(), member(5, 1.0));
        assert!(!decode(&encode(&members)).unwrap().contains_key("bad\tname"));
    }
}
