//! `/metrics` in Prometheus' text format: queue depth, jobs by status,
//! job latency (queued to finished) as a histogram, images generated.
//! Counters start at zero with each process, as Prometheus expects.

use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Default)]
struct Counts {
    done: u64,
    failed: u64,
    cancelled: u64,
    images: u64,
    /// Per bucket (not cumulative), plus one past the last bound.
    latency: [u64; BUCKETS.len() + 1],
    latency_sum: f64,
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

impl Metrics {
    /// Records one finished job.
    pub fn job(&self, status: crate::db::Status, seconds: f64, images: usize) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match status {
            crate::db::Status::Done => c.done += 1,
            crate::db::Status::Failed => c.failed += 1,
            crate::db::Status::Cancelled => c.cancelled += 1,
        }
        c.images += images as u64;
        let bucket = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        c.latency[bucket] += 1;
        c.latency_sum += seconds;
    }

    /// Mean seconds per finished job (0 before the first).
    pub fn mean_seconds(&self) -> f64 {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count: u64 = c.latency.iter().sum();
        if count == 0 {
            0.0
        } else {
            c.latency_sum / count as f64
        }
    }

    /// The exposition text; `waiting` and `running` are read at the call.
    pub fn render(&self, waiting: usize, running: usize) -> String {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = writeln!(out, "# HELP sd_queue_depth Jobs waiting or running.");
        let _ = writeln!(out, "# TYPE sd_queue_depth gauge");
        let _ = writeln!(out, "sd_queue_depth {}", waiting + running);
        let _ = writeln!(
            out,
            "# HELP sd_jobs Jobs by status (queued and running now; finished since start)."
        );
        let _ = writeln!(out, "# TYPE sd_jobs gauge");
        for (status, n) in [
            ("queued", waiting as u64),
            ("running", running as u64),
            ("done", c.done),
            ("failed", c.failed),
            ("cancelled", c.cancelled),
        ] {
            let _ = writeln!(out, "sd_jobs{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP sd_images_generated_total Images generated since start."
        );
        let _ = writeln!(out, "# TYPE sd_images_generated_total counter");
        let _ = writeln!(out, "sd_images_generated_total {}", c.images);
        let _ = writeln!(
            out,
            "# HELP sd_job_latency_seconds From queued to finished."
        );
        let _ = writeln!(out, "# TYPE sd_job_latency_seconds histogram");
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&c.latency) {
            cumulative += n;
            let _ = writeln!(
                out,
                "sd_job_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += c.latency[BUCKETS.len()];
        let _ = writeln!(
            out,
            "sd_job_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(out, "sd_job_latency_seconds_sum {}", c.latency_sum);
        let _ = writeln!(out, "sd_job_latency_seconds_count {cumulative}");
        out
    }
}
