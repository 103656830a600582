//! From the checked AST to the evaluator: only whitelisted constructs get through, each literal
//! is parsed once, `IN` lists are sorted, and `AND`/`OR` chains are flattened.

use sqlparser::ast::{BinaryOperator, Expr, Spanned, UnaryOperator, Value};

use super::eval::{Attr, CmpOp, Node, NumSet, StrSet, Test};
use super::num::Num;
use super::parse::SourceMap;
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
            } => {
                let attr = self.attr(expr, "BETWEEN")?;
                let lo = self.bound(low)?;
                let hi = self.bound(high)?;
                if lo.compare(hi) == Some(std::cmp::Ordering::Greater) {
                    return self.err(
                        low,
                        format!("BETWEEN {lo} AND {hi} can never be true: the lower bound is greater than the upper bound"),
                    );
                }
                Ok(negate(*negated, Node::Test(attr, Test::Between(lo, hi))))
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let attr = self.attr(expr, "IN")?;
                Ok(negate(*negated, Node::Test(attr, self.in_list(list)?)))
            }
            Expr::Value(v) => match &v.value {
                Value::Boolean(b) => Ok(Node::Const(*b)),
                _ => self.err(
                    e,
                    "a literal alone is not a condition; compare a property with it (e.g. a = 1)",
                ),
            },
            Expr::Identifier(id) => self.err(
                e,
                format!(
                    "property {0} alone is not a condition; compare it (e.g. {0} = 'x') or test it ({0} IS NOT NULL)",
                    id.value
                ),
            ),
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

    fn operand(&self, e: &Expr) -> Result<Operand, FilterError> {
        match strip(e) {
            Expr::Identifier(id) => Ok(Operand::Attr(Attr::named(&id.value))),
            Expr::Value(v) => Ok(Operand::Lit(self.literal(e, &v.value)?)),
            cond @ (Expr::BinaryOp {
                op:
                    BinaryOperator::And
                    | BinaryOperator::Or
                    | BinaryOperator::Eq
                    | BinaryOperator::NotEq
                    | BinaryOperator::Lt
                    | BinaryOperator::LtEq
                    | BinaryOperator::Gt
                    | BinaryOperator::GtEq
                    | BinaryOperator::Custom(_),
                ..
            }
            | Expr::UnaryOp {
                op: UnaryOperator::Not,
                ..
            }
            | Expr::IsNull(_)
            | Expr::IsNotNull(_)
            | Expr::Between { .. }
            | Expr::InList { .. }) => self.err(
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
        let (attr, op, lit, lit_expr) =
            match (self.operand(left)?, self.operand(right)?) {
                (Operand::Attr(a), Operand::Lit(l)) => (a, op, l, right),
                (Operand::Lit(l), Operand::Attr(a)) => (a, op.flipped(), l, left),
                (Operand::Attr(_), Operand::Attr(_)) => return self.err(
                    right,
                    "comparing two properties is not supported; compare a property with a literal",
                ),
                (Operand::Lit(Lit::Null), _) => return self.null_comparison(left, op),
                (Operand::Lit(_), Operand::Lit(_)) => {
                    return self.err(
                        left,
                        "both sides are literals; compare a property with a literal",
                    )
                }
            };
        let test =
            match lit {
                Lit::Null => return self.null_comparison(lit_expr, op),
                Lit::Num(n) => Test::Num(op, n),
                Lit::Str(s) => match op {
                    CmpOp::Eq | CmpOp::Ne => Test::Str {
                        eq: op == CmpOp::Eq,
                        lit: s.into(),
                    },
                    _ => return self.err(
                        lit_expr,
                        "strings can only be compared with = and <>; <, <=, > and >= need a number",
                    ),
                },
                Lit::Bool(b) => match op {
                    CmpOp::Eq | CmpOp::Ne => Test::Bool {
                        eq: op == CmpOp::Eq,
                        lit: b,
                    },
                    _ => {
                        return self.err(
                            lit_expr,
                            "TRUE and FALSE can only be compared with = and <>",
                        )
                    }
                },
            };
        Ok(Node::Test(attr, test))
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

    /// A `BETWEEN` bound: a number.
    fn bound(&self, e: &Expr) -> Result<Num, FilterError> {
        match self.operand(e) {
            Ok(Operand::Lit(Lit::Num(n))) => Ok(n),
            Ok(Operand::Lit(Lit::Null)) => {
                self.err(e, "NULL is not a BETWEEN bound; bounds are numbers")
            }
            _ => self.err(e, "BETWEEN bounds must be numbers"),
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
            let lit = match self.operand(item) {
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
        let attr = self.attr(left, op)?;
        let lit: Box<str> = match self.operand(right) {
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
        Ok(negate(negated, Node::Test(attr, test)))
    }
}

fn negate(negated: bool, node: Node) -> Node {
    if negated {
        Node::Not(Box::new(node))
    } else {
        node
    }
}
