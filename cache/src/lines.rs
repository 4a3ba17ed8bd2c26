//! Lines of the cache's own text files (`stat-cache.txt`, `out/.members.txt`), found
//! by `memchr`: a no-op build of a 1,000-trial tune reads some 20,000 of them, and a
//! byte-at-a-time split was most of their parse.

/// The byte ranges of the lines of `bytes`, without their newline (no empty line
/// after a final newline).
pub(crate) fn lines(bytes: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |at| start + at);
        let line = start..end;
        start = end + 1;
        Some(line)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_what_split_gives_less_a_final_empty_one() {
        for text in ["", "a", "a\n", "a\n\nb", "\n", "ab\ncd\n"] {
            let mut expected: Vec<&str> = text.split('\n').collect();
            if text.is_empty() || text.ends_with('\n') {
                expected.pop();
            }
            let got: Vec<&str> = super::lines(text.as_bytes()).map(|range| &text[range]).collect();
            assert_eq!(got, expected, "{text:?}");
        }
    }
}
