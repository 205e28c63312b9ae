"""Ray Serve application: AUTOMATIC1111's `POST /sdapi/v1/txt2img` and
`/sdapi/v1/img2img` (as `sd serve` speaks them) on N replicas of the `sd_rs`
Python module, across GPUs and machines.

    serve run deploy/ray/app.py:app_builder model=/models/sd15 replicas=4 device=cuda dtype=f16
    serve deploy deploy/ray/serve.yaml            # the same with autoscaling, from a config file

Two deployments: `Api` (a FastAPI ingress with typed bodies; `sd_rs.check_a1111`
checks each body with `sd serve`'s rules and messages, so no rule lives here;
it retries a request whose replica died) and `Generator` (one loaded model per
replica; `@serve.batch` gathers concurrent requests, and those with one batch
key, the request layer's, run as one UNet batch through `run_a1111`).
"""

import asyncio
import base64
import json
from typing import Any, Optional, Union

import ray
import sd_rs
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve.handle import DeploymentHandle

# A request whose replica dies is sent again this many times (to another replica).
ATTEMPTS = 3
REPLICA_GONE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class Txt2ImgBody(BaseModel):
    """A1111's txt2img body. Unset fields take `sd serve`'s defaults (the
    request layer's); other A1111 fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)

    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    steps: Optional[int] = None
    cfg_scale: Optional[float] = None
    seed: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    sampler_name: Optional[str] = None
    scheduler: Optional[str] = None
    batch_size: Optional[int] = None
    n_iter: Optional[int] = None
    clip_skip: Optional[int] = None
    override_settings: Optional[dict[str, Any]] = None
    # SD3 (this project's extension fields, as `sd serve` takes them)
    max_sequence_length: Optional[int] = None
    skip_layer_guidance: Optional[list[int]] = None
    # FLUX (Forge's and diffusers' names)
    distilled_cfg_scale: Optional[float] = None
    true_cfg_scale: Optional[float] = None


class Img2ImgBody(Txt2ImgBody):
    """A1111's img2img body: txt2img's and the image fields."""

    denoising_strength: Optional[float] = None
    init_images: Optional[list[str]] = None
    mask: Optional[str] = None


def invalid(field: str, detail: str, status: int = 422) -> JSONResponse:
    body = {"error": "invalid_request", "field": field, "detail": detail}
    return JSONResponse(body, status_code=status)


api = FastAPI()


@api.exception_handler(RequestValidationError)
async def wrong_type(request, error: RequestValidationError):
    """A field of the wrong type, named as `sd serve` names it."""
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(location) or "body"
    status = 400 if first.get("type") == "json_invalid" else 422
    return invalid(field, f"{field}: {first.get('msg')}", status)


@serve.deployment
class Generator:
    """One replica: one loaded model."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "f32",
                 lora_dir: Optional[str] = None, t5: Union[None, bool, str] = None,
                 clip_l: Optional[str] = None, clip_g: Optional[str] = None,
                 config_dir: Optional[str] = None, ip_adapters: Optional[list] = None,
                 image_encoder: Optional[str] = None, compiled: bool = False):
        # t5/clip_l/clip_g/config_dir: SD3's encoders, as sd_rs.StableDiffusion takes them;
        # ip_adapters: files, each given an image prompt by the body's ip_adapter field;
        # compiled: the packages `sd compile` left in this node's cache (docs/compile.md)
        self.pipe = sd_rs.StableDiffusion(model, device=device, dtype=dtype, lora_dir=lora_dir,
                                          t5=t5, clip_l=clip_l, clip_g=clip_g,
                                          config_dir=config_dir,
                                          ip_adapters=[(f, 1.0) for f in ip_adapters or []],
                                          image_encoder=image_encoder, compiled=compiled)
        self.lora_dir = lora_dir
        self.replica = serve.get_replica_context().replica_tag
        self.node = ray.get_runtime_context().get_node_id()

    def check_health(self):
        # Serve calls this periodically; an exception restarts the replica.
        if self.pipe.default_size[0] <= 0:
            raise RuntimeError("the model is not loaded")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate(self, requests: list) -> list:
        """Bodies gathered by @serve.batch (each checked again here, where
        the LoRA folder is); those with one batch key share a UNet batch."""
        results: list = [None] * len(requests)
        groups: dict = {}
        for i, (text, img2img) in enumerate(requests):
            try:
                job = sd_rs.check_a1111(text, img2img, self.lora_dir)
            except sd_rs.InvalidRequest as error:
                results[i] = {"error": str(error), "field": error.field}
                continue
            key = job.batch_key if job.batch_key is not None else ("alone", i)
            groups.setdefault(key, []).append((i, job))
        for members in groups.values():
            # The module releases the GIL: the replica's event loop stays free.
            answers = await asyncio.to_thread(self.pipe.run_a1111, [job for _, job in members])
            for (i, _), answer in zip(members, answers):
                answer.update(replica=self.replica, node=self.node)
                results[i] = answer
        return results


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Api:
    """The HTTP ingress: A1111's txt2img and img2img, and a health check."""

    def __init__(self, generator: DeploymentHandle, lora_dir: Optional[str] = None):
        self.generator = generator
        self.lora_dir = lora_dir

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok"}

    @api.post("/sdapi/v1/txt2img")
    async def txt2img(self, body: Txt2ImgBody):
        return await self.run(body, img2img=False)

    @api.post("/sdapi/v1/img2img")
    async def img2img(self, body: Img2ImgBody):
        return await self.run(body, img2img=True)

    async def run(self, body: Txt2ImgBody, img2img: bool):
        fields = body.model_dump(exclude_none=True)
        try:
            job = await asyncio.to_thread(sd_rs.check_a1111, json.dumps(fields), img2img,
                                          self.lora_dir)
        except sd_rs.InvalidRequest as error:
            return invalid(error.field, str(error))
        # The seed is fixed here, so that a retry on another replica makes
        # the same images.
        fields["seed"] = job.seeds[0]
        text = json.dumps(fields)
        result = None
        for attempt in range(ATTEMPTS):
            try:
                result = await self.generator.generate.remote((text, img2img))
                break
            except REPLICA_GONE as error:
                # The replica died (killed, out of memory, its node lost):
                # another one takes the request.
                if attempt + 1 == ATTEMPTS:
                    return JSONResponse({"error": "replica_failed",
                                         "detail": f"{ATTEMPTS} replicas failed: {error}"}, 503)
                await asyncio.sleep(0.5)
        if "error" in result:
            return invalid(result.get("field") or "body", result["error"])
        info = {"seed": result["seeds"][0], "all_seeds": result["seeds"],
                "infotexts": result["infotexts"], "replica": result["replica"],
                "node": result["node"], "batch_images": result["batch_images"],
                "attempts": attempt + 1}
        images = [base64.b64encode(png).decode() for png in result["images"]]
        fields.pop("init_images", None)
        fields.pop("mask", None)
        return {"images": images, "parameters": fields, "info": json.dumps(info)}


