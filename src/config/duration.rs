//! Human durations in config ("7d", "100ms", "1h 30m").

use std::time::Duration;

use serde_spanned::Spanned;

use super::{ConfigError, Source};

/// Parses a spanned duration string, reporting where it is when invalid.
pub fn parse(src: &Source, value: &Spanned<String>) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.get_ref()).map_err(|e| {
        src.error(
            value.span(),
            format!(
                "invalid duration {:?}: {e} (examples: \"7d\", \"100ms\")",
                value.get_ref()
            ),
        )
    })
}

/// Like [`parse`], for optional values.
pub fn parse_opt(
    src: &Source,
    value: &Option<Spanned<String>>,
) -> Result<Option<Duration>, ConfigError> {
    value.as_ref().map(|v| parse(src, v)).transpose()
}

/// A duration as people and config files write it: the largest unit
/// that divides it evenly (`7d`, `6h`, `90s`, `100ms`).
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    match (s, d.subsec_nanos()) {
        (0, 0) => "0s".to_owned(),
        (s, 0) if s % 86_400 == 0 => format!("{}d", s / 86_400),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_back_as_the_same_duration() {
        for d in [0, 1, 59, 60, 90, 3600, 5400, 86_400, 604_800, 31_536_000] {
            let d = Duration::from_secs(d);
            assert_eq!(
                humantime::parse_duration(&format(d)).unwrap(),
                d,
                "{}",
                format(d)
            );
        }
        assert_eq!(format(Duration::from_millis(100)), "100ms");
        assert_eq!(format(Duration::from_secs(7 * 86_400)), "7d");
    }
}
