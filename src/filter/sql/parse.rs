//! From text to a checked sqlparser AST.
//!
//! The text is tokenized by sqlparser's tokenizer with [`FilterDialect`], the tokens are
//! screened for the operators people bring from other languages (`==`, `!=`, `&&`, `||`,
//! `"strings"`), then sqlparser's Pratt parser builds the expression with three dialect hooks:
//!
//! - `parse_prefix` owns every operand: property names, literals, `NOT`, parentheses and a sign
//!   before a number. Nothing else can start an operand, so functions, subqueries, `CASE`,
//!   `CAST`, `INTERVAL`, arrays and the like are refused here, with the position.
//! - `get_next_precedence` / `parse_infix` add `[NOT] CONTAINS | STARTSWITH | ENDSWITH`, which
//!   sqlparser does not know, at `LIKE`'s precedence; they come out as
//!   `BinaryOp { op: Custom("CONTAINS" | "NOT CONTAINS" | ...) }`, an operator no other input
//!   can produce with this dialect (it has no custom operators).
//! - `a NOT NULL` (a Postgres shorthand) is refused by giving it no precedence.
//!
//! The parser's recursion limit is [`MAX_DEPTH`], so deeply nested input is an error, never a
//! stack overflow; after the expression, the next token must be the end of the input.

use sqlparser::ast::{BinaryOperator, Expr, Ident, UnaryOperator, Value, ValueWithSpan};
use sqlparser::dialect::{Dialect, Precedence};
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer};

use crate::filter::error::FilterError;

/// Deepest nesting of parentheses, `NOT`s and operators the parser accepts.
pub const MAX_DEPTH: usize = 64;

/// Words that cannot be property names (they are the language's keywords).
const RESERVED: &[&str] = &[
    "AND",
    "OR",
    "NOT",
    "IS",
    "IN",
    "BETWEEN",
    "NULL",
    "TRUE",
    "FALSE",
    "LIKE",
    "ESCAPE",
    "CONTAINS",
    "STARTSWITH",
    "ENDSWITH",
];

/// The infix string operators sqlparser does not know.
const TEXT_OPS: &[&str] = &["CONTAINS", "STARTSWITH", "ENDSWITH"];

/// Maps sqlparser's (line, column) positions to 1-based character columns of the whole input.
#[derive(Debug)]
pub(crate) struct SourceMap {
    /// Character index (0-based) where each line starts.
    line_starts: Vec<usize>,
    /// The input's characters (at most [`crate::filter::MAX_EXPRESSION_BYTES`]).
    chars: Vec<char>,
}

impl SourceMap {
    pub(crate) fn new(src: &str) -> Self {
        let chars: Vec<char> = src.chars().collect();
        let mut line_starts = vec![0];
        for (i, c) in chars.iter().enumerate() {
            if *c == '\n' {
                line_starts.push(i + 1);
            }
        }
        Self { line_starts, chars }
    }

    /// The 1-based column of a location; `None` for sqlparser's empty location.
    pub(crate) fn column(&self, loc: Location) -> Option<usize> {
        if loc.line == 0 || loc.column == 0 {
            return None;
        }
        let start = *self.line_starts.get(loc.line as usize - 1)?;
        Some(start + loc.column as usize)
    }

    /// The column just past the end of the input.
    pub(crate) fn end_column(&self) -> usize {
        self.chars.len() + 1
    }

    /// The input from a location on.
    fn text_at(&self, loc: Location) -> &[char] {
        match self.column(loc) {
            Some(c) if c - 1 < self.chars.len() => &self.chars[c - 1..],
            _ => &[],
        }
    }

    /// The location just past the end of the input.
    fn end_location(&self) -> Location {
        let line = self.line_starts.len();
        let start = self.line_starts[line - 1];
        Location::new(line as u64, (self.chars.len() - start + 1) as u64)
    }
}

/// The dialect: RocketMQ's identifiers, the operand parser and the string operators.
#[derive(Debug)]
pub(crate) struct FilterDialect {
    /// Where errors about the end of the input point.
    end: Location,
}

fn word_is(token: &Token, upper: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(upper))
}

fn text_op(token: &Token) -> Option<&'static str> {
    TEXT_OPS.iter().copied().find(|op| word_is(token, op))
}

