//! The compiled form of a SQL filter: a small tree of enums evaluated with SQL's three-valued
//! logic, with every literal parsed ahead of time. Evaluating it allocates nothing unless a
//! test on `KEYS` needs more than [`KEYS_STACK_BYTES`] bytes for the joined keys.

use std::cmp::Ordering;
use std::fmt::Write as _;

use quiver_protocol::names::props;

use super::num::Num;
use super::Truth;
use crate::filter::props::MessageProps;

/// Joined `KEYS` up to this size are built on the stack.
pub(crate) const KEYS_STACK_BYTES: usize = 256;

/// A node of the compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// `TRUE` or `FALSE`.
    Const(bool),
    /// All children (two or more); stops at the first FALSE.
    And(Box<[Node]>),
    /// Any child (two or more); stops at the first TRUE.
    Or(Box<[Node]>),
    /// Negation (UNKNOWN stays UNKNOWN).
    Not(Box<Node>),
    /// A test on one attribute.
    Test(Attr, Test),
}

/// What a test reads from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    /// A user property by name.
    Prop(Box<str>),
    /// `TAGS`: the tag, NULL when the message has none.
    Tags,
    /// `KEYS`: the keys joined by single spaces, NULL when there are none.
    Keys,
    /// `TOPIC`: the topic.
    Topic,
}

impl Attr {
    /// The attribute an identifier names (system attributes by exact, upper-case name).
    pub(crate) fn named(name: &str) -> Attr {
        match name {
            props::TAGS => Attr::Tags,
            props::KEYS => Attr::Keys,
            "TOPIC" => Attr::Topic,
            _ => Attr::Prop(name.into()),
        }
    }

    fn name(&self) -> &str {
        match self {
            Attr::Prop(name) => name,
            Attr::Tags => props::TAGS,
            Attr::Keys => props::KEYS,
            Attr::Topic => "TOPIC",
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// Whether `value OP literal` holds given `value.cmp(literal)`.
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }

    /// The operator with its operands swapped (`5 < a` is `a > 5`).
    pub(crate) fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::Eq,
            CmpOp::Ne => CmpOp::Ne,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
        }
    }

    fn text(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A test on an attribute's value. On a missing attribute (NULL) every test but the NULL tests
/// is UNKNOWN.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Test {
    /// `IS NULL`.
    IsNull,
    /// `IS NOT NULL`.
    NotNull,
    /// Numeric comparison; UNKNOWN when the value is not a number.
    Num(CmpOp, Num),
    /// String `=` (`eq`) or `<>` (`!eq`).
    Str { eq: bool, lit: Box<str> },
    /// Boolean `=` or `<>`; the value must be `true` or `false` (any case), else UNKNOWN.
    Bool { eq: bool, lit: bool },
    /// `BETWEEN low AND high`, inclusive, numeric.
    Between(Num, Num),
    /// `IN` a list of strings.
    InStr(StrSet),
    /// `IN` a list of numbers.
    InNum(NumSet),
    /// `CONTAINS 'x'`.
    Contains(Box<str>),
    /// `STARTSWITH 'x'`.
    StartsWith(Box<str>),
    /// `ENDSWITH 'x'`.
    EndsWith(Box<str>),
}

/// A set of strings: sorted and deduplicated; searched linearly when small, by bisection
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StrSet(Box<[Box<str>]>);

impl StrSet {
    pub(crate) fn new(mut items: Vec<Box<str>>) -> Self {
        items.sort();
        items.dedup();
        Self(items.into_boxed_slice())
    }

    fn contains(&self, v: &str) -> bool {
        if self.0.len() <= 8 {
            self.0.iter().any(|s| **s == *v)
        } else {
            self.0.binary_search_by(|s| (**s).cmp(v)).is_ok()
        }
    }
}

/// A set of numbers. Equality follows [`Num::compare`]: an integer value matches an integer
/// literal exactly, any other pair matches when equal as `f64`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NumSet {
    /// The literals, deduplicated, in ascending order (for printing).
    values: Box<[Num]>,
    /// The integer literals, sorted.
    ints: Box<[i64]>,
    /// The non-integer literals, sorted (finite, `-0.0` stored as `0.0`).
    floats: Box<[f64]>,
    /// Every literal as `f64`, sorted.
    all: Box<[f64]>,
}

