//! A bounded load generator for `sd serve`: CLIENTS threads each send
//! REQUESTS txt2img requests one after another (distinct seeds) to a
//! running server, then it prints requests per second and p50/p99 latency.
//!
//! ```text
//! sd serve --port 7860 --max-batch 8 &
//! cargo run --release -p sd-benches --bin server_load -- http://127.0.0.1:7860 16 8 20
//! ```
//! Arguments: URL, CLIENTS (default 4), REQUESTS per client (default 8),
//! STEPS (default 20).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .context("usage: server_load URL [CLIENTS] [REQUESTS] [STEPS]")?;
    let number = |i: usize, default: usize| -> Result<usize> {
        args.get(i)
            .map(|a| {
                a.parse()
                    .with_context(|| format!("argument {i}: {a} is not a number"))
            })
            .unwrap_or(Ok(default))
    };
    let (clients, requests, steps) = (number(1, 4)?, number(2, 8)?, number(3, 20)?);
    if clients == 0 || requests == 0 {
        bail!("CLIENTS and REQUESTS must be at least 1");
    }
    let endpoint = format!("{}/sdapi/v1/txt2img", url.trim_end_matches('/'));
    let prompts = [
        "a large red circle on a white background",
        "a small blue square on a black background",
        "a large green triangle on a gray background",
    ];
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut refused = 0usize;
                for i in 0..requests {
                    let body = serde_json::json!({
                        "prompt": prompts[(client + i) % prompts.len()],
                        "steps": steps,
                        "seed": client * 1000 + i,
                    });
                    let sent = Instant::now();
                    match ureq::post(&endpoint)
                        .timeout(Duration::from_secs(600))
                        .send_json(body)
                    {
                        Ok(_) => latencies.push(sent.elapsed().as_secs_f64()),
                        Err(ureq::Error::Status(503, _)) => refused += 1,
                        Err(e) => return Err(anyhow::anyhow!("client {client}: {e}")),
                    }
                }
                Ok((latencies, refused))
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut refused = 0;
    for thread in threads {
        let (l, r) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        latencies.extend(l);
        refused += r;
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    if latencies.is_empty() {
        bail!("every request was refused ({refused})");
    }
    println!(
        "clients {clients}, requests {}, served {}, refused {refused}, {:.2} req/s, p50 {:.3} s, p99 {:.3} s",
        clients * requests,
        latencies.len(),
        latencies.len() as f64 / wall,
        quantile(0.5),
        quantile(0.99)
    );
    Ok(())
}
