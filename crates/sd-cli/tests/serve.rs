//! `sd serve` end to end over HTTP on the built-in shapes model: pixels
//! equal to `sd txt2img`, A1111's fields, errors naming the field, the
//! history across a restart and a kill -9, cancellation, batching, the
//! queue under 32 concurrent requests, and the API key.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::server::{decode_png, Served};
use common::{scratch, sd};
use serde_json::{json, Value};

const PROMPT: &str = "a large red circle on a white background";

fn image_of(reply: &common::server::Reply, i: usize) -> (Vec<u8>, Vec<(String, String)>) {
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    decode_png(reply.body["images"][i].as_str().expect("base64 images"))
}

fn info(reply: &common::server::Reply) -> Value {
    serde_json::from_str(reply.body["info"].as_str().expect("info is a JSON string")).unwrap()
}

/// `sd ARGS --out OUT`: the image's pixels.
fn cli_image(args: &[&str], out: &std::path::Path) -> Vec<u8> {
    let mut args = args.to_vec();
    args.extend(["--out", out.to_str().unwrap()]);
    let run = sd(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    image::open(out).unwrap().to_rgb8().into_raw()
}

/// `sd txt2img` on the shapes model: its pixels.
fn cli_pixels(dir: &std::path::Path, seed: u64, steps: usize, scheduler: &str) -> Vec<u8> {
    let (seed_text, steps) = (seed.to_string(), steps.to_string());
    cli_image(
        &[
            "txt2img",
            "--prompt",
            PROMPT,
            "--seed",
            &seed_text,
            "--steps",
            &steps,
            "--scheduler",
            scheduler,
            "--guidance",
            "7.5",
        ],
        &dir.join(format!("cli-{seed}.png")),
    )
}

#[test]
fn txt2img_has_the_pixels_of_sd_txt2img_and_a1111s_fields() {
    let dir = scratch("serve", "pixels");
    let server = Served::start(&dir.join("data"), &["--max-batch", "1"]);
    let body = json!({"prompt": PROMPT, "steps": 6, "cfg_scale": 7.5, "seed": 7,
                      "sampler_name": "Euler a", "batch_size": 2});
    let reply = server.post("/sdapi/v1/txt2img", &body);
    let (first, chunks) = image_of(&reply, 0);
    let (second, _) = image_of(&reply, 1);
    let info = info(&reply);
    assert_eq!(
        info["all_seeds"],
        json!([7, 8]),
        "A1111: one seed up per image"
    );
    let cli_7 = cli_pixels(&dir, 7, 6, "euler-a");
    // Two images share the UNet batch: on CPUs whose GEMM blocking depends
    // on the batch rows (AVX-512 Zen 5) that rounds otherwise, so each is
    // held to the error model's pixel bound (1 level in f32), as batching is.
    let bound = sd_testkit::parity::pixel_tolerance(tch::Kind::Float);
    for (i, (image, seed)) in [(&first, 7), (&second, 8)].into_iter().enumerate() {
        let cli = if seed == 7 {
            cli_7.clone()
        } else {
            cli_pixels(&dir, seed, 6, "euler-a")
        };
        let worst = sd_testkit::parity::max_pixel_difference(image, &cli).expect("same size");
        assert!(
            worst <= bound,
            "image {i} is {worst} levels from sd txt2img --seed {seed}"
        );
    }
    let parameters = &chunks.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(
        parameters.starts_with(PROMPT)
            && parameters.contains("Steps: 6, Sampler: Euler a, CFG scale: 7.5, Seed: 7,"),
        "{parameters}"
    );

    // The history has it, newest first, and serves the same PNG bytes.
    let history = server.get("/api/v1/history?limit=1");
    assert_eq!(history.status, 200);
    assert_eq!(history.total_count.as_deref(), Some("1"));
    let job = &history.body[0];
    assert_eq!(job["status"], "done");
    assert_eq!(job["seeds"], json!([7, 8]));
    let file = job["images"][1].as_str().unwrap();
    let bytes = ureq::get(&format!("{}/api/v1/images/{file}", server.url))
        .call()
        .unwrap();
    let mut png = Vec::new();
    std::io::Read::read_to_end(&mut bytes.into_reader(), &mut png).unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(&png),
        reply.body["images"][1].as_str().unwrap()
    );

    // A1111's listing endpoints.
    let samplers = server.get("/sdapi/v1/samplers").body;
    let names: Vec<&str> = samplers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for name in ["Euler", "Euler a", "DPM++ 2M", "DDIM", "PLMS"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let models = server.get("/sdapi/v1/sd-models").body;
    let options = server.get("/sdapi/v1/options").body;
    assert_eq!(models[0]["title"], options["sd_model_checkpoint"]);
    let metrics = server.get("/metrics").body;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("sd_images_generated_total 2"), "{metrics}");
    assert!(metrics.contains("sd_jobs{status=\"done\"} 1"), "{metrics}");
    assert!(
        metrics.contains("sd_job_latency_seconds_count 1"),
        "{metrics}"
    );

    // One image: same process settings, same kernels and the same batch as
    // the CLI's: the same bytes, not merely close.
    let mut one = body.clone();
    one["batch_size"] = json!(1);
    let alone = server.post("/sdapi/v1/txt2img", &one);
    let (pixels, chunks) = image_of(&alone, 0);
    assert_eq!(pixels, cli_7, "one image = sd txt2img --seed 7");
    // ... and the same PNG parameters text (the request layer writes both).
    let cli_png = std::fs::read(dir.join("cli-7.png")).unwrap();
    let (_, cli_chunks) = decode_png(&base64::engine::general_purpose::STANDARD.encode(cli_png));
    let parameters = |chunks: &[(String, String)]| {
        chunks
            .iter()
            .find(|(k, _)| k == "parameters")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(parameters(&chunks), parameters(&cli_chunks));
    assert!(parameters(&chunks).unwrap().ends_with("Model: shapes"));
}

#[test]
fn bad_requests_get_4xx_naming_the_field() {
    let dir = scratch("serve", "bad");
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let server = Served::start(
        &dir.join("data"),
        &[
            "--max-body-mb",
            "1",
            "--models-dir",
            models.to_str().unwrap(),
        ],
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/sdapi/v1/txt2img", "{\"prompt\": ".into(), 400, "body"),
        (
            "/sdapi/v1/txt2img",
            json!({"steps": "many"}).to_string(),
            422,
            "steps",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"steps": 1000}).to_string(),
            422,
            "steps",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"width": 33}).to_string(),
            422,
            "width",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"height": 100000}).to_string(),
            422,
            "height",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"cfg_scale": -1}).to_string(),
            422,
            "cfg_scale",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"seed": -5}).to_string(),
            422,
            "seed",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"sampler_name": "Euler b"}).to_string(),
            422,
            "sampler_name",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"scheduler": "Karras"}).to_string(),
            422,
            "scheduler",
        ),
        (
            "/sdapi/v1/txt2img",
            json!({"batch_size": 8, "n_iter": 8}).to_string(),
            422,
            "batch_size",
        ),
        (
            "/sdapi/v1/txt2img",
            format!("{{\"prompt\": \"{}\"}}", "x".repeat(6 << 20)),
            413,
            "body",
        ),
        (
            "/sdapi/v1/img2img",
            json!({"prompt": "x"}).to_string(),
            422,
            "init_images",
        ),
        (
            "/sdapi/v1/img2img",
            json!({"init_images": ["not base64!"]}).to_string(),
            422,
            "init_images",
        ),
        (
            "/sdapi/v1/img2img",
            json!({"init_images": ["aGVsbG8="]}).to_string(),
            422,
            "init_images",
        ),
        (
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": "../../etc/passwd"}).to_string(),
            422,
            "sd_model_checkpoint",
        ),
        (
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": 3}).to_string(),
            422,
            "sd_model_checkpoint",
        ),
    ];
    for (path, body, status, field) in cases {
        let reply = server.post_raw(path, &body);
        let shown: String = body.chars().take(60).collect();
        assert_eq!(reply.status, status, "{path} {shown}: {:?}", reply.body);
        assert_eq!(
            reply.body["field"], field,
            "{path} {shown}: {:?}",
            reply.body
        );
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(field),
            "the message names {field}: {detail}"
        );
    }
    assert_eq!(server.get("/no/such/route").status, 404);
    assert_eq!(server.get("/api/v1/images/..%2Fhistory.sqlite").status, 404);
    assert_eq!(server.get("/api/v1/history?limit=0").body["field"], "limit");
    // Nothing bad got as far as the history, and the server is still up.
    assert_eq!(server.get("/api/v1/history").body, json!([]));
    assert_eq!(server.get("/healthz").status, 200);
}

