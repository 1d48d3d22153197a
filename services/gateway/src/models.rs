//! The model names a client may ask for: `triage-auto` (the router
//! decides), `triage-tier1` and `triage-tier2` (a forced tier, through the
//! request's `tier` field) and configured aliases of those three.

use std::collections::BTreeMap;

use serde::Serialize;

/// Routed by the router's score.
pub const AUTO: &str = "triage-auto";
/// Forced to tier 1.
pub const TIER1: &str = "triage-tier1";
/// Forced to tier 2.
pub const TIER2: &str = "triage-tier2";

/// One name in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// The name clients send.
    pub id: String,
    /// The forced tier, or `None` for routed.
    pub tier: Option<u8>,
}

/// An alias that does not name one of the three models.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAlias {
    /// Its target is not a Triage model.
    #[error("alias {alias:?} points to {target:?}; it must be one of {AUTO}, {TIER1}, {TIER2}")]
    UnknownTarget {
        /// The alias.
        alias: String,
        /// What it points to.
        target: String,
    },
    /// It would hide a Triage model.
    #[error("alias {0:?} is the name of a Triage model")]
    Shadows(String),
}

/// The names, in listing order.
#[derive(Debug, Clone)]
pub struct Catalogue {
    models: Vec<Model>,
}

fn builtin(name: &str) -> Option<Option<u8>> {
    match name {
        AUTO => Some(None),
        TIER1 => Some(Some(1)),
        TIER2 => Some(Some(2)),
        _ => None,
    }
}

impl Catalogue {
    /// The three models and `aliases` (alias → one of the three).
    pub fn new(aliases: &BTreeMap<String, String>) -> Result<Self, InvalidAlias> {
        let mut models: Vec<Model> = [AUTO, TIER1, TIER2]
            .iter()
            .map(|id| Model {
                id: id.to_string(),
                tier: builtin(id).flatten(),
            })
            .collect();
        for (alias, target) in aliases {
            if builtin(alias).is_some() {
                return Err(InvalidAlias::Shadows(alias.clone()));
            }
            let tier = builtin(target).ok_or_else(|| InvalidAlias::UnknownTarget {
                alias: alias.clone(),
                target: target.clone(),
            })?;
            models.push(Model {
                id: alias.clone(),
                tier,
            });
        }
        Ok(Self { models })
    }

    /// The model a client's `model` names.
    pub fn resolve(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.id == name)
    }

    /// The body of `GET /v1/models`.
    pub fn list(&self, created: u64) -> ModelList<'_> {
        ModelList {
            object: "list",
            data: self.models.iter().map(|m| self.card(m, created)).collect(),
        }
    }

    /// One model's card, as in `GET /v1/models/{id}`.
    pub fn card<'a>(&self, model: &'a Model, created: u64) -> ModelCard<'a> {
        ModelCard {
            id: &model.id,
            object: "model",
            created,
            owned_by: "triage",
        }
    }
}

/// `{"object": "list", "data": [...]}`.
#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelCard<'a>>,
}

/// OpenAI's model object.
#[derive(Debug, Serialize)]
pub struct ModelCard<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_and_aliases_resolve_to_their_tier() {
        let aliases = BTreeMap::from([
            ("gpt-4o-mini".to_string(), TIER1.to_string()),
            ("gpt-4o".to_string(), AUTO.to_string()),
        ]);
        let c = Catalogue::new(&aliases).unwrap();
        assert_eq!(c.resolve(AUTO).unwrap().tier, None);
        assert_eq!(c.resolve(TIER1).unwrap().tier, Some(1));
        assert_eq!(c.resolve(TIER2).unwrap().tier, Some(2));
        assert_eq!(c.resolve("gpt-4o-mini").unwrap().tier, Some(1));
        assert_eq!(c.resolve("gpt-4o").unwrap().tier, None);
        assert!(c.resolve("gpt-5").is_none());
        let listed = serde_json::to_value(c.list(7)).unwrap();
        let ids: Vec<&str> = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [AUTO, TIER1, TIER2, "gpt-4o", "gpt-4o-mini"]);
        assert_eq!(listed["object"], "list");
        assert_eq!(listed["data"][0]["object"], "model");
        assert_eq!(listed["data"][0]["created"], 7);
    }

    #[test]
    fn aliases_must_point_at_a_triage_model_and_not_hide_one() {
        let bad = BTreeMap::from([("x".to_string(), "x2".to_string())]);
        assert!(matches!(
            Catalogue::new(&bad),
            Err(InvalidAlias::UnknownTarget { .. })
        ));
        let shadow = BTreeMap::from([(TIER1.to_string(), TIER2.to_string())]);
        assert!(matches!(
            Catalogue::new(&shadow),
            Err(InvalidAlias::Shadows(_))
        ));
    }
}
