//! Model folders and base encoders from the Hugging Face Hub (feature `hub`).
//!
//! Uses `hf-hub`'s blocking client (ureq) and its cache, which is the Python `huggingface_hub`
//! cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`): files Python already downloaded are
//! reused, and a cached model works offline. `HF_ENDPOINT` (a mirror) and `HF_TOKEN` are honoured.
//!
//! - [`fetch_encoder`] (`sener train --base org/name`): only what sener reads: `config.json`; the
//!   weights (`model.safetensors`, else the sharded index and its shards, else
//!   `pytorch_model.bin`); the tokenizer (`tokenizer.json`, else `spm.model`) and its small side
//!   files.
//! - [`fetch_model`] (`--model org/name` everywhere a model is taken): a trained sener model
//!   folder: `sener.json`, `span.safetensors`, the model card, `adapter/` when the config has
//!   LoRA, `encoder/` when the model carries its encoder; then its base encoder, unless it is
//!   already found (beside the model, in the sener cache, or in the Hub cache), from the Hub id
//!   the config records.
//! - [`resolve_model`]: a local folder as it is, else a Hub id fetched.
//!
//! Every result is an ordinary folder (the snapshot), loaded like any other.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Repo, RepoType};

use crate::model::SenerConfig;
use crate::{Error, Result};

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

fn hub_err(message: String) -> Error {
    Error::Hub(message)
}

/// One repository on the Hub, with the error text for "no network".
struct Remote {
    id: HubId,
    repo: ApiRepo,
    endpoint: String,
    /// What the user should pass instead, for the offline hint (`--base`, `--model`).
    flag: &'static str,
}

impl Remote {
    fn new(id: &HubId, flag: &'static str) -> Result<Self> {
        let api = ApiBuilder::from_env().with_progress(true).build().map_err(|e| hub_err(format!("setting up the Hugging Face Hub client: {e}")))?;
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
        let repo = api.repo(Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone()));
        Ok(Self { id: id.clone(), repo, endpoint, flag })
    }

    /// One file: `Some(path)` when fetched (or cached), `None` when the repository has no such
    /// file; network failures name the file and say what to do offline.
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        match self.repo.get(file) {
            Ok(p) => Ok(Some(p)),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
            // ureq's message already includes its causes: one line, no repeated chain.
            Err(e) => Err(hub_err(format!(
                "could not fetch {} from the Hugging Face Hub ({}). Without network access, download the model folder elsewhere and pass its path to {} (or set HF_ENDPOINT to a reachable mirror): fetching {file}: {e}",
                self.id, self.endpoint, self.flag
            ))),
        }
    }

    fn need(&self, file: &str) -> Result<PathBuf> {
        self.get(file)?.ok_or_else(|| hub_err(format!("{}: the repository has no {file}", self.id)))
    }
}

/// A `--base` that is not a local path: parsed as a hub id and fetched into the cache. Returns
/// the snapshot folder and `org/name@commit`.
pub fn fetch_base(base: &Path) -> Result<(PathBuf, String)> {
    let Some(id) = base.to_str().and_then(HubId::parse) else {
        return Err(Error::Input(format!("--base {}: no such folder (and not a Hugging Face Hub id like org/name)", base.display())));
    };
    let (dir, commit) = fetch_encoder(&id)?;
    Ok((dir, format!("{}@{commit}", id.repo)))
}

/// Fetches the encoder files sener needs; returns the snapshot folder and its commit.
pub fn fetch_encoder(id: &HubId) -> Result<(PathBuf, String)> {
    let remote = Remote::new(id, "--base")?;
    let config = remote.need("config.json")?;
    let dir = config.parent().map(Path::to_path_buf).ok_or_else(|| hub_err("hub cache path without a parent".into()))?;
    // Everything already in the cache (an earlier fetch, or Python's): no network needed.
    let has_tokenizer = dir.join("tokenizer.json").is_file() || dir.join("spm.model").is_file();
    if !(has_tokenizer && crate::weights::WeightFiles::find(&dir).is_ok()) {
        fetch_encoder_files(&remote, "")?;
    }
    let commit = commit_of(&dir);
    Ok((dir, commit))
}