/// Waits until `job` is running (progress names it).
fn wait_running(server: &Served, deadline: Duration) -> i64 {
    let start = Instant::now();
    loop {
        let progress = server.get("/sdapi/v1/progress").body;
        if let Some(id) = progress["state"]["job_ids"][0].as_i64() {
            if progress["state"]["sampling_step"].as_u64() > Some(0) {
                assert!(
                    progress["current_image"].is_string(),
                    "a preview while running"
                );
                return id;
            }
        }
        assert!(start.elapsed() < deadline, "no job started running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// About 25 s on 2 cores: the tests that use it end it sooner (kill,
/// interrupt), so it is always still running when they act.
fn long_job() -> Value {
    json!({"prompt": PROMPT, "steps": 150, "width": 128, "height": 128, "seed": 1})
}

/// Waits until `n` jobs wait in the queue.
fn wait_queued(server: &Served, n: usize) {
    let start = Instant::now();
    let line = format!("sd_jobs{{status=\"queued\"}} {n}\n");
    while !server
        .get("/metrics")
        .body
        .as_str()
        .unwrap()
        .contains(&line)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{n} jobs never queued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn history_survives_a_restart_and_a_kill_fails_only_the_running_job() {
    let dir = scratch("serve", "restart");
    let data = dir.join("data");
    let mut server = Served::start(&data, &[]);
    let done = server.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": PROMPT, "steps": 4, "seed": 2}),
    );
    assert_eq!(done.status, 200);
    let url = server.url.clone();
    let running = std::thread::spawn(move || {
        common::server::reply(ureq::post(&format!("{url}/sdapi/v1/txt2img")).send_json(long_job()))
    });
    let long_id = wait_running(&server, Duration::from_secs(60));
    server.kill();
    let _ = running.join();

    let server = Served::start(&data, &[]);
    let history = server.get("/api/v1/history").body;
    let jobs = history.as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{history}");
    assert_eq!(jobs[0]["id"], long_id);
    assert_eq!(jobs[0]["status"], "failed");
    assert!(
        jobs[0]["error"].as_str().unwrap().contains("interrupted"),
        "{}",
        jobs[0]
    );
    assert_eq!(jobs[1]["status"], "done");
    let file = data
        .join("images")
        .join(jobs[1]["images"][0].as_str().unwrap());
    let (pixels, _) = image_of(&done, 0);
    assert_eq!(
        image::open(file).unwrap().to_rgb8().into_raw(),
        pixels,
        "the finished PNG is intact"
    );
}

#[test]
fn jobs_can_be_interrupted_or_cancelled_while_queued() {
    let dir = scratch("serve", "cancel");
    let server = Served::start(&dir.join("data"), &["--max-batch", "1"]);
    let send = |body: Value| {
        let url = server.url.clone();
        std::thread::spawn(move || {
            common::server::reply(ureq::post(&format!("{url}/sdapi/v1/txt2img")).send_json(body))
        })
    };
    let running = send(long_job());
    let running_id = wait_running(&server, Duration::from_secs(60));
    let queued = send(json!({"prompt": PROMPT, "steps": 4, "seed": 3}));
    wait_queued(&server, 1);
    let queued_id = server.get("/api/v1/history?limit=1").body[0]["id"]
        .as_i64()
        .unwrap();
    assert_ne!(queued_id, running_id);
    let cancelled = server.post(&format!("/api/v1/jobs/{queued_id}/cancel"), &json!({}));
    assert_eq!(cancelled.body["was"], "queued", "{:?}", cancelled.body);
    // The queued request is answered now, while the long job still runs.
    let queued = queued.join().unwrap();
    assert!(server.get("/sdapi/v1/progress").body["state"]["job_ids"] == json!([running_id]));
    let interrupted = server.post("/sdapi/v1/interrupt", &json!({}));
    assert_eq!(interrupted.body["interrupted"], json!([running_id]));
    for (reply, id) in [(running.join().unwrap(), running_id), (queued, queued_id)] {
        assert_eq!(reply.status, 409, "{:?}", reply.body);
        assert_eq!(reply.body["error"], "cancelled");
        assert_eq!(
            server.get(&format!("/api/v1/jobs/{id}")).body["status"],
            "cancelled"
        );
    }
    assert_eq!(
        server.post("/api/v1/jobs/999/cancel", &json!({})).status,
        404
    );

    // A client that gives up (closes the connection) cancels its job.
    let gave_up = ureq::post(&format!("{}/sdapi/v1/txt2img", server.url))
        .timeout(Duration::from_millis(1500))
        .send_json(long_job());
    assert!(
        gave_up.is_err(),
        "the long job outlasts the client's timeout"
    );
    let start = Instant::now();
    loop {
        let job = &server.get("/api/v1/history?limit=1").body[0];
        if job["status"] == "cancelled" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn queued_jobs_of_one_shape_share_a_batch_with_their_own_pixels() {
    let dir = scratch("serve", "batch");
    let server = Served::start(&dir.join("data"), &["--max-batch", "8"]);
    let blocker = {
        let url = server.url.clone();
        std::thread::spawn(move || {
            common::server::reply(
                ureq::post(&format!("{url}/sdapi/v1/txt2img")).send_json(long_job()),
            )
        })
    };
    wait_running(&server, Duration::from_secs(60));
    let prompts = [
        "a small blue square on a black background",
        PROMPT,
        "a large green triangle on a gray background",
    ];
    let batched: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let url = server.url.clone();
            let body =
                json!({"prompt": prompt, "steps": 5, "seed": 20 + i, "sampler_name": "DPM++ 2M"});
            let handle = std::thread::spawn(move || {
                common::server::reply(
                    ureq::post(&format!("{url}/sdapi/v1/txt2img")).send_json(body.clone()),
                )
            });
            // One after another, so that the queue holds them in this order.
            wait_queued(&server, i + 1);
            handle
        })
        .collect();
    // The three wait behind the long job; ending it lets them run together.
    server.post("/sdapi/v1/interrupt", &json!({}));
    assert_eq!(blocker.join().unwrap().status, 409);
    let replies: Vec<_> = batched.into_iter().map(|h| h.join().unwrap()).collect();
    let ids: Vec<i64> = replies
        .iter()
        .map(|r| info(r)["job_id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        info(&replies[0])["batch_job_ids"],
        json!(ids),
        "the three ran as one batch"
    );
    for (i, (prompt, reply)) in prompts.iter().zip(&replies).enumerate() {
        let alone = server.post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": prompt, "steps": 5, "seed": 20 + i, "sampler_name": "DPM++ 2M"}),
        );
        assert_eq!(info(&alone)["batch_job_ids"].as_array().unwrap().len(), 1);
        // A batch of 3 rounds its matrix products differently from a batch
        // of 1 (last-bit differences, ~1e-6): at most one 8-bit level.
        let (a, b) = (image_of(reply, 0).0, image_of(&alone, 0).0);
        let worst = sd_testkit::parity::max_pixel_difference(&a, &b).expect("same size");
        assert!(
            worst <= 1,
            "{prompt}: batched and alone differ by {worst} levels"
        );
    }
}

#[test]
fn thirty_two_concurrent_requests_are_each_served_or_refused() {
    let dir = scratch("serve", "load");
    let server = Served::start(&dir.join("data"), &["--queue-size", "4"]);
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let url = server.url.clone();
            std::thread::spawn(move || {
                common::server::reply(
                    ureq::post(&format!("{url}/sdapi/v1/txt2img"))
                        .timeout(common::server::TIMEOUT)
                        .send_json(json!({"prompt": PROMPT, "steps": 8, "seed": i})),
                )
            })
        })
        .collect();
    let replies: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("no client hangs or panics"))
        .collect();
    let served = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        served + refused.len(),
        32,
        "only 200 or 503: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(served >= 4, "at least a queue's worth served ({served})");
    assert!(!refused.is_empty(), "32 at once overflow a queue of 4");
    for reply in refused {
        assert_eq!(reply.body["error"], "queue_full");
        let seconds: u64 = reply
            .retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=600).contains(&seconds));
    }
    assert_eq!(server.get("/healthz").status, 200, "still up");
    let metrics = server.get("/metrics").body;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains(&format!("sd_images_generated_total {served}")));
}

