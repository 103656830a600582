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
    /// `TRUE`, `FALSE`, or `NULL` (UNKNOWN); also a folded condition on literals only.
    Const(Truth),
    /// A property alone as a condition: TRUE or FALSE for the value `true` or `false` (any
    /// case), UNKNOWN for any other value or a missing property.
    Truthy(Attr),
    /// A comparison whose operands are not one attribute and one literal (two properties, a
    /// condition compared with a value): evaluated by [`compare`].
    Cmp(Box<(Operand, CmpOp, Operand)>),
    /// `x BETWEEN low AND high` with a property (or a condition) among the bounds:
    /// `x >= low AND x <= high` by [`compare`].
    Range(Box<[Operand; 3]>),
    /// All children (two or more); stops at the first FALSE.
    And(Box<[Node]>),
    /// Any child (two or more); stops at the first TRUE.
    Or(Box<[Node]>),
    /// Negation (UNKNOWN stays UNKNOWN).
    Not(Box<Node>),
    /// A test on one attribute.
    Test(Attr, Test),
}

/// An operand of a general comparison.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    /// A property or system attribute (a string, or NULL when missing).
    Attr(Attr),
    /// A literal.
    Lit(LitVal),
    /// A condition (its value is TRUE, FALSE or, when UNKNOWN, NULL).
    Cond(Box<Node>),
}

/// A literal operand (`NULL` never is one: comparing with it is refused when compiled).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LitVal {
    Bool(bool),
    Num(Num),
    Str(Box<str>),
}

/// A value at evaluation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(&'a str),
}

impl LitVal {
    pub(crate) fn val(&self) -> Val<'_> {
        match self {
            LitVal::Bool(b) => Val::Bool(*b),
            LitVal::Num(n) => Val::Num(*n),
            LitVal::Str(s) => Val::Str(s),
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            LitVal::Bool(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
            LitVal::Num(n) => {
                let _ = write!(out, "{n}");
            }
            LitVal::Str(s) => write_str_lit(s, out),
        }
    }
}

fn truth_val(t: Truth) -> Val<'static> {
    match t {
        Truth::True => Val::Bool(true),
        Truth::False => Val::Bool(false),
        Truth::Unknown => Val::Null,
    }
}

