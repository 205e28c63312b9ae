"""Stable Diffusion in Rust (libtorch), from Python."""

from typing import Callable, Optional, Tuple, Union

from PIL import Image

__version__: str

class Cancelled(Exception):
    """The callback returned False: the run stopped."""

class InvalidRequest(ValueError):
    """A request value or option that cannot be used."""

    field: str
    """The argument (or, from check_a1111, the A1111 JSON field) at fault."""

class A1111Job:
    """An A1111 txt2img/img2img body checked as `sd serve` checks it."""

    @property
    def batch_key(self) -> Optional[str]:
        """Jobs with equal keys may share a UNet batch; None: it runs alone."""
    @property
    def seeds(self) -> list[int]: ...
    @property
    def images(self) -> int: ...

def check_a1111(body: str, img2img: bool = False, lora_dir: Optional[str] = None) -> A1111Job:
    """Parses and checks an A1111 JSON body with `sd serve`'s rules and
    messages (its default limits); raises InvalidRequest naming the field."""

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
        loras: list[Tuple[str, float]] = [],
        embeddings: list[str] = [],
        controlnets: list[Tuple[str, float]] = [],
        tiny_vae: Optional[str] = None,
        lora_dir: Optional[str] = None,
        t5: Union[None, bool, str] = None,
        clip_l: Optional[str] = None,
        clip_g: Optional[str] = None,
        config_dir: Optional[str] = None,
        vae: Optional[str] = None,
        ip_adapters: list[Tuple[str, float]] = [],
        image_encoder: Optional[str] = None,
        compiled: bool = False,
    ) -> None:
        """model: a diffusers folder, a single .safetensors file or a hub
        repo id (org/name); device: cpu, cuda or cuda:N; dtype: f32, f16 or
        bf16; scheduler: ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm2,
        dpm2-a, dpm++2m, dpm++2m-karras, dpm++2m-sde, unipc, lcm or an A1111
        name (None: the model's own). loras: [(file, scale)] merged for calls
        that name none; embeddings: textual-inversion files (token: the
        file's own, or its name); controlnets: [(path, scale)], one control
        image each per call; tiny_vae: a TAESD folder for the final decode;
        lora_dir: where prompts' <lora:NAME:SCALE> tags are found. SD3:
        t5 None (used when the model has it), False (left out), True
        (required) or a T5 file (ComfyUI's t5xxl_fp16.safetensors); clip_l,
        clip_g: those encoders from files of their own; config_dir: configs
        and tokenizers for a single file (T5's tokenizer); vae: the VAE from
        a file of its own (BFL's ae.safetensors, A1111's VAE files);
        ip_adapters: [(file, scale)] with image_encoder, their CLIP image
        encoder folder; compiled: the UNet and VAE decoder run through the
        packages `sd compile` made for the model, at the sizes they were
        made for. Raises
        ValueError for a bad option, RuntimeError for a model that does not
        load."""

    @property
    def scheduler(self) -> str: ...
    @property
    def default_size(self) -> Tuple[int, int]: ...
    @property
    def lora_reports(self) -> list[Tuple[str, int, list[Tuple[str, str]]]]:
        """Each merged LoRA: (file, modules merged, [(key skipped, why)])."""
    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        steps: Optional[int] = None,
        guidance: Optional[float] = None,
        seed: int = 0,
        width: Optional[int] = None,
        height: Optional[int] = None,
        num_images: int = 1,
        init_image: Optional[Image.Image] = None,
        strength: float = 0.8,
        mask: Optional[Image.Image] = None,
        callback: Optional[Callable[[int, int], Optional[bool]]] = None,
        scheduler: Optional[str] = None,
        loras: Optional[list[Tuple[str, float]]] = None,
        control_images: Optional[list[Image.Image]] = None,
        clip_skip: int = 0,
        max_sequence_length: Optional[int] = None,
        skip_layer_guidance: Optional[list[int]] = None,
        true_cfg_scale: Optional[float] = None,
        hires_scale: Optional[float] = None,
        hires_upscaler: str = "latent",
        hires_steps: Optional[int] = None,
        hires_strength: float = 0.7,
    ) -> list[Image.Image]:
        """Images (RGB), each with its PNG parameters text (A1111's
        infotext) in image.info["parameters"]. With init_image:
        image-to-image; with mask too: inpainting (white is repainted).
        callback(step, total) after each step; returning False raises
        Cancelled. InvalidRequest (a ValueError) names the field of a request
        that cannot run; the same seed and parameters give the pixels and
        the parameters text of `sd txt2img`. scheduler: this run's sampler
        (an A1111 or CLI name; None: the pipeline's). loras: this call's
        [(file, scale)] instead of the constructor's. control_images: one per
        ControlNet. clip_skip: text-encoder layers skipped. SD3/FLUX:
        max_sequence_length (T5's tokens); SD3.5: skip_layer_guidance (blocks);
        FLUX: guidance is the distilled guidance, true_cfg_scale with a
        negative prompt runs true CFG. hires_scale: hires fix (generate, enlarge
        by this factor with hires_upscaler: latent, latent-bicubic, ...,
        lanczos, nearest or an upscaler model file, denoise again for
        hires_steps at hires_strength). steps, guidance: None takes the
        model's own (FLUX.1-dev 28 at 3.5, FLUX.1-schnell 4), else 20 at 7.5."""

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

    def run_a1111(self, jobs: list[A1111Job]) -> list[dict]:
        """Checked A1111 jobs, those with one batch key as one UNet batch. For
        each a dict: images (PNG bytes with the parameters text), seeds,
        infotexts, batch_images; or error and field."""

def sampler_name(name: str) -> str:
    """The CLI name of an A1111 or CLI sampler name ("Euler a" -> "euler-a");
    ValueError for an unknown one."""

def upscale(image: Image.Image, model: str, tile: int = 192, overlap: int = 8, device: str = "cpu",
            dtype: str = "f32") -> Image.Image:
    """The image enlarged by an upscaler model as `sd upscale` does it (ESRGAN,
    Real-ESRGAN, SRVGGNetCompact; .safetensors or .pth, read without running
    it), in tiles of `tile` pixels sharing `overlap` (0: the whole image).
    ValueError for a bad option, RuntimeError for a model that does not load
    (a .pth that would run code is refused, naming the call)."""

def convert(input: str, output: str, type: Optional[str] = None, denoiser_only: bool = False) -> dict:
    """Weights as `sd convert` writes them: a diffusers folder (its UNet), a
    single file or a .gguf into `output`: .gguf of `type` (q8_0, q5_1, q5_0,
    q4_1, q4_0, f16, bf16, f32; default q8_0) or .safetensors (f32, f16,
    bf16; default f32). Returns {"tensors", "quantized", "dropped"};
    RuntimeError naming the file or type when it cannot be."""