#[test]
fn an_api_key_guards_every_route_but_healthz() {
    let dir = scratch("serve", "key");
    let open = sd(&[
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--data",
        dir.join("refused").to_str().unwrap(),
    ]);
    assert!(!open.status.success());
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(stderr.contains("--api-key"), "{stderr}");

    let server = Served::start(
        &dir.join("data"),
        &["--host", "0.0.0.0", "--api-key", "correct horse"],
    );
    let url = server.url.replace("0.0.0.0", "127.0.0.1");
    let get = |path: &str, auth: Option<&str>| {
        let mut request = ureq::get(&format!("{url}{path}"));
        if let Some(auth) = auth {
            request = request.set("Authorization", auth);
        }
        common::server::reply(request.call()).status
    };
    assert_eq!(get("/healthz", None), 200);
    for path in ["/", "/sdapi/v1/samplers", "/api/v1/history", "/metrics"] {
        assert_eq!(get(path, None), 401, "{path}");
        assert_eq!(get(path, Some("Bearer correct horsf")), 401, "{path}");
        assert_eq!(get(path, Some("Bearer correct horse")), 200, "{path}");
    }
    // Browsers: basic auth with the key as password ("any:correct horse").
    assert_eq!(get("/", Some("Basic YW55OmNvcnJlY3QgaG9yc2U=")), 200);
}

