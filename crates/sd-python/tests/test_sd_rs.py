"""sd_rs from Python: pixels equal to the `sd` CLI's, errors as Python
exceptions, the callback, and threads that overlap (the GIL is released).

Run by scripts/test-python.sh (which builds the module and the CLI first):
SD_BIN points at the `sd` binary, SD_SHAPES at the shapes model folder."""

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