impl FilterDialect {
    /// `IS [NOT] NULL` (the `IS` is next); sqlparser's other `IS` forms are not filters.
    fn is_null(&self, p: &mut Parser<'_>, expr: &Expr) -> Result<Expr, ParserError> {
        p.advance_token();
        let negated = word_is(&p.peek_token_ref().token, "NOT");
        if negated {
            p.advance_token();
        }
        let next = p.next_token();
        if !word_is(&next.token, "NULL") {
            let at = if next.span.start.line == 0 {
                self.end
            } else {
                next.span.start
            };
            let want = if negated {
                "IS NOT NULL"
            } else {
                "IS NULL or IS NOT NULL"
            };
            return error_at(
                at,
                format!("expected {want}, found {}", describe(&next.token)),
            );
        }
        let inner = Box::new(expr.clone());
        Ok(if negated {
            Expr::IsNotNull(inner)
        } else {
            Expr::IsNull(inner)
        })
    }
}

/// A parser error carrying its location in sqlparser's own format (`... at Line: L, Column: C`).
fn error_at<T>(loc: Location, message: impl std::fmt::Display) -> Result<T, ParserError> {
    Err(ParserError::ParserError(format!("{message}{loc}")))
}

impl FilterDialect {
    fn operand(&self, p: &mut Parser<'_>) -> Result<Expr, ParserError> {
        let TokenWithSpan { token, span } = p.next_token();
        let at = if span.start.line == 0 {
            self.end
        } else {
            span.start
        };
        match token {
            Token::Word(w) if w.quote_style.is_none() => {
                let upper = w.value.to_ascii_uppercase();
                match upper.as_str() {
                    "NOT" => {
                        let inner = p.parse_subexpr(self.prec_value(Precedence::UnaryNot))?;
                        Ok(Expr::UnaryOp {
                            op: UnaryOperator::Not,
                            expr: Box::new(inner),
                        })
                    }
                    "NULL" => Ok(literal(Value::Null, span)),
                    "TRUE" => Ok(literal(Value::Boolean(true), span)),
                    "FALSE" => Ok(literal(Value::Boolean(false), span)),
                    kw if RESERVED.contains(&kw) => error_at(
                        at,
                        format!(
                            "expected a property name, a literal, NOT or '(', found the keyword {kw}"
                        ),
                    ),
                    _ if p.peek_token_ref().token == Token::LParen => error_at(
                        at,
                        format!("functions are not supported ({}(...))", w.value),
                    ),
                    _ => Ok(Expr::Identifier(Ident::with_span(span, w.value))),
                }
            }
            Token::Number(text, long) => Ok(literal(Value::Number(text, long), span)),
            Token::SingleQuotedString(s) => Ok(literal(Value::SingleQuotedString(s), span)),
            Token::LParen => {
                let next = p.peek_token_ref();
                if word_is(&next.token, "SELECT") || word_is(&next.token, "WITH") {
                    return error_at(next.span.start, "subqueries are not supported");
                }
                let inner = p.parse_expr()?;
                let close = p.peek_token();
                if close.token != Token::RParen {
                    let loc = if close.span.start.line == 0 {
                        self.end
                    } else {
                        close.span.start
                    };
                    let found = describe(&close.token);
                    return error_at(loc, format!("expected ')' to close '(', found {found}"));
                }
                p.advance_token();
                Ok(Expr::Nested(Box::new(inner)))
            }
            Token::Minus | Token::Plus => {
                // Signs before a number, any number of them (`- -1` is 1), as RocketMQ reads
                // them; the input's length bounds the loop.
                let mut negative = token == Token::Minus;
                loop {
                    let next = p.next_token();
                    match next.token {
                        Token::Minus => negative = !negative,
                        Token::Plus => {}
                        Token::Number(text, long) => {
                            let sign = if negative { "-" } else { "" };
                            return Ok(literal(
                                Value::Number(format!("{sign}{text}"), long),
                                span.union(&next.span),
                            ));
                        }
                        Token::Whitespace(_) => {}
                        _ => {
                            return error_at(
                                at,
                                "a sign must be followed by a number (arithmetic is not supported)",
                            )
                        }
                    }
                }
            }
            Token::HexStringLiteral(_) => error_at(
                at,
                "hexadecimal literals are not supported; write the number in decimal",
            ),
            Token::EOF => error_at(
                at,
                "the expression ends where a property name, a literal, NOT or '(' is expected",
            ),
            other => error_at(
                at,
                format!(
                    "expected a property name, a literal, NOT or '(', found {}",
                    describe(&other)
                ),
            ),
        }
    }
}