#[test]
fn models_switch_among_models_dir_and_prompt_loras_match_sd_txt2img() {
    let dir = scratch("serve", "models");
    let models = dir.join("models");
    let tiny = models.join("tiny-sd1");
    sd_testkit::scratch::copy_dir(&common::fixtures().join("tiny-sd1"), &tiny);
    let loras = common::fixtures().join("lora");
    let server = Served::start(
        &dir.join("data"),
        &[
            "--models-dir",
            models.to_str().unwrap(),
            "--lora-dir",
            loras.to_str().unwrap(),
        ],
    );
    let listed = server.get("/sdapi/v1/sd-models").body;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["title"] == "tiny-sd1"),
        "{listed}"
    );
    let switched = server.post(
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": "tiny-sd1"}),
    );
    assert_eq!(switched.status, 200, "{:?}", switched.body);
    assert_eq!(
        server.get("/sdapi/v1/options").body["sd_model_checkpoint"],
        "tiny-sd1"
    );
    let names = server.get("/sdapi/v1/loras").body;
    assert!(
        names
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "sd1-kohya"),
        "{names}"
    );

    let prompt = "<lora:sd1-kohya:0.8> a photo of a cat";
    let reply = server.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": prompt, "steps": 4, "seed": 0, "width": 64, "height": 64,
                "cfg_scale": 7.5, "sampler_name": "Euler"}),
    );
    let (pixels, chunks) = image_of(&reply, 0);
    let cli = cli_image(
        &[
            "txt2img",
            "--model",
            tiny.to_str().unwrap(),
            "--lora-dir",
            loras.to_str().unwrap(),
            "--prompt",
            prompt,
            "--steps",
            "4",
            "--seed",
            "0",
            "--width",
            "64",
            "--height",
            "64",
            "--scheduler",
            "euler",
            "--guidance",
            "7.5",
        ],
        &dir.join("cli.png"),
    );
    assert_eq!(pixels, cli, "the LoRA merged as the CLI merges it");
    let recorded = &chunks.iter().find(|(k, _)| k == "prompt").unwrap().1;
    assert_eq!(recorded, prompt, "the PNG keeps the tag, as A1111's do");

    let missing = server.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "<lora:nowhere:1> a cat", "steps": 2}),
    );
    assert_eq!(
        (missing.status, missing.body["field"].as_str()),
        (422, Some("prompt"))
    );
    assert!(missing.body["detail"]
        .as_str()
        .unwrap()
        .contains("nowhere.safetensors"));
}