impl NumSet {
    pub(crate) fn new(items: Vec<Num>) -> Self {
        let mut ints: Vec<i64> = Vec::new();
        let mut floats: Vec<f64> = Vec::new();
        for n in &items {
            match *n {
                Num::Int(i) => ints.push(i),
                Num::Float(f) => floats.push(zero_sign(f)),
            }
        }
        ints.sort_unstable();
        ints.dedup();
        floats.sort_by(f64::total_cmp);
        floats.dedup();
        let mut all: Vec<f64> = ints
            .iter()
            .map(|&i| i as f64)
            .chain(floats.iter().copied())
            .collect();
        all.sort_by(f64::total_cmp);
        all.dedup();
        let mut values: Vec<Num> = ints
            .iter()
            .map(|&i| Num::Int(i))
            .chain(floats.iter().map(|&f| Num::Float(f)))
            .collect();
        values.sort_by(|a, b| a.as_f64().total_cmp(&b.as_f64()));
        Self {
            values: values.into_boxed_slice(),
            ints: ints.into_boxed_slice(),
            floats: floats.into_boxed_slice(),
            all: all.into_boxed_slice(),
        }
    }

    fn contains(&self, n: Num) -> bool {
        let has =
            |set: &[f64], f: f64| set.binary_search_by(|x| x.total_cmp(&zero_sign(f))).is_ok();
        match n {
            Num::Int(i) => self.ints.binary_search(&i).is_ok() || has(&self.floats, i as f64),
            Num::Float(f) => has(&self.all, f),
        }
    }
}

fn zero_sign(f: f64) -> f64 {
    if f == 0.0 {
        0.0
    } else {
        f
    }
}

impl Test {
    /// The test on a value (`None`: the attribute is missing, i.e. NULL).
    #[inline]
    fn eval(&self, value: Option<&str>) -> Truth {
        let Some(v) = value else {
            return match self {
                Test::IsNull => Truth::True,
                Test::NotNull => Truth::False,
                _ => Truth::Unknown,
            };
        };
        match self {
            Test::IsNull => Truth::False,
            Test::NotNull => Truth::True,
            Test::Num(op, lit) => match Num::parse(v).and_then(|n| n.compare(*lit)) {
                Some(o) => Truth::from(op.holds(o)),
                None => Truth::Unknown,
            },
            Test::Str { eq, lit } => Truth::from((v == &**lit) == *eq),
            Test::Bool { eq, lit } => match parse_bool(v) {
                Some(b) => Truth::from((b == *lit) == *eq),
                None => Truth::Unknown,
            },
            Test::Between(lo, hi) => match Num::parse(v) {
                Some(n) => match (n.compare(*lo), n.compare(*hi)) {
                    (Some(a), Some(b)) => {
                        Truth::from(a != Ordering::Less && b != Ordering::Greater)
                    }
                    _ => Truth::Unknown,
                },
                None => Truth::Unknown,
            },
            Test::InStr(set) => Truth::from(set.contains(v)),
            Test::InNum(set) => match Num::parse(v) {
                Some(n) => Truth::from(set.contains(n)),
                None => Truth::Unknown,
            },
            Test::Contains(s) => Truth::from(v.contains(&**s)),
            Test::StartsWith(s) => Truth::from(v.starts_with(&**s)),
            Test::EndsWith(s) => Truth::from(v.ends_with(&**s)),
        }
    }

    /// Whether `NOT (a <test>)` has an infix spelling `a NOT <test>`.
    fn negatable(&self) -> bool {
        matches!(
            self,
            Test::Between(..)
                | Test::InStr(_)
                | Test::InNum(_)
                | Test::Contains(_)
                | Test::StartsWith(_)
                | Test::EndsWith(_)
        )
    }

    fn write(&self, attr: &Attr, negated: bool, out: &mut String) {
        out.push_str(attr.name());
        let not = if negated { " NOT" } else { "" };
        match self {
            Test::IsNull => out.push_str(" IS NULL"),
            Test::NotNull => out.push_str(" IS NOT NULL"),
            Test::Num(op, n) => {
                let _ = write!(out, " {} {n}", op.text());
            }
            Test::Str { eq, lit } => {
                out.push_str(if *eq { " = " } else { " <> " });
                write_str_lit(lit, out);
            }
            Test::Bool { eq, lit } => {
                out.push_str(if *eq { " = " } else { " <> " });
                out.push_str(if *lit { "TRUE" } else { "FALSE" });
            }
            Test::Between(lo, hi) => {
                let _ = write!(out, "{not} BETWEEN {lo} AND {hi}");
            }
            Test::InStr(set) => {
                let _ = write!(out, "{not} IN (");
                for (i, s) in set.0.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str_lit(s, out);
                }
                out.push(')');
            }
            Test::InNum(set) => {
                let _ = write!(out, "{not} IN (");
                for (i, n) in set.values.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{n}");
                }
                out.push(')');
            }
            Test::Contains(s) | Test::StartsWith(s) | Test::EndsWith(s) => {
                let op = match self {
                    Test::Contains(_) => "CONTAINS",
                    Test::StartsWith(_) => "STARTSWITH",
                    _ => "ENDSWITH",
                };
                let _ = write!(out, "{not} {op} ");
                write_str_lit(s, out);
            }
        }
    }
}

