//! `capstan serve`: the daemon of one home. Also started in-process by `capstan quickstart`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use capstan_backend_local::LocalBackend;
use capstan_core::model::ExecKind;
use capstan_core::token::hash_token;
use capstan_engine::Engine;
use capstan_engine::backend::Backend;
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::cli::ServeArgs;
use crate::exit;
use crate::home::load_valid;

/// What a running daemon publishes for CLIs on the same machine (`state/daemon.json`).
pub struct DaemonInfo {
    pub pid: u32,
    pub url: String,
    pub token: String,
}

pub fn info_path(root: &Path) -> PathBuf {
    root.join("state").join("daemon.json")
}

/// The daemon of a home, if one is running.
pub fn read_info(root: &Path) -> Option<DaemonInfo> {
    let text = std::fs::read_to_string(info_path(root)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let info = DaemonInfo {
        pid: v["pid"].as_u64()? as u32,
        url: v["url"].as_str()?.to_string(),
        token: v["token"].as_str()?.to_string(),
    };
    // A daemon killed with -9 leaves its file behind: only a live process counts.
    std::path::Path::new(&format!("/proc/{}", info.pid))
        .exists()
        .then_some(info)
}

/// A daemon running in this process.
pub struct Daemon {
    pub engine: Engine,
    pub addr: SocketAddr,
    pub token: String,
    root: PathBuf,
    shutdown: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _lock: std::fs::File,
}

/// Takes the home's daemon lock: one daemon per home.
fn lock(root: &Path) -> anyhow::Result<std::fs::File> {
    let state = root.join("state");
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    let path = state.join("daemon.lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        match read_info(root) {
            Some(info) => bail!(
                "a capstan daemon already runs for {} (pid {}, {})",
                root.display(),
                info.pid,
                info.url
            ),
            None => bail!("a capstan daemon already runs for {}", root.display()),
        }
    }
    Ok(file)
}

/// Starts the engine and the API for the home at `root`, listening on `bind`.
pub async fn start(root: &Path, bind: &str) -> anyhow::Result<Daemon> {
    let root = &std::path::absolute(root)?;
    let home = load_valid(root)?;
    let public_url = home
        .instance
        .server_public_url
        .as_ref()
        .map(|u| u.value.clone());
    let lock = lock(root)?;
    let exe = std::env::current_exe()
        .context("cannot find the capstan executable (for the local backend's supervisor)")?;
    let work_root = home
        .instance
        .work_dir
        .as_ref()
        .map(|w| root.join(&w.value))
        .unwrap_or_else(|| LocalBackend::default_work_root(root));
    let local = LocalBackend::new(root, exe, work_root);
    tracing::info!(limits = %local.limits_description(), "local backend ready");
    tracing::info!(
        identity = %local.identity_description(&capstan_core::access::local_identity(&home, None)),
        "local recipes"
    );
    let docker = capstan_backend_docker::DockerBackend::new(root);
    let k8s = capstan_backend_k8s::K8sBackend::new(root);
    let backends: Vec<Arc<dyn Backend>> = vec![Arc::new(local), Arc::new(docker), Arc::new(k8s)];
    let data = Arc::new(
        capstan_server::data_api::DataPlaneImpl::open(root, || {
            let mut b = [0u8; 32];
            let _ = getrandom::fill(&mut b);
            b
        })
        .with_context(|| format!("cannot set up the data plane of {}", root.display()))?,
    );
    let (engine, starter) = Engine::open(root, home, backends, Some(data.clone()))
        .with_context(|| format!("cannot open the state of {}", root.display()))?;
    engine.set_spark_codegen(std::sync::Arc::new(crate::transform::Codegen));
    close_state(root)?;
    // Listen first: activities get the API's address with their token, also the ones the
    // scheduler claims the moment it starts.
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    data.set_api_url(&format!("http://{addr}"));
    let token = crate::init::new_token()?;
    let state = capstan_server::AppState {
        engine: engine.clone(),
        data: data.clone(),
        local_token_sha256: Arc::new(hash_token(&token)),
        kernels: Default::default(),
        ui_sessions: Default::default(),
        cluster_tests: Arc::new(capstan_engine::cluster_test::ClusterTests::new(Arc::new(
            crate::k8s::Tester {
                root: root.to_path_buf(),
            },
        ))),
    };
    let app = capstan_server::router(state);
    let (tx, rx) = tokio::sync::watch::channel(false);
    // Known before the scheduler starts, so that every grant can ask it.
    let routes = Arc::new(Routes {
        bind: addr,
        public_url,
        app: app.clone(),
        shutdown: rx.clone(),
        known: tokio::sync::Mutex::new(HashMap::new()),
        listening: Mutex::new(HashMap::new()),
    });
    data.set_routes(routes.clone());
    // Said at start, so an admin sees where containers will call back before any job does; in
    // the background, so an engine that does not answer never delays the daemon.
    let at_start = routes.clone();
    tokio::spawn(async move {
        if let Err(why) = at_start.docker(None).await {
            tracing::info!(%why, "no data API address for containers on the local Docker engine yet");
        }
    });
    let report = starter
        .start()
        .context("cannot recover the previous daemon's jobs")?;
    if report.queued + report.reattached > 0 {
        tracing::info!(
            queued = report.queued,
            reattached = report.reattached,
            "recovered the previous daemon's jobs"
        );
    }
    let server = serve_api(app, listener, rx);
    let info = json!({"pid": std::process::id(), "url": format!("http://{addr}"), "token": token});
    write_private(&info_path(root), info.to_string().as_bytes())?;
    Ok(Daemon {
        engine,
        addr,
        token,
        root: root.to_path_buf(),
        shutdown: tx,
        server,
        _lock: lock,
    })
}

