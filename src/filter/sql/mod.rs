//! SQL92 filters in RocketMQ's dialect: parsed once with sqlparser, compiled once into a small
//! evaluator, evaluated per message with SQL's three-valued logic (docs/FILTERS.md).

mod compile;
mod eval;
mod num;
mod parse;

use std::fmt;

use super::error::FilterError;
use super::props::MessageProps;
use super::MAX_EXPRESSION_BYTES;

pub use compile::MAX_IN_LIST;
pub use parse::MAX_DEPTH;

/// The value of a condition under SQL's three-valued logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Truth {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The condition cannot be decided: it involves a missing property (NULL) or a value that
    /// is not of the compared type (e.g. `a > 3` with `a = 'x'`).
    Unknown,
}

impl Truth {
    /// SQL `AND`: FALSE wins, then UNKNOWN.
    pub fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::False, _) | (_, Truth::False) => Truth::False,
            (Truth::True, Truth::True) => Truth::True,
            _ => Truth::Unknown,
        }
    }

    /// SQL `OR`: TRUE wins, then UNKNOWN.
    pub fn or(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::True, _) | (_, Truth::True) => Truth::True,
            (Truth::False, Truth::False) => Truth::False,
            _ => Truth::Unknown,
        }
    }

    /// Whether this is TRUE: a message matches a filter only then.
    pub fn is_true(self) -> bool {
        self == Truth::True
    }
}

impl std::ops::Not for Truth {
    type Output = Truth;

    /// SQL `NOT`: UNKNOWN stays UNKNOWN.
    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

impl From<bool> for Truth {
    fn from(b: bool) -> Truth {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
}

impl fmt::Display for Truth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Truth::True => "TRUE",
            Truth::False => "FALSE",
            Truth::Unknown => "UNKNOWN",
        })
    }
}

/// A compiled SQL92 filter.
///
/// Compiling checks the whole expression (every token up to the end of the input), refuses
/// anything outside the language, parses every literal and sorts `IN` lists; evaluation then
/// walks a small tree of enums, allocating nothing in the common case.
#[derive(Debug, Clone)]
pub struct SqlFilter {
    root: eval::Node,
    canonical: String,
}

impl SqlFilter {
    /// Parses and compiles `expr`. Errors say what is wrong and, when known, at which column.
    pub fn compile(expr: &str) -> Result<SqlFilter, FilterError> {
        if expr.len() > MAX_EXPRESSION_BYTES {
            return Err(FilterError::whole(format!(
                "expression is {} bytes long; the limit is {MAX_EXPRESSION_BYTES}",
                expr.len()
            )));
        }
        if expr.trim().is_empty() {
            return Err(FilterError::whole("empty expression"));
        }
        let map = parse::SourceMap::new(expr);
        let ast = parse::parse(expr, &map)?;
        let root = compile::Compiler::new(&map).node(&ast)?;
        let mut canonical = String::new();
        root.write(&mut canonical);
        Ok(SqlFilter { root, canonical })
    }

    /// Evaluates the filter against a message.
    pub fn evaluate(&self, msg: &impl MessageProps) -> Truth {
        self.root.eval(msg)
    }

    /// Whether the message matches: the expression is TRUE (FALSE and UNKNOWN do not match).
    pub fn matches(&self, msg: &impl MessageProps) -> bool {
        self.evaluate(msg).is_true()
    }

    /// The normalized text: keywords upper-case, literals in a standard form, `IN` lists
    /// sorted, `AND`/`OR` groups parenthesized where they nest. It compiles back to an
    /// equivalent filter (and to itself).
    pub fn canonical(&self) -> String {
        self.canonical.clone()
    }

    /// The canonical text, borrowed.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }
}

impl fmt::Display for SqlFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

#[cfg(test)]
mod deep_tests {
    use super::parse::{parse, SourceMap};

    /// Past the length limit too: the parser's own depth limit stops 100k-deep input.
    #[test]
    fn parser_depth_limit_holds_without_the_length_limit() {
        for src in [
            format!("{}a = 1{}", "(".repeat(100_000), ")".repeat(100_000)),
            "(".repeat(100_000),
            format!("{}a = 1", "NOT ".repeat(100_000)),
            format!("a IN ({}'x'{})", "(".repeat(100_000), ")".repeat(100_000)),
            format!(
                "a BETWEEN {}1{} AND 2",
                "(".repeat(100_000),
                ")".repeat(100_000)
            ),
        ] {
            let map = SourceMap::new(&src);
            let e = parse(&src, &map).unwrap_err();
            assert!(e.message.contains("nests deeper"), "{e}");
        }
    }
}
