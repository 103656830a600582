//! `json_filter`: a Quiver filter plugin that keeps the messages whose JSON body has a field
//! matching a predicate given in the configuration (see README.md).

use std::sync::OnceLock;

use quiver_plugin::{Config, Message};

mod predicate;

use predicate::Predicate;

/// The predicate of this instance, set once by `init`.
static PREDICATE: OnceLock<Predicate> = OnceLock::new();

#[quiver_plugin::init]
fn init(config: &Config) -> Result<(), String> {
    let predicate = Predicate::from_config(config)?;
    quiver_plugin::info!("keeping messages whose JSON body has {predicate}");
    PREDICATE
        .set(predicate)
        .map_err(|_| "json_filter was initialised twice".to_string())
}

#[quiver_plugin::filter]
fn json_filter(msg: &Message) -> bool {
    // The broker always runs `init` first; without a predicate nothing matches.
    PREDICATE.get().is_some_and(|p| p.matches_body(msg.body()))
}
