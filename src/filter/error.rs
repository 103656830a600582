//! The one error type of the filter engine: what is wrong, and where.

/// Why a filter expression was refused: what is wrong and, when it can be pinned down, where.
///
/// `column` is 1-based and counts characters (not bytes) from the start of the expression; a
/// newline counts as one character, so in a one-line expression it is the usual column.
/// Displayed as `column N: message` (or just `message` when there is no position, e.g. for a
/// length limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", column_prefix(*.column))]
pub struct FilterError {
    /// What is wrong, in words meant for the person who wrote the expression.
    pub message: String,
    /// 1-based character position in the expression, when known.
    pub column: Option<usize>,
}

fn column_prefix(column: Option<usize>) -> String {
    match column {
        Some(c) => format!("column {c}: "),
        None => String::new(),
    }
}

impl FilterError {
    /// An error at a 1-based column.
    pub fn at(column: usize, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            column: Some(column),
        }
    }

    /// An error with no position (limits, empty input).
    pub fn whole(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            column: None,
        }
    }
}