#[test]
fn a_job_past_its_time_limit_fails_and_the_next_one_runs() {
    let dir = scratch("serve", "timeout");
    let server = Served::start(&dir.join("data"), &["--job-timeout", "1"]);
    let slow = server.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": PROMPT, "steps": 150, "width": 128, "height": 128}),
    );
    assert_eq!(slow.status, 504, "{:?}", slow.body);
    assert_eq!(slow.body["error"], "time_limit");
    let history = server.get("/api/v1/history?limit=1").body;
    assert_eq!(history[0]["status"], "failed");
    let quick = server.post("/sdapi/v1/txt2img", &json!({"prompt": PROMPT, "steps": 2}));
    assert_eq!(quick.status, 200);
}

#[test]
fn cors_is_off_unless_an_origin_is_allowed() {
    let dir = scratch("serve", "cors");
    let origin = "http://app.example";
    let allowed = |server: &Served| {
        ureq::get(&format!("{}/sdapi/v1/samplers", server.url))
            .set("Origin", origin)
            .call()
            .unwrap()
            .header("access-control-allow-origin")
            .map(str::to_string)
    };
    let closed = Served::start(&dir.join("closed"), &[]);
    assert_eq!(allowed(&closed), None);
    let open = Served::start(&dir.join("open"), &["--cors-origin", origin]);
    assert_eq!(allowed(&open).as_deref(), Some(origin));
}

