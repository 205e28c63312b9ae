//! The models `--models-dir` offers (`/sdapi/v1/sd-models`) and the one
//! served. A name from a request is only ever looked up among the listed
//! entries, never joined to a path, so it cannot reach outside the folder.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One entry of `/sdapi/v1/sd-models`, in A1111's shape.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    pub title: String,
    pub model_name: String,
    pub hash: Option<String>,
    pub sha256: Option<String>,
    pub filename: String,
    pub config: Option<String>,
}

impl ModelEntry {
    /// The entry of a served model (a hub repo by its id).
    pub fn of_source(source: &sd_pipeline::front::ModelSource) -> ModelEntry {
        use sd_pipeline::front::ModelSource;
        match source {
            ModelSource::Folder(path) | ModelSource::SingleFile(path) => ModelEntry::of(path),
            other => ModelEntry::of(Path::new(&other.name())),
        }
    }

    pub fn of(path: &Path) -> ModelEntry {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        ModelEntry {
            title: name.clone(),
            model_name: name
                .strip_suffix(".safetensors")
                .unwrap_or(&name)
                .to_string(),
            hash: None,
            sha256: None,
            filename: path.display().to_string(),
            config: None,
        }
    }
}

/// Diffusers folders (with `model_index.json`) and `.safetensors` files
/// directly in `dir`, sorted by name; symbolic links that leave `dir` are
/// left out.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(root) = dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut models: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.canonicalize().is_ok_and(|real| real.starts_with(&root))
                && (p.join("model_index.json").is_file()
                    || (p.is_file() && p.extension().is_some_and(|e| e == "safetensors")))
        })
        .collect();
    models.sort();
    models
}

/// The served model first, then the folder's others.
pub fn entries(current: &sd_pipeline::front::ModelSource, dir: Option<&Path>) -> Vec<ModelEntry> {
    let mut entries = vec![ModelEntry::of_source(current)];
    for path in dir.map(list).unwrap_or_default() {
        let entry = ModelEntry::of(&path);
        if entry.title != entries[0].title {
            entries.push(entry);
        }
    }
    entries
}

/// The listed model whose title or name is `name`.
pub fn resolve(name: &str, dir: Option<&Path>) -> Option<PathBuf> {
    dir.map(list).unwrap_or_default().into_iter().find(|path| {
        let entry = ModelEntry::of(path);
        entry.title == name || entry.model_name == name
    })
}

/// One entry of `/sdapi/v1/loras`, in A1111's shape.
#[derive(Debug, Clone, Serialize)]
pub struct LoraEntry {
    /// What `<lora:NAME:SCALE>` calls it.
    pub name: String,
    pub alias: String,
    pub path: String,
}

/// The files in `dir` and its subfolders with one of `extensions`, each
/// with its name (the file name without the extension), sorted by name.
fn files(dir: Option<&Path>, extensions: &[&str]) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut folders: Vec<PathBuf> = dir.into_iter().map(Path::to_path_buf).collect();
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                folders.push(path);
                continue;
            }
            let extension = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default();
            let stem = path
                .file_stem()
                .and_then(|n| n.to_str())
                .map(str::to_string);
            if let (true, Some(stem)) = (extensions.contains(&extension), stem) {
                found.push((stem, path));
            }
        }
    }
    found.sort();
    found
}

/// The `.safetensors` files in `dir` and its subfolders, by name.
pub fn loras(dir: Option<&Path>) -> Vec<LoraEntry> {
    let entry = |(name, path): (String, PathBuf)| LoraEntry {
        alias: name.clone(),
        name,
        path: path.display().to_string(),
    };
    files(dir, &["safetensors"])
        .into_iter()
        .map(entry)
        .collect()
}

/// One entry of `/sdapi/v1/upscalers`, in A1111's shape.
#[derive(Debug, Clone, Serialize)]
pub struct UpscalerEntry {
    /// What `upscaler_1` / `hr_upscaler` call it.
    pub name: String,
    /// The architecture (`ESRGAN`, `RealESRGAN Compact`); `None` for the
    /// built-in resizers.
    pub model_name: Option<String>,
    pub model_path: Option<String>,
    pub model_url: Option<String>,
    pub scale: Option<i64>,
}

/// Upscalers that are no model: A1111's built-in resizers.
pub const BUILT_IN: [&str; 3] = ["None", "Lanczos", "Nearest"];

/// The built-in resizers, then the upscaler models in `dir` (and its
/// subfolders) whose weights make a known architecture.
pub fn upscalers(dir: Option<&Path>) -> Vec<UpscalerEntry> {
    let built_in = BUILT_IN.iter().map(|name| UpscalerEntry {
        name: name.to_string(),
        model_name: None,
        model_path: None,
        model_url: None,
        scale: None,
    });
    let models = files(dir, &["safetensors", "pth", "pt"])
        .into_iter()
        .filter_map(|(name, path)| {
            let architecture = sd_upscale::Upscaler::describe(&path).ok()?;
            Some(UpscalerEntry {
                name,
                model_name: Some(architecture.name().to_string()),
                model_path: Some(path.display().to_string()),
                model_url: None,
                scale: Some(architecture.scale()),
            })
        });
    built_in.chain(models).collect()
}
