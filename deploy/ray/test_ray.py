"""The Ray Serve app on a local two-node Ray cluster (a head node and a second
node on this machine, one CPU each), 2 replicas of the shapes model, one per
node: 16 concurrent requests succeed with the CLI's images; killing a replica
mid-load loses no request; the cluster is torn down even when a test fails.

Run by scripts/test-python.sh: SD_BIN is the `sd` binary, SD_SHAPES the
shapes model folder."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
SHAPES = os.environ["SD_SHAPES"]
SD = os.environ["SD_BIN"]
RAY = str(Path(sys.executable).parent / "ray")
PROMPTS = ["a large red circle on a white background", "a small blue square on a black background"]
TIMEOUT = 300  # seconds for one request: a hang fails the test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compiled_option_checked():
    """A `compiled` arg that is no boolean is refused in one line naming it."""
    sys.path.insert(0, str(HERE))
    import app as ray_app

    with pytest.raises(ValueError, match="^compiled: 'maybe' is not true or false$"):
        ray_app.app_builder({"model": SHAPES, "compiled": "maybe"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start` twice (head + a second node), then Serve with the app; all
    stopped at the end, whatever happened."""
    import ray
    from ray import serve

    sys.path.insert(0, str(HERE))
    import app as ray_app

    temp = tmp_path_factory.mktemp("ray")
    port, http_port = free_port(), free_port()
    # The workers import the app module by name (Serve pickles the classes by reference).
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=path)
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        "--include-dashboard=false", f"--temp-dir={temp}", *common],
                       check=True, env=env, capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}",
                        "--node-ip-address=127.0.0.1", *common],
                       check=True, env=env, capture_output=True, timeout=180)
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        deadline = time.monotonic() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(0.5)
        # One HTTP proxy: both nodes share this machine's address and port.
        serve.start(http_options={"host": "127.0.0.1", "port": http_port, "location": "HeadOnly"})
        # (compiled: no package is kept for the shapes model, so the replicas run eager and
        # must still give the CLI's images)
        serve.run(ray_app.app_builder({"model": SHAPES, "replicas": 2, "compiled": "true"}),
                  blocking=False)
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{url}/healthz", timeout=5).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the app never became healthy"
            time.sleep(0.5)
        yield url
    finally:
        try:
            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def post(url: str, body: dict, endpoint: str = "txt2img"):
    request = urllib.request.Request(f"{url}/sdapi/v1/{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


def cli(tmp_path: Path, prompt: str, seed: int, steps: int) -> bytes:
    out = tmp_path / f"cli-{seed}.png"
    subprocess.run([SD, "txt2img", "--prompt", prompt, "--seed", str(seed), "--steps", str(steps),
                    "--guidance", "7", "--out", str(out)], check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    return Image.open(out).convert("RGB").tobytes()


def concurrently(url: str, bodies: list) -> list:
    results: list = [None] * len(bodies)

    def send(i):
        try:
            results[i] = post(url, bodies[i])
        except OSError as error:  # no HTTP answer at all: reported, never dropped
            results[i] = (None, repr(error))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT + 10)
        assert not t.is_alive(), "a request hung"
    return results


def test_replicas_on_two_nodes_serve_16_concurrent_requests_with_the_clis_images(cluster, tmp_path):
    cases = [(PROMPTS[i % 2], 100 + i % 4) for i in range(16)]
    bodies = [{"prompt": p, "seed": s, "steps": 10, "cfg_scale": 7} for p, s in cases]
    results = concurrently(cluster, bodies)
    expected = {(p, s): cli(tmp_path, p, s, 10) for p, s in set(cases)}
    used, nodes = set(), set()
    for (prompt, seed), (status, body) in zip(cases, results):
        assert status == 200, body
        info = json.loads(body["info"])
        used.add(info["replica"])
        nodes.add(info["node"])
        got, want = pixels(body["images"][0]), expected[(prompt, seed)]
        if info["batch_images"] == 1:
            assert got == want, "alone, the CLI's bytes"
        else:
            # Batched with others: within one 8-bit level (batch rounding).
            assert max(abs(a - b) for a, b in zip(got, want)) <= 1
    assert len(used) == 2, f"both replicas served: {used}"
    assert len(nodes) == 2, f"from both nodes: {nodes}"


def test_a_replica_killed_mid_load_loses_no_request(cluster):
    import ray

    # Long enough (a batch of 8 at 64x64, 60 steps) that the kill lands mid-batch.
    bodies = [{"prompt": PROMPTS[i % 2], "seed": i, "steps": 60, "width": 64, "height": 64}
              for i in range(16)]
    results: list = []
    sender = threading.Thread(target=lambda: results.extend(concurrently(cluster, bodies)))
    sender.start()
    time.sleep(3)
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                  if "Generator" in a["name"])
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=False)
    sender.join(TIMEOUT * 2)
    assert not sender.is_alive(), "requests hung after a replica died"
    statuses = [status for status, _ in results]
    # Every accepted request is answered: retried onto the other replica (200),
    # or, only if every attempt failed, a clear 503 naming the failure.
    assert all(s in (200, 503) for s in statuses), statuses
    for status, body in results:
        if status == 503:
            assert body["error"] == "replica_failed" and body["detail"]
    assert statuses.count(200) == 16, f"retried onto the other replica: {statuses}"
    attempts = [json.loads(b["info"])["attempts"] for s, b in results if s == 200]
    assert max(attempts) >= 2, "the kill hit requests in flight, and they were retried"


def test_img2img_and_refusals_speak_as_sd_serve(cluster, tmp_path):
    """The request layer's A1111 rules through sd_rs: img2img with the CLI's
    pixels and PNG parameters, and refusals naming sd serve's JSON field."""
    init = Image.new("RGB", (32, 32), (30, 160, 90))
    init.save(tmp_path / "init.png")
    buffer = io.BytesIO()
    init.save(buffer, format="PNG")
    body = {"prompt": PROMPTS[0], "seed": 11, "steps": 8, "cfg_scale": 7,
            "denoising_strength": 0.6, "init_images": [base64.b64encode(buffer.getvalue()).decode()]}
    status, answer = post(cluster, body, "img2img")
    assert status == 200, answer
    out = tmp_path / "cli.png"
    subprocess.run([SD, "img2img", "--prompt", PROMPTS[0], "--seed", "11", "--steps", "8",
                    "--guidance", "7", "--init-image", str(tmp_path / "init.png"), "--strength", "0.6",
                    "--out", str(out)], check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    png = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert png.convert("RGB").tobytes() == Image.open(out).convert("RGB").tobytes()
    assert png.info["parameters"] == Image.open(out).info["parameters"]
    for bad, field in [({"steps": 0}, "steps"), ({"steps": "many"}, "steps"),
                       ({"width": 30}, "width"), ({"sampler_name": "nope"}, "sampler_name")]:
        status, answer = post(cluster, dict(body, **bad), "txt2img")
        assert status == 422 and answer["field"] == field, (bad, answer)