#[test]
fn img2img_and_inpainting_match_the_cli() {
    let dir = scratch("serve", "img2img");
    let server = Served::start(&dir.join("data"), &[]);
    let init = dir.join("init.png");
    let mask = dir.join("mask.png");
    image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
    })
    .save(&init)
    .unwrap();
    image::GrayImage::from_fn(32, 32, |x, _| image::Luma([if x < 16 { 255 } else { 0 }]))
        .save(&mask)
        .unwrap();
    let encode = |path: &std::path::Path| {
        // As browsers send it: a data URL.
        let bytes = std::fs::read(path).unwrap();
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    };
    for with_mask in [false, true] {
        let mut body = json!({"prompt": PROMPT, "steps": 10, "seed": 4, "cfg_scale": 7.5,
                              "denoising_strength": 0.6, "init_images": [encode(&init)]});
        let out = dir.join(format!("cli-{with_mask}.png"));
        let mut args = vec![
            if with_mask { "inpaint" } else { "img2img" },
            "--prompt",
            PROMPT,
            "--steps",
            "10",
            "--seed",
            "4",
            "--guidance",
            "7.5",
            "--strength",
            "0.6",
            "--init-image",
            init.to_str().unwrap(),
        ];
        if with_mask {
            body["mask"] = encode(&mask).into();
            args.extend(["--mask", mask.to_str().unwrap()]);
        }
        let reply = server.post("/sdapi/v1/img2img", &body);
        let (pixels, _) = image_of(&reply, 0);
        assert_eq!(pixels, cli_image(&args, &out), "mask: {with_mask}");
        let kind = server.get("/api/v1/history?limit=1").body[0]["kind"].clone();
        assert_eq!(kind, if with_mask { "inpaint" } else { "img2img" });
    }

    // A1111's "just resize": the init image to the requested size, or to
    // whole units of 8 when no size is asked for.
    let odd = dir.join("odd.png");
    image::RgbImage::from_pixel(45, 27, image::Rgb([200, 30, 30]))
        .save(&odd)
        .unwrap();
    for (size, expected) in [
        (json!({"width": 32, "height": 48}), (32, 48)),
        (json!({}), (40, 24)),
    ] {
        let mut body = json!({"prompt": PROMPT, "steps": 2, "init_images": [encode(&odd)]});
        body.as_object_mut()
            .unwrap()
            .extend(size.as_object().unwrap().clone());
        let reply = server.post("/sdapi/v1/img2img", &body);
        let info = info(&reply);
        assert_eq!(
            (info["width"].as_u64(), info["height"].as_u64()),
            (Some(expected.0), Some(expected.1))
        );
    }
}

