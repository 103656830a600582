//! Tag filters: `*` (or nothing) for every message, or `A || B || C` for any of those tags.

use quiver_protocol::tag_hash;

use super::error::FilterError;
use super::MAX_EXPRESSION_BYTES;

/// A compiled tag subscription.
///
/// The broker first calls [`TagFilter::matches_hash`] with the tag hash kept in the consume
/// queue, so entries whose hash is not subscribed are skipped without reading the commit log;
/// for the entries that pass, [`TagFilter::matches_tag`] compares the real tag so a hash
/// collision never reaches a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter {
    /// `None`: every message. `Some`: the subscribed tags, sorted and deduplicated, each with
    /// its [`tag_hash`].
    tags: Option<Box<[HashedTag]>>,
}

/// A subscribed tag with its hash.
type HashedTag = (u64, Box<str>);

impl TagFilter {
    /// The filter that lets every message through (`*`).
    pub fn all() -> Self {
        Self { tags: None }
    }

    /// Parses `*`, an empty (or blank) expression, or `A || B || C`.
    ///
    /// Whitespace around each tag is ignored. An empty alternative (`A ||`, `|| B`,
    /// `A |||| B`), a lone `|` inside a tag, or a `*` next to other tags is an error, as is an
    /// expression longer than [`MAX_EXPRESSION_BYTES`].
    pub fn parse(expr: &str) -> Result<Self, FilterError> {
        if expr.len() > MAX_EXPRESSION_BYTES {
            return Err(FilterError::whole(format!(
                "tag expression is {} bytes long; the limit is {MAX_EXPRESSION_BYTES}",
                expr.len()
            )));
        }
        let trimmed = expr.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(Self::all());
        }
        let mut tags: Vec<HashedTag> = Vec::new();
        let mut start = 0usize; // byte offset of the current alternative in `expr`
        for part in expr.split("||") {
            let column = expr[..start].chars().count() + 1;
            let tag = part.trim();
            let lead = part.len() - part.trim_start().len();
            let tag_column = column + part[..lead].chars().count();
            if tag.is_empty() {
                // Point at the `||` before the empty alternative (or at the start).
                return Err(FilterError::at(
                    if start == 0 { 1 } else { column - 2 },
                    "empty tag between '||' separators; write e.g. TagA || TagB",
                ));
            }
            if let Some(bar) = tag.find('|') {
                return Err(FilterError::at(
                    tag_column + tag[..bar].chars().count(),
                    "a single '|' is not a separator; separate tags with '||'",
                ));
            }
            if tag == "*" {
                return Err(FilterError::at(
                    tag_column,
                    "'*' (every message) must stand alone, not among other tags",
                ));
            }
            if !tags.iter().any(|(_, t)| &**t == tag) {
                tags.push((tag_hash(tag), tag.into()));
            }
            start += part.len() + 2;
        }
        tags.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(Self {
            tags: Some(tags.into_boxed_slice()),
        })
    }

    /// Whether this is the match-everything filter.
    pub fn is_all(&self) -> bool {
        self.tags.is_none()
    }

    /// The subscribed tags (sorted), or `None` for every message.
    pub fn tags(&self) -> Option<impl Iterator<Item = &str> + '_> {
        self.tags.as_ref().map(|t| t.iter().map(|(_, s)| &**s))
    }

    /// Pre-check on a consume-queue entry's tag hash ([`tag_hash`]; 0 for an untagged
    /// message): `false` means the message certainly does not match.
    pub fn matches_hash(&self, hash: u64) -> bool {
        match &self.tags {
            None => true,
            Some(tags) => tags.iter().any(|(h, _)| *h == hash),
        }
    }

    /// The exact check on a message's tag ("" for none).
    pub fn matches_tag(&self, tag: &str) -> bool {
        match &self.tags {
            None => true,
            Some(tags) => !tag.is_empty() && tags.iter().any(|(_, t)| &**t == tag),
        }
    }

    /// Normal form: `*`, or the tags sorted and joined by ` || `.
    pub fn canonical(&self) -> String {
        match &self.tags {
            None => "*".to_string(),
            Some(tags) => tags
                .iter()
                .map(|(_, t)| &**t)
                .collect::<Vec<_>>()
                .join(" || "),
        }
    }
}
