//! AUTOMATIC1111's prompt syntax for LoRAs: `<lora:NAME>` or
//! `<lora:NAME:SCALE>` (LyCORIS' `<lyco:...>` too) anywhere in a prompt.
//! The tags are taken out of the prompt; NAME is a file in a LoRA folder.

use std::path::{Path, PathBuf};

use crate::error::{LoraError, Result};

/// One `<lora:NAME:SCALE>` tag.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    /// The file name without `.safetensors`.
    pub name: String,
    /// The scale (1.0 when the tag gives none).
    pub scale: f64,
}

/// The prompt without its LoRA tags, and the tags in order.
pub fn take_tags(prompt: &str) -> Result<(String, Vec<LoraTag>)> {
    let mut rest = prompt;
    let mut text = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let tag = after.find('>').and_then(|end| {
            let inner = &after[..end];
            let body = inner
                .strip_prefix("lora:")
                .or_else(|| inner.strip_prefix("lyco:"))?;
            Some((end, inner, body))
        });
        let Some((end, inner, body)) = tag else {
            text.push_str(&rest[..=start]);
            rest = after;
            continue;
        };
        tags.push(parse_tag(body, inner)?);
        text.push_str(&rest[..start]);
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    Ok((text, tags))
}

fn parse_tag(body: &str, whole: &str) -> Result<LoraTag> {
    let bad = |message: String| LoraError::invalid(format!("prompt tag <{whole}>"), message);
    let mut fields = body.split(':');
    let name = fields.next().unwrap_or_default().trim().to_string();
    if name.is_empty() {
        return Err(bad("no LoRA name".into()));
    }
    let scale = match (fields.next(), fields.next()) {
        (None, _) => 1.0,
        (Some(s), None) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad(format!("scale '{s}' is not a number")))?,
        (Some(_), Some(_)) => {
            return Err(bad(
                "separate text-encoder and UNet scales are not supported; give one scale".into(),
            ))
        }
    };
    Ok(LoraTag { name, scale })
}

/// The file a tag names in `dir`: `NAME.safetensors` there or in a
/// subfolder (A1111 searches its LoRA folder recursively). Names that
/// would leave the folder are refused.
pub fn find_in(dir: &Path, name: &str) -> Result<PathBuf> {
    let context = || format!("<lora:{name}>");
    if name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(LoraError::invalid(
            context(),
            "a LoRA name is a file name in --lora-dir, without folders",
        ));
    }
    let file = format!("{name}.safetensors");
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let candidate = folder.join(&file);
        if candidate.is_file() {
            return Ok(candidate);
        }
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut subfolders: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        subfolders.sort();
        subfolders.reverse();
        folders.extend(subfolders);
    }
    Err(LoraError::invalid(
        context(),
        format!("no {file} in {} or its subfolders", dir.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_out_of_the_prompt() {
        let (text, tags) =
            take_tags("a cat <lora:ink_style:0.7>, <b>bold</b> <lyco:grain> done").unwrap();
        assert_eq!(text, "a cat , <b>bold</b>  done");
        assert_eq!(
            tags,
            vec![
                LoraTag {
                    name: "ink_style".into(),
                    scale: 0.7
                },
                LoraTag {
                    name: "grain".into(),
                    scale: 1.0
                },
            ]
        );
        assert_eq!(take_tags("no tags < here").unwrap().0, "no tags < here");
        assert_eq!(take_tags("<lora:open").unwrap().0, "<lora:open");
        for bad in ["<lora::1>", "<lora:x:abc>", "<lora:x:1:2>", "<lora:x:inf>"] {
            assert!(take_tags(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_stay_inside_the_folder() {
        let dir = std::env::temp_dir().join(format!("sd-lora-tags-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("styles")).unwrap();
        std::fs::write(dir.join("styles/ink.safetensors"), b"").unwrap();
        assert_eq!(
            find_in(&dir, "ink").unwrap(),
            dir.join("styles/ink.safetensors")
        );
        assert!(find_in(&dir, "../ink").is_err());
        assert!(find_in(&dir, "missing")
            .unwrap_err()
            .to_string()
            .contains("missing.safetensors"));
    }
}
