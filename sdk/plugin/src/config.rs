//! [`Config`], the key/value pairs a plugin is loaded with.

use crate::sections::Properties;

/// The plugin's configuration: the key/value pairs given when the plugin is loaded or reloaded, in order,
/// handed to the `#[quiver_plugin::init]` function.
///
/// To keep settings for the filter or transform, parse them in the init function and store them
/// in a `static` (a `std::sync::OnceLock`, or a `thread_local!` cell: `wasm32-unknown-unknown`
/// is single-threaded). Every instance of a plugin runs its init once, before any batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// A configuration made of these pairs (for unit tests of an init function).
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Config {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Decodes a properties section; an error says what is malformed.
    pub(crate) fn parse(section: &[u8]) -> Result<Self, String> {
        let mut it = Properties::new(section);
        let mut pairs = Vec::new();
        let mut used = 0;
        for (k, v) in it.by_ref() {
            used += 4 + k.len() + v.len();
            pairs.push((k.to_owned(), v.to_owned()));
        }
        if used != section.len() {
            return Err(format!(
                "malformed configuration: {} bytes after pair {} are not a (name, value) pair",
                section.len() - used,
                pairs.len()
            ));
        }
        Ok(Config { pairs })
    }

    /// The value of the first pair called `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a pair called `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Parses the value of `key` as a boolean (`true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`,
    /// case-insensitive); `default` when the key is absent. The error names the key.
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool, String> {
        let Some(value) = self.get(key) else {
            return Ok(default);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(format!(
                "{key}={value:?} is not a boolean (use true or false)"
            )),
        }
    }

    /// Parses the value of `key` with `FromStr`; `Ok(None)` when the key is absent. The error
    /// names the key.
    pub fn get_parsed<T>(&self, key: &str) -> Result<Option<T>, String>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| format!("{key}={value:?}: {e}")),
        }
    }

    /// All pairs, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sections::push_str16;

    fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in pairs {
            push_str16(&mut out, "k", k.as_bytes());
            push_str16(&mut out, "v", v.as_bytes());
        }
        out
    }

    #[test]
    fn parses_pairs_in_order() {
        let c = Config::parse(&encode(&[("field", "a.b"), ("op", "gt"), ("field", "x")])).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("field"), Some("a.b"));
        assert_eq!(c.get("op"), Some("gt"));
        assert_eq!(c.get("none"), None);
        assert!(c.contains("op"));
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            [("field", "a.b"), ("op", "gt"), ("field", "x")]
        );
        assert!(Config::parse(&[]).unwrap().is_empty());
        assert_eq!(
            c,
            Config::from_pairs([("field", "a.b"), ("op", "gt"), ("field", "x")])
        );
    }

    #[test]
    fn malformed_config_is_an_error() {
        let mut bad = encode(&[("a", "1")]);
        bad.extend_from_slice(&[3, 0, b'x']);
        let e = Config::parse(&bad).unwrap_err();
        assert!(e.contains("after pair 1"), "{e}");
        let mut bad = Vec::new();
        push_str16(&mut bad, "k", &[0xff]);
        push_str16(&mut bad, "v", b"");
        assert!(Config::parse(&bad).is_err());
        assert!(Config::parse(&[7]).is_err());
    }

    #[test]
    fn typed_getters() {
        let c = Config::from_pairs([("on", "TRUE"), ("off", "0"), ("n", " 42 "), ("bad", "x")]);
        assert_eq!(c.get_bool("on", false), Ok(true));
        assert_eq!(c.get_bool("off", true), Ok(false));
        assert_eq!(c.get_bool("missing", true), Ok(true));
        assert!(c.get_bool("bad", true).unwrap_err().contains("bad=\"x\""));
        assert_eq!(c.get_parsed::<u32>("n"), Ok(Some(42)));
        assert_eq!(c.get_parsed::<u32>("missing"), Ok(None));
        assert!(c.get_parsed::<u32>("bad").is_err());
    }
}
