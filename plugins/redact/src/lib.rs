//! `redact`: a Quiver transform plugin that masks card numbers and email addresses in message
//! bodies and in chosen properties (see README.md).

use std::sync::OnceLock;

use quiver_plugin::{Config, Message};

mod scan;

pub use scan::{mask_cards, mask_emails};

/// What to mask and where, read from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Mask card numbers (`mask_cards`, default true).
    pub cards: bool,
    /// Only mask digit runs that pass the Luhn check (`luhn`, default true).
    pub luhn: bool,
    /// Mask email addresses (`mask_emails`, default true).
    pub emails: bool,
    /// Properties whose values are redacted too (`properties=a,b`, default none).
    pub properties: Vec<String>,
    /// Property set to `true` on messages where something was masked (`mark_property`, default
    /// `redacted`; empty = none).
    pub mark: Option<String>,
}

impl Settings {
    /// Reads the configuration; the error says what is wrong.
    pub fn from_config(config: &Config) -> Result<Settings, String> {
        const KEYS: [&str; 5] = [
            "mask_cards",
            "luhn",
            "mask_emails",
            "properties",
            "mark_property",
        ];
        if let Some((key, _)) = config.iter().find(|(k, _)| !KEYS.contains(k)) {
            return Err(format!(
                "unknown configuration key {key:?}: redact takes {}",
                KEYS.join(", ")
            ));
        }
        let settings = Settings {
            cards: config.get_bool("mask_cards", true)?,
            luhn: config.get_bool("luhn", true)?,
            emails: config.get_bool("mask_emails", true)?,
            properties: config
                .get("properties")
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            mark: match config.get("mark_property").map(str::trim) {
                None => Some("redacted".to_owned()),
                Some("") => None,
                Some(name) if quiver_plugin::is_reserved_property(name) => {
                    return Err(format!(
                        "mark_property={name:?} is a reserved property name"
                    ))
                }
                Some(name) => Some(name.to_owned()),
            },
        };
        if !settings.cards && !settings.emails {
            return Err("mask_cards=false and mask_emails=false: nothing left to redact".into());
        }
        Ok(settings)
    }

    /// `text` with what these settings mask masked; `None` when nothing was.
    pub fn redact(&self, text: &str) -> Option<String> {
        let cards = if self.cards {
            mask_cards(text, self.luhn)
        } else {
            None
        };
        let current = cards.as_deref().unwrap_or(text);
        let emails = if self.emails {
            mask_emails(current)
        } else {
            None
        };
        emails.or(cards)
    }

    /// Redacts the body (when it is UTF-8) and the configured properties of `msg`. Unchanged
    /// fields stay borrowed from the input (no copy).
    pub fn apply<'a>(&self, mut msg: Message<'a>) -> Message<'a> {
        let mut changed = false;
        if let Some(body) = msg.body_str().and_then(|b| self.redact(b)) {
            msg.set_body(body);
            changed = true;
        }
        for name in &self.properties {
            if let Some(value) = msg.property(name).and_then(|v| self.redact(v)) {
                msg.set_property(name, &value);
                changed = true;
            }
        }
        if let (true, Some(mark)) = (changed, &self.mark) {
            msg.set_property(mark, "true");
        }
        msg
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

#[quiver_plugin::init]
fn init(config: &Config) -> Result<(), String> {
    let settings = Settings::from_config(config)?;
    quiver_plugin::info!(
        "masking cards: {} (luhn: {}), emails: {}, properties: {:?}",
        settings.cards,
        settings.luhn,
        settings.emails,
        settings.properties
    );
    SETTINGS
        .set(settings)
        .map_err(|_| "redact was initialised twice".to_string())
}

#[quiver_plugin::transform]
fn redact(msg: Message<'_>) -> Message<'_> {
    match SETTINGS.get() {
        Some(settings) => settings.apply(msg),
        // The broker always runs `init` first.
        None => panic!("redact: no settings (quiver_init was not called)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_config(&Config::from_pairs(pairs.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_and_refusals() {
        let s = settings(&[]);
        assert!(s.cards && s.luhn && s.emails);
        assert!(s.properties.is_empty());
        assert_eq!(s.mark.as_deref(), Some("redacted"));
        let s = settings(&[("properties", " note, ,email "), ("mark_property", "")]);
        assert_eq!(s.properties, ["note", "email"]);
        assert_eq!(s.mark, None);
        let refuse = |pairs: &[(&str, &str)]| {
            Settings::from_config(&Config::from_pairs(pairs.iter().copied())).unwrap_err()
        };
        assert!(refuse(&[("mask_cards", "false"), ("mask_emails", "no")]).contains("nothing"));
        assert!(refuse(&[("mask_cards", "maybe")]).contains("not a boolean"));
        assert!(refuse(&[("mask_card", "false")]).contains("unknown configuration key"));
        assert!(refuse(&[("mark_property", "KEYS")]).contains("reserved"));
    }

    #[test]
    fn body_and_properties_are_redacted_and_marked() {
        let s = settings(&[("properties", "note,other")]);
        let body = "card 4111 1111 1111 1111 from john.doe@example.com";
        let mut msg = Message::new("t", body.as_bytes());
        msg.set_property("note", "mail jane@example.org");
        msg.set_property("keep", "bob@example.org");
        let out = s.apply(msg);
        assert_eq!(
            out.body_str(),
            Some("card **** **** **** 1111 from j***@example.com")
        );
        assert_eq!(out.property("note"), Some("mail j***@example.org"));
        assert_eq!(out.property("keep"), Some("bob@example.org"));
        assert_eq!(out.property("redacted"), Some("true"));
    }

    #[test]
    fn nothing_to_mask_changes_nothing() {
        let s = settings(&[("properties", "note")]);
        let body = b"order 42 shipped";
        let out = s.apply(Message::new("t", body));
        assert_eq!(
            out.body().as_ptr(),
            body.as_ptr(),
            "the body is still borrowed"
        );
        assert_eq!(out.properties().count(), 0, "no mark");
        // Binary bodies are left alone.
        let binary = [0xff, b'a', b'@', b'b', b'.', b'c', b'o'];
        let out = s.apply(Message::new("t", &binary));
        assert_eq!(out.body(), binary);
    }

    #[test]
    fn switches() {
        let text = "4111111111111111 a.b@c.io";
        let cards_only = settings(&[("mask_emails", "false")]);
        assert_eq!(
            cards_only.redact(text).as_deref(),
            Some("************1111 a.b@c.io")
        );
        let emails_only = settings(&[("mask_cards", "false")]);
        assert_eq!(
            emails_only.redact(text).as_deref(),
            Some("4111111111111111 a***@c.io")
        );
        let both = settings(&[]);
        assert_eq!(
            both.redact(text).as_deref(),
            Some("************1111 a***@c.io")
        );
        assert_eq!(both.redact("nothing here"), None);
    }
}