def app_builder(args: dict):
    """`serve run deploy/ray/app.py:app_builder model=DIR replicas=N ...`:
    model (required: a folder, a single file or a hub repo id), replicas
    (default 1), device (cpu), dtype (f32), lora_dir (where prompts'
    <lora:NAME:SCALE> tags are found), num_gpus (1 per replica when device is
    cuda), num_cpus (1 otherwise), max_replicas (set: autoscale from 1 to it);
    SD3: t5 (none, required or a file), clip_l, clip_g, config_dir; IP-Adapter:
    ip_adapters (comma-separated files) with image_encoder (their encoder folder);
    compiled (true: run the packages `sd compile` made on each node, eager
    where none fits)."""
    model = args["model"]
    device = args.get("device", "cpu")
    lora_dir = args.get("lora_dir")
    actor = ({"num_gpus": float(args.get("num_gpus", 1))} if device.startswith("cuda")
             else {"num_cpus": float(args.get("num_cpus", 1))})
    options: dict = {"ray_actor_options": actor, "max_ongoing_requests": 16}
    if "max_replicas" in args:
        options["autoscaling_config"] = {
            "min_replicas": int(args.get("min_replicas", 1)),
            "max_replicas": int(args["max_replicas"]),
            "target_ongoing_requests": 4,
        }
    else:
        options["num_replicas"] = int(args.get("replicas", 1))
    t5 = {"none": False, "required": True}.get(args.get("t5"), args.get("t5"))
    extras = {key: args.get(key) for key in ("clip_l", "clip_g", "config_dir", "image_encoder")}
    if args.get("ip_adapters"):
        extras["ip_adapters"] = args["ip_adapters"].split(",")
    compiled = str(args.get("compiled", "false")).lower()
    if compiled not in ("true", "false", "1", "0"):
        raise ValueError(f"compiled: {args['compiled']!r} is not true or false")
    extras["compiled"] = compiled in ("true", "1")
    generator = Generator.options(**options).bind(model, device, args.get("dtype", "f32"), lora_dir,
                                                  t5=t5, **extras)
    return Api.bind(generator, lora_dir)
