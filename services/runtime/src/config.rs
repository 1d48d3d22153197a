//! Configuration: one typed struct per service, from defaults, then a TOML
//! file, then environment variables (`PREFIX_FIELD`, nested with `__`, e.g.
//! `TRIAGE_WORKER_NATS__URL`).

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::masking::{is_secret_name, mask_url};

/// Configuration that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(String),
    /// A value is missing or ill-typed (figment names the key and source).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from its defaults, the optional TOML `file` and environment
/// variables starting with `env_prefix` (e.g. `TRIAGE_ROUTER_`).
/// `<prefix>CONFIG` names the file (the `--config` option's variable), so it
/// is not read as a setting: configurations that refuse unknown keys would
/// otherwise refuse to start whenever it is set.
pub fn load<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed(env_prefix).ignore(&["CONFIG"]).split("__"));
    figment
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// Loads `T` from its defaults and a TOML `text` (no file, no environment):
/// what `load` does with a file's contents, for tests and fuzzing.
pub fn load_toml_str<T>(text: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    Figment::from(Serialized::defaults(T::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// Every key of a configuration as a dotted path (`batching.max_batch`):
/// the leaves of its serialised form, an empty table counting as one. The
/// services' tests check their `--help` text names each.
pub fn keys<T: Serialize>(config: &T) -> Vec<String> {
    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&path, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    leaves(
        "",
        &serde_json::to_value(config).unwrap_or_default(),
        &mut out,
    );
    out
}

/// The configuration as pretty JSON with secrets masked: values of keys
/// that name a secret, and passwords embedded in URLs.
pub fn masked<T: Serialize>(config: &T) -> String {
    let mut value = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    mask_value(&mut value, false);
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

fn mask_value(value: &mut serde_json::Value, secret: bool) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                mask_value(v, secret || is_secret_name(k));
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| mask_value(v, secret)),
        serde_json::Value::String(s) if secret && !s.is_empty() => *s = "***".into(),
        serde_json::Value::String(s) => *s = mask_url(s),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn keys_are_the_dotted_leaves_and_an_empty_table_is_one() {
        let config = serde_json::json!({
            "a": 1,
            "b": { "c": "x", "d": { "e": null } },
            "pins": {},
            "list": [1, 2],
        });
        let mut got = keys(&config);
        got.sort();
        assert_eq!(got, ["a", "b.c", "b.d.e", "list", "pins"]);
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Inner {
        url: String,
        password: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Sample {
        name: String,
        port: u16,
        inner: Inner,
        api_key: Option<String>,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                name: "svc".into(),
                port: 9000,
                inner: Inner::default(),
                api_key: None,
            }
        }
    }

    #[test]
    fn toml_text_loads_over_the_defaults_and_bad_text_is_an_error() {
        #[derive(Debug, Default, Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct C {
            port: u16,
            name: String,
        }
        let c: C = load_toml_str("port = 8080").unwrap();
        assert_eq!((c.port, c.name.as_str()), (8080, ""));
        assert!(load_toml_str::<C>("port = \"high\"").is_err());
        assert!(load_toml_str::<C>("colour = 1").is_err());
        assert!(load_toml_str::<C>("[[[").is_err());
    }

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "port = 9100\n[inner]\nurl = \"postgres://u:pw@h/db\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("TESTSVC_NAME", "from-env");
            jail.set_env("TESTSVC_INNER__PASSWORD", "hunter2");
            let c: Sample = load(Some(&path), "TESTSVC_").unwrap();
            assert_eq!(c.name, "from-env");
            assert_eq!(c.port, 9100);
            assert_eq!(c.inner.password.as_deref(), Some("hunter2"));
            Ok(())
        });
    }

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Strict {
        name: String,
    }

    #[test]
    fn the_config_file_variable_is_not_a_setting() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("strict.toml", "name = \"from-file\"")?;
            jail.set_env("TESTSTRICT_CONFIG", "strict.toml");
            jail.set_env("TESTSTRICT_NAME", "from-env");
            let c: Strict = load(Some(Path::new("strict.toml")), "TESTSTRICT_").unwrap();
            assert_eq!(c.name, "from-env");
            // Any other unknown key is still refused.
            jail.set_env("TESTSTRICT_NAEM", "typo");
            let err = load::<Strict>(None, "TESTSTRICT_").unwrap_err().to_string();
            assert!(err.contains("naem"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_and_bad_values_are_specific_errors() {
        assert!(matches!(
            load::<Sample>(Some(Path::new("/nonexistent/x.toml")), "X_"),
            Err(ConfigError::MissingFile(_))
        ));
        figment::Jail::expect_with(|jail| {
            jail.set_env("TESTBAD_PORT", "not-a-port");
            let err = load::<Sample>(None, "TESTBAD_").unwrap_err().to_string();
            assert!(err.contains("port"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let c = Sample {
            inner: Inner {
                url: "postgres://u:pw@h/db".into(),
                password: Some("hunter2".into()),
            },
            api_key: Some("sk-123".into()),
            ..Sample::default()
        };
        let shown = masked(&c);
        assert!(
            !shown.contains("hunter2") && !shown.contains("sk-123") && !shown.contains(":pw@"),
            "{shown}"
        );
        assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
    }
}
