//! A loaded VAE decoder package, and the decode that runs through it
//! wherever a slice's latents have the shape it was made for.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sd_core::ffi::aoti::CompiledPackage;
use sd_core::shared::Frozen;
use sd_vae::DecoderCall;
use tch::{Device, Tensor};

use crate::error::Result;

/// How a generation's VAE decode ran (see
/// [`Generation::decode_execution`](crate::Generation::decode_execution)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DecodeExecution {
    /// The eager modules (no decoder package loaded).
    #[default]
    Eager,
    /// Through a compiled package.
    Compiled,
    /// A decoder package is loaded, but this decode did not fit it (why).
    EagerNotCompiled(String),
}

/// A loaded package and the latents' shape it was compiled for.
pub(crate) struct CompiledDecoder {
    package: CompiledPackage,
    pub(super) path: PathBuf,
    /// (images, latent channels, height, width)
    shape: [i64; 4],
}

impl CompiledDecoder {
    /// Loads the package at `path`, made for this VAE's weights and for
    /// latents of `shape`.
    ///
    /// # Safety
    ///
    /// As [`CompiledPackage::load`]: a package this machine's torch compiled.
    pub(super) unsafe fn load(path: &Path, device: Device, shape: [i64; 4]) -> Result<Self> {
        // SAFETY: promised by the caller.
        let package = unsafe { CompiledPackage::load(path, device) }?;
        Ok(CompiledDecoder {
            package,
            path: path.to_path_buf(),
            shape,
        })
    }
}

// SAFETY: CompiledPackage is Sync (its runs are serialised by libtorch's
// loader); the rest is plain data.
unsafe impl sd_core::shared::ReadOnlyShared for CompiledDecoder {}

/// The loaded decoder packages as the VAE's [`DecoderCall`], noting how
/// each call ran.
pub(crate) struct DecoderPackages<'a> {
    packages: &'a [Frozen<CompiledDecoder>],
    execution: Mutex<Option<DecodeExecution>>,
}

impl<'a> DecoderPackages<'a> {
    pub fn new(packages: &'a [Frozen<CompiledDecoder>]) -> Self {
        DecoderPackages {
            packages,
            execution: Mutex::new(None),
        }
    }

    /// Itself as a call, or none when no package is loaded.
    pub fn call(&self) -> Option<&dyn DecoderCall> {
        (!self.packages.is_empty()).then_some(self as &dyn DecoderCall)
    }

    /// How the decode ran: compiled only if every slice and tile was.
    pub fn execution(self) -> DecodeExecution {
        let noted = self
            .execution
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        noted.unwrap_or_default()
    }

    fn note(&self, execution: DecodeExecution) {
        let mut noted = self.execution.lock().unwrap_or_else(|e| e.into_inner());
        // (an eager slice's reason outlasts the compiled ones)
        if !matches!(*noted, Some(DecodeExecution::EagerNotCompiled(_))) {
            *noted = Some(execution);
        }
    }
}

impl DecoderCall for DecoderPackages<'_> {
    fn decode(&self, z: &Tensor) -> Option<Tensor> {
        let size = z.size();
        let Some(package) = self.packages.iter().find(|p| p.shape[..] == size[..]) else {
            let [n, c, h, w] = self.packages[0].shape;
            self.note(DecodeExecution::EagerNotCompiled(format!(
                "the decoder was compiled for {n}x{c}x{h}x{w} latents; this decode is {}",
                size.iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join("x")
            )));
            return None;
        };
        match package.package.run(&[z]) {
            Ok(mut out) if !out.is_empty() => {
                self.note(DecodeExecution::Compiled);
                Some(out.remove(0))
            }
            Ok(_) => {
                self.note(DecodeExecution::EagerNotCompiled(
                    "the package gave no output".into(),
                ));
                None
            }
            Err(e) => {
                self.note(DecodeExecution::EagerNotCompiled(e.to_string()));
                None
            }
        }
    }
}
