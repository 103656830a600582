//! From the checked AST to the evaluator: only whitelisted constructs get through, each literal
//! is parsed once, `IN` lists are sorted, and `AND`/`OR` chains are flattened.

use sqlparser::ast::{BinaryOperator, Expr, Spanned, UnaryOperator, Value};

use super::eval::{self, Attr, CmpOp, LitVal, Node, NumSet, StrSet, Test};
use super::num::Num;
use super::parse::SourceMap;
use super::Truth;
use crate::filter::error::FilterError;

/// Most values an `IN` list may hold.
pub const MAX_IN_LIST: usize = 1000;

/// A literal operand.
enum Lit {
    Null,
    Bool(bool),
    Num(Num),
    Str(String),
}

/// One side of a comparison.
enum Operand {
    Attr(Attr),
    Lit(Lit),
    /// A condition used as a value (`(a = 1) = TRUE`, `a = 1 = TRUE`).
    Cond(Node),
}

impl Lit {
    /// The literal as a comparison operand (`None` for NULL, which none may be).
    fn value(self) -> Option<LitVal> {
        match self {
            Lit::Null => None,
            Lit::Bool(b) => Some(LitVal::Bool(b)),
            Lit::Num(n) => Some(LitVal::Num(n)),
            Lit::Str(s) => Some(LitVal::Str(s.into())),
        }
    }
}

impl Operand {
    fn general(self) -> Option<eval::Operand> {
        Some(match self {
            Operand::Attr(a) => eval::Operand::Attr(a),
            Operand::Lit(l) => eval::Operand::Lit(l.value()?),
            Operand::Cond(n) => eval::Operand::Cond(Box::new(n)),
        })
    }
}

pub(crate) struct Compiler<'m> {
    map: &'m SourceMap,
}

