//! Running `quiver` as a separate process, as users do.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A `quiver serve` child process; killed when dropped.
pub(crate) struct QuiverProcess {
    child: Child,
    pub(crate) grpc_addr: String,
    pub(crate) http_addr: String,
}

impl QuiverProcess {
    /// Starts `quiver serve` on the database `url` with ephemeral ports and waits
    /// until it serves.
    pub(crate) fn start(binary: &Path, url: &str, extra: &[&str]) -> Result<Self> {
        let mut child = Command::new(binary)
            .args(["serve", "--db", url])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(extra)
            .env("QUIVER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stderr = child.stderr.take().context("server stderr")?;
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving grpc_addr=").nth(1) {
                    let mut parts = rest.split(" http_addr=");
                    let grpc = parts.next().unwrap_or_default().trim().to_owned();
                    // More fields follow the address (tls=…, auth=…).
                    let http = parts
                        .next()
                        .and_then(|rest| rest.split_whitespace().next())
                        .unwrap_or_default()
                        .to_owned();
                    let _ = sender.send((grpc, http));
                }
            }
        });
        let (grpc_addr, http_addr) = match receiver.recv_timeout(Duration::from_secs(120)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                bail!("quiver serve did not start serving within 120 s");
            }
        };
        Ok(Self {
            child,
            grpc_addr,
            http_addr,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for QuiverProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of a process in bytes (Linux `/proc`).
pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

/// The URL of a SQLite file.
pub(crate) fn sqlite_url(db: &Path) -> String {
    format!("sqlite://{}", db.display())
}

/// Loads the demo data set with `quiver demo load` (prints its progress); `extra`
/// adds flags such as `--replace`.
pub(crate) fn load_demo(binary: &Path, url: &str, tasks: u64, extra: &[&str]) -> Result<()> {
    let status = Command::new(binary)
        .args(["demo", "load", "--db", url])
        .args(["--tasks", &tasks.to_string()])
        .args(extra)
        .status()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !status.success() {
        bail!("quiver demo load failed: {status}");
    }
    Ok(())
}

/// The release binary next to this one, unless given.
pub(crate) fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("quiver")))
        .unwrap_or_else(|| PathBuf::from("target/release/quiver"))
}