fn serve_api(
    app: axum::Router,
    listener: tokio::net::TcpListener,
    mut rx: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await
    })
}

/// Where containers and pods reach this daemon's API: `[server] public_url` when set; else an
/// address of this machine that an engine's containers can reach, which a daemon bound to
/// loopback listens on too. Never a loopback URL: from a container, that is the container.
struct Routes {
    bind: SocketAddr,
    public_url: Option<String>,
    app: axum::Router,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Per Docker engine (`""`: the local one), the URL its containers get. Only what was found
    /// is kept: an engine that is down now may be up at the next run.
    known: tokio::sync::Mutex<HashMap<String, String>>,
    /// The extra addresses listened on, with their port.
    listening: Mutex<HashMap<IpAddr, u16>>,
}

/// What to do when containers have no address for the daemon.
const SET_PUBLIC_URL: &str = "set [server] public_url in capstan.toml to an address of this machine they can reach (and bind the daemon there: [server] bind or `capstan serve --bind`)";

impl Routes {
    async fn docker(&self, host: Option<&str>) -> Result<String, String> {
        let key = host.unwrap_or("").to_string();
        let mut known = self.known.lock().await;
        if let Some(url) = known.get(&key) {
            return Ok(url.clone());
        }
        let (url, why, engine) = self.find(host).await?;
        tracing::info!(%engine, %url, %why, "containers on this engine reach the data API here");
        known.insert(key, url.clone());
        Ok(url)
    }

    /// The address the admin made known, whatever runs the activity: `[server] public_url`,
    /// else the daemon's own when it is bound to one that is neither loopback nor every address.
    fn configured(&self) -> Option<(String, &'static str)> {
        if let Some(u) = &self.public_url {
            return Some((u.clone(), "[server] public_url"));
        }
        let ip = self.bind.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then(|| {
            (
                format!("http://{}", self.bind),
                "the address the daemon is bound to",
            )
        })
    }

