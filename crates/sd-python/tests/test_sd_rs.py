"""sd_rs from Python: pixels equal to the `sd` CLI's, errors as Python
exceptions, the callback, and threads that overlap (the GIL is released).

Run by scripts/test-python.sh (which builds the module and the CLI first):
SD_BIN points at the `sd` binary, SD_SHAPES at the shapes model folder."""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

import sd_rs

SHAPES = os.environ["SD_SHAPES"]
SD = os.environ["SD_BIN"]
PROMPT = "a large blue triangle on a white background"


@pytest.fixture(scope="module")
def pipe():
    return sd_rs.StableDiffusion(SHAPES)


def cli(tmp_path: Path, *args: str, image: str = "cli.png") -> Image.Image:
    """`sd ARGS --out cli.png`, single-threaded like this process; `image`:
    the file to read back (several images are cli-0.png, cli-1.png)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([SD, *args, "--out", str(tmp_path / "cli.png")], check=True, env=env,
                   capture_output=True)
    return Image.open(tmp_path / image).convert("RGB")


def test_txt2img_pixels_equal_the_cli(pipe, tmp_path):
    [image] = pipe.generate(PROMPT, steps=8, seed=3)
    assert image.mode == "RGB" and image.size == pipe.default_size == (32, 32)
    expected = cli(tmp_path, "txt2img", "--prompt", PROMPT, "--steps", "8", "--seed", "3")
    assert image.tobytes() == expected.tobytes()


def test_batches_img2img_and_inpainting_equal_the_cli(pipe, tmp_path):
    images = pipe.generate(PROMPT, steps=4, seed=5, num_images=2, guidance=5.0)
    args = ["txt2img", "--prompt", PROMPT, "--steps", "4", "--seed", "5", "--guidance", "5",
            "--num-images", "2"]
    second = cli(tmp_path, *args, image="cli-1.png")
    assert len(images) == 2 and images[1].tobytes() == second.tobytes()

    init = Image.new("RGB", (32, 32), (200, 40, 40))
    init.save(tmp_path / "init.png")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    mask.save(tmp_path / "mask.png")
    [img2img] = pipe.generate(PROMPT, steps=10, seed=1, init_image=init, strength=0.6)
    expected = cli(tmp_path, "img2img", "--prompt", PROMPT, "--steps", "10", "--seed", "1",
                   "--init-image", str(tmp_path / "init.png"), "--strength", "0.6")
    assert img2img.tobytes() == expected.tobytes()
    [inpainted] = pipe.generate(PROMPT, steps=10, seed=1, init_image=init, mask=mask, strength=1.0)
    expected = cli(tmp_path, "inpaint", "--prompt", PROMPT, "--steps", "10", "--seed", "1",
                   "--init-image", str(tmp_path / "init.png"), "--mask", str(tmp_path / "mask.png"))
    assert inpainted.tobytes() == expected.tobytes()


def test_bad_requests_raise_value_error_naming_the_field(pipe):
    with pytest.raises(ValueError, match="steps"):
        pipe.generate(PROMPT, steps=0)
    with pytest.raises(ValueError, match="width"):
        pipe.generate(PROMPT, steps=2, width=33)
    with pytest.raises(ValueError, match="strength"):
        pipe.generate(PROMPT, steps=2, init_image=Image.new("RGB", (32, 32)), strength=0.0)
    with pytest.raises(ValueError, match="mask"):
        pipe.generate(PROMPT, steps=2, mask=Image.new("L", (32, 32)))
    with pytest.raises(ValueError, match="scheduler"):
        sd_rs.StableDiffusion(SHAPES, scheduler="nope")
    with pytest.raises(ValueError, match="dtype|f64"):
        sd_rs.StableDiffusion(SHAPES, dtype="f64")
    with pytest.raises(RuntimeError, match="model_index.json|no-such-folder"):
        sd_rs.StableDiffusion("/no-such-folder")


def test_callback_sees_every_step_and_can_cancel(pipe):
    seen = []
    pipe.generate(PROMPT, steps=5, callback=lambda step, total: seen.append((step, total)))
    assert seen == [(i, 5) for i in range(5)]
    with pytest.raises(sd_rs.Cancelled):
        pipe.generate(PROMPT, steps=5, callback=lambda step, total: step < 2)

    def boom(step, total):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        pipe.generate(PROMPT, steps=5, callback=boom)


def test_threads_overlap_while_generating(pipe):
    # A thread that counts while two runs go on: with the GIL held for the
    # whole run it could not count at all until they end.
    counts = []
    done = threading.Event()

    def count():
        n = 0
        while not done.is_set():
            n += 1
            time.sleep(0.001)
        counts.append(n)

    counter = threading.Thread(target=count)
    counter.start()
    results = {}

    def run(seed):
        results[seed] = pipe.generate(PROMPT, steps=30, seed=seed)[0].tobytes()

    started = time.monotonic()
    workers = [threading.Thread(target=run, args=(s,)) for s in (7, 8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    done.set()
    counter.join()
    assert set(results) == {7, 8} and results[7] != results[8]
    # At about 1 ms a count, a free GIL gives hundreds of counts a second;
    # a GIL held through the runs, next to none.
    assert counts[0] >= 100 * elapsed, (counts, elapsed)
    # Each thread's image equals the same seed run alone.
    assert results[7] == pipe.generate(PROMPT, steps=30, seed=7)[0].tobytes()


def test_generate_batch_matches_single_runs_and_names_samplers(pipe):
    prompts = [PROMPT, "a small red circle on a black background", "a large green square on a gray background"]
    seeds = [11, 12, 13]
    batch = pipe.generate_batch(prompts, seeds, steps=6, scheduler="Euler a")
    assert len(batch) == 3
    for image, prompt, seed in zip(batch, prompts, seeds):
        [alone] = pipe.generate(prompt, steps=6, seed=seed, scheduler="euler-a")
        # A batch of 3 rounds its matrix products differently: one 8-bit level at most.
        worst = max(abs(a - b) for a, b in zip(image.tobytes(), alone.tobytes()))
        assert worst <= 1, (prompt, worst)
    with pytest.raises(ValueError, match="seeds"):
        pipe.generate_batch(prompts, [1, 2])
    assert sd_rs.sampler_name("DPM++ 2M Karras") == "dpm++2m-karras"
    assert sd_rs.sampler_name("euler-a") == "euler-a"
    with pytest.raises(ValueError, match="Euler b"):
        sd_rs.sampler_name("Euler b")


FIXTURES = Path(__file__).resolve().parents[3] / "reference" / "fixtures"


def parameters_of(path: Path) -> str:
    """The `parameters` text chunk of a PNG (A1111's infotext)."""
    return Image.open(path).info["parameters"]


def test_loras_embeddings_controlnets_and_tiny_vae_equal_the_cli(tmp_path):
    """The constructor's and the call's options against the same CLI flags:
    the same pixels and the same PNG parameters text. (Random tiny weights:
    the images are noise; only their equality counts.)"""
    model = str(FIXTURES / "tiny-sd1")
    lora = FIXTURES / "lora" / "sd1-kohya.safetensors"
    embedding = FIXTURES / "lora" / "shiny-style.safetensors"
    net = FIXTURES / "controlnet" / "sd1-a"
    taesd = FIXTURES / "taesd" / "tiny-taesd"
    control = Image.open(FIXTURES / "controlnet" / "control-a.png").convert("RGB")
    pipe = sd_rs.StableDiffusion(model, loras=[(str(lora), 0.7)], embeddings=[str(embedding)],
                                 controlnets=[(str(net), 0.8)], tiny_vae=str(taesd))
    assert pipe.lora_reports[0][1] > 0, "the LoRA merged modules"
    prompt = "a red circle, shiny-style"
    [image] = pipe.generate(prompt, steps=3, seed=4, width=64, height=64, control_images=[control],
                            clip_skip=1)
    control.save(tmp_path / "control.png")
    expected = cli(tmp_path, "txt2img", "--model", model, "--prompt", prompt, "--steps", "3",
                   "--seed", "4", "--guidance", "7.5", "--width", "64", "--height", "64",
                   "--lora", f"{lora}:0.7", "--embedding", str(embedding),
                   "--controlnet", f"{net}:0.8", "--control-image", str(tmp_path / "control.png"),
                   "--vae-tiny", str(taesd), "--clip-skip", "1")
    assert image.tobytes() == expected.tobytes()
    assert image.info["parameters"] == parameters_of(tmp_path / "cli.png")
    assert "Model: tiny-sd1" in image.info["parameters"], "a name, never a path"

    # A call's own LoRAs replace the constructor's for that call only.
    [without] = pipe.generate(prompt, steps=3, seed=4, width=64, height=64,
                              control_images=[control], clip_skip=1, loras=[])
    assert without.tobytes() != image.tobytes()
    [again] = pipe.generate(prompt, steps=3, seed=4, width=64, height=64,
                            control_images=[control], clip_skip=1)
    assert again.tobytes() == image.tobytes()
    with pytest.raises(sd_rs.InvalidRequest, match="control_images") as error:
        pipe.generate(prompt, steps=3, seed=4)
    assert error.value.field == "control_images"


def test_a1111_bodies_are_checked_and_run_as_sd_serve_runs_them(pipe, tmp_path):
    """What the Ray app does: the request layer's A1111 checks, batch key and
    PNGs, equal to the CLI's for the same parameters."""
    body = {"prompt": PROMPT, "seed": 8, "steps": 6, "cfg_scale": 7, "sampler_name": "Euler a"}
    job = sd_rs.check_a1111(json.dumps(body))
    other = sd_rs.check_a1111(json.dumps(dict(body, prompt="a small red circle on a black background")))
    assert job.seeds == [8] and job.batch_key is not None and job.batch_key == other.batch_key
    [answer] = pipe.run_a1111([job])
    png = tmp_path / "a1111.png"
    png.write_bytes(answer["images"][0])
    expected = cli(tmp_path, "txt2img", "--prompt", PROMPT, "--steps", "6", "--seed", "8",
                   "--guidance", "7", "--scheduler", "euler-a")
    assert Image.open(png).convert("RGB").tobytes() == expected.tobytes()
    assert parameters_of(png) == parameters_of(tmp_path / "cli.png") == answer["infotexts"][0]
    for bad, field in [({"steps": 0}, "steps"), ({"cfg_scale": 500}, "cfg_scale"),
                       ({"width": 30}, "width"), ({"sampler_name": "nope"}, "sampler_name"),
                       ({"steps": "many"}, "steps"), ({"prompt": "<lora:x>"}, "prompt")]:
        with pytest.raises(sd_rs.InvalidRequest) as error:
            sd_rs.check_a1111(json.dumps(dict(body, **bad)))
        assert error.value.field == field, (bad, str(error.value))
    with pytest.raises(sd_rs.InvalidRequest, match="init_images"):
        sd_rs.check_a1111(json.dumps(body), img2img=True)


SD3 = Path(__file__).resolve().parents[3] / "reference" / "fixtures" / "sd3" / "pipeline"


@pytest.mark.parametrize("t5", [True, False])
def test_sd3_options_equal_the_cli(tmp_path, t5):
    """The tiny SD3 folder (random weights: the images are noise) with
    skip-layer guidance and 16 T5 tokens, with T5 and without it: the CLI's
    pixels; a block the transformer lacks is refused naming the argument."""
    pipe = sd_rs.StableDiffusion(str(SD3), t5=t5)
    kwargs = dict(steps=4, seed=2, guidance=5.0, width=48, height=32)
    [image] = pipe.generate(PROMPT, negative_prompt="blurry", max_sequence_length=16,
                            skip_layer_guidance=[1], **kwargs)
    args = ["txt2img", "--model", str(SD3), "--prompt", PROMPT, "--negative-prompt", "blurry",
            "--steps", "4", "--seed", "2", "--guidance", "5", "--width", "48", "--height", "32",
            "--max-sequence-length", "16", "--skip-layer-guidance", "1"]
    expected = cli(tmp_path, *args, *([] if t5 else ["--t5", "none"]))
    assert image.tobytes() == expected.tobytes()
    assert "Model: pipeline" in image.info["parameters"]
    with pytest.raises(sd_rs.InvalidRequest) as refused:
        pipe.generate(PROMPT, skip_layer_guidance=[5], **kwargs)
    assert refused.value.field == "skip_layer_guidance"


def test_sd3_encoder_files_equal_the_cli(tmp_path):
    """T5 from a file of its own (here the folder's own T5 weights): the CLI's
    pixels with `--t5 FILE`; a missing file or a file that is not CLIP is a
    ValueError naming it."""
    t5_file = SD3 / "text_encoder_3" / "model.safetensors"
    pipe = sd_rs.StableDiffusion(str(SD3), t5=str(t5_file))
    kwargs = dict(steps=2, seed=2, guidance=5.0, width=48, height=32)
    [image] = pipe.generate(PROMPT, max_sequence_length=16, **kwargs)
    expected = cli(tmp_path, "txt2img", "--model", str(SD3), "--prompt", PROMPT, "--steps", "2", "--seed", "2",
                   "--guidance", "5", "--width", "48", "--height", "32", "--max-sequence-length", "16",
                   "--t5", str(t5_file))
    assert image.tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="nowhere.safetensors: no such file"):
        sd_rs.StableDiffusion(str(SD3), t5=str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(RuntimeError, match="not a CLIP text encoder"):
        sd_rs.StableDiffusion(str(SD3), clip_l=str(t5_file))


def test_convert_writes_a_gguf_that_loads_as_the_cli_runs_it(tmp_path):
    tiny = FIXTURES / "tiny-sd1"
    gguf = tmp_path / "unet-q4_0.gguf"
    done = sd_rs.convert(str(tiny), str(gguf), type="q4_0")
    assert done == {"tensors": 304, "quantized": 10, "dropped": []}
    pipe = sd_rs.StableDiffusion(str(gguf), config_dir=str(tiny))
    [image] = pipe.generate("a cat", steps=3, seed=5)
    expected = cli(tmp_path, "txt2img", "--model", str(gguf), "--config-dir", str(tiny), "--prompt", "a cat",
                   "--steps", "3", "--seed", "5")
    assert image.tobytes() == expected.tobytes()
    with pytest.raises(RuntimeError, match="type q4_k: not one of"):
        sd_rs.convert(str(tiny), str(tmp_path / "k.gguf"), type="q4_k")
    assert not (tmp_path / "k.gguf").exists()


def test_upscale_gives_the_clis_pixels(tmp_path):
    image = Image.open(FIXTURES / "images" / "init-32.png").convert("RGB")
    model = FIXTURES / "upscale" / "realesrgan-x2.pth"
    big = sd_rs.upscale(image, str(model), tile=16, overlap=4)
    assert big.size == (64, 64)
    out = tmp_path / "big.png"
    run = subprocess.run([SD, "upscale", str(FIXTURES / "images" / "init-32.png"), str(out), "--model", str(model),
                          "--tile", "16", "--overlap", "4"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert big.tobytes() == Image.open(out).convert("RGB").tobytes()
    with pytest.raises(RuntimeError, match="posix.system"):
        sd_rs.upscale(image, str(FIXTURES / "upscale" / "malicious.pth"))
    with pytest.raises(ValueError, match="overlap under half"):
        sd_rs.upscale(image, str(model), tile=16, overlap=8)


def test_hires_fix_gives_the_clis_pixels(tmp_path):
    tiny = FIXTURES / "tiny-sd1"
    pipe = sd_rs.StableDiffusion(str(tiny), scheduler="euler")
    [image] = pipe.generate("a red circle", steps=4, seed=3, width=32, height=32, guidance=7.5, hires_scale=2,
                            hires_upscaler="latent-nearest-exact", hires_strength=0.6)
    assert image.size == (64, 64)
    expected = cli(tmp_path, "txt2img", "--model", str(tiny), "--prompt", "a red circle", "--steps", "4",
                   "--seed", "3", "--width", "32", "--height", "32", "--guidance", "7.5", "--scheduler", "euler",
                   "--hires-scale", "2", "--hires-upscaler", "latent-nearest-exact", "--hires-strength", "0.6")
    assert image.tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="hires_upscaler"):
        pipe.generate("a red circle", steps=2, hires_scale=2, hires_upscaler="sideways")


def test_ip_adapters_give_the_clis_pixels(tmp_path):
    tiny, ip = FIXTURES / "tiny-sd1", FIXTURES / "ip-adapter"
    encoder = ip / "image_encoder"
    pipe = sd_rs.StableDiffusion(str(tiny), ip_adapters=[(str(ip / "sd1-plain.safetensors"), 0.7)],
                                 image_encoder=str(encoder))
    images = [Image.open(FIXTURES / "images" / name) for name in ("init.png", "init-72x64.png")]
    [image] = pipe.generate(PROMPT, steps=4, seed=0, width=64, height=64, guidance=7.5,
                            ip_adapter_images=[images])
    both = ",".join(str(FIXTURES / "images" / name) for name in ("init.png", "init-72x64.png"))
    expected = cli(tmp_path, "txt2img", "--model", str(tiny), "--prompt", PROMPT, "--steps", "4", "--seed", "0",
                   "--width", "64", "--height", "64", "--guidance", "7.5",
                   "--ip-adapter", f"{ip / 'sd1-plain.safetensors'}:0.7", "--ip-image", both,
                   "--image-encoder", str(encoder))
    assert image.tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="ip_adapter_images: 2 entries for 1 loaded"):
        pipe.generate(PROMPT, steps=2, ip_adapter_images=[images[0], images[1]])
    with pytest.raises(ValueError, match="give image_encoder too"):
        sd_rs.StableDiffusion(str(tiny), ip_adapters=[(str(ip / "sd1-plain.safetensors"), 1.0)])


def test_compiled_unet_gives_the_clis_compiled_pixels(tmp_path, monkeypatch):
    """compiled=True runs the package `sd compile` made (the tiny SD1 at 64x64, kept in the
    cargo suites' cache under target/tmp: compiled once for all): the CLI's --compiled pixels
    exactly. (Here the eager image is a level away from the compiled one, so an ignored
    option fails; the two rounding alike on another CPU would hide that.)"""
    root = Path(__file__).resolve().parents[3]
    cache = root / "target" / "tmp" / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("SD_PYTHON", str(root / ".venv" / "bin" / "python"))
    tiny = str(FIXTURES / "tiny-sd1")
    subprocess.run([SD, "compile", "--model", tiny, "--size", "64x64"], check=True,
                   capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    args = ["txt2img", "--model", tiny, "--prompt", "a red circle", "--steps", "4", "--seed", "0",
            "--width", "64", "--height", "64"]
    expected = cli(tmp_path, *args, "--compiled")
    [image] = sd_rs.StableDiffusion(tiny, compiled=True).generate(
        "a red circle", steps=4, seed=0, width=64, height=64)
    assert image.tobytes() == expected.tobytes()
