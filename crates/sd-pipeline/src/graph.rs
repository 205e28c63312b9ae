//! The UNet step as a CUDA graph (opt-in: `StableDiffusionBuilder::cuda_graphs`):
//! captured once per run on fixed input buffers, then replayed each step.
//! Any failure to capture falls back to eager execution, and says why.

use sd_core::ffi::cuda_graph::{self, CudaGraph};
use sd_unet::{AddedConditions, UNet2DConditionModel};
use tch::{Device, Tensor};

use crate::error::Result;

/// How a generation's UNet steps ran (see [`crate::Generation::unet_execution`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UNetExecution {
    /// Op by op (CUDA graphs not asked for, or not a CUDA device).
    Eager,
    /// Captured once, replayed each step.
    CudaGraph,
    /// CUDA graphs were asked for, but capture failed for this reason.
    EagerAfterFailedCapture(String),
    /// Through a compiled package (`StableDiffusion::compile`).
    Compiled,
    /// A compiled package is loaded, but this run does not fit it (why).
    EagerNotCompiled(String),
}

/// Either a captured UNet call or plain eager calls.
pub(crate) enum UNetRunner {
    Eager(UNetExecution),
    Graph {
        graph: CudaGraph,
        input: Tensor,
        timestep: Tensor,
        output: Tensor,
    },
}

impl UNetRunner {
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
            return UNetRunner::Eager(UNetExecution::Eager);
        };
        if !enabled {
            return UNetRunner::Eager(UNetExecution::Eager);
        }
        let failed = |why: String| UNetRunner::Eager(UNetExecution::EagerAfterFailedCapture(why));
        if !cuda_graph::available() {
            return failed("this build has no CUDA graph shim".into());
        }
        let static_input = input.copy();
        let static_t = timestep.copy();
        // One eager call first: libtorch allocates and picks kernels lazily.
        if let Err(e) = unet.forward(&static_input, &static_t, context, added) {
            return failed(format!("warm-up call: {e}"));
        }
        tch::Cuda::synchronize(index as i64);
        let captured = CudaGraph::capture(index, || {
            unet.forward(&static_input, &static_t, context, added)
                .map_err(|e| sd_core::CoreError::invalid("unet capture", e.to_string()))
        });
        match captured {
            Ok((graph, output)) => UNetRunner::Graph {
                graph,
                input: static_input,
                timestep: static_t,
                output,
            },
            Err(e) => failed(e.to_string()),
        }
    }

    pub fn execution(&self) -> UNetExecution {
        match self {
            UNetRunner::Eager(how) => how.clone(),
            UNetRunner::Graph { .. } => UNetExecution::CudaGraph,
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
            UNetRunner::Eager(_) => Ok(unet.forward(input, timestep, context, added)?),
            UNetRunner::Graph {
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
