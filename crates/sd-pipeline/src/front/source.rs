//! Where a model comes from, told apart once for every frontend.

use std::path::{Path, PathBuf};

use crate::builder::StableDiffusionBuilder;
use crate::error::{PipelineError, Result};
use crate::front::Field;

/// A model as a user names it: a diffusers folder, a single-file
/// checkpoint, or a Hugging Face repo id (from the local hub cache, or
/// downloaded into it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelSource {
    /// A diffusers pipeline folder (model_index.json beside its components).
    Folder(PathBuf),
    /// A single `.safetensors` checkpoint (CompVis/LDM layout).
    SingleFile(PathBuf),
    /// `org/name` on the Hugging Face hub.
    HubRepo(String),
}

impl ModelSource {
    /// What `text` names: an existing file is a single file; an existing
    /// folder a diffusers folder (a hub-cache entry, `models--org--name`,
    /// stands for its `refs/main` snapshot); otherwise `org/name` is a hub
    /// repo id. Anything else is an error naming the path.
    pub fn detect(text: &str) -> Result<ModelSource> {
        let path = Path::new(text);
        if path.is_file() {
            return Ok(ModelSource::SingleFile(path.to_path_buf()));
        }
        if path.is_dir() {
            return Ok(ModelSource::Folder(
                cache_snapshot(path).unwrap_or_else(|| path.to_path_buf()),
            ));
        }
        let repo_like = text.matches('/').count() == 1
            && !text.starts_with(['/', '.', '~'])
            && !text.contains('\\')
            && text.split('/').all(|part| !part.is_empty());
        if repo_like {
            return Ok(ModelSource::HubRepo(text.to_string()));
        }
        Err(PipelineError::request(
            Field::Model,
            format!("{text}: no such file or folder (nor an org/name hub repo id)"),
        ))
    }

    /// The short name a PNG records (A1111's `Model:`): the folder's or
    /// file's name, or the repo id; never a path with a home directory in it.
    pub fn name(&self) -> String {
        let stem = |path: &Path, strip_extension: bool| {
            let name = if strip_extension {
                path.file_stem()
            } else {
                path.file_name()
            };
            name.map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string())
        };
        match self {
            ModelSource::HubRepo(repo) => repo.clone(),
            ModelSource::SingleFile(path) => stem(path, true),
            ModelSource::Folder(path) => match cache_repo_id(path) {
                Some(repo) => repo,
                None => stem(path, false),
            },
        }
    }

    /// `builder` loading this source.
    pub fn apply(&self, builder: StableDiffusionBuilder) -> StableDiffusionBuilder {
        match self {
            ModelSource::Folder(dir) => builder.model_dir(dir),
            ModelSource::SingleFile(file) => builder.single_file(file),
            ModelSource::HubRepo(repo) => builder.hub_repo(repo.as_str()),
        }
    }
}

/// The `refs/main` snapshot of a hub-cache entry folder.
fn cache_snapshot(entry: &Path) -> Option<PathBuf> {
    let commit = std::fs::read_to_string(entry.join("refs/main")).ok()?;
    let snapshot = entry.join("snapshots").join(commit.trim());
    snapshot.is_dir().then_some(snapshot)
}

/// `org/name` of a folder inside a hub cache entry (`models--org--name`).
fn cache_repo_id(path: &Path) -> Option<String> {
    path.ancestors().find_map(|dir| {
        let name = dir.file_name()?.to_str()?;
        let rest = name.strip_prefix("models--")?;
        let (org, repo) = rest.split_once("--")?;
        Some(format!("{org}/{repo}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_kind_of_source_and_names_it_without_its_path() {
        let dir = std::env::temp_dir().join(format!("sd-model-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let folder = dir.join("my-model");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir(&folder).unwrap();
        let file = dir.join("v1-5-pruned.safetensors");
        std::fs::write(&file, b"").unwrap();
        let entry = dir.join("models--org--name");
        std::fs::create_dir_all(entry.join("refs")).unwrap();
        std::fs::create_dir_all(entry.join("snapshots/abc123")).unwrap();
        std::fs::write(entry.join("refs/main"), "abc123\n").unwrap();

        let at = |p: &Path| ModelSource::detect(p.to_str().unwrap()).unwrap();
        assert_eq!(at(&folder), ModelSource::Folder(folder.clone()));
        assert_eq!(at(&folder).name(), "my-model");
        assert_eq!(at(&file), ModelSource::SingleFile(file.clone()));
        assert_eq!(at(&file).name(), "v1-5-pruned");
        let snapshot = entry.join("snapshots/abc123");
        assert_eq!(at(&entry), ModelSource::Folder(snapshot));
        assert_eq!(at(&entry).name(), "org/name");
        let repo = ModelSource::detect("stabilityai/sdxl-turbo").unwrap();
        assert_eq!(repo, ModelSource::HubRepo("stabilityai/sdxl-turbo".into()));
        for missing in ["/no/such/model", "./relative/missing", "justaname", "a/b/c"] {
            match ModelSource::detect(missing) {
                Err(PipelineError::InvalidInput { field, message }) => {
                    assert_eq!(field, Field::Model);
                    assert!(message.starts_with(missing), "{message}");
                }
                other => panic!("{missing}: {other:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
