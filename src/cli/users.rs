//! `quiver admin user` and `quiver admin acl`: users and their access rules
//! (docs/SECURITY.md).

use std::io::BufRead;

use anyhow::Context;
use clap::{Args, Subcommand};
use quiver_client::Admin;
use quiver_protocol::cmd::{actions, AclRule, Decision, Role};

use super::output::Out;

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Create a user. The password comes from --password-stdin or QUIVER_NEW_PASSWORD;
    /// only its argon2id verifier is sent. The first user must be --super.
    Create {
        /// The user name.
        name: String,
        /// A super user: allowed everything, rules do not apply.
        #[arg(long = "super")]
        superuser: bool,
        #[command(flatten)]
        password: NewPassword,
    },
    /// Change a user's password (from --password-stdin or QUIVER_NEW_PASSWORD).
    Passwd {
        /// The user name.
        name: String,
        #[command(flatten)]
        password: NewPassword,
    },
    /// Delete a user and its rules.
    Delete {
        /// The user name.
        name: String,
    },
    /// List users: name, role, number of rules.
    List,
}

/// Where a new password comes from.
#[derive(Args)]
pub(crate) struct NewPassword {
    /// Read the new password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl NewPassword {
    fn read(&self) -> anyhow::Result<String> {
        let pw = if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        } else {
            std::env::var("QUIVER_NEW_PASSWORD").map_err(|_| {
                anyhow::anyhow!(
                    "no password given: pass --password-stdin (and type or pipe it) or set \
                     QUIVER_NEW_PASSWORD"
                )
            })?
        };
        anyhow::ensure!(
            pw.chars().count() >= 8,
            "the password is shorter than 8 characters"
        );
        Ok(pw)
    }
}

#[derive(Subcommand)]
pub(crate) enum AclCommand {
    /// Allow (or with --deny, deny) actions on resources to a user. Applies at once, also
    /// to its open connections.
    Grant {
        /// The user.
        #[arg(value_name = "USER")]
        name: String,
        #[command(flatten)]
        rule: RuleArgs,
    },
    /// Remove actions from the user's rule with the same resource, decision and source.
    Revoke {
        /// The user.
        #[arg(value_name = "USER")]
        name: String,
        #[command(flatten)]
        rule: RuleArgs,
    },
    /// A user's rules, or every user's.
    List {
        /// The user (all users when omitted).
        #[arg(value_name = "USER")]
        name: Option<String>,
    },
}

/// One rule on the command line.
#[derive(Args)]
pub(crate) struct RuleArgs {
    /// What the rule is about: topic:NAME, topic:PREFIX*, group:NAME, group:PREFIX*,
    /// cluster, or * (everything).
    #[arg(long, value_name = "PATTERN")]
    resource: String,
    /// Comma-separated: send, consume, create, update, delete, describe, plugin, admin, or
    /// all.
    #[arg(long, value_name = "ACTIONS")]
    actions: String,
    /// A deny rule (wins over any allow).
    #[arg(long)]
    deny: bool,
    /// Only for requests from this address or CIDR range (e.g. 10.0.0.0/8).
    #[arg(long, value_name = "CIDR")]
    source: Option<String>,
}

impl RuleArgs {
    fn rule(&self) -> anyhow::Result<AclRule> {
        Ok(AclRule {
            resource: self.resource.clone(),
            actions: actions::parse(&self.actions).map_err(anyhow::Error::msg)?,
            decision: if self.deny {
                Decision::Deny
            } else {
                Decision::Allow
            },
            source: self.source.clone().unwrap_or_default(),
        })
    }
}

fn done(out: &mut Out, what: &str, name: &str) -> anyhow::Result<()> {
    if out.json {
        out.json(&serde_json::json!({ "user": name, "result": what }))
    } else {
        out.line(&format!("user {name}: {what}"))?;
        Ok(())
    }
}

pub(crate) async fn run_user(admin: &Admin, out: &mut Out, c: UserCommand) -> anyhow::Result<()> {
    match c {
        UserCommand::Create {
            name,
            superuser,
            password,
        } => {
            let pw = password.read()?;
            let role = if superuser { Role::Super } else { Role::Normal };
            admin
                .create_user(&name, &pw, role)
                .await
                .with_context(|| format!("creating user {name:?}"))?;
            done(out, &format!("created ({})", role.name()), &name)
        }
        UserCommand::Passwd { name, password } => {
            let pw = password.read()?;
            admin
                .change_password(&name, &pw)
                .await
                .with_context(|| format!("changing the password of {name:?}"))?;
            done(out, "password changed", &name)
        }
        UserCommand::Delete { name } => {
            admin
                .delete_user(&name)
                .await
                .with_context(|| format!("deleting user {name:?}"))?;
            done(out, "deleted", &name)
        }
        UserCommand::List => {
            let list = admin.list_users().await.context("listing users")?;
            if out.json {
                return out.json(&list);
            }
            let users = list["users"].as_array().cloned().unwrap_or_default();
            out.line(&format!("{:<24} {:<7} {:>5}", "USER", "ROLE", "RULES"))?;
            for u in &users {
                out.line(&format!(
                    "{:<24} {:<7} {:>5}",
                    u["name"].as_str().unwrap_or("?"),
                    u["role"].as_str().unwrap_or("?"),
                    u["rules"]
                ))?;
            }
            if users.is_empty() {
                out.line("(no users: this broker does not check access)")?;
            }
            Ok(())
        }
    }
}

pub(crate) async fn run_acl(admin: &Admin, out: &mut Out, c: AclCommand) -> anyhow::Result<()> {
    match c {
        AclCommand::Grant { name: user, rule } => {
            let r = rule.rule()?;
            admin
                .grant(&user, r.clone())
                .await
                .with_context(|| format!("granting to {user:?}"))?;
            done(out, &describe(&r), &user)
        }
        AclCommand::Revoke { name: user, rule } => {
            let r = rule.rule()?;
            admin
                .revoke(&user, r.clone())
                .await
                .with_context(|| format!("revoking from {user:?}"))?;
            done(out, &format!("revoked {}", describe(&r)), &user)
        }
        AclCommand::List { name: user } => {
            let list = admin
                .list_rules(user.as_deref())
                .await
                .context("listing rules")?;
            if out.json {
                return out.json(&list);
            }
            out.line(&format!(
                "{:<16} {:<6} {:<28} {:<40} SOURCE",
                "USER", "RULE", "RESOURCE", "ACTIONS"
            ))?;
            for u in list["users"].as_array().cloned().unwrap_or_default() {
                let name = u["user"].as_str().unwrap_or("?");
                if u["role"] == "super" {
                    out.line(&format!(
                        "{name:<16} super  (everything; rules do not apply)"
                    ))?;
                }
                for r in u["rules"].as_array().cloned().unwrap_or_default() {
                    out.line(&format!(
                        "{name:<16} {:<6} {:<28} {:<40} {}",
                        r["decision"].as_str().unwrap_or("?"),
                        r["resource"].as_str().unwrap_or("?"),
                        r["actions"].as_str().unwrap_or("?"),
                        r["source"].as_str().unwrap_or("any"),
                    ))?;
                }
            }
            Ok(())
        }
    }
}

fn describe(r: &AclRule) -> String {
    let from = if r.source.is_empty() {
        String::new()
    } else {
        format!(" from {}", r.source)
    };
    format!(
        "{} {} on {}{from}",
        r.decision.name(),
        actions::names(r.actions),
        r.resource
    )
}