#[test]
fn sigterm_answers_waiting_requests_and_finishes_the_running_job() {
    let dir = scratch("serve", "sigterm");
    let mut server = Served::start(&dir.join("data"), &["--max-batch", "1"]);
    let send = |body: Value| {
        let url = server.url.clone();
        std::thread::spawn(move || {
            common::server::reply(ureq::post(&format!("{url}/sdapi/v1/txt2img")).send_json(body))
        })
    };
    // About 5 s: it runs to its end after the signal.
    let running = send(json!({"prompt": PROMPT, "steps": 150, "width": 64, "height": 64}));
    wait_running(&server, Duration::from_secs(60));
    let waiting = send(json!({"prompt": PROMPT, "steps": 4}));
    wait_queued(&server, 1);
    let term = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let waiting = waiting.join().unwrap();
    assert_eq!(
        (waiting.status, waiting.body["error"].as_str()),
        (503, Some("shutting_down"))
    );
    assert_eq!(
        running.join().unwrap().status,
        200,
        "the running job finishes"
    );
    assert!(server.wait_exit(Duration::from_secs(60)).success());
}

#[test]
fn a_job_abandoned_while_queued_frees_its_queue_slot() {
    let dir = scratch("serve", "abandoned");
    let server = Served::start(&dir.join("data"), &["--max-batch", "1"]);
    let running = {
        let url = server.url.clone();
        std::thread::spawn(move || {
            common::server::reply(
                ureq::post(&format!("{url}/sdapi/v1/txt2img")).send_json(long_job()),
            )
        })
    };
    wait_running(&server, Duration::from_secs(60));
    // Queued behind the long job, then its client gives up.
    let gave_up = ureq::post(&format!("{}/sdapi/v1/txt2img", server.url))
        .timeout(Duration::from_millis(1000))
        .send_json(json!({"prompt": PROMPT, "steps": 2}));
    assert!(gave_up.is_err());
    server.post("/sdapi/v1/interrupt", &json!({}));
    assert_eq!(running.join().unwrap().status, 409);
    let start = Instant::now();
    while !server
        .get("/metrics")
        .body
        .as_str()
        .unwrap()
        .contains("sd_queue_depth 0\n")
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "a slot stayed taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let history = server.get("/api/v1/history?limit=1").body;
    assert_eq!(history[0]["status"], "cancelled");
}