/// The weights, tokenizer and side files of an encoder under `prefix` (`""` or `"encoder/"`).
fn fetch_encoder_files(remote: &Remote, prefix: &str) -> Result<()> {
    let id = &remote.id;
    remote.need(&format!("{prefix}config.json"))?;
    if remote.get(&format!("{prefix}model.safetensors"))?.is_none() {
        if let Some(index) = remote.get(&format!("{prefix}model.safetensors.index.json"))? {
            for shard in shard_files(&index)? {
                remote.get(&format!("{prefix}{shard}"))?.ok_or_else(|| hub_err(format!("{id}: shard {prefix}{shard} is missing")))?;
            }
        } else if remote.get(&format!("{prefix}pytorch_model.bin"))?.is_none() {
            return Err(hub_err(format!("{id}: no {prefix}model.safetensors, model.safetensors.index.json or pytorch_model.bin in the repository")));
        }
    }
    if remote.get(&format!("{prefix}tokenizer.json"))?.is_none() && remote.get(&format!("{prefix}spm.model"))?.is_none() {
        return Err(hub_err(format!("{id}: no {prefix}tokenizer.json or {prefix}spm.model in the repository")));
    }
    for side in ["tokenizer_config.json", "special_tokens_map.json"] {
        remote.get(&format!("{prefix}{side}"))?;
    }
    Ok(())
}

/// Fetches a trained sener model folder and (when not found locally) its base encoder; returns
/// the snapshot folder.
pub fn fetch_model(id: &HubId) -> Result<PathBuf> {
    let remote = Remote::new(id, "--model")?;
    let cfg_path = remote.get("sener.json")?.ok_or_else(|| {
        hub_err(format!("{id}: the repository has no sener.json, so it is not a sener model folder (a base encoder goes to `sener train --base`)"))
    })?;
    let dir = cfg_path.parent().map(Path::to_path_buf).ok_or_else(|| hub_err("hub cache path without a parent".into()))?;
    let config = SenerConfig::read(&dir)?;
    remote.need("span.safetensors")?;
    remote.get("README.md")?;
    if config.lora.is_some() && config.base.path != Path::new("encoder") {
        remote.need("adapter/adapter_config.json")?;
        remote.need("adapter/adapter_model.safetensors")?;
    }
    if config.base.path == Path::new("encoder") {
        fetch_encoder_files(&remote, "encoder/")?;
    }
    if !config.base_dir(&dir).is_dir() {
        let Some(hub) = config.base.hub.as_deref().and_then(HubId::parse) else {
            return Err(Error::model(
                &dir,
                format!(
                    "the base encoder {} is not here and sener.json names no Hugging Face Hub id for it (base.hub); put it into the sener cache ({}) or beside the model",
                    config.base.path.display(),
                    crate::model::cache_dir().map(|d| d.display().to_string()).unwrap_or_default()
                ),
            ));
        };
        fetch_encoder(&hub)?;
    }
    Ok(dir)
}

/// A model given as a local folder (returned as it is) or as a Hub id `org/name[@revision]`
/// (fetched with [`fetch_model`]). A path that exists is always a path.
pub fn resolve_model(spec: &Path) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    match spec.to_str().and_then(HubId::parse) {
        Some(id) => fetch_model(&id),
        None => Err(Error::model(spec, "no such model folder (and not a Hugging Face Hub id like org/name)")),
    }
}

/// The snapshot folder is named after the commit the revision resolved to.
fn commit_of(dir: &Path) -> String {
    dir.file_name().and_then(|s| s.to_str()).unwrap_or_default().to_string()
}

fn shard_files(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: index.to_path_buf(), message: e.to_string() })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Json { path: index.to_path_buf(), message: "no weight_map".into() })?;
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
