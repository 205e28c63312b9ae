"""Ray Serve application: AUTOMATIC1111's `POST /sdapi/v1/txt2img` (as `sd serve`
speaks it) on N replicas of the `sd_rs` Python module, across GPUs and machines.

    serve run deploy/ray/app.py:app_builder model=/models/sd15 replicas=4 device=cuda dtype=f16
    serve deploy deploy/ray/serve.yaml            # the same with autoscaling, from a config file

Two deployments: `Api` (the HTTP ingress: parses and checks the body, retries a
request whose replica died) and `Generator` (one loaded model per replica;
`@serve.batch` gathers concurrent requests and runs those that agree in size,
steps, guidance and sampler as one UNet batch through `generate_batch`).
"""

import asyncio
import base64
import io
import json
import random
from typing import Any, Optional

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

# The same limits as `sd serve`'s defaults.
MAX_STEPS = 150
MAX_SIZE = 2048
MAX_IMAGES = 16
# A request whose replica dies is sent again this many times (to another replica).
ATTEMPTS = 3
REPLICA_GONE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class FieldError(Exception):
    """A request field that cannot be used (answered 422, or 400 for the body)."""

    def __init__(self, field: str, detail: str, status: int = 422):
        super().__init__(f"{field}: {detail}")
        self.field, self.detail, self.status = field, f"{field}: {detail}", status

    def response(self) -> JSONResponse:
        body = {"error": "invalid_request", "field": self.field, "detail": self.detail}
        return JSONResponse(body, status_code=self.status)


def _integer(body: dict, field: str, default: Optional[int], low: int, high: int) -> Optional[int]:
    value = body.get(field, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"{value!r} is not a whole number")
    if not low <= value <= high:
        raise FieldError(field, f"{value} is outside {low}..={high}")
    return value


def parse_txt2img(body: Any) -> dict:
    """A1111's txt2img body, checked as `sd serve` checks it, as a job dict.
    A1111 fields this app does not use are ignored."""
    import sd_rs

    if not isinstance(body, dict):
        raise FieldError("body", "expected a JSON object", 400)
    for field in ("prompt", "negative_prompt"):
        if not isinstance(body.get(field, ""), str):
            raise FieldError(field, "expected a string")
    steps = _integer(body, "steps", 20, 1, MAX_STEPS)
    cfg = body.get("cfg_scale", 7.0)
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not 0 <= cfg <= 100:
        raise FieldError("cfg_scale", f"{cfg!r} is outside 0..=100")
    width = _integer(body, "width", None, 8, MAX_SIZE)
    height = _integer(body, "height", None, 8, MAX_SIZE)
    for field, value in (("width", width), ("height", height)):
        if value is not None and value % 8:
            raise FieldError(field, f"{value} is not a multiple of 8")
    batch_size = _integer(body, "batch_size", 1, 1, MAX_IMAGES)
    seed = _integer(body, "seed", -1, -1, 2**63 - 1)
    if seed == -1:
        seed = random.getrandbits(32)
    sampler = body.get("sampler_name") or None
    if sampler is not None:
        try:
            sampler = sd_rs.sampler_name(str(sampler))
        except ValueError as error:
            raise FieldError("sampler_name", str(error)) from None
    return {
        "prompt": body.get("prompt", ""),
        "negative_prompt": body.get("negative_prompt", ""),
        "steps": steps,
        "cfg_scale": float(cfg),
        "width": width,
        "height": height,
        "sampler": sampler,
        "batch_size": batch_size,
        "seed": seed,
    }


def _png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@serve.deployment
class Generator:
    """One replica: one loaded model."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "f32"):
        import sd_rs

        self.pipe = sd_rs.StableDiffusion(model, device=device, dtype=dtype)
        self.replica = serve.get_replica_context().replica_tag
        self.node = ray.get_runtime_context().get_node_id()

    def check_health(self):
        # Serve calls this periodically; an exception restarts the replica.
        if self.pipe.default_size[0] <= 0:
            raise RuntimeError("the model is not loaded")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def txt2img(self, jobs: list) -> list:
        """Jobs gathered by @serve.batch; those that agree share a UNet batch."""
        results: list = [None] * len(jobs)
        groups: dict = {}
        for i, job in enumerate(jobs):
            key = (job["steps"], job["cfg_scale"], job["width"], job["height"], job["sampler"])
            groups.setdefault(key, []).append(i)
        for (steps, cfg, width, height, sampler), members in groups.items():
            prompts, negatives, seeds, owners = [], [], [], []
            for i in members:
                for k in range(jobs[i]["batch_size"]):
                    prompts.append(jobs[i]["prompt"])
                    negatives.append(jobs[i]["negative_prompt"])
                    seeds.append(jobs[i]["seed"] + k)
                    owners.append(i)
            try:
                # The module releases the GIL: the replica's event loop stays free.
                images = await asyncio.to_thread(
                    self.pipe.generate_batch, prompts, seeds, negatives, steps, cfg, width,
                    height, sampler)
            except ValueError as error:
                for i in members:
                    results[i] = {"error": str(error)}
                continue
            for i in members:
                results[i] = {"images": [], "seeds": [], "replica": self.replica,
                              "node": self.node, "batch_images": len(prompts)}
            for image, seed, i in zip(images, seeds, owners):
                results[i]["images"].append(_png_base64(image))
                results[i]["seeds"].append(seed)
        return results


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Api:
    """The HTTP ingress: A1111's txt2img and a health check."""

    def __init__(self, generator: DeploymentHandle):
        self.generator = generator

    async def __call__(self, request: Request):
        path, method = request.url.path.rstrip("/"), request.method
        if path == "/healthz" and method == "GET":
            return JSONResponse({"status": "ok"})
        if path != "/sdapi/v1/txt2img" or method != "POST":
            return JSONResponse({"error": "not_found", "detail": "no such route"}, 404)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as error:
            return FieldError("body", f"malformed JSON: {error}", 400).response()
        try:
            job = parse_txt2img(body)
        except FieldError as error:
            return error.response()
        result = None
        for attempt in range(ATTEMPTS):
            try:
                result = await self.generator.txt2img.remote(job)
                break
            except REPLICA_GONE as error:
                # The replica died (killed, out of memory, its node lost):
                # another one takes the request.
                if attempt + 1 == ATTEMPTS:
                    return JSONResponse({"error": "replica_failed",
                                         "detail": f"{ATTEMPTS} replicas failed: {error}"}, 503)
                await asyncio.sleep(0.5)
        if "error" in result:
            return JSONResponse({"error": "invalid_request", "detail": result["error"]}, 422)
        info = {"seed": result["seeds"][0], "all_seeds": result["seeds"],
                "replica": result["replica"], "node": result["node"],
                "batch_images": result["batch_images"],
                "attempts": attempt + 1}
        return JSONResponse({"images": result["images"], "parameters": job,
                             "info": json.dumps(info)})


def app_builder(args: dict):
    """`serve run deploy/ray/app.py:app_builder model=DIR replicas=N ...`:
    model (required), replicas (default 1), device (cpu), dtype (f32),
    num_gpus (1 per replica when device is cuda), num_cpus (1 otherwise),
    max_replicas (set: autoscale from 1 to it)."""
    model = args["model"]
    device = args.get("device", "cpu")
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
    generator = Generator.options(**options).bind(model, device, args.get("dtype", "f32"))
    return Api.bind(generator)