fn strip(mut e: &Expr) -> &Expr {
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

impl<'m> Compiler<'m> {
    pub(crate) fn new(map: &'m SourceMap) -> Self {
        Self { map }
    }

    fn err<T>(&self, e: &Expr, message: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            message: message.into(),
            column: self.map.column(e.span().start),
        })
    }

    /// Compiles a condition.
    pub(crate) fn node(&self, e: &Expr) -> Result<Node, FilterError> {
        let e = strip(e);
        match e {
            Expr::BinaryOp {
                op: op @ (BinaryOperator::And | BinaryOperator::Or),
                ..
            } => {
                let mut children = Vec::new();
                // Flatten `a AND b AND c` (and parenthesized runs of the same connective)
                // with an explicit stack: chains of any length compile without deep recursion.
                let mut stack = vec![e];
                while let Some(x) = stack.pop() {
                    match strip(x) {
                        Expr::BinaryOp { left, op: o, right } if o == op => {
                            stack.push(right);
                            stack.push(left);
                        }
                        other => children.push(self.node(other)?),
                    }
                }
                Ok(if *op == BinaryOperator::And {
                    Node::And(children.into_boxed_slice())
                } else {
                    Node::Or(children.into_boxed_slice())
                })
            }
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Ok(Node::Not(Box::new(self.node(expr)?))),
            Expr::BinaryOp { left, op, right } => {
                let cmp = match op {
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::Ne,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::Le,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::Ge,
                    BinaryOperator::Custom(name) => return self.text_op(name, left, right),
                    _ => return self.unsupported(e),
                };
                self.comparison(left, cmp, right)
            }
            Expr::IsNull(x) => Ok(Node::Test(self.attr(x, "IS NULL")?, Test::IsNull)),
            Expr::IsNotNull(x) => Ok(Node::Test(self.attr(x, "IS NOT NULL")?, Test::NotNull)),
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => self.between(expr, *negated, low, high),
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let attr = self.attr(expr, "IN")?;
                Ok(negate(*negated, Node::Test(attr, self.in_list(list)?)))
            }
            Expr::Value(v) => match &v.value {
                Value::Boolean(b) => Ok(Node::Const(Truth::from(*b))),
                Value::Null => Ok(Node::Const(Truth::Unknown)),
                _ => self.err(
                    e,
                    "a number or string alone is not a condition; compare a property with it (e.g. a = 1)",
                ),
            },
            // A property alone is a boolean condition, as in RocketMQ (`vip AND a = 1`).
            Expr::Identifier(id) => Ok(Node::Truthy(Attr::named(&id.value))),
            other => self.unsupported(other),
        }
    }

    /// The error for a construct outside the language, named as precisely as possible.
    fn unsupported<T>(&self, e: &Expr) -> Result<T, FilterError> {
        match e {
            Expr::BinaryOp {
                op:
                    op @ (BinaryOperator::Plus
                    | BinaryOperator::Minus
                    | BinaryOperator::Multiply
                    | BinaryOperator::Divide
                    | BinaryOperator::Modulo),
                ..
            } => self.err(e, format!("arithmetic ({op}) is not supported")),
            Expr::BinaryOp { op, .. } => self.err(e, format!("operator {op} is not supported")),
            Expr::UnaryOp { op, .. } => self.err(e, format!("operator {op} is not supported")),
            Expr::Like { .. }
            | Expr::ILike { .. }
            | Expr::SimilarTo { .. }
            | Expr::RLike { .. } => self.err(
                e,
                "LIKE is not supported; use CONTAINS, STARTSWITH or ENDSWITH",
            ),
            Expr::InSubquery { .. } | Expr::Subquery(_) | Expr::Exists { .. } => {
                self.err(e, "subqueries are not supported")
            }
            Expr::InUnnest { .. } => self.err(e, "IN needs a parenthesized list of literals"),
            Expr::Function(_) => self.err(e, "functions are not supported"),
            Expr::CompoundIdentifier(_) | Expr::CompoundFieldAccess { .. } => self.err(
                e,
                "property names are letters, digits, '_' and '$' only (no '.' or '[')",
            ),
            Expr::IsTrue(_)
            | Expr::IsNotTrue(_)
            | Expr::IsFalse(_)
            | Expr::IsNotFalse(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotUnknown(_)
            | Expr::IsDistinctFrom(..)
            | Expr::IsNotDistinctFrom(..) => {
                self.err(e, "only IS NULL and IS NOT NULL are supported after IS")
            }
            other => self.err(other, format!("`{other}` is not supported in a filter")),
        }
    }

    /// The attribute a test applies to: must be a property name.
    fn attr(&self, e: &Expr, what: &str) -> Result<Attr, FilterError> {
        match strip(e) {
            Expr::Identifier(id) => Ok(Attr::named(&id.value)),
            other => self.err(other, format!("{what} needs a property name on its left")),
        }
    }

    /// A comparison operand: a property, a literal, or a condition used as a value.
    fn operand(&self, e: &Expr) -> Result<Operand, FilterError> {
        match strip(e) {
            cond if is_condition(cond) => Ok(Operand::Cond(self.node(cond)?)),
            _ => self.simple_operand(e),
        }
    }

    /// An operand that must be a property or a literal (IN list items, string operators,
    /// BETWEEN bounds).
    fn simple_operand(&self, e: &Expr) -> Result<Operand, FilterError> {
        match strip(e) {
            Expr::Identifier(id) => Ok(Operand::Attr(Attr::named(&id.value))),
            Expr::Value(v) => Ok(Operand::Lit(self.literal(e, &v.value)?)),
            cond if is_condition(cond) => self.err(
                cond,
                "a comparison compares a property name with a literal; this is a condition",
            ),
            other => self.unsupported(other),
        }
    }

    fn literal(&self, e: &Expr, v: &Value) -> Result<Lit, FilterError> {
        match v {
            Value::Null => Ok(Lit::Null),
            Value::Boolean(b) => Ok(Lit::Bool(*b)),
            Value::SingleQuotedString(s) => Ok(Lit::Str(s.clone())),
            Value::Number(text, long) => {
                // An integer literal is a 64-bit integer, as in RocketMQ: beyond that range it
                // is an error, not a value.
                let integer = !text.contains(['.', 'e', 'E']);
                if integer && text.parse::<i64>().is_err() {
                    return self.err(
                        e,
                        format!(
                            "integer {text} is outside the 64-bit range ({} to {})",
                            i64::MIN,
                            i64::MAX
                        ),
                    );
                }
                // The tokenizer only makes well-formed numbers: failing means overflow.
                let Some(n) = Num::parse(text) else {
                    return self.err(e, format!("number {text} is out of range"));
                };
                if *long && !matches!(n, Num::Int(_)) {
                    return self.err(e, format!("the L suffix needs an integer ({text}L)"));
                }
                Ok(Lit::Num(n))
            }
            other => self.err(e, format!("literal {other} is not supported")),
        }
    }

    fn comparison(&self, left: &Expr, op: CmpOp, right: &Expr) -> Result<Node, FilterError> {
        let (l, r) = (self.operand(left)?, self.operand(right)?);
        // Refused whatever the other side is: NULL (use IS NULL), and ordering a string or a
        // boolean literal (as RocketMQ does).
        for (side, e) in [(&l, left), (&r, right)] {
            match side {
                Operand::Lit(Lit::Null) => return self.null_comparison(e, op),
                Operand::Lit(Lit::Str(_)) if !matches!(op, CmpOp::Eq | CmpOp::Ne) => {
                    return self.err(
                        e,
                        "strings can only be compared with = and <>; <, <=, > and >= need a number",
                    )
                }
                Operand::Lit(Lit::Bool(_)) if !matches!(op, CmpOp::Eq | CmpOp::Ne) => {
                    return self.err(e, "TRUE and FALSE can only be compared with = and <>")
                }
                _ => {}
            }
        }
        // A condition decided when compiled is a literal: TRUE or FALSE, or, when UNKNOWN,
        // it makes the comparison UNKNOWN.
        let (Some(l), Some(r)) = (fold(l), fold(r)) else {
            return Ok(Node::Const(Truth::Unknown));
        };
        let (attr, op, lit) = match (l, r) {
            (Operand::Attr(a), Operand::Lit(lit)) => (a, op, lit),
            (Operand::Lit(lit), Operand::Attr(a)) => (a, op.flipped(), lit),
            // Literals only: decided now.
            (Operand::Lit(a), Operand::Lit(b)) => {
                let (a, b) = (a.value(), b.value());
                let t = match (&a, &b) {
                    (Some(a), Some(b)) => eval::compare(a.val(), op, b.val()),
                    _ => Truth::Unknown,
                };
                return Ok(Node::Const(t));
            }
            // Two properties, or a condition compared with a value.
            (l, r) => {
                let (Some(l), Some(r)) = (l.general(), r.general()) else {
                    return self.null_comparison(right, op);
                };
                return Ok(Node::Cmp(Box::new((l, op, r))));
            }
        };
        // A property and a literal: the precompiled test.
        let test = match lit {
            Lit::Null => return self.null_comparison(right, op),
            Lit::Num(n) => Test::Num(op, n),
            Lit::Str(s) => Test::Str {
                eq: op == CmpOp::Eq,
                lit: s.into(),
            },
            Lit::Bool(b) => Test::Bool {
                eq: op == CmpOp::Eq,
                lit: b,
            },
        };
        Ok(Node::Test(attr, test))
    }

    /// `x [NOT] BETWEEN low AND high`: bounds are numbers or properties (or conditions).
    fn between(
        &self,
        x: &Expr,
        negated: bool,
        low: &Expr,
        high: &Expr,
    ) -> Result<Node, FilterError> {
        let x_op = self.operand(x)?;
        let lo = self.bound(low)?;
        let hi = self.bound(high)?;
        let Some(x_op) = fold(x_op) else {
            return Ok(Node::Const(Truth::Unknown));
        };
        if let (Operand::Attr(attr), Operand::Lit(Lit::Num(lo)), Operand::Lit(Lit::Num(hi))) =
            (&x_op, &lo, &hi)
        {
            // A reversed range is always false; refused as RocketMQ refuses it, except under
            // NOT, where it is simply always true for a number.
            if !negated && lo.compare(*hi) == Some(std::cmp::Ordering::Greater) {
                return self.err(
                    low,
                    format!("BETWEEN {lo} AND {hi} can never be true: the lower bound is greater than the upper bound"),
                );
            }
            return Ok(negate(
                negated,
                Node::Test(attr.clone(), Test::Between(*lo, *hi)),
            ));
        }
        if let Operand::Lit(Lit::Str(_) | Lit::Bool(_) | Lit::Null) = x_op {
            return self.err(x, "BETWEEN needs a property or a number on its left");
        }
        let (Some(x_op), Some(lo), Some(hi)) = (x_op.general(), lo.general(), hi.general()) else {
            return self.err(x, "BETWEEN bounds must be numbers or properties");
        };
        let node = Node::Range(Box::new([x_op, lo, hi]));
        Ok(negate(negated, node))
    }

    fn null_comparison<T>(&self, null: &Expr, op: CmpOp) -> Result<T, FilterError> {
        let hint = if op == CmpOp::Ne {
            "IS NOT NULL"
        } else {
            "IS NULL"
        };
        self.err(
            null,
            format!("comparing with NULL is never true; use IS NULL / IS NOT NULL (here: {hint})"),
        )
    }

    /// A `BETWEEN` bound: a number or a property.
    fn bound(&self, e: &Expr) -> Result<Operand, FilterError> {
        match self.simple_operand(e) {
            Ok(o @ (Operand::Lit(Lit::Num(_)) | Operand::Attr(_))) => Ok(o),
            Ok(Operand::Lit(Lit::Null)) => self.err(
                e,
                "NULL is not a BETWEEN bound; bounds are numbers or properties",
            ),
            Ok(_) => self.err(e, "BETWEEN bounds must be numbers or properties"),
            Err(err) => Err(err),
        }
    }

    fn in_list(&self, list: &[Expr]) -> Result<Test, FilterError> {
        if let Some(extra) = list.get(MAX_IN_LIST) {
            return self.err(
                extra,
                format!(
                    "IN list has {} values; the limit is {MAX_IN_LIST}",
                    list.len()
                ),
            );
        }
        let mut strs: Vec<Box<str>> = Vec::new();
        let mut nums: Vec<Num> = Vec::new();
        for item in list {
            let lit = match self.simple_operand(item) {
                Ok(Operand::Lit(l)) => l,
                _ => return self.err(item, "IN lists hold literals only ('a', 'b' or 1, 2)"),
            };
            match lit {
                Lit::Str(s) if nums.is_empty() => strs.push(s.into()),
                Lit::Num(n) if strs.is_empty() => nums.push(n),
                Lit::Str(_) | Lit::Num(_) => {
                    return self.err(item, "an IN list holds either strings or numbers, not both")
                }
                Lit::Null => {
                    return self.err(
                        item,
                        "NULL in an IN list never matches; test a missing property with IS NULL",
                    )
                }
                Lit::Bool(_) => {
                    return self.err(item, "IN lists hold strings or numbers, not TRUE/FALSE")
                }
            }
        }
        Ok(if nums.is_empty() {
            Test::InStr(StrSet::new(strs))
        } else {
            Test::InNum(NumSet::new(nums))
        })
    }

    fn text_op(&self, name: &str, left: &Expr, right: &Expr) -> Result<Node, FilterError> {
        let (negated, op) = match name.strip_prefix("NOT ") {
            Some(op) => (true, op),
            None => (false, name),
        };
        let lit: Box<str> = match self.simple_operand(right) {
            Ok(Operand::Lit(Lit::Str(s))) => s.into(),
            _ => {
                return self.err(
                    right,
                    format!("{op} needs a string literal on its right, e.g. a {op} 'x'"),
                )
            }
        };
        let test = match op {
            "CONTAINS" => Test::Contains(lit),
            "STARTSWITH" => Test::StartsWith(lit),
            "ENDSWITH" => Test::EndsWith(lit),
            other => return self.err(left, format!("operator {other} is not supported")),
        };
        match self.simple_operand(left) {
            Ok(Operand::Attr(attr)) => Ok(negate(negated, Node::Test(attr, test))),
            // A string literal on the left: decided now (`'axb' CONTAINS 'x'`).
            Ok(Operand::Lit(Lit::Str(s))) => {
                let t = struct_eval(&test, &s);
                Ok(Node::Const(if negated { !t } else { t }))
            }
            _ => self.err(
                left,
                format!("{op} needs a property or a string literal on its left"),
            ),
        }
    }
}