    async fn find(&self, host: Option<&str>) -> Result<(String, String, String), String> {
        let named = || host.unwrap_or("the local engine").to_string();
        if let Some((url, why)) = self.configured() {
            return Ok((url, why.to_string(), named()));
        }
        let ip = self.bind.ip();
        let engine = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            capstan_backend_docker::image_ops::Engine::connect(host),
        )
        .await
        .map_err(|_| format!("the Docker engine ({}) did not answer within 5s", named()))??;
        let found = engine.host_address().await.map_err(|e| {
            format!("{e}, so its containers have no address to reach the capstan data API at: {SET_PUBLIC_URL}")
        })?;
        let port = if ip.is_unspecified() {
            self.bind.port()
        } else {
            self.listen(found.ip).await.map_err(|e| {
                format!(
                    "cannot listen on {} for the containers of the Docker engine at {}: {e}; {SET_PUBLIC_URL}",
                    found.ip, engine.name
                )
            })?
        };
        let url = format!("http://{}", SocketAddr::new(found.ip, port));
        Ok((url, found.why, engine.name))
    }

    /// Serves the API on `ip` too, on the daemon's port if it is free there.
    async fn listen(&self, ip: IpAddr) -> std::io::Result<u16> {
        if let Some(port) = self
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
        {
            return Ok(*port);
        }
        let listener = match tokio::net::TcpListener::bind((ip, self.bind.port())).await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind((ip, 0)).await?,
        };
        let port = listener.local_addr()?.port();
        serve_api(self.app.clone(), listener, self.shutdown.clone());
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip, port);
        Ok(port)
    }
}

impl capstan_server::data_api::ContainerRoutes for Routes {
    fn url<'a>(
        &'a self,
        kind: ExecKind,
        docker_host: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            match kind {
                ExecKind::Docker => self.docker(docker_host).await,
                _ => self.configured().map(|(url, _)| url).ok_or_else(|| {
                    format!(
                        "pods have no address to reach the capstan data API at: {SET_PUBLIC_URL}"
                    )
                }),
            }
        })
    }
}

/// Writes a file only its owner can read (it holds the local token).
/// Closes the instance's state and data to everyone but the daemon's user: recipes run as
/// other users, and what is here (the local token, the key behind activity tokens, every job's
/// log, every project's datasets) is not theirs to read. `state/` can still be crossed, for the
/// two things recipes run from: capstan's runtime and the code environments.
fn close_state(root: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let state = root.join("state");
    let data = root.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let mut modes = vec![(state.clone(), 0o711), (data, 0o700)];
    for entry in
        std::fs::read_dir(&state).with_context(|| format!("cannot read {}", state.display()))?
    {
        let entry = entry?;
        let name = entry.file_name();
        let open = matches!(name.to_str(), Some("runtime" | "envs"));
        // Everything else, present and future, is the daemon's alone.
        modes.push((
            entry.path(),
            if open {
                0o755
            } else if entry.file_type()?.is_dir() {
                0o700
            } else {
                0o600
            },
        ));
    }
    for (path, mode) in modes {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot restrict {} to the daemon's user", path.display()))?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl Daemon {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving; with `stop_jobs`, cancels running work and waits for it.
    pub async fn stop(self, stop_jobs: bool) {
        let _ = self.shutdown.send(true);
        self.engine.shutdown(stop_jobs).await;
        let _ = self.server.await;
        let _ = std::fs::remove_file(info_path(&self.root));
    }
}

pub async fn serve(root: &Path, args: &ServeArgs) -> anyhow::Result<u8> {
    let bind = match &args.bind {
        Some(b) => b.clone(),
        None => {
            let (home, _) = capstan_core::load_home(root)?;
            home.instance
                .server_bind
                .map(|b| b.value)
                .unwrap_or_else(|| "127.0.0.1:7878".to_string())
        }
    };
    let daemon = start(root, &bind).await?;
    eprintln!(
        "capstan daemon for {} listening on {}",
        root.display(),
        daemon.url()
    );
    eprintln!(
        "  web UI at {}/ui/ (sign in with your capstan token)",
        daemon.url()
    );
    eprintln!(
        "  local token in {} (for the CLI on this machine)",
        info_path(root).display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if args.stop_jobs {
        eprintln!("stopping: cancelling running jobs");
    } else {
        eprintln!("stopping: running jobs keep running and are re-attached at the next start");
    }
    daemon.stop(args.stop_jobs).await;
    Ok(exit::OK)
}
