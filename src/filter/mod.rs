//! Broker-side message filters: tag subscriptions (`TagA || TagB`) and SQL92 expressions in
//! RocketMQ's dialect (`region IN ('eu','us') AND amount > 100.5`), compiled once and evaluated
//! per message without allocating. No I/O: it reads strings through [`MessageProps`].
//!
//! - [`TagFilter`]: a hash pre-check on consume-queue entries ([`TagFilter::matches_hash`]) and
//!   an exact check on the tag ([`TagFilter::matches_tag`]).
//! - [`SqlFilter`]: [`SqlFilter::compile`] then [`SqlFilter::evaluate`] (three-valued
//!   [`Truth`]).
//! - [`Filter`]: either of them (or everything) behind one interface, and [`FilterCache`] so a
//!   broker compiles each distinct subscription once.
//!
//! The language, its semantics and its differences from RocketMQ are in docs/FILTERS.md.

mod cache;
mod error;
mod props;
mod sql;
mod tag;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

pub use cache::FilterCache;
pub use error::FilterError;
pub use props::{MessageProps, PropertyMap};
pub use sql::{SqlFilter, Truth, MAX_DEPTH, MAX_IN_LIST};
pub use tag::TagFilter;

/// Longest filter expression accepted, in bytes (tag and SQL alike).
pub const MAX_EXPRESSION_BYTES: usize = 4096;

/// Which language a subscription's expression is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterKind {
    /// `*` or `A || B || C`.
    Tag,
    /// A SQL92 condition.
    Sql,
}

impl FilterKind {
    /// `tag` or `sql`.
    pub fn name(&self) -> &'static str {
        match self {
            FilterKind::Tag => "tag",
            FilterKind::Sql => "sql",
        }
    }
}

impl fmt::Display for FilterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FilterKind {
    type Err = FilterError;

    /// `tag` or `sql` (any case; `sql92` too).
    fn from_str(s: &str) -> Result<Self, FilterError> {
        match s.to_ascii_lowercase().as_str() {
            "tag" => Ok(FilterKind::Tag),
            "sql" | "sql92" => Ok(FilterKind::Sql),
            _ => Err(FilterError::whole(format!(
                "unknown filter kind {s:?}; expected tag or sql"
            ))),
        }
    }
}

/// A compiled subscription filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Every message (a `*` or empty tag expression).
    All,
    /// Messages with one of the listed tags.
    Tag(TagFilter),
    /// Messages for which the SQL condition is TRUE.
    Sql(SqlFilter),
}

impl Filter {
    /// Compiles an expression of the given kind. A tag expression of `*` (or blank) gives
    /// [`Filter::All`]; a SQL expression must not be blank.
    pub fn parse(kind: FilterKind, expr: &str) -> Result<Filter, FilterError> {
        match kind {
            FilterKind::Tag => {
                let tag = TagFilter::parse(expr)?;
                Ok(if tag.is_all() {
                    Filter::All
                } else {
                    Filter::Tag(tag)
                })
            }
            FilterKind::Sql => SqlFilter::compile(expr).map(Filter::Sql),
        }
    }

    /// The language of the filter ([`Filter::All`] counts as a tag filter, `*`).
    pub fn kind(&self) -> FilterKind {
        match self {
            Filter::All | Filter::Tag(_) => FilterKind::Tag,
            Filter::Sql(_) => FilterKind::Sql,
        }
    }

    /// Normalized text that [`Filter::parse`] (with [`Filter::kind`]) reads back to an
    /// equivalent filter: `*`, sorted tags, or the SQL filter's canonical form.
    pub fn canonical(&self) -> String {
        match self {
            Filter::All => "*".to_string(),
            Filter::Tag(t) => t.canonical(),
            Filter::Sql(s) => s.canonical(),
        }
    }

    /// Pre-check on a consume-queue entry's tag hash: `false` means the message certainly
    /// does not match, so the broker need not read it. Always `true` for SQL filters.
    pub fn may_match_hash(&self, tag_hash: u64) -> bool {
        match self {
            Filter::All | Filter::Sql(_) => true,
            Filter::Tag(t) => t.matches_hash(tag_hash),
        }
    }

    /// Whether the message matches (for SQL: the condition is TRUE).
    pub fn matches(&self, msg: &impl MessageProps) -> bool {
        match self {
            Filter::All => true,
            Filter::Tag(t) => t.matches_tag(msg.tag()),
            Filter::Sql(s) => s.matches(msg),
        }
    }

    /// Whether every message matches.
    pub fn is_all(&self) -> bool {
        matches!(self, Filter::All)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.canonical())
    }
}
