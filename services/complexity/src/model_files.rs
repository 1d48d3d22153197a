//! Where the embedding model's files live.

use std::path::{Path, PathBuf};

/// The directory name of all-MiniLM-L6-v2 under `$TRIAGE_CACHE/models`.
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";

/// The three files of a BERT-style sentence embedding model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The directory holding them.
    pub dir: PathBuf,
}

/// A model file that is not where it should be.
#[derive(Debug, thiserror::Error)]
#[error("model file {path} is missing ({hint})")]
pub struct MissingModelFile {
    /// The path looked for.
    pub path: PathBuf,
    /// What to do about it.
    pub hint: &'static str,
}

const SETUP_HINT: &str = "run the project set-up, which fetches all-MiniLM-L6-v2 into $TRIAGE_CACHE/models, or point the model directory at a copy";

impl ModelFiles {
    /// Files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$TRIAGE_CACHE/models/all-MiniLM-L6-v2`, the set-up's location.
    pub fn default_minilm() -> Self {
        Self::new(triage_cache_dir().join("models").join(MINILM_DIR))
    }

    /// `model.safetensors`.
    pub fn weights(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }

    /// `tokenizer.json`.
    pub fn tokenizer(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Fails with the first missing file, naming it and the fix.
    pub fn check(&self) -> Result<(), MissingModelFile> {
        for path in [self.weights(), self.tokenizer(), self.config()] {
            if !path.is_file() {
                return Err(MissingModelFile {
                    path,
                    hint: SETUP_HINT,
                });
            }
        }
        Ok(())
    }
}

/// `$TRIAGE_CACHE`, or `$HOME/.cache/triage` when unset.
pub fn triage_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRIAGE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache").join("triage")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelFiles::new(dir.path()).check().unwrap_err();
        assert_eq!(err.path, dir.path().join("model.safetensors"));
        assert!(err.to_string().contains("set-up"));
    }
}
