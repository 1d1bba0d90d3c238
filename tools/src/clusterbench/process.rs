//! A cluster member as an OS process that can be SIGKILLed and started again with the same
//! command line (same ports, same data dir).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

pub struct MemberProcess {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl MemberProcess {
    pub fn new(
        name: &str,
        program: &Path,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Self {
        Self {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            envs,
            log_path: log_dir.join(format!("{name}.log")),
            child: None,
        }
    }

    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("cannot open {}", self.log_path.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Sends SIGKILL and returns the instant it was sent; the process is reaped later by
    /// [`MemberProcess::reap`] so that the measurement starts at the signal.
    pub fn sigkill(&mut self) -> Result<Instant> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .with_context(|| format!("{} is not running", self.name))?;
        let sent = Instant::now();
        // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        if rc != 0 {
            bail!(
                "kill -9 {pid} ({}): {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(sent)
    }

    pub async fn reap(&mut self, timeout: Duration) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            tokio::time::timeout(timeout, child.wait())
                .await
                .with_context(|| format!("{} did not exit within {timeout:?}", self.name))??;
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The join token a bootstrapping peer prints, waited for up to 5 s.
    pub async fn join_token(&self) -> Result<String> {
        poll_until(
            Duration::from_secs(5),
            Duration::from_millis(25),
            || async {
                self.log().lines().find_map(|l| {
                    l.trim()
                        .strip_prefix("join token:")
                        .map(|t| t.trim().to_string())
                })
            },
        )
        .await
        .with_context(|| {
            format!(
                "{} printed no join token:\n{}",
                self.name,
                self.log_tail(30)
            )
        })
    }
}

/// Polls `probe` every `every` until it yields a value or `timeout` passes.
pub async fn poll_until<T, F, Fut>(timeout: Duration, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

pub fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}
