//! The `registry serve` process under test: started, stopped, and what /proc says about it (and
//! about this process's open-files limit).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;

pub(super) struct ServerProc {
    child: tokio::process::Child,
    pub(super) pid: u32,
    pub(super) addr: SocketAddr,
    /// Held open: the server exits quietly if its standard output is closed under it.
    _stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

pub(super) async fn start_server(bin: &str, url: &str, ns: &str) -> Result<ServerProc, String> {
    let mut child = tokio::process::Command::new(bin)
        .args([
            "-b",
            url,
            "--namespace",
            ns,
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let pid = child.id().ok_or("the server exited at once")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .map_err(|_| "the server printed no address within 20 s".to_owned())?
        .map_err(|e| e.to_string())?
        .ok_or("the server exited before printing its address")?;
    // "serving namespace NS of URL on http://127.0.0.1:PORT/ (Ctrl-C to stop)"
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no address in the server's first line: {line}"))?;
    Ok(ServerProc {
        child,
        pid,
        addr,
        _stdout: lines,
    })
}

impl ServerProc {
    /// SIGTERM, then how long it took to exit (graceful shutdown), or None if it had to be killed.
    pub(super) async fn stop(mut self) -> Option<Duration> {
        let t0 = Instant::now();
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(_) => Some(t0.elapsed()),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        }
    }
}

/// A field of /proc/PID/status in bytes (VmRSS, VmHWM).
pub(super) fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User plus system CPU seconds of a process (/proc/PID/stat, in USER_HZ = 100 ticks per second).
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Bytes the kernel holds in the send queues of established connections from local `port` (the
/// server's side: written by the server, not yet acknowledged by the client), and how many such
/// connections there are (/proc/net/tcp: IPv4 loopback).
pub(super) fn send_queues(port: u16) -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/net/tcp") else {
        return (0, 0);
    };
    let (mut bytes, mut conns) = (0, 0);
    for line in s.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(queues)) = (f.get(1), f.get(3), f.get(4)) else {
            continue;
        };
        let lport = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if lport != Some(port) || *state != "01" {
            continue;
        }
        if let Some(tx) = queues
            .split(':')
            .next()
            .and_then(|q| u64::from_str_radix(q, 16).ok())
        {
            bytes += tx;
            conns += 1;
        }
    }
    (bytes, conns)
}

pub(super) fn open_files_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
