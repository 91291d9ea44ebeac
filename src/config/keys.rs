//! The keys each config section accepts, read from its serde struct, and
//! an unknown key found by walking the file against them: located, with
//! the nearest known key suggested (`listn` → `listen`). serde's own error
//! names the field but lists every key of the section and cannot guess.

use serde::de::{self, Visitor};
use serde::Deserialize;
use toml_edit::TableLike;

use super::Source;

/// The field names a serde struct accepts: a deserializer that asks for
/// a struct, writes down the names serde offers it, and stops.
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    struct Fields(Vec<&'static str>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields.to_vec();
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut f = Fields(Vec::new());
    let _ = T::deserialize(&mut f);
    f.0
}

/// The keys accepted at a table path (`[]` is the file's top level), or
/// `None` where any key is allowed (upstream names) or nothing is checked.
fn accepted(path: &[&str]) -> Option<Vec<&'static str>> {
    Some(match path {
        [] => fields_of::<super::ConfigFile>(),
        ["vault"] => fields_of::<super::vault::VaultFile>(),
        ["vault", "grant"] => fields_of::<super::vault::GrantFile>(),
        ["vault", "store"] => fields_of::<super::store::StoreFile>(),
        ["proxy"] => fields_of::<super::proxy::ProxyFile>(),
        ["proxy", "cert"] => fields_of::<super::proxy::CertFile>(),
        ["proxy", "response_headers"] => fields_of::<super::proxy::ResponseHeadersFile>(),
        ["proxy", "route"] => fields_of::<super::proxy::RouteFile>(),
        ["proxy", "upstream", _] => fields_of::<super::proxy::UpstreamFile>(),
        ["proxy", "upstream", _, "health"] => fields_of::<super::proxy::HealthFile>(),
        ["run"] => fields_of::<super::run::RunFile>(),
        ["log"] => fields_of::<super::log::LogFile>(),
        _ => return None,
    })
}

/// The first key of `text` that its table does not accept, as a located
/// error, or `None` (the file's problem is something else).
pub fn unknown_key(src: &Source) -> Option<super::ConfigError> {
    let doc = toml_edit::ImDocument::parse(src.text).ok()?;
    let mut path = Vec::new();
    walk(doc.as_table(), &mut path, src)
}

fn walk<'a>(
    table: &'a dyn TableLike,
    path: &mut Vec<&'a str>,
    src: &Source,
) -> Option<super::ConfigError> {
    if let Some(known) = accepted(path) {
        for (key, _) in table.iter() {
            if known.contains(&key) {
                continue;
            }
            let span = table
                .get_key_value(key)
                .and_then(|(k, _)| k.span())
                .unwrap_or(0..0);
            let section = if path.is_empty() {
                "the top level".to_owned()
            } else {
                format!("[{}]", path.join("."))
            };
            let hint = nearest(key, &known)
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            return Some(src.error(
                span,
                format!("unknown key `{key}` in {section}{hint} (docs/configuration.md lists every key)"),
            ));
        }
    }
    for (key, item) in table.iter() {
        path.push(key);
        let found = if let Some(t) = item.as_table_like() {
            walk(t, path, src)
        } else if let Some(tables) = item.as_array_of_tables() {
            tables.iter().find_map(|t| walk(t, path, src))
        } else {
            None
        };
        path.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The known key nearest to `key`, if it is near enough to be a typo.
fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn an_unknown_key_is_located_and_a_near_one_suggested() {
        let err = |text: &str| {
            super::super::parse(Path::new("v.toml"), text.to_owned())
                .err()
                .expect("an error")
                .to_string()
        };
        assert_eq!(
            err("[proxy]\nlistn = \"127.0.0.1:1\"\n"),
            "v.toml:2:1: unknown key `listn` in [proxy]; did you mean `listen`? (docs/configuration.md lists every key)"
        );
        let e = err("[proxy.upstream.app]\nbackends = []\n[proxy.upstream.app.health]\nintervall = \"1s\"\n");
        assert!(e.starts_with("v.toml:4:1: unknown key `intervall` in [proxy.upstream.app.health]; did you mean `interval`?"), "{e}");
        let e = err(
            "[[vault.grant]]\nprincipal = \"owner\"\nkeys = [\"*\"]\nops = [\"use\"]\nzzz = 1\n",
        );
        assert!(
            e.starts_with("v.toml:5:1: unknown key `zzz` in [vault.grant] (docs"),
            "{e}"
        );
        let e = err("[proxyy]\n");
        assert!(
            e.contains("unknown key `proxyy` in the top level; did you mean `proxy`?"),
            "{e}"
        );
    }
}
