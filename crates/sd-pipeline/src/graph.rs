//! The UNet step as a CUDA graph (opt-in: `StableDiffusionBuilder::cuda_graphs`):
//! captured once per run on fixed input buffers, then replayed each step.
//! Any failure to capture falls back to eager execution.

use sd_core::cuda_graph::{self, CudaGraph};
use sd_unet::{AddedConditions, UNet2DConditionModel};
use tch::{Device, Tensor};

use crate::error::Result;

/// Either a captured UNet call or plain eager calls.
pub(crate) enum UnetRunner {
    Eager,
    Graph {
        graph: CudaGraph,
        input: Tensor,
        timestep: Tensor,
        output: Tensor,
    },
}

impl UnetRunner {
    /// Captures `unet` on buffers shaped like `input` when asked for and possible.
    pub fn new(
        enabled: bool,
        unet: &UNet2DConditionModel,
        input: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Self {
        let Device::Cuda(index) = input.device() else {
            return UnetRunner::Eager;
        };
        if !enabled || !cuda_graph::available() {
            return UnetRunner::Eager;
        }
        let static_input = input.copy();
        let static_t = timestep.copy();
        // One eager call first: libtorch allocates and picks kernels lazily.
        if unet
            .forward(&static_input, &static_t, context, added)
            .is_err()
        {
            return UnetRunner::Eager;
        }
        tch::Cuda::synchronize(index as i64);
        let captured = CudaGraph::capture(index, || {
            unet.forward(&static_input, &static_t, context, added)
                .map_err(|e| sd_core::CoreError::invalid("unet capture", e.to_string()))
        });
        match captured {
            Ok((graph, output)) => UnetRunner::Graph {
                graph,
                input: static_input,
                timestep: static_t,
                output,
            },
            Err(_) => UnetRunner::Eager,
        }
    }

    pub fn run(
        &mut self,
        unet: &UNet2DConditionModel,
        input: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        match self {
            UnetRunner::Eager => Ok(unet.forward(input, timestep, context, added)?),
            UnetRunner::Graph {
                graph,
                input: fixed,
                timestep: t,
                output,
            } => {
                fixed.shallow_clone().copy_(input);
                t.shallow_clone().copy_(timestep);
                graph.replay()?;
                // The next replay overwrites the output buffer: hand out a copy.
                Ok(output.copy())
            }
        }
    }
}
