//! Byte sizes in config ("256MiB", "64KiB", "1GiB", or plain bytes).

use serde_spanned::Spanned;

use super::{ConfigError, Source};

const UNITS: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// Parses a size: a whole number, optionally followed by `B`, `KiB`,
/// `MiB`, `GiB` or `TiB` (binary units only: "MB" would leave readers
/// guessing which one is meant).
pub fn parse_str(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, unit) = UNITS
        .iter()
        .find_map(|(name, unit)| t.strip_suffix(name).map(|d| (d.trim_end(), *unit)))
        .unwrap_or((t, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// Parses a spanned size, reporting where it is when invalid.
pub fn parse(src: &Source, value: &Spanned<String>) -> Result<u64, ConfigError> {
    parse_str(value.get_ref()).ok_or_else(|| {
        src.error(
            value.span(),
            format!(
                "invalid size {:?} (examples: \"256MiB\", \"64KiB\", \"1GiB\")",
                value.get_ref()
            ),
        )
    })
}

/// A size as config files write it: the largest unit that divides it.
pub fn format(n: u64) -> String {
    UNITS
        .iter()
        .find(|(_, unit)| n != 0 && n % unit == 0)
        .map_or_else(
            || "0".to_owned(),
            |(name, unit)| {
                if *unit == 1 {
                    n.to_string()
                } else {
                    format!("{}{name}", n / unit)
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units_and_format_back() {
        assert_eq!(parse_str("256MiB"), Some(256 << 20));
        assert_eq!(parse_str("64 KiB"), Some(64 << 10));
        assert_eq!(parse_str("1GiB"), Some(1 << 30));
        assert_eq!(parse_str("4096"), Some(4096));
        assert_eq!(parse_str("10B"), Some(10));
        assert_eq!(parse_str("0"), Some(0));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1KiB",
            "256MB",
            "big",
            "99999999999TiB",
        ] {
            assert_eq!(parse_str(bad), None, "{bad}");
        }
        for n in [0, 1, 4096, 256 << 20, 3 << 30, (1 << 20) + 1] {
            assert_eq!(parse_str(&format(n)), Some(n), "{}", format(n));
        }
        assert_eq!(format(256 << 20), "256MiB");
    }
}