fn literal(value: Value, span: Span) -> Expr {
    Expr::Value(ValueWithSpan { value, span })
}

/// A token as people wrote it, for messages.
fn describe(token: &Token) -> String {
    match token {
        Token::EOF => "the end of the expression".to_string(),
        other => format!("'{other}'"),
    }
}

impl Dialect for FilterDialect {
    fn is_identifier_start(&self, ch: char) -> bool {
        ch.is_ascii_alphabetic() || ch == '_' || ch == '$'
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        ch.is_ascii_alphanumeric() || ch == '_' || ch == '$'
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        // Tokenized as quoted identifiers so that screening can refuse them by name.
        ch == '"' || ch == '`'
    }

    fn parse_prefix(&self, parser: &mut Parser<'_>) -> Option<Result<Expr, ParserError>> {
        Some(self.operand(parser))
    }

    fn get_next_precedence(&self, parser: &Parser<'_>) -> Option<Result<u8, ParserError>> {
        let next = &parser.peek_token_ref().token;
        if text_op(next).is_some() {
            return Some(Ok(self.prec_value(Precedence::Like)));
        }
        if word_is(next, "NOT") {
            let after = &parser.peek_nth_token_ref(1).token;
            if text_op(after).is_some() {
                return Some(Ok(self.prec_value(Precedence::Like)));
            }
            if word_is(after, "NULL") {
                return Some(Ok(self.prec_unknown()));
            }
        }
        None
    }

    fn parse_infix(
        &self,
        parser: &mut Parser<'_>,
        expr: &Expr,
        precedence: u8,
    ) -> Option<Result<Expr, ParserError>> {
        let first = &parser.peek_token_ref().token;
        if word_is(first, "IS") {
            return Some(self.is_null(parser, expr));
        }
        let (negated, op) = if let Some(op) = text_op(first) {
            (false, op)
        } else if word_is(first, "NOT") {
            (true, text_op(&parser.peek_nth_token_ref(1).token)?)
        } else {
            return None;
        };
        if negated {
            parser.advance_token();
        }
        parser.advance_token();
        let right = match parser.parse_subexpr(precedence) {
            Ok(e) => e,
            Err(e) => return Some(Err(e)),
        };
        let name = if negated {
            format!("NOT {op}")
        } else {
            op.to_string()
        };
        Some(Ok(Expr::BinaryOp {
            left: Box::new(expr.clone()),
            op: BinaryOperator::Custom(name),
            right: Box::new(right),
        }))
    }
}

