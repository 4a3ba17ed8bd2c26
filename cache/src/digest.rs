//! Typed blake3 digests: an artifact's content hash and a stage's key are different
//! types, so one can never be looked up where the other is expected.

use std::fmt;
use std::str::FromStr;

use crate::CacheError;

/// Lower-case hex of `bytes` into `out` (twice as long), without formatting machinery:
/// keys of fan-in stages hold thousands of hashes.
pub(crate) fn hex_into(bytes: &[u8; 32], out: &mut [u8; 64]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 15)];
    }
}

/// The 32 bytes of 64 hex digits (either case), without parsing machinery: a no-op
/// build of a 1,000-trial tune reads ~20,000 hashes from its records.
pub(crate) fn hex_decode(text: &[u8]) -> Option<[u8; 32]> {
    // 0..=15 for a hex digit, 0xff for anything else.
    const VALUES: [u8; 256] = {
        let mut table = [0xffu8; 256];
        let mut i = 0;
        while i < 10 {
            table[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            table[b'a' as usize + i] = 10 + i as u8;
            table[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        table
    };
    let text: &[u8; 64] = text.try_into().ok()?;
    let mut bytes = [0u8; 32];
    let mut bad = 0u8;
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (VALUES[usize::from(pair[0])], VALUES[usize::from(pair[1])]);
        bad |= high | low;
        *byte = high << 4 | (low & 15);
    }
    (bad & 0xf0 == 0).then_some(bytes)
}

macro_rules! digest_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                let mut text = [0u8; 64];
                crate::digest::hex_into(&self.0, &mut text);
                // Only ASCII hex digits were written.
                String::from_utf8_lossy(&text).into_owned()
            }

            /// The first 12 hex digits, for people.
            pub fn short(&self) -> String {
                self.to_hex()[..12].to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut text = [0u8; 64];
                crate::digest::hex_into(&self.0, &mut text);
                f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = CacheError;

            fn from_str(text: &str) -> Result<Self, CacheError> {
                crate::digest::hex_decode(text.as_bytes())
                    .map(Self)
                    .ok_or_else(|| CacheError::BadDigest(text.to_string()))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut text = [0u8; 64];
                crate::digest::hex_into(&self.0, &mut text);
                // Only ASCII hex digits were written.
                serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_type!(
    /// blake3 hash of an artifact's bytes: its name in the object store.
    ArtifactHash
);
digest_type!(
    /// blake3 hash of a stage's canonical key inputs: its name in the action cache.
    StageKey
);

impl ArtifactHash {
    pub fn of(bytes: &[u8]) -> ArtifactHash {
        ArtifactHash(*blake3::hash(bytes).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let hash = ArtifactHash::of(b"pipe");
        let text = hash.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<ArtifactHash>().unwrap(), hash);
        assert!("xyz".parse::<ArtifactHash>().is_err());
        assert!(text.replace(&text[..2], "zz").parse::<ArtifactHash>().is_err());
        assert_eq!(text.to_uppercase().parse::<ArtifactHash>().unwrap(), hash);
        assert!(format!("{}+", &text[..63]).parse::<ArtifactHash>().is_err());
        assert!(format!("{text}0").parse::<ArtifactHash>().is_err());
    }
}
