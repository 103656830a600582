//! `quiver filter check|eval`: try a subscription's expression before deploying it, with the
//! broker's own engine (no broker needed).

use clap::{Args, Subcommand};
use quiver::filter::{Filter, FilterKind, PropertyMap, Truth};

/// Arguments of `quiver filter`.
#[derive(Subcommand)]
pub(crate) enum FilterCommand {
    /// Print the canonical form of an expression, or what is wrong with it (exit 1).
    Check(ExprArgs),
    /// Evaluate an expression against one message's attributes: prints true, false or
    /// unknown (a message is delivered only when it is true).
    Eval {
        #[command(flatten)]
        expr: ExprArgs,
        /// A property, NAME=VALUE (repeatable).
        #[arg(long = "prop", value_name = "NAME=VALUE", value_parser = parse_prop)]
        props: Vec<(String, String)>,
        /// The message's tag (TAGS in SQL).
        #[arg(long = "msg-tag", value_name = "TAG", default_value = "")]
        msg_tag: String,
        /// A message key (KEYS in SQL; repeatable).
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
        /// The message's topic (TOPIC in SQL).
        #[arg(long, default_value = "")]
        topic: String,
    },
}

/// The expression and its kind.
#[derive(Args)]
pub(crate) struct ExprArgs {
    /// The expression is a tag expression (`TagA || TagB`) rather than SQL92.
    #[arg(long)]
    tag: bool,
    /// The expression, e.g. "region IN ('eu','us') AND amount > 100.5".
    expr: String,
    /// Print the answer as one JSON object (an invalid expression: `{"valid": false,
    /// "error": ...}` on stdout, still exit 1).
    #[arg(long)]
    json: bool,
}

fn parse_prop(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))
}

impl ExprArgs {
    fn kind(&self) -> FilterKind {
        if self.tag {
            FilterKind::Tag
        } else {
            FilterKind::Sql
        }
    }

    fn compile(&self) -> anyhow::Result<Filter> {
        let kind = self.kind();
        match Filter::parse(kind, &self.expr) {
            Ok(f) => Ok(f),
            Err(e) => {
                if self.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "kind": kind.name(), "expression": self.expr,
                            "valid": false, "error": e.to_string(),
                        })
                    );
                }
                Err(anyhow::anyhow!(
                    "invalid {} expression {:?}: {e}",
                    kind.name(),
                    self.expr
                ))
            }
        }
    }
}

/// Runs `quiver filter ...`.
pub(crate) fn run(cmd: FilterCommand) -> anyhow::Result<()> {
    match cmd {
        FilterCommand::Check(e) => {
            let canonical = e.compile()?.canonical();
            if e.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "kind": e.kind().name(), "expression": e.expr,
                        "valid": true, "canonical": canonical,
                    })
                );
            } else {
                println!("{canonical}");
            }
            Ok(())
        }
        FilterCommand::Eval {
            expr,
            props,
            msg_tag,
            keys,
            topic,
        } => {
            let filter = expr.compile()?;
            let mut msg = PropertyMap::new().with_topic(topic).with_tag(msg_tag);
            for k in keys {
                msg = msg.with_key(k);
            }
            for (k, v) in props {
                msg = msg.with_property(k, v);
            }
            let truth = match &filter {
                Filter::Sql(sql) => sql.evaluate(&msg),
                other => Truth::from(other.matches(&msg)),
            };
            let answer = truth.to_string().to_lowercase();
            if expr.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "kind": expr.kind().name(), "expression": expr.expr,
                        "result": answer, "delivered": answer == "true",
                    })
                );
            } else {
                println!("{answer}");
            }
            Ok(())
        }
    }
}