/// Whether `e` is a condition (its value is TRUE, FALSE or UNKNOWN).
fn is_condition(e: &Expr) -> bool {
    matches!(
        e,
        Expr::BinaryOp {
            op: BinaryOperator::And
                | BinaryOperator::Or
                | BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq
                | BinaryOperator::Custom(_),
            ..
        } | Expr::UnaryOp {
            op: UnaryOperator::Not,
            ..
        } | Expr::IsNull(_)
            | Expr::IsNotNull(_)
            | Expr::Between { .. }
            | Expr::InList { .. }
    )
}

/// A condition operand decided when compiled becomes its literal; `None` when it is UNKNOWN
/// (the comparison it is part of is UNKNOWN).
fn fold(o: Operand) -> Option<Operand> {
    match o {
        Operand::Cond(Node::Const(Truth::True)) => Some(Operand::Lit(Lit::Bool(true))),
        Operand::Cond(Node::Const(Truth::False)) => Some(Operand::Lit(Lit::Bool(false))),
        Operand::Cond(Node::Const(Truth::Unknown)) => None,
        other => Some(other),
    }
}

fn negate(negated: bool, node: Node) -> Node {
    if negated {
        Node::Not(Box::new(node))
    } else {
        node
    }
}

/// A string test on a literal value, decided when compiled.
fn struct_eval(test: &Test, value: &str) -> Truth {
    test.eval_value(Some(value))
}
