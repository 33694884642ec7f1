//! `--base org/name[@revision]`: a base encoder from the Hugging Face Hub.
//!
//! Uses `hf-hub`'s blocking client (ureq) and its cache, which is the Python `huggingface_hub`
//! cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`): files Python already downloaded are
//! reused, and a cached model works offline. `HF_ENDPOINT` (a mirror) and `HF_TOKEN` are honoured.
//! Only what sener reads is fetched: `config.json`; the weights (`model.safetensors`, else the
//! sharded index and its shards, else `pytorch_model.bin`); the tokenizer (`tokenizer.json`, else
//! `spm.model`); and the small tokenizer side files when present. The result is the snapshot folder,
//! an ordinary Hugging Face model folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

/// A parsed hub id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`
    pub repo: String,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
}

impl HubId {
    /// `org/name` or `org/name@revision`; `None` for anything that is not one (a local path).
    pub fn parse(s: &str) -> Option<Self> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, v)) if !v.is_empty() && !v.contains('/') => (r, v.to_string()),
            Some(_) => return None,
            None => (s, "main".to_string()),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let ok_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && !p.starts_with('-')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (parts.len() == 2 && parts.iter().all(|p| ok_part(p))).then(|| Self { repo: repo.to_string(), revision })
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// A `--base` that is not a local path: parsed as a hub id and fetched into the cache. Returns
/// the snapshot folder and `org/name@commit`.
pub fn fetch_base(base: &Path) -> Result<(PathBuf, String)> {
    let Some(id) = base.to_str().and_then(HubId::parse) else {
        bail!("--base {}: no such folder (and not a Hugging Face Hub id like org/name)", base.display());
    };
    let (dir, commit) = fetch(&id)?;
    Ok((dir, format!("{}@{commit}", id.repo)))
}

/// Fetches the files sener needs; returns the snapshot folder and its commit.
pub fn fetch(id: &HubId) -> Result<(PathBuf, String)> {
    let api = ApiBuilder::from_env().with_progress(true).build().context("setting up the Hugging Face Hub client")?;
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let repo = api.repo(Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone()));
    let offline_hint = || {
        format!(
            "could not fetch {id} from the Hugging Face Hub ({endpoint}). Without network access, download the \
             model folder elsewhere and pass its path to --base (or set HF_ENDPOINT to a reachable mirror)"
        )
    };
    let config = get(&repo, "config.json").with_context(offline_hint)?.with_context(|| format!("{id}: the repository has no config.json"))?;
    let dir = config.parent().map(Path::to_path_buf).context("hub cache path without a parent")?;
    // Everything already in the cache (an earlier fetch, or Python's): no network needed.
    let has_tokenizer = dir.join("tokenizer.json").is_file() || dir.join("spm.model").is_file();
    if has_tokenizer && sener::weights::WeightFiles::find(&dir).is_ok() {
        return Ok((dir.clone(), commit_of(&dir)));
    }
    // Weights: one safetensors file, a sharded index, or a pickle.
    if get(&repo, "model.safetensors").with_context(offline_hint)?.is_none() {
        if let Some(index) = get(&repo, "model.safetensors.index.json").with_context(offline_hint)? {
            for shard in shard_files(&index)? {
                get(&repo, &shard).with_context(offline_hint)?.with_context(|| format!("{id}: shard {shard} is missing"))?;
            }
        } else if get(&repo, "pytorch_model.bin").with_context(offline_hint)?.is_none() {
            bail!("{id}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin in the repository");
        }
    }
    if get(&repo, "tokenizer.json").with_context(offline_hint)?.is_none() && get(&repo, "spm.model").with_context(offline_hint)?.is_none() {
        bail!("{id}: no tokenizer.json or spm.model in the repository");
    }
    for side in ["tokenizer_config.json", "special_tokens_map.json"] {
        get(&repo, side).with_context(offline_hint)?;
    }
    let commit = commit_of(&dir);
    Ok((dir, commit))
}

/// The snapshot folder is named after the commit the revision resolved to.
fn commit_of(dir: &Path) -> String {
    dir.file_name().and_then(|s| s.to_str()).unwrap_or_default().to_string()
}

/// One file: `Some(path)` when fetched (or cached), `None` when the repository has no such file.
fn get(repo: &ApiRepo, file: &str) -> Result<Option<PathBuf>> {
    match repo.get(file) {
        Ok(p) => Ok(Some(p)),
        Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
        // ureq's message already includes its causes: one line, no repeated chain.
        Err(e) => Err(anyhow::anyhow!("fetching {file}: {e}")),
    }
}

fn shard_files(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", index.display()))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).with_context(|| format!("{}: no weight_map", index.display()))?;
    let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert_eq!(HubId::parse("microsoft/deberta-v3-large"), Some(HubId { repo: "microsoft/deberta-v3-large".into(), revision: "main".into() }));
        assert_eq!(HubId::parse("org/m_1.0@v2").map(|h| h.revision), Some("v2".into()));
        for not in ["models/minilm/", "./a/b", "/abs/path", "a", "a/b/c", "../x", "a/b@", "a/b@x/y", "a b/c", "-a/b"] {
            assert_eq!(HubId::parse(not), None, "{not}");
        }
    }
}