/// `true` / `false` in any case.
fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// A single-quoted SQL string, `'` doubled.
pub(crate) fn write_str_lit(s: &str, out: &mut String) {
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
}

impl Node {
    /// Evaluates the expression against a message.
    pub(crate) fn eval<M: MessageProps + ?Sized>(&self, msg: &M) -> Truth {
        match self {
            Node::Test(attr, test) => eval_test(attr, test, msg),
            Node::And(children) => {
                let mut acc = Truth::True;
                for child in children.iter() {
                    match child.eval(msg) {
                        Truth::False => return Truth::False,
                        Truth::Unknown => acc = Truth::Unknown,
                        Truth::True => {}
                    }
                }
                acc
            }
            Node::Or(children) => {
                let mut acc = Truth::False;
                for child in children.iter() {
                    match child.eval(msg) {
                        Truth::True => return Truth::True,
                        Truth::Unknown => acc = Truth::Unknown,
                        Truth::False => {}
                    }
                }
                acc
            }
            Node::Not(child) => !child.eval(msg),
            Node::Const(b) => Truth::from(*b),
        }
    }

    /// Appends the canonical text: connectives of another kind nested in parentheses, `NOT`
    /// always followed by a parenthesized operand unless it has an infix spelling.
    pub(crate) fn write(&self, out: &mut String) {
        match self {
            Node::Const(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
            Node::Test(attr, test) => test.write(attr, false, out),
            Node::Not(child) => match &**child {
                Node::Test(attr, test) if test.negatable() => test.write(attr, true, out),
                other => {
                    out.push_str("NOT (");
                    other.write(out);
                    out.push(')');
                }
            },
            Node::And(children) | Node::Or(children) => {
                let sep = if matches!(self, Node::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        out.push_str(sep);
                    }
                    if matches!(child, Node::And(_) | Node::Or(_)) {
                        out.push('(');
                        child.write(out);
                        out.push(')');
                    } else {
                        child.write(out);
                    }
                }
            }
        }
    }
}

#[inline]
fn eval_test<M: MessageProps + ?Sized>(attr: &Attr, test: &Test, msg: &M) -> Truth {
    match attr {
        Attr::Prop(name) => test.eval(msg.property(name)),
        Attr::Tags => {
            let tag = msg.tag();
            test.eval((!tag.is_empty()).then_some(tag))
        }
        Attr::Topic => test.eval(Some(msg.topic())),
        Attr::Keys => {
            let mut joined = JoinedKeys::new();
            let value = joined.join(msg.keys());
            test.eval(value)
        }
    }
}

/// The keys joined by single spaces, on the stack while they fit [`KEYS_STACK_BYTES`].
struct JoinedKeys {
    stack: [u8; KEYS_STACK_BYTES],
    len: usize,
    heap: Option<String>,
}

impl JoinedKeys {
    fn new() -> Self {
        Self {
            stack: [0; KEYS_STACK_BYTES],
            len: 0,
            heap: None,
        }
    }

    /// The joined keys, or `None` when there are none.
    fn join<'k>(&mut self, keys: impl Iterator<Item = &'k str>) -> Option<&str> {
        let mut any = false;
        for key in keys {
            if any {
                self.push(" ");
            }
            self.push(key);
            any = true;
        }
        if !any {
            return None;
        }
        match &self.heap {
            Some(s) => Some(s.as_str()),
            // Whole `&str`s and spaces: always UTF-8.
            None => std::str::from_utf8(&self.stack[..self.len]).ok(),
        }
    }

    fn push(&mut self, s: &str) {
        if let Some(heap) = &mut self.heap {
            heap.push_str(s);
        } else if self.len + s.len() <= KEYS_STACK_BYTES {
            self.stack[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut heap = String::with_capacity(2 * (self.len + s.len()));
            heap.push_str(&String::from_utf8_lossy(&self.stack[..self.len]));
            heap.push_str(s);
            self.heap = Some(heap);
        }
    }
}