/// `l OP r` for any two values (docs/FILTERS.md §3, "Comparing any two operands"): NULL on
/// either side is UNKNOWN; numbers compare as numbers, and a string with a number as a number
/// when it reads as one (else UNKNOWN); two strings are equal or not by their text, and are
/// ordered only when both read as numbers (else UNKNOWN); booleans are only equal or not, a
/// string with a boolean when it is `true` or `false` in any case; a boolean with a number is
/// UNKNOWN.
pub(crate) fn compare(l: Val<'_>, op: CmpOp, r: Val<'_>) -> Truth {
    let ord = |o: Option<Ordering>| match o {
        Some(o) => Truth::from(op.holds(o)),
        None => Truth::Unknown,
    };
    let equality = matches!(op, CmpOp::Eq | CmpOp::Ne);
    match (l, r) {
        (Val::Null, _) | (_, Val::Null) => Truth::Unknown,
        (Val::Num(a), Val::Num(b)) => ord(a.compare(b)),
        (Val::Num(a), Val::Str(s)) => ord(Num::parse(s).and_then(|b| a.compare(b))),
        (Val::Str(s), Val::Num(b)) => ord(Num::parse(s).and_then(|a| a.compare(b))),
        (Val::Str(a), Val::Str(b)) if equality => Truth::from((a == b) == (op == CmpOp::Eq)),
        (Val::Str(a), Val::Str(b)) => match (Num::parse(a), Num::parse(b)) {
            (Some(x), Some(y)) => ord(x.compare(y)),
            _ => Truth::Unknown,
        },
        (Val::Bool(a), Val::Bool(b)) if equality => Truth::from((a == b) == (op == CmpOp::Eq)),
        (Val::Bool(a), Val::Str(s)) | (Val::Str(s), Val::Bool(a)) if equality => {
            match parse_bool(s) {
                Some(b) => Truth::from((a == b) == (op == CmpOp::Eq)),
                None => Truth::Unknown,
            }
        }
        _ => Truth::Unknown,
    }
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
    pub(crate) fn holds(self, o: Ordering) -> bool {
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

    pub(crate) fn text(self) -> &'static str {
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
    /// The test on a value (`None`: NULL), for compiling literal-only conditions.
    pub(crate) fn eval_value(&self, value: Option<&str>) -> Truth {
        self.eval(value)
    }

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
            Node::Const(t) => *t,
            Node::Truthy(attr) => with_value(attr, msg, |v| match v.and_then(parse_bool) {
                Some(b) => Truth::from(b),
                None => Truth::Unknown,
            }),
            Node::Cmp(c) => {
                let (l, op, r) = &**c;
                with_operand(l, msg, |lv| with_operand(r, msg, |rv| compare(lv, *op, rv)))
            }
            Node::Range(ops) => {
                let [x, lo, hi] = &**ops;
                with_operand(x, msg, |xv| {
                    let low = with_operand(lo, msg, |v| compare(xv, CmpOp::Ge, v));
                    if low == Truth::False {
                        return Truth::False;
                    }
                    low.and(with_operand(hi, msg, |v| compare(xv, CmpOp::Le, v)))
                })
            }
        }
    }

    /// Appends the canonical text: connectives of another kind nested in parentheses, `NOT`
    /// always followed by a parenthesized operand unless it has an infix spelling.
    pub(crate) fn write(&self, out: &mut String) {
        match self {
            Node::Const(t) => out.push_str(match t {
                Truth::True => "TRUE",
                Truth::False => "FALSE",
                Truth::Unknown => "NULL",
            }),
            Node::Truthy(attr) => out.push_str(attr.name()),
            Node::Cmp(c) => {
                let (l, op, r) = &**c;
                l.write(out);
                let _ = write!(out, " {} ", op.text());
                r.write(out);
            }
            Node::Range(ops) => {
                let [x, lo, hi] = &**ops;
                x.write(out);
                out.push_str(" BETWEEN ");
                lo.write(out);
                out.push_str(" AND ");
                hi.write(out);
            }
            Node::Test(attr, test) => test.write(attr, false, out),
            Node::Not(child) => match &**child {
                Node::Test(attr, test) if test.negatable() => test.write(attr, true, out),
                Node::Range(ops) => {
                    let [x, lo, hi] = &**ops;
                    x.write(out);
                    out.push_str(" NOT BETWEEN ");
                    lo.write(out);
                    out.push_str(" AND ");
                    hi.write(out);
                }
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

impl Operand {
    fn write(&self, out: &mut String) {
        match self {
            Operand::Attr(a) => out.push_str(a.name()),
            Operand::Lit(l) => l.write(out),
            Operand::Cond(c) => {
                out.push('(');
                c.write(out);
                out.push(')');
            }
        }
    }
}

/// Calls `f` with an attribute's value (`None`: NULL).
fn with_value<M: MessageProps + ?Sized, R>(
    attr: &Attr,
    msg: &M,
    f: impl FnOnce(Option<&str>) -> R,
) -> R {
    match attr {
        Attr::Prop(name) => f(msg.property(name)),
        Attr::Tags => {
            let tag = msg.tag();
            f((!tag.is_empty()).then_some(tag))
        }
        Attr::Topic => f(Some(msg.topic())),
        Attr::Keys => {
            let mut joined = JoinedKeys::new();
            let value = joined.join(msg.keys());
            f(value)
        }
    }
}

/// Calls `f` with an operand's value.
fn with_operand<M: MessageProps + ?Sized, R>(
    o: &Operand,
    msg: &M,
    f: impl FnOnce(Val<'_>) -> R,
) -> R {
    match o {
        Operand::Attr(a) => with_value(a, msg, |v| f(v.map_or(Val::Null, Val::Str))),
        Operand::Lit(l) => f(l.val()),
        Operand::Cond(c) => f(truth_val(c.eval(msg))),
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
