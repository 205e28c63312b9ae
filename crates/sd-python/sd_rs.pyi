"""Stable Diffusion in Rust (libtorch), from Python."""

from typing import Callable, Optional, Tuple

from PIL import Image

__version__: str

class Cancelled(Exception):
    """The callback returned False: the run stopped."""

class StableDiffusion:
    """A loaded model: a diffusers folder (SD1.x, SD2.x, SDXL) or a single
    .safetensors checkpoint. Thread-safe: runs release the GIL."""

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "f32",
        scheduler: Optional[str] = None,
        low_memory: bool = False,
    ) -> None:
        """device: cpu, cuda or cuda:N; dtype: f32, f16 or bf16; scheduler:
        ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm2, dpm2-a, dpm++2m,
        dpm++2m-karras, dpm++2m-sde, unipc, lcm (None: the model's own).
        Raises ValueError for a bad option, RuntimeError for a model that
        does not load."""

    @property
    def scheduler(self) -> str: ...
    @property
    def default_size(self) -> Tuple[int, int]: ...
    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        steps: int = 20,
        guidance: float = 7.5,
        seed: int = 0,
        width: Optional[int] = None,
        height: Optional[int] = None,
        num_images: int = 1,
        init_image: Optional[Image.Image] = None,
        strength: float = 0.8,
        mask: Optional[Image.Image] = None,
        callback: Optional[Callable[[int, int], Optional[bool]]] = None,
        scheduler: Optional[str] = None,
    ) -> list[Image.Image]:
        """Images (RGB). With init_image: image-to-image; with mask too:
        inpainting (white is repainted). callback(step, total) after each
        step; returning False raises Cancelled. ValueError names the field
        of a request that cannot run; the same seed and parameters give the
        pixels of `sd txt2img`. scheduler: this run's sampler (an A1111 or
        CLI name; None: the pipeline's)."""

    def generate_batch(
        self,
        prompts: list[str],
        seeds: list[int],
        negative_prompts: Optional[list[str]] = None,
        steps: int = 20,
        guidance: float = 7.5,
        width: Optional[int] = None,
        height: Optional[int] = None,
        scheduler: Optional[str] = None,
    ) -> list[Image.Image]:
        """One image per prompt (image i from seeds[i]) as one UNet batch when
        they can share one, else one after another. Each equals `generate` with
        that prompt and seed up to the rounding of a larger batch."""

def sampler_name(name: str) -> str:
    """The CLI name of an A1111 or CLI sampler name ("Euler a" -> "euler-a");
    ValueError for an unknown one."""
