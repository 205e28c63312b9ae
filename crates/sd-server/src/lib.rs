//! `sd serve`: Stable Diffusion over HTTP, speaking AUTOMATIC1111's API.
//!
//! - `POST /sdapi/v1/txt2img`, `POST /sdapi/v1/img2img` (A1111's bodies and
//!   responses; base64 PNGs with the parameters in their text chunk);
//!   `GET /sdapi/v1/samplers`, `/sd-models`, `/options` (POST switches the
//!   model among `--models-dir`), `/progress` (with a preview image),
//!   `POST /sdapi/v1/interrupt`; `GET /sdapi/v1/upscalers` and
//!   `POST /sdapi/v1/extra-single-image` (upscaler models of `--upscalers-dir`).
//! - `GET /api/v1/history` (newest first, `?limit=&offset=`, total in
//!   `X-Total-Count`), `GET /api/v1/jobs/{id}`, `POST /api/v1/jobs/{id}/cancel`,
//!   `GET /api/v1/images/{file}`.
//! - `GET /healthz`, `GET /metrics` (Prometheus), and a web page at `/`.
//!
//! Jobs run one at a time, in order, on a worker thread that owns the
//! pipeline; queued txt2img jobs of the same shape share one UNet batch.
//! The history (parameters, seeds, status, timings, image files) lives in
//! SQLite under the data folder and survives restarts; a job the server
//! was killed during is marked failed at the next start.
//!
//! ```no_run
//! # fn main() -> Result<(), sd_server::ServerError> {
//! let model = sd_pipeline::front::ModelSource::detect("path/to/model")?;
//! let config = sd_server::ServerConfig::new(model, "path/to/data");
//! let server = sd_server::Server::start(config)?;
//! println!("listening on http://{}", server.local_addr());
//! server.run_until_ctrl_c()
//! # }
//! ```

#![warn(missing_docs)]

pub mod a1111;
mod auth;
pub mod config;
mod db;
pub mod error;
mod extras;
mod job;
mod metrics;
mod models;
mod oversized;
mod queue;
mod routes;
mod state;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{default_data_dir, Limits, ServerConfig};
pub use error::{ApiError, ServerError};

use state::Shared;

/// A server with its model loaded, its database open and its port bound.
pub struct Server {
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    worker: std::thread::JoinHandle<()>,
    /// Jobs a previous run left unfinished, now marked failed.
    pub recovered_jobs: usize,
}

impl Server {
    /// Checks the settings, opens the data folder, loads the model and
    /// binds the address; requests are served by [`Server::run`].
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        check(&config)?;
        let images_dir = config.data_dir.join("images");
        std::fs::create_dir_all(&images_dir)
            .map_err(|e| ServerError::io(format!("--data {}", config.data_dir.display()), e))?;
        let db = db::Db::open(&config.data_dir.join("history.sqlite"))?;
        let recovered_jobs = db.fail_interrupted()?;
        let pipeline = config.builder(&config.model).build()?;
        let listener = std::net::TcpListener::bind(config.address)
            .map_err(|e| ServerError::io(format!("cannot listen on {}", config.address), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ServerError::io("listener", e))?;
        let shared = Arc::new(Shared::new(config, db, images_dir, pipeline.sampler()));
        let worker = worker::spawn(shared.clone(), pipeline);
        Ok(Server {
            shared,
            listener,
            worker,
            recovered_jobs,
        })
    }

    /// The address it listens on (the port, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.address)
    }

    /// Serves until `shutdown` completes, then lets the running job finish;
    /// waiting requests get 503 (their jobs are marked failed at the next
    /// start).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|e| ServerError::io("listener", e))?;
        let app = routes::router(self.shared.clone());
        let shared = self.shared.clone();
        // Closing the queue first answers the waiting requests, so that the
        // graceful shutdown waits for the running job only.
        let shutdown = async move {
            shutdown.await;
            shared.queue.close();
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| ServerError::io("serving", e));
        self.shared.queue.close();
        let _ = tokio::task::spawn_blocking(move || self.worker.join()).await;
        served
    }

    /// [`Server::run`] on its own runtime until Ctrl-C (or SIGTERM).
    pub fn run_until_ctrl_c(self) -> Result<(), ServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ServerError::io("tokio runtime", e))?;
        runtime.block_on(self.run(stop_signal()))
    }
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Settings refused before anything starts.
fn check(config: &ServerConfig) -> Result<(), ServerError> {
    if let Some(key) = &config.api_key {
        if key.len() < 8 {
            return Err(ServerError::Config {
                setting: "--api-key",
                message: "use at least 8 characters".into(),
            });
        }
    }
    if !config.address.ip().is_loopback() && config.api_key.is_none() {
        return Err(ServerError::Config {
            setting: "--host",
            message: format!(
                "{} is reachable from other machines: give --api-key (or SD_API_KEY) too",
                config.address.ip()
            ),
        });
    }
    if config.limits.queue_capacity == 0 {
        return Err(ServerError::Config {
            setting: "--queue-size",
            message: "at least 1".into(),
        });
    }
    if let Some(dir) = &config.models_dir {
        if !dir.is_dir() {
            return Err(ServerError::Config {
                setting: "--models-dir",
                message: format!("{} is not a folder", dir.display()),
            });
        }
    }
    Ok(())
}