/// Parses `src` (already length-checked) into an expression that covers the whole input.
pub(crate) fn parse(src: &str, map: &SourceMap) -> Result<Expr, FilterError> {
    let dialect = FilterDialect {
        end: map.end_location(),
    };
    let tokens = Tokenizer::new(&dialect, src)
        .tokenize_with_location()
        .map_err(|e| tokenizer_error(&e.message, e.location, map))?;
    let tokens = long_suffixes(tokens);
    screen(&tokens, map)?;
    if tokens
        .iter()
        .all(|t| matches!(t.token, Token::Whitespace(_)))
    {
        return Err(FilterError::whole("empty expression"));
    }
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(MAX_DEPTH)
        .with_tokens_with_locations(tokens);
    let expr = match parser.parse_expr() {
        Ok(e) => e,
        Err(ParserError::RecursionLimitExceeded) => {
            let at = parser.peek_token_ref().span.start;
            return Err(FilterError {
                message: format!("expression nests deeper than {MAX_DEPTH} levels"),
                column: map.column(at),
            });
        }
        Err(ParserError::ParserError(m) | ParserError::TokenizerError(m)) => {
            return Err(to_filter_error(&m, map));
        }
    };
    let next = parser.peek_token();
    if next.token != Token::EOF {
        let column = map.column(next.span.start);
        let message = match next.token {
            Token::RParen => "')' has no matching '('".to_string(),
            Token::Word(ref w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("NOT") => {
                "'NOT' here is not an operator; write `a IS NOT NULL`, `NOT (condition)` or `a NOT IN / NOT BETWEEN / NOT CONTAINS ...`".to_string()
            }
            ref other => format!(
                "unexpected {} after a complete condition; join conditions with AND or OR",
                describe(other)
            ),
        };
        return Err(FilterError { message, column });
    }
    Ok(expr)
}

/// RocketMQ's long suffix in either case: the tokenizer reads `3L` as a long but `3l` as the
/// number 3 followed by the word `l`; a word `l` right after a number (no space) joins it.
fn long_suffixes(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    for t in tokens {
        if let Token::Word(w) = &t.token {
            if w.quote_style.is_none() && w.value == "l" {
                if let Some(TokenWithSpan {
                    token: Token::Number(_, long @ false),
                    span,
                }) = out.last_mut()
                {
                    if span.end == t.span.start {
                        *long = true;
                        span.end = t.span.end;
                        continue;
                    }
                }
            }
        }
        out.push(t);
    }
    out
}

/// Refuses the operators and quotes people bring from other languages, by name.
fn screen(tokens: &[TokenWithSpan], map: &SourceMap) -> Result<(), FilterError> {
    for t in tokens {
        let text = map.text_at(t.span.start);
        let starts = |s: &str| text.len() >= s.len() && s.chars().zip(text).all(|(a, b)| a == *b);
        let message = match &t.token {
            Token::Whitespace(_) => continue,
            Token::Word(w) if w.quote_style == Some('"') => format!(
                "\"{}\" is a quoted identifier in SQL, not a string; use single quotes for strings: '{}'",
                w.value,
                w.value.replace('\'', "''")
            ),
            Token::Word(w) if w.quote_style.is_some() => format!(
                "quoted identifiers are not supported ({}); property names are written bare",
                w.value
            ),
            Token::DoubleQuotedString(s) => format!(
                "\"{s}\": use single quotes for strings: '{}'",
                s.replace('\'', "''")
            ),
            _ if starts("==") => "'==' is not an operator; use '=' for equality".to_string(),
            _ if starts("!=") => "'!=' is not an operator; use '<>' for inequality".to_string(),
            _ if starts("&&") => "'&&' is not an operator; use AND".to_string(),
            _ if starts("||") => {
                "'||' is not an operator in SQL filters; use OR ('||' separates tags in tag filters)"
                    .to_string()
            }
            Token::Char(c) => format!("unexpected character '{c}'"),
            _ => continue,
        };
        return Err(FilterError {
            message,
            column: map.column(t.span.start),
        });
    }
    Ok(())
}

fn tokenizer_error(message: &str, loc: Location, map: &SourceMap) -> FilterError {
    let message = if message.contains("delimiter '\"'") {
        "double quotes make a quoted identifier in SQL, not a string; use single quotes for strings"
            .to_string()
    } else if message.contains("Unterminated string literal") {
        "unterminated string: a ' has no closing '".to_string()
    } else {
        lowercase_first(message)
    };
    FilterError {
        message,
        column: map.column(loc).or(Some(map.end_column())),
    }
}

/// Turns a sqlparser message (`... at Line: L, Column: C`) into a [`FilterError`].
pub(crate) fn to_filter_error(message: &str, map: &SourceMap) -> FilterError {
    let (text, column) = match message.rfind(" at Line: ") {
        Some(i) => {
            let loc = parse_location(&message[i + " at Line: ".len()..]);
            (&message[..i], loc.and_then(|l| map.column(l)))
        }
        None => (message, None),
    };
    let text = text
        .replace("Expected: ", "expected ")
        .replace(", found: EOF", ", found the end of the expression")
        .replace(", found: ", ", found ");
    let column = column.or_else(|| {
        text.contains("end of the expression")
            .then(|| map.end_column())
    });
    FilterError {
        message: lowercase_first(&text),
        column,
    }
}

fn parse_location(s: &str) -> Option<Location> {
    let (line, rest) = s.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(Location::new(
        line.trim().parse().ok()?,
        column.parse().ok()?,
    ))
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}
