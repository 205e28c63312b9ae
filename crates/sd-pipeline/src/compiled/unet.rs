//! A loaded UNet package and the call it runs: the shapes it was made for
//! and the LoRAs whose merged weights it holds.

use std::path::{Path, PathBuf};

use sd_core::ffi::aoti::CompiledPackage;
use sd_core::shared::Frozen;
use sd_core::DiffusersModel;
use sd_unet::{AddedConditions, UNet2DConditionModel};
use tch::{Device, Kind, Tensor};

use crate::adapters::LoraSpec;
use crate::error::Result;

/// A loaded package and the UNet call it was compiled for.
pub(crate) struct CompiledUNet {
    package: CompiledPackage,
    /// Where it was loaded from.
    pub(super) path: PathBuf,
    /// The LoRAs merged when it was loaded: the package holds the weights
    /// as they were then.
    loras: Vec<LoraSpec>,
    /// (UNet batch, latent height, latent width, context tokens)
    shape: [i64; 4],
    /// The UNet's dtype: SDXL's added conditions are exported in it, as
    /// diffusers' pipeline casts them.
    dtype: Kind,
}

impl CompiledUNet {
    /// Loads the package at `path`, made for the weights the UNet holds
    /// with `loras` merged, for calls of `shape` (UNet batch, latent height
    /// and width, tokens) in `dtype`.
    ///
    /// # Safety
    ///
    /// As [`CompiledPackage::load`]: a package this machine's torch compiled.
    pub(super) unsafe fn load(
        path: &Path,
        device: Device,
        loras: &[LoraSpec],
        (shape, dtype): ([i64; 4], Kind),
    ) -> Result<Self> {
        // SAFETY: promised by the caller.
        let package = unsafe { CompiledPackage::load(path, device) }?;
        Ok(CompiledUNet {
            package,
            path: path.to_path_buf(),
            loras: loras.to_vec(),
            shape,
            dtype,
        })
    }

    /// The prediction for a call that [`fitting`] chose it for.
    pub(crate) fn run(
        &self,
        sample: &Tensor,
        t: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        let t = t.to_kind(Kind::Float).reshape([] as [i64; 0]);
        let mut out = match added {
            None => self.package.run(&[sample, &t, context])?,
            Some(added) => {
                let text = added.text_embeds.to_kind(self.dtype);
                let ids = added.time_ids.to_kind(self.dtype);
                self.package.run(&[sample, &t, context, &text, &ids])?
            }
        };
        Ok(out.remove(0))
    }

    /// Whether a call of these shapes is the one compiled.
    fn fits(&self, sample: &Tensor, context: &Tensor) -> std::result::Result<(), String> {
        let [b, h, w, tokens] = self.shape;
        let (s, c) = (sample.size(), context.size());
        if s[0] != b || s[2] != h || s[3] != w || c[1] != tokens {
            return Err(format!(
                "compiled for a UNet batch of {b} at {h}x{w} latents with {tokens} tokens; \
                 this step is {}x{}x{} with {}",
                s[0], s[2], s[3], c[1]
            ));
        }
        Ok(())
    }
}

/// The package among `packages` made for this call, holding the weights as
/// they are with `loras` merged; or why none is (the first's reason).
pub(crate) fn fitting<'a>(
    packages: &'a [Frozen<CompiledUNet>],
    loras: &[LoraSpec],
    sample: &Tensor,
    context: &Tensor,
) -> std::result::Result<&'a CompiledUNet, String> {
    // (a package of these shapes made before the LoRAs changed is the better
    // reason than another's shapes; one made after may follow it)
    let (mut stale, mut why) = (None, None);
    for package in packages {
        match package.fits(sample, context) {
            Ok(()) if package.loras == loras => return Ok(package),
            Ok(()) => {
                stale = Some(
                    "the package holds the UNet's weights as they were before the LoRAs changed",
                )
            }
            Err(e) => why = why.or(Some(e)),
        }
    }
    Err(stale
        .map(String::from)
        .or(why)
        .unwrap_or_else(|| "no compiled package is loaded".into()))
}

/// SDXL's added-condition widths (pooled text, time ids), or zeros for a
/// UNet without them.
pub(super) fn added_widths(unet: &UNet2DConditionModel) -> (i64, i64) {
    let config = unet.config();
    match (
        &config.addition_embed_type,
        config.projection_class_embeddings_input_dim,
        config.addition_time_embed_dim,
    ) {
        (Some(_), Some(projected), Some(per_id)) => (projected - 6 * per_id, 6),
        _ => (0, 0),
    }
}

// SAFETY: CompiledPackage is Sync (its runs are serialised by libtorch's
// loader); the rest is plain data.
unsafe impl sd_core::shared::ReadOnlyShared for CompiledUNet {}
