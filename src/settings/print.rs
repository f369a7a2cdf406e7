//! Printing the effective configuration.

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlEmitter};

use super::{ConfigSources, Settings};

/// Keys whose values are secrets (or may hold a password) and are never
/// printed.
const SECRET_KEYS: &[&str] = &[
    "security.pepper",
    "security.scrape_token",
    "auth.bootstrap_key",
    "storage.database_url",
    "storage.redis_url",
];

impl Settings {
    /// The effective configuration as YAML, with the layers it came from in
    /// a comment and every secret replaced by `[redacted]`.
    pub fn to_redacted_yaml(&self, sources: &ConfigSources) -> String {
        let mut layers = vec!["config/default.yaml".to_owned()];
        layers.extend(sources.profile.iter().map(|profile| format!("config/{profile}.yaml")));
        layers.extend(sources.file.iter().map(|path| path.display().to_string()));
        layers.push("BLAZE__* environment variables".to_owned());
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut text = String::new();
        let mut emitter = YamlEmitter::new(&mut text);
        if emitter.dump(&to_yaml("", &value)).is_err() {
            return format!("# cannot print the configuration\n{self:?}\n");
        }
        format!(
            "# effective configuration, from: {}\n{}\n",
            layers.join(" < "),
            text.trim_start_matches("---\n")
        )
    }
}

fn to_yaml(path: &str, value: &serde_json::Value) -> Yaml {
    use serde_json::Value as Json;
    if SECRET_KEYS.contains(&path) && !value.is_null() && value.as_str() != Some("") {
        return Yaml::String("[redacted]".to_owned());
    }
    match value {
        Json::Null => Yaml::Null,
        Json::Bool(flag) => Yaml::Boolean(*flag),
        Json::Number(number) => match number.as_i64() {
            Some(integer) => Yaml::Integer(integer),
            None => Yaml::Real(number.to_string()),
        },
        Json::String(text) => Yaml::String(text.clone()),
        Json::Array(items) => Yaml::Array(items.iter().map(|item| to_yaml(path, item)).collect()),
        Json::Object(fields) => {
            let mut hash = Hash::new();
            for (name, field) in fields {
                let child = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                hash.insert(Yaml::String(name.clone()), to_yaml(&child, field));
            }
            Yaml::Hash(hash)
        }
    }
}
