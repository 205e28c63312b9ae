//! Hugging Face repo ids, resolved through the standard local cache
//! (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`): files already there
//! are used offline; missing ones are downloaded into it unless offline
//! (`HF_HUB_OFFLINE=1` or the builder's `offline(true)`).

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo};

use crate::error::{PipelineError, Result};

/// Where to look and whether the network may be used.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The hub cache folder (the one holding `models--org--name`); default from the environment.
    pub cache: Option<PathBuf>,
    /// Never contact the hub (also `HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

/// The files of a diffusers repo that the pipeline reads.
fn component_files(family_xl: bool, variant: Option<&str>) -> Vec<String> {
    let weights = |stem: &str| match variant {
        Some(v) => format!("{stem}.{v}.safetensors"),
        None => format!("{stem}.safetensors"),
    };
    let mut files = vec!["scheduler/scheduler_config.json".to_string()];
    let suffixes: &[&str] = if family_xl { &["", "_2"] } else { &[""] };
    for s in suffixes {
        for f in [
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            files.push(format!("tokenizer{s}/{f}"));
        }
        files.push(format!("text_encoder{s}/config.json"));
        files.push(format!("text_encoder{s}/{}", weights("model")));
    }
    for c in ["unet", "vae"] {
        files.push(format!("{c}/config.json"));
        files.push(format!("{c}/{}", weights("diffusion_pytorch_model")));
    }
    files
}

/// Resolves `repo_id` to a local diffusers folder (the cache snapshot).
pub fn resolve(repo_id: &str, variant: Option<&str>, options: &HubOptions) -> Result<PathBuf> {
    let cache = match &options.cache {
        Some(dir) => Cache::new(dir.clone()),
        None => Cache::from_env(),
    };
    let offline =
        options.offline || std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    let cached = cache.repo(Repo::model(repo_id.to_string()));
    let fetch = |file: &str| -> Result<PathBuf> {
        if let Some(path) = cached.get(file) {
            return Ok(path);
        }
        if offline {
            return Err(PipelineError::model(
                cache.path().join(file),
                format!("{repo_id}/{file} is not in the local Hugging Face cache, and the hub is off (offline)"),
            ));
        }
        let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
            .with_progress(false)
            .build()
            .map_err(|e| {
                PipelineError::model(
                    cache.path(),
                    format!("cannot use the Hugging Face hub: {e}"),
                )
            })?;
        api.model(repo_id.to_string()).get(file).map_err(|e| {
            PipelineError::model(
                cache.path(),
                format!("cannot fetch {repo_id}/{file} from the Hugging Face hub ({e}), and it is not in the local cache"),
            )
        })
    };
    let index = fetch("model_index.json")?;
    let text = std::fs::read_to_string(&index).map_err(|e| sd_core::CoreError::io(&index, e))?;
    let xl = text.contains("text_encoder_2");
    for file in component_files(xl, variant) {
        match fetch(&file) {
            Ok(_) => {}
            // Optional tokenizer files, and weights sharded behind an index.
            Err(_)
                if file.ends_with("tokenizer_config.json")
                    || file.ends_with("special_tokens_map.json") => {}
            Err(error) if file.ends_with(".safetensors") => {
                let Ok(shard_index) = fetch(&format!("{file}.index.json")) else {
                    return Err(error);
                };
                for shard in shards(&shard_index)? {
                    let dir = Path::new(&file)
                        .parent()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    fetch(&format!("{dir}/{shard}"))?;
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(index.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| sd_core::CoreError::io(index, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PipelineError::model(index, e.to_string()))?;
    let mut files: Vec<String> = value["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.dedup();
    Ok(files)
}
