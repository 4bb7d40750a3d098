//! Where librdkafka properties come from besides vigil's defaults, lowest precedence first:
//!
//! 1. a properties file (`--kafka-config FILE`, env `VIGIL_KAFKA_CONFIG`): `key=value` lines,
//!    `#` or `!` comments, as Kafka's Java clients and kcat's `-F` read them;
//! 2. environment variables `VIGIL_KAFKA_<PROPERTY>`, the property upper-cased with dots as
//!    underscores (`VIGIL_KAFKA_SECURITY_PROTOCOL=SASL_SSL`, `VIGIL_KAFKA_SASL_PASSWORD=…`),
//!    the convention Kafka's container images use;
//! 3. `-X key=value` on the command line.
//!
//! Any librdkafka property passes through unchanged (TLS, SASL, timeouts). Values of secret
//! properties (passwords, keys, tokens) never appear in logs or `Debug` output.

use std::path::Path;

/// The environment variable prefix of property overrides.
pub const ENV_PREFIX: &str = "VIGIL_KAFKA_";

/// Variables with the prefix that are vigil options, not properties.
const NOT_PROPERTIES: &[&str] = &["VIGIL_KAFKA_CONFIG"];

/// Reads a properties file; errors name the file and line.
pub fn read_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--kafka-config {}: {e}", path.display()))?;
    parse_properties(&text)
        .map_err(|(line, msg)| format!("--kafka-config {} line {line}: {msg}", path.display()))
}

/// Parses `key=value` lines (`#`/`!` comments and blank lines skipped; spaces around the key
/// and the `=` trimmed). The error carries the 1-based line number.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with('!') {
            continue;
        }
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| (i + 1, format!("`{t}` is not key=value")))?;
        let k = k.trim();
        if k.is_empty() {
            return Err((i + 1, "empty key".into()));
        }
        out.push((k.to_string(), v.trim_start().to_string()));
    }
    Ok(out)
}

/// The properties given as `VIGIL_KAFKA_*` variables in `vars`, sorted by name.
pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| !NOT_PROPERTIES.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let prop = k.strip_prefix(ENV_PREFIX)?;
            (!prop.is_empty()).then(|| (prop.to_ascii_lowercase().replace('_', "."), v))
        })
        .collect();
    out.sort();
    out
}

/// True for properties whose value is a secret (passwords, private keys, tokens, JAAS
/// configurations): shown as `***`.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "token",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// `key=value` for messages, with a secret's value hidden.
pub fn shown(key: &str, value: &str) -> String {
    if is_secret(key) {
        format!("{key}=***")
    } else {
        format!("{key}={value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_files_as_java_clients_read_them() {
        let p = parse_properties(
            "# TLS\n security.protocol = SSL\n\n! comment\nssl.ca.location=/etc/ca.pem\nsasl.password=a=b\n",
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("security.protocol".into(), "SSL".into()),
                ("ssl.ca.location".into(), "/etc/ca.pem".into()),
                ("sasl.password".into(), "a=b".into()),
            ]
        );
        assert_eq!(parse_properties("a=1\nnonsense\n").unwrap_err().0, 2);
        assert_eq!(parse_properties(" = x").unwrap_err().0, 1);
    }

    #[test]
    fn environment_variables_map_to_properties() {
        let vars = [
            ("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("VIGIL_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512"),
            ("VIGIL_KAFKA_CONFIG", "/etc/vigil/kafka.properties"),
            ("VIGIL_KAFKA_", "x"),
            ("VIGIL_BROKERS", "b:9092"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            from_env(vars),
            vec![
                ("sasl.mechanisms".into(), "SCRAM-SHA-512".into()),
                ("security.protocol".into(), "SASL_SSL".into()),
            ]
        );
    }

    #[test]
    fn secrets_are_hidden() {
        assert_eq!(shown("sasl.password", "hunter2"), "sasl.password=***");
        assert_eq!(shown("ssl.key.password", "x"), "ssl.key.password=***");
        assert_eq!(shown("ssl.key.pem", "x"), "ssl.key.pem=***");
        assert_eq!(shown("sasl.username", "vigil"), "sasl.username=vigil");
        assert_eq!(shown("security.protocol", "SSL"), "security.protocol=SSL");
    }
}
