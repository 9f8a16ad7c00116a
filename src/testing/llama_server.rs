//! llama-server processes on loopback, for the remote backend's tests and
//! the scale-out measurement: the build `benches/setup-peers.sh llama-server`
//! makes (with llguidance), started on a free port and killed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to load its model and answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The llama-server binary built with llguidance, or why there is none.
pub fn llama_server_binary() -> Result<PathBuf, String> {
    let build = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peers/llama.cpp-build");
    let binary = build.join("bin/llama-server");
    if !binary.is_file() {
        return Err(format!(
            "no llama-server at {} (run `bash benches/setup-peers.sh llama-server`)",
            binary.display()
        ));
    }
    if !build.join("built-with-llguidance").is_file() {
        return Err(format!(
            "{} was built without llguidance (run `bash benches/setup-peers.sh llama-server`)",
            binary.display()
        ));
    }
    Ok(binary)
}

/// A running llama-server, killed when dropped.
#[derive(Debug)]
pub struct LlamaServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
}

impl LlamaServerProcess {
    /// Starts the llguidance build of llama-server on `model` with `args`
    /// (slots, threads, context…) and waits until `/health` answers 200.
    pub fn start(model: &Path, args: &[&str]) -> Result<Self, String> {
        Self::start_binary(&llama_server_binary()?, model, args)
    }

    /// The same with another llama-server binary (the bench's peer).
    pub fn start_binary(binary: &Path, model: &Path, args: &[&str]) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new(binary)
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("llama-server does not start: {e}"))?;
        let mut server = LlamaServerProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while health_status(port) != Some(200) {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "llama-server exited before it was ready ({status})"
                ));
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err("llama-server was not ready within 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// Kills the process now (a server dying under its clients).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LlamaServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status `GET /health` answers on `port`, if anything answers.
fn health_status(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
