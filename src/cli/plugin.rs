//! `quiver admin plugin`: load, reload, unload, list, describe, attach and detach WebAssembly
//! plugins (docs/PLUGINS.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use quiver_client::{Admin, PluginInfo};

use super::output::Out;

#[derive(Subcommand)]
pub(crate) enum PluginCommand {
    /// Load a plugin (.wasm, or .wat text) under a new name; the broker keeps it across
    /// restarts.
    Load {
        /// Plugin name: 1-127 characters from A-Z a-z 0-9 _ % | -
        name: String,
        /// The module file.
        file: PathBuf,
        /// Configuration given to the plugin's init, `KEY=VALUE` (repeatable).
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_pair)]
        config: Vec<(String, String)>,
        /// Memory limit per instance, e.g. `16MiB` (default: the broker's, 16 MiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        memory_limit: Option<u64>,
        /// Time limit per batch in ms (default: the broker's, 100 ms).
        #[arg(long, value_name = "MS")]
        time_limit_ms: Option<u32>,
    },
    /// Replace a plugin atomically (new module and/or configuration); clears an unhealthy mark.
    Reload {
        /// Plugin name.
        name: String,
        /// A new module file (default: keep the current module).
        file: Option<PathBuf>,
        /// A new configuration, `KEY=VALUE` (repeatable; default: keep the current one).
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_pair)]
        config: Vec<(String, String)>,
        /// Replace the configuration with an empty one.
        #[arg(long, conflicts_with = "config")]
        clear_config: bool,
        /// A new memory limit per instance, e.g. `32MiB`.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        memory_limit: Option<u64>,
        /// A new time limit per batch in ms.
        #[arg(long, value_name = "MS")]
        time_limit_ms: Option<u32>,
    },
    /// Unload a plugin.
    Unload {
        /// Plugin name.
        name: String,
        /// Also detach it from the topics whose ingress runs it.
        #[arg(long)]
        force: bool,
    },
    /// List loaded plugins with their health and counters.
    List,
    /// Show one plugin in detail.
    Describe {
        /// Plugin name.
        name: String,
    },
    /// Run a plugin on every send to a topic, before it is stored (validate, enrich, redact).
    Attach {
        /// Plugin name.
        name: String,
        /// Topic.
        #[arg(long, short = 't')]
        topic: String,
    },
    /// Stop running a plugin on a topic's sends.
    Detach {
        /// Plugin name.
        name: String,
        /// Topic.
        #[arg(long, short = 't')]
        topic: String,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `1048576`, `64KiB`, `16MiB`, `1GiB` (also KB/MB/GB as powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("expected a size such as 16MiB, got {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("unknown size unit {u:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size {s:?} is out of range"))
}

impl PluginCommand {
    /// Names to check before connecting.
    pub(crate) fn names(&self) -> Vec<(&'static str, &str)> {
        match self {
            PluginCommand::Load { name, .. }
            | PluginCommand::Reload { name, .. }
            | PluginCommand::Unload { name, .. }
            | PluginCommand::Describe { name } => vec![("plugin", name)],
            PluginCommand::Attach { name, topic } | PluginCommand::Detach { name, topic } => {
                vec![("plugin", name), ("topic", topic)]
            }
            PluginCommand::List => vec![],
        }
    }
}

fn describe(out: &mut Out, p: &PluginInfo) -> anyhow::Result<()> {
    if out.json {
        return out.json(&quiver::plugin::PluginView::from(p));
    }
    let config: Vec<String> = p.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let lines = [
        format!("name:          {}", p.name),
        format!("kind:          {}", p.kind.name()),
        format!("version:       {}", p.version),
        format!(
            "health:        {}",
            if p.healthy {
                "healthy".to_string()
            } else {
                format!("UNHEALTHY ({} failures in a row)", p.consecutive_failures)
            }
        ),
        format!("sha256:        {}", p.sha256),
        format!("size:          {} bytes", p.size),
        format!("config:        {}", config.join(" ")),
        format!(
            "memory limit:  {} MiB",
            p.memory_limit_bytes as f64 / 1048576.0
        ),
        format!("time limit:    {} ms per batch", p.time_limit_ms),
        format!(
            "batches:       {} ({} failed), messages in {} / out {}",
            p.batches, p.failures, p.messages_in, p.messages_out
        ),
        format!(
            "last error:    {}",
            if p.last_error.is_empty() {
                "-"
            } else {
                &p.last_error
            }
        ),
        format!(
            "ingress of:    {}",
            if p.topics.is_empty() {
                "-".to_string()
            } else {
                p.topics.join(", ")
            }
        ),
    ];
    for l in lines {
        out.line(&l)?;
    }
    Ok(())
}

fn read_module(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

pub(crate) async fn run(admin: &Admin, out: &mut Out, cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Load {
            name,
            file,
            config,
            memory_limit,
            time_limit_ms,
        } => {
            let wasm = read_module(&file)?;
            let p = admin
                .load_plugin(&name, wasm, config, memory_limit, time_limit_ms)
                .await
                .with_context(|| format!("loading plugin {name:?} from {}", file.display()))?;
            if !out.json {
                out.line(&format!(
                    "loaded {} plugin {} (version {}, sha256 {})",
                    p.kind.name(),
                    p.name,
                    p.version,
                    &p.sha256[..12.min(p.sha256.len())]
                ))?;
                return Ok(());
            }
            out.json(&quiver::plugin::PluginView::from(&p))
        }
        PluginCommand::Reload {
            name,
            file,
            config,
            clear_config,
            memory_limit,
            time_limit_ms,
        } => {
            let wasm = file.as_ref().map(read_module).transpose()?;
            let config = if clear_config {
                Some(Vec::new())
            } else if config.is_empty() {
                None
            } else {
                Some(config)
            };
            let p = admin
                .reload_plugin(
                    &name,
                    wasm.map(Into::into),
                    config,
                    memory_limit,
                    time_limit_ms,
                )
                .await
                .with_context(|| format!("reloading plugin {name:?}"))?;
            if !out.json {
                out.line(&format!(
                    "reloaded plugin {} (now version {}, sha256 {})",
                    p.name,
                    p.version,
                    &p.sha256[..12.min(p.sha256.len())]
                ))?;
                return Ok(());
            }
            out.json(&quiver::plugin::PluginView::from(&p))
        }
        PluginCommand::Unload { name, force } => {
            admin
                .unload_plugin(&name, force)
                .await
                .with_context(|| format!("unloading plugin {name:?}"))?;
            if out.json {
                return out.json(&serde_json::json!({"plugin": name, "action": "unloaded"}));
            }
            out.line(&format!("unloaded plugin {name}"))?;
            Ok(())
        }
        PluginCommand::List => {
            let list = admin.list_plugins().await.context("listing plugins")?;
            if out.json {
                for p in &list {
                    out.json(&quiver::plugin::PluginView::from(p))?;
                }
                return Ok(());
            }
            if list.is_empty() {
                eprintln!("no plugins loaded");
                return Ok(());
            }
            let w = list.iter().map(|p| p.name.len()).max().unwrap_or(0).max(6);
            out.line(&format!(
                "{:<w$}  {:<9}  {:>7}  {:<9}  {:>10}  {:>12}  {:>12}  INGRESS OF",
                "PLUGIN", "KIND", "VERSION", "HEALTH", "FAILURES", "MSGS IN", "MSGS OUT"
            ))?;
            for p in &list {
                out.line(&format!(
                    "{:<w$}  {:<9}  {:>7}  {:<9}  {:>10}  {:>12}  {:>12}  {}",
                    p.name,
                    p.kind.name(),
                    p.version,
                    if p.healthy { "healthy" } else { "UNHEALTHY" },
                    p.failures,
                    p.messages_in,
                    p.messages_out,
                    if p.topics.is_empty() {
                        "-".to_string()
                    } else {
                        p.topics.join(",")
                    }
                ))?;
            }
            Ok(())
        }
        PluginCommand::Describe { name } => {
            let p = admin
                .describe_plugin(&name)
                .await
                .with_context(|| format!("describing plugin {name:?}"))?;
            describe(out, &p)
        }
        PluginCommand::Attach { name, topic } => {
            admin
                .attach_plugin(&name, &topic)
                .await
                .with_context(|| format!("attaching plugin {name:?} to topic {topic:?}"))?;
            if out.json {
                return out.json(
                    &serde_json::json!({"plugin": name, "topic": topic, "action": "attached"}),
                );
            }
            out.line(&format!(
                "plugin {name} now runs on every send to topic {topic}"
            ))?;
            Ok(())
        }
        PluginCommand::Detach { name, topic } => {
            admin
                .detach_plugin(&name, &topic)
                .await
                .with_context(|| format!("detaching plugin {name:?} from topic {topic:?}"))?;
            if out.json {
                return out.json(
                    &serde_json::json!({"plugin": name, "topic": topic, "action": "detached"}),
                );
            }
            out.line(&format!("plugin {name} detached from topic {topic}"))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_pairs_parse() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(
            parse_pair("field=order.amount"),
            Ok(("field".into(), "order.amount".into()))
        );
        assert_eq!(parse_pair("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_pair("=x").is_err());
        assert!(parse_pair("novalue").is_err());
    }
}
