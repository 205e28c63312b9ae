//! Device placement: where each component computes, where its weights
//! live between runs (the host, in low-memory mode), and their layout.

use sd_core::DiffusersModel;
use tch::Device;

use crate::components::Devices;
use crate::cow::Cow;
use crate::error::{PipelineError, Result};

/// Where the pipeline's components run and keep their weights.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement {
    devices: Devices,
    low_memory: bool,
    channels_last: bool,
}

impl Placement {
    /// Low-memory mode keeps weights on the host and runs the text
    /// encoders there.
    pub(crate) fn new(devices: Devices, low_memory: bool, channels_last: bool) -> Self {
        let devices = match low_memory {
            true => Devices {
                text_encoder: Device::Cpu,
                ..devices
            },
            false => devices,
        };
        Placement {
            devices,
            low_memory,
            channels_last,
        }
    }

    /// Where each component computes.
    pub(crate) fn devices(&self) -> Devices {
        self.devices
    }

    /// Where a model that computes on `device` keeps its weights.
    pub(crate) fn home(&self, device: Device) -> Device {
        match self.low_memory {
            true => Device::Cpu,
            false => device,
        }
    }

    /// Where each component's weights are loaded and kept between runs.
    pub(crate) fn homes(&self) -> Devices {
        let d = self.devices;
        Devices {
            text_encoder: self.home(d.text_encoder),
            unet: self.home(d.unet),
            vae: self.home(d.vae),
        }
    }

    /// In low-memory mode, hands the pages of a model that computes on the
    /// CPU back to the kernel once its phase of a run is over
    /// ([`sd_core::alloc::page_out`]): its weights are read again from the
    /// page cache when next used.
    pub(crate) fn done_with<M: DiffusersModel>(&self, model: &M, device: Device) {
        if self.low_memory && device == Device::Cpu {
            sd_core::alloc::page_out(model.var_store());
        }
    }

    /// `model` on `device` for one run: itself, or in low-memory mode a
    /// temporary copy on an accelerator (channels-last when `relayout` and
    /// the pipeline is). A model that computes where it lives (the CPU) is
    /// never copied: a copy would only double its memory.
    pub(crate) fn for_run<'a, M>(
        &self,
        model: &'a M,
        device: Device,
        relayout: bool,
    ) -> Result<Cow<'a, M>>
    where
        M: DiffusersModel,
        PipelineError: From<M::Error>,
    {
        if !self.low_memory || device == self.home(device) {
            return Ok(Cow::Borrowed(model));
        }
        let copy = model.copy_to(device)?;
        if relayout && self.channels_last {
            sd_core::nn::convs_to_channels_last(copy.var_store());
        }
        Ok(Cow::Owned(copy))
    }
}
