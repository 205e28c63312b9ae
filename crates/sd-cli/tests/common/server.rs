//! `sd serve` as a child process on a free port, and a small HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running `sd serve`; killed when dropped.
pub struct Served {
    child: Child,
    pub url: String,
    pub data: PathBuf,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
    pub total_count: Option<String>,
}

impl Served {
    /// `sd serve --port 0 --data DATA EXTRA...`, single-threaded like the
    /// references; waits for its "listening on" line.
    pub fn start(data: &Path, extra: &[&str]) -> Served {
        Served::start_env(data, extra, &[])
    }

    /// As `start`, with these environment variables too.
    pub fn start_env(data: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sd"))
            .args(["serve", "--port", "0", "--data"])
            .arg(data)
            .args(extra)
            .envs(env.iter().copied())
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sd serve starts");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reads stdout");
        let Some(rest) = line.split("listening on ").nth(1) else {
            let output = child.wait_with_output().expect("sd serve ends");
            panic!(
                "sd serve did not start: {line}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let url = rest
            .split_whitespace()
            .next()
            .expect("an address")
            .to_string();
        Served {
            child,
            url,
            data: data.to_path_buf(),
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        reply(
            ureq::get(&format!("{}{path}", self.url))
                .timeout(TIMEOUT)
                .call(),
        )
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, &body.to_string())
    }

    pub fn post_raw(&self, path: &str, body: &str) -> Reply {
        reply(
            ureq::post(&format!("{}{path}", self.url))
                .timeout(TIMEOUT)
                .set("Content-Type", "application/json")
                .send_string(body),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to end by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("a child") {
                return status;
            }
            assert!(start.elapsed() < limit, "sd serve did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// No request in these tests may take longer: a hang fails the test.
pub const TIMEOUT: Duration = Duration::from_secs(180);

pub fn reply(result: Result<ureq::Response, ureq::Error>) -> Reply {
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("no HTTP answer: {e}"),
    };
    let status = response.status();
    let retry_after = response.header("retry-after").map(str::to_string);
    let total_count = response.header("x-total-count").map(str::to_string);
    let text = response.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        body,
        retry_after,
        total_count,
    }
}

/// The RGB pixels and text chunks of a base64 PNG.
pub fn decode_png(base64_png: &str) -> (Vec<u8>, Vec<(String, String)>) {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_png)
        .expect("base64");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    reader.next_frame(&mut pixels).expect("pixels");
    let chunks = reader
        .info()
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap_or_default()))
        .collect();
    (pixels, chunks)
}
