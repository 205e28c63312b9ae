//! Image-caption pairs for training.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::error::{Result, TrainError};

/// One training image with its caption.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The image.
    pub image: RgbImage,
    /// Its caption.
    pub caption: String,
}

/// Anything that yields (image, caption) pairs by index.
pub trait Dataset: Send + Sync {
    /// Samples in the dataset.
    fn len(&self) -> usize;
    /// The sample at `index`.
    fn get(&self, index: usize) -> Result<Sample>;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A folder of images with same-named `.txt` captions (`cat.png` + `cat.txt`),
/// the common fine-tuning convention. Images are resized to `side` x `side`.
#[derive(Debug, Clone)]
pub struct FolderDataset {
    items: Vec<(PathBuf, PathBuf)>,
    side: u32,
}

impl FolderDataset {
    /// Lists the folder; an image without its caption is an error naming it.
    pub fn open(dir: impl AsRef<Path>, side: u32) -> Result<Self> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|e| sd_core::CoreError::io(dir, e))?;
        let mut items = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| sd_core::CoreError::io(dir, e))?.path();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if !matches!(
                ext.as_deref(),
                Some("png" | "jpg" | "jpeg" | "webp" | "bmp")
            ) {
                continue;
            }
            let caption = path.with_extension("txt");
            if !caption.is_file() {
                return Err(TrainError::Data(format!(
                    "{}: no caption file {}",
                    path.display(),
                    caption.display()
                )));
            }
            items.push((path, caption));
        }
        items.sort();
        if items.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: no images (png, jpg, webp, bmp) with captions",
                dir.display()
            )));
        }
        Ok(FolderDataset { items, side })
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (image_path, caption_path) = &self.items[index % self.items.len()];
        let image = image::open(image_path)
            .map_err(|e| {
                TrainError::Data(format!("{}: unreadable image: {e}", image_path.display()))
            })?
            .resize_exact(self.side, self.side, image::imageops::FilterType::Triangle)
            .to_rgb8();
        let caption = std::fs::read_to_string(caption_path)
            .map_err(|e| sd_core::CoreError::io(caption_path, e))?;
        Ok(Sample {
            image,
            caption: caption.trim().to_string(),
        })
    }
}
