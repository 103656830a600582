//! The variable-length encodings of docs/PLUGINS.md ("Sections"): keys and properties
//! sections, each element a `u16` little-endian length followed by UTF-8 bytes.
//!
//! Reading never panics: a truncated element or invalid UTF-8 ends the iteration (the rest of
//! the section is treated as absent).

use std::iter::FusedIterator;

/// Splits one `u16 len | len bytes` element off the front of `section`.
fn split_str16(section: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = section.split_first_chunk::<2>()?;
    let len = u16::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// Appends one `u16 len | bytes` element.
///
/// # Panics
///
/// If `bytes` is longer than 65535 bytes (it cannot be encoded).
pub(crate) fn push_str16(out: &mut Vec<u8>, what: &str, bytes: &[u8]) {
    let Ok(len) = u16::try_from(bytes.len()) else {
        panic!(
            "{what} is {} bytes long; the plugin ABI allows at most 65535",
            bytes.len()
        );
    };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The keys of a message: an iterator over the `&str` elements of a keys section.
///
/// Created by [`Message::keys`](crate::Message::keys).
#[derive(Debug, Clone)]
pub struct Keys<'s> {
    rest: &'s [u8],
}

impl<'s> Keys<'s> {
    pub(crate) fn new(section: &'s [u8]) -> Self {
        Keys { rest: section }
    }
}

impl<'s> Iterator for Keys<'s> {
    type Item = &'s str;

    fn next(&mut self) -> Option<&'s str> {
        let item = split_str16(self.rest)
            .and_then(|(key, rest)| Some((std::str::from_utf8(key).ok()?, rest)));
        match item {
            Some((key, rest)) => {
                self.rest = rest;
                Some(key)
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

impl FusedIterator for Keys<'_> {}

/// Splits one raw `(name, value)` pair off the front of a properties section.
fn split_pair(section: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (name, rest) = split_str16(section)?;
    let (value, rest) = split_str16(rest)?;
    Some((name, value, rest))
}

/// The properties of a message (or the pairs of a configuration): an iterator over the
/// `(name, value)` pairs of a properties section, in order.
///
/// Created by [`Message::properties`](crate::Message::properties).
#[derive(Debug, Clone)]
pub struct Properties<'s> {
    rest: &'s [u8],
}

impl<'s> Properties<'s> {
    pub(crate) fn new(section: &'s [u8]) -> Self {
        Properties { rest: section }
    }
}

impl<'s> Iterator for Properties<'s> {
    type Item = (&'s str, &'s str);

    fn next(&mut self) -> Option<(&'s str, &'s str)> {
        let pair = split_pair(self.rest).and_then(|(name, value, rest)| {
            let name = std::str::from_utf8(name).ok()?;
            let value = std::str::from_utf8(value).ok()?;
            Some((name, value, rest))
        });
        match pair {
            Some((name, value, rest)) => {
                self.rest = rest;
                Some((name, value))
            }
            None => {
                self.rest = &[];
                None
            }
        }
    }
}

impl FusedIterator for Properties<'_> {}

/// The value of the first property called `name`, without allocating.
pub(crate) fn find_property<'s>(section: &'s [u8], name: &str) -> Option<&'s str> {
    let mut rest = section;
    while let Some((n, value, next)) = split_pair(rest) {
        if n == name.as_bytes() {
            return std::str::from_utf8(value).ok();
        }
        rest = next;
    }
    None
}

/// Whether `section` holds a property called `name`.
pub(crate) fn has_property(section: &[u8], name: &str) -> bool {
    let mut rest = section;
    while let Some((n, _, next)) = split_pair(rest) {
        if n == name.as_bytes() {
            return true;
        }
        rest = next;
    }
    false
}

/// Re-encodes `section` with every property called `name` removed and, if `value` is given,
/// the first one replaced by `name=value` (or `name=value` appended when there was none).
/// Malformed trailing bytes are dropped.
pub(crate) fn rewrite_property(section: &[u8], name: &str, value: Option<&str>) -> Vec<u8> {
    let extra = value.map_or(0, |v| 4 + name.len() + v.len());
    let mut out = Vec::with_capacity(section.len() + extra);
    let mut written = false;
    let mut rest = section;
    while let Some((n, v, next)) = split_pair(rest) {
        if n == name.as_bytes() {
            if let (Some(value), false) = (value, written) {
                push_str16(&mut out, "a property name", n);
                push_str16(&mut out, "a property value", value.as_bytes());
                written = true;
            }
        } else {
            push_str16(&mut out, "a property name", n);
            push_str16(&mut out, "a property value", v);
        }
        rest = next;
    }
    if let (Some(value), false) = (value, written) {
        push_str16(&mut out, "a property name", name.as_bytes());
        push_str16(&mut out, "a property value", value.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in pairs {
            push_str16(&mut out, "name", n.as_bytes());
            push_str16(&mut out, "value", v.as_bytes());
        }
        out
    }

    #[test]
    fn keys_iterate_and_stop_on_malformed() {
        let mut s = Vec::new();
        push_str16(&mut s, "key", b"a");
        push_str16(&mut s, "key", "bé".as_bytes());
        assert_eq!(Keys::new(&s).collect::<Vec<_>>(), ["a", "bé"]);
        // Truncated length, truncated element, invalid UTF-8: iteration stops there.
        let mut bad = s.clone();
        bad.push(9);
        assert_eq!(Keys::new(&bad).count(), 2);
        let mut bad = s.clone();
        bad.extend_from_slice(&[5, 0, b'x']);
        assert_eq!(Keys::new(&bad).count(), 2);
        let mut bad = Vec::new();
        push_str16(&mut bad, "key", b"ok");
        push_str16(&mut bad, "key", &[0xff, 0xfe]);
        push_str16(&mut bad, "key", b"never");
        let mut it = Keys::new(&bad);
        assert_eq!(it.next(), Some("ok"));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
        assert_eq!(Keys::new(&[]).count(), 0);
        assert_eq!(Keys::new(&[0xff]).count(), 0);
    }

    #[test]
    fn properties_find_iterate_rewrite() {
        let s = props(&[("a", "1"), ("b", ""), ("a", "3")]);
        assert_eq!(find_property(&s, "a"), Some("1"));
        assert_eq!(find_property(&s, "b"), Some(""));
        assert_eq!(find_property(&s, "c"), None);
        assert!(has_property(&s, "b"));
        assert!(!has_property(&s, "c"));
        assert_eq!(
            Properties::new(&s).collect::<Vec<_>>(),
            [("a", "1"), ("b", ""), ("a", "3")]
        );
        assert_eq!(
            rewrite_property(&s, "a", Some("x")),
            props(&[("a", "x"), ("b", "")])
        );
        assert_eq!(
            rewrite_property(&s, "c", Some("y")),
            props(&[("a", "1"), ("b", ""), ("a", "3"), ("c", "y")])
        );
        assert_eq!(rewrite_property(&s, "a", None), props(&[("b", "")]));
        // Malformed: a name without its value.
        let mut bad = props(&[("k", "v")]);
        bad.extend_from_slice(&[1, 0, b'z']);
        assert_eq!(Properties::new(&bad).count(), 1);
        assert_eq!(find_property(&bad, "z"), None);
        assert_eq!(rewrite_property(&bad, "q", None), props(&[("k", "v")]));
        // Invalid UTF-8 in a value: lookup gives None, iteration stops.
        let mut bad = Vec::new();
        push_str16(&mut bad, "name", b"n");
        push_str16(&mut bad, "value", &[0xc3]);
        assert_eq!(find_property(&bad, "n"), None);
        assert_eq!(Properties::new(&bad).count(), 0);
    }

    #[test]
    #[should_panic(expected = "at most 65535")]
    fn too_long_element_panics() {
        push_str16(&mut Vec::new(), "a key", &vec![b'x'; 70_000]);
    }
}
