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
