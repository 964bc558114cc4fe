//! Finding a model by name where users already keep them: a path as given, tchlab's own
//! models directory (`make` links the models the notebooks use there), and the Hugging
//! Face cache as `huggingface_hub` lays it out (`models--org--name/snapshots/REV/`, the
//! revision named by `refs/main`), offline, as `from_pretrained("org/name")` finds it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where bare model names are looked up first: `$TCHLAB_MODELS`, else the `models`
/// folder of [`crate::cache_dir`].
pub fn models_dir() -> PathBuf {
    std::env::var_os("TCHLAB_MODELS").map_or_else(|| crate::cache_dir().join("models"), Into::into)
}

/// The Hugging Face hub cache, as `huggingface_hub` chooses it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(cache) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return cache;
    }
    let home = var("HF_HOME")
        .unwrap_or_else(|| var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache"))).unwrap_or_else(std::env::temp_dir).join("huggingface"));
    home.join("hub")
}

/// The model `name` names: an existing path, a name in [`models_dir`], or a Hugging Face
/// repository id (`org/name` or `name`) in [`hf_hub_cache`]. The error says where it looked.
pub fn find_model(name: &str) -> Result<PathBuf> {
    let path = expand_home(name);
    if path.exists() {
        return Ok(path);
    }
    let mut looked = vec![];
    if !name.contains('/') {
        let dir = models_dir();
        let candidate = dir.join(name);
        if candidate.exists() {
            return Ok(candidate);
        }
        let known: Vec<String> =
            std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
        looked.push(if known.is_empty() { dir.display().to_string() } else { format!("{} (which holds {})", dir.display(), known.join(", ")) });
    }
    if is_repo_id(name) {
        let cache = hf_hub_cache();
        let repo = cache.join(format!("models--{}", name.replace('/', "--")));
        if repo.is_dir() {
            return snapshot(&repo, name);
        }
        looked.push(format!(
            "the Hugging Face cache {} (no {})",
            cache.display(),
            repo.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
        ));
    }
    let places = if looked.is_empty() { String::new() } else { format!("; looked in {}", looked.join(" and in ")) };
    Err(Error::Invalid(format!("{name}: no such file or directory, and no model of that name{places}")))
}

/// `org/name` or `name` as the hub spells repository ids (letters, digits, `-`, `_`, `.`;
/// no `..`), so that a name cannot reach outside the cache.
fn is_repo_id(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty() && p.len() <= 96 && !p.starts_with('.') && !p.contains("..") && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match name.split_once('/') {
        Some((org, repo)) => part(org) && part(repo),
        None => part(name),
    }
}

/// The snapshot `refs/main` names, or the only snapshot there is.
fn snapshot(repo: &Path, name: &str) -> Result<PathBuf> {
    let snapshots = repo.join("snapshots");
    let main = repo.join("refs").join("main");
    if main.is_file() {
        let commit = crate::limits::read_text(&main, 256)?.trim().to_string();
        if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::format(&main, format!("not a commit hash: {commit:?}")));
        }
        let dir = snapshots.join(&commit);
        if dir.is_dir() {
            return Ok(dir);
        }
        return Err(Error::Invalid(format!("{name}: {} names revision {commit}, but {} is missing; download the model again", main.display(), dir.display())));
    }
    let mut all: Vec<PathBuf> =
        std::fs::read_dir(&snapshots).map_err(|e| Error::io(&snapshots, e))?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err(Error::Invalid(format!("{name}: {} holds no snapshot; download the model again", snapshots.display()))),
        n => Err(Error::Invalid(format!("{name}: {} holds {n} snapshots and no refs/main says which; `%load` one of them by path", snapshots.display()))),
    }
}

/// `~/x` with the home directory in front.
pub fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => path.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_ids_cannot_leave_the_cache() {
        assert!(is_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct") && is_repo_id("gpt2") && is_repo_id("sentence-transformers/all-MiniLM-L6-v2"));
        for bad in ["../x", "a/../b", "a/b/c", "/abs", ".hidden", "a/", "", "a b", "a\\b"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }
}
