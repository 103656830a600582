//! `enrich`: a Quiver transform plugin that adds configured properties to every message, and
//! optionally the body size and a tag taken from a property (see README.md).

use std::sync::OnceLock;

use quiver_plugin::{is_reserved_property, Config, Message};

/// What to add, read from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `set.NAME=VALUE` pairs, in order.
    pub set: Vec<(String, String)>,
    /// `size_property=NAME`: property receiving the body size in bytes.
    pub size_property: Option<String>,
    /// `tag_from=PROPERTY`: property whose value becomes the tag when present and non-empty.
    pub tag_from: Option<String>,
    /// `keep_existing=true`: a `set.` property does not replace a value the message has.
    pub keep_existing: bool,
}

fn property_name(key: &str, name: &str) -> Result<String, String> {
    let name = name.trim();
    if is_reserved_property(name) {
        return Err(format!(
            "{key}: {name:?} is not a usable property name (empty, reserved or starting with __)"
        ));
    }
    Ok(name.to_owned())
}

impl Settings {
    /// Reads the configuration; the error says what is wrong.
    pub fn from_config(config: &Config) -> Result<Settings, String> {
        let mut settings = Settings::default();
        for (key, value) in config.iter() {
            if let Some(name) = key.strip_prefix("set.") {
                let name = property_name(key, name)?;
                settings.set.retain(|(n, _)| *n != name);
                settings.set.push((name, value.to_owned()));
            } else {
                match key {
                    "size_property" => {
                        settings.size_property = Some(property_name(key, value)?);
                    }
                    "tag_from" => {
                        let name = value.trim();
                        if name.is_empty() {
                            return Err(
                                "tag_from is empty: name the property to take the tag from".into(),
                            );
                        }
                        settings.tag_from = Some(name.to_owned());
                    }
                    "keep_existing" => settings.keep_existing = config.get_bool(key, false)?,
                    _ => {
                        return Err(format!(
                            "unknown configuration key {key:?}: enrich takes set.NAME, \
                             size_property, tag_from and keep_existing"
                        ))
                    }
                }
            }
        }
        if settings.set.is_empty()
            && settings.size_property.is_none()
            && settings.tag_from.is_none()
        {
            return Err(
                "nothing to do: configure set.NAME=VALUE, size_property=NAME or tag_from=PROPERTY"
                    .into(),
            );
        }
        Ok(settings)
    }

    /// Adds the configured properties and tag to `msg`. The body is never copied.
    pub fn apply<'a>(&self, mut msg: Message<'a>) -> Message<'a> {
        for (name, value) in &self.set {
            if !(self.keep_existing && msg.property(name).is_some()) {
                msg.set_property(name, value);
            }
        }
        if let Some(name) = &self.size_property {
            let size = msg.body().len().to_string();
            msg.set_property(name, &size);
        }
        if let Some(from) = &self.tag_from {
            if let Some(tag) = msg
                .property(from)
                .filter(|t| !t.is_empty() && *t != msg.tag())
            {
                let tag = tag.to_owned();
                msg.set_tag(tag);
            }
        }
        msg
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

#[quiver_plugin::init]
fn init(config: &Config) -> Result<(), String> {
    let settings = Settings::from_config(config)?;
    quiver_plugin::info!(
        "adding {} properties{}{}",
        settings.set.len(),
        settings
            .size_property
            .as_deref()
            .map(|p| format!(", body size as {p}"))
            .unwrap_or_default(),
        settings
            .tag_from
            .as_deref()
            .map(|p| format!(", tag from {p}"))
            .unwrap_or_default(),
    );
    SETTINGS
        .set(settings)
        .map_err(|_| "enrich was initialised twice".to_string())
}

#[quiver_plugin::transform]
fn enrich(msg: Message<'_>) -> Message<'_> {
    match SETTINGS.get() {
        Some(settings) => settings.apply(msg),
        // The broker always runs `init` first.
        None => panic!("enrich: no settings (quiver_init was not called)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        Settings::from_config(&Config::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn adds_properties_size_and_tag() {
        let s = settings(&[
            ("set.env", "prod"),
            ("set.region", "eu-west"),
            ("size_property", "body_size"),
            ("tag_from", "kind"),
        ])
        .unwrap();
        let body = b"hello world";
        let mut msg = Message::new("orders", body);
        msg.set_property("kind", "created");
        msg.set_property("env", "dev");
        let out = s.apply(msg);
        assert_eq!(out.property("env"), Some("prod"));
        assert_eq!(out.property("region"), Some("eu-west"));
        assert_eq!(out.property("body_size"), Some("11"));
        assert_eq!(out.tag(), "created");
        assert_eq!(out.body().as_ptr(), body.as_ptr(), "the body is not copied");
    }

    #[test]
    fn keep_existing_and_missing_tag_source() {
        let s = settings(&[
            ("set.env", "prod"),
            ("keep_existing", "true"),
            ("tag_from", "kind"),
        ])
        .unwrap();
        let mut msg = Message::new("orders", b"");
        msg.set_property("env", "dev");
        msg.set_tag("original");
        let out = s.apply(msg);
        assert_eq!(out.property("env"), Some("dev"));
        assert_eq!(out.tag(), "original");
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(settings(&[]).unwrap_err().contains("nothing to do"));
        assert!(settings(&[("set.", "x")])
            .unwrap_err()
            .contains("not a usable"));
        assert!(settings(&[("set.KEYS", "x")])
            .unwrap_err()
            .contains("reserved"));
        assert!(settings(&[("size_property", "__x")])
            .unwrap_err()
            .contains("reserved"));
        assert!(settings(&[("tag_from", " ")])
            .unwrap_err()
            .contains("tag_from is empty"));
        assert!(settings(&[("set.a", "1"), ("sett.b", "2")])
            .unwrap_err()
            .contains("unknown configuration key \"sett.b\""));
        assert!(settings(&[("set.a", "1"), ("keep_existing", "perhaps")])
            .unwrap_err()
            .contains("not a boolean"));
        // A later set. of the same name wins.
        let s = settings(&[("set.a", "1"), ("set.a", "2")]).unwrap();
        assert_eq!(s.set, [("a".to_owned(), "2".to_owned())]);
    }
}
