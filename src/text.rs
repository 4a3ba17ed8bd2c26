//! Text for people: knob values as they are written, changes, UTC times, sizes,
//! short numbers, and `say!`, a `println!` that ignores a closed stdout.

/// `println!` that ignores a closed stdout (`pipe runs | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)));
    }};
}
pub(crate) use say;

/// A knob's canonical text (`f64:0.0003`, `list[int:2,int:32]`) as a person writes it
/// (`0.0003`, `[2, 32]`); also valid as the value of `--set`.
pub use cache::value_text as knob_text;

pub use cache::changed_knobs;

/// `name a -> b` with person-readable values.
pub fn change_text(name: &str, a: &Option<String>, b: &Option<String>) -> String {
    let show = |v: &Option<String>| v.as_deref().map_or("(absent)".to_string(), knob_text);
    format!("{name} {} -> {}", show(a), show(b))
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Bytes for people: `105.2 KiB`.
pub fn bytes_text(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knob_text_and_times() {
        assert_eq!(knob_text("f64:0.0003"), "0.0003");
        assert_eq!(knob_text("str:builtin:digits"), "builtin:digits");
        assert_eq!(knob_text("list[int:128,int:64]"), "[128, 64]");
        assert_eq!(knob_text("list[]"), "[]");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34:56");
    }
}

/// An error and its causes, `: `-separated like anyhow's `{:#}`, but a cause whose text
/// the message already holds (a `thiserror` variant that prints its source) is not
/// repeated.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod chain_tests {
    /// An error whose message already prints its source, like a `thiserror`
    /// variant `#[error("outer: {0}")] Outer(#[from] io::Error)`.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "outer: {}", self.0)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let error = anyhow::Error::new(Outer(std::io::Error::other("disk on fire")));
        assert_eq!(format!("{error:#}"), "outer: disk on fire: disk on fire");
        assert_eq!(super::error_chain(&error), "outer: disk on fire");
        let error = anyhow::Error::new(std::io::Error::other("inner")).context("reading pipe.toml");
        assert_eq!(super::error_chain(&error), "reading pipe.toml: inner");
    }
}
