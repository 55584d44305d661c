//! A live scene: registering and discovering `fault-node` processes (real OS processes) whose JSON
//! lines are followed, and the invariants checked against the truth reader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::truth::Truth;

/// What a process said last.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    /// Registrar: latest state name per id.
    pub states: BTreeMap<String, String>,
    /// Discoverer: latest view.
    pub view: Option<DirView>,
    /// An error line, if the process failed.
    pub error: Option<String>,
    /// Whether its stdout closed (it exited).
    pub exited: bool,
    /// Every `(id, state)` change seen, in order (registrars).
    pub history: Vec<(String, String)>,
    /// Registrar: the lease of each id's latest `registered` line.
    pub leases: BTreeMap<String, String>,
}

/// One view line of a discoverer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirView {
    /// Instance ids.
    pub ids: BTreeSet<String>,
    /// Stale flag.
    pub stale: bool,
    /// Synced flag.
    pub synced: bool,
    /// Revision.
    pub revision: u64,
}

/// A `fault-node` process.
pub struct Node {
    child: Child,
    /// Its pid.
    pub pid: u32,
    /// Registrar: its ids (empty for a discoverer).
    pub ids: Vec<String>,
    /// What it said last.
    pub seen: Arc<Mutex<NodeView>>,
}

impl Node {
    /// A copy of what it said last.
    pub fn view(&self) -> NodeView {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) with kill(1).
    pub async fn signal(&self, sig: &str) -> Result<(), String> {
        // The shell's own `kill`: a minimal Debian has no /bin/kill (procps).
        let st = Command::new("sh")
            .args([
                "-c".to_owned(),
                "kill -s \"$0\" \"$1\"".to_owned(),
                sig.to_owned(),
                self.pid.to_string(),
            ])
            .status()
            .await
            .map_err(|e| format!("kill: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("kill -{sig} {} failed", self.pid))
        }
    }

    /// CPU time it has used so far (user + system), from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Result<Duration, String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|e| format!("reading /proc/{}/stat: {e}", self.pid))?;
        // The fields after the command name (which may hold spaces and parentheses): state is
        // field 3, utime 14 and stime 15 (proc(5)).
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or("no command name in /proc/<pid>/stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64, String> {
            f.get(i - 3)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("/proc/{}/stat: no field {i}", self.pid))
        };
        let total = ticks(14)? + ticks(15)?;
        Ok(Duration::from_secs_f64(total as f64 / clock_ticks() as f64))
    }

    /// SIGTERM, then waits (up to `within`) for it to exit; SIGKILL after that.
    pub async fn terminate(mut self, within: Duration) -> Result<(), String> {
        self.signal("TERM").await?;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(format!("fault-node {} exited with {s}", self.pid)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "fault-node {} did not exit within {within:?}",
                    self.pid
                ))
            }
        }
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's value, if that cannot be run).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// The parameters shared by every process of a scene.
#[derive(Clone)]
pub struct SceneConfig {
    /// The `fault-node` binary.
    pub node_bin: PathBuf,
    /// Backend URL (may hold a token: never printed).
    pub url: String,
    /// Registry namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// TTL.
    pub ttl: Duration,
    /// Heartbeat.
    pub heartbeat: Duration,
    /// The deadline of each backend call (`--op-timeout`); `None`: the library's default.
    pub op_timeout: Option<Duration>,
}

/// Registering and discovering processes.
pub struct Scene {
    /// Shared parameters.
    pub cfg: SceneConfig,
    /// Live registrars.
    pub registrars: Vec<Node>,
    /// Discoverers.
    pub discoverers: Vec<Node>,
    next: usize,
}

/// The outcome of one convergence check.
#[derive(Clone, Debug)]
pub struct Convergence {
    /// Time from the heal to the first moment every invariant held (and still held a moment later).
    pub converged: Option<Duration>,
    /// Registrations of live processes missing from the truth at the end.
    pub lost: usize,
    /// Of those, how many their process claimed as `registered` (silent losses).
    pub silent_lost: usize,
    /// Ids in the truth, or in some directory, that no live process registered or that the truth
    /// does not hold.
    pub phantoms: usize,
    /// What was wrong at the end, when it did not converge.
    pub why: String,
}

impl Scene {
    /// Starts `registrars` registering processes with `ids_each` ids each and `discoverers`
    /// discovering ones.
    pub async fn start(
        cfg: SceneConfig,
        registrars: usize,
        ids_each: usize,
        discoverers: usize,
    ) -> Result<Scene, String> {
        let mut s = Scene {
            cfg,
            registrars: Vec::new(),
            discoverers: Vec::new(),
            next: 0,
        };
        for _ in 0..registrars {
            s.add_registrar(ids_each)?;
        }
        for _ in 0..discoverers {
            let n = s.spawn(&["discover"], Vec::new())?;
            s.discoverers.push(n);
        }
        Ok(s)
    }

    /// Starts one more registrar with `n` fresh ids.
    pub fn add_registrar(&mut self, n: usize) -> Result<(), String> {
        let ids: Vec<String> = (0..n)
            .map(|_| {
                self.next += 1;
                format!("i{:03}", self.next)
            })
            .collect();
        let node = self.spawn_registrar(ids, &[])?;
        self.registrars.push(node);
        Ok(())
    }

    /// Starts a registering process for `ids` with `extra` arguments (`--takeover`), which the
    /// scene does not count among its registrars (the caller owns it).
    pub fn spawn_registrar(&self, ids: Vec<String>, extra: &[&str]) -> Result<Node, String> {
        let joined = ids.join(",");
        let mut args = vec!["register", "--ids", &joined];
        args.extend_from_slice(extra);
        self.spawn(&args, ids)
    }

    /// Stops registrar `i` cleanly (SIGTERM: it deregisters) and forgets it.
    pub async fn retire_registrar(&mut self, i: usize) -> Result<(), String> {
        let n = self.registrars.remove(i);
        n.terminate(Duration::from_secs(15)).await
    }

    fn spawn(&self, args: &[&str], ids: Vec<String>) -> Result<Node, String> {
        let c = &self.cfg;
        let mut cmd = Command::new(&c.node_bin);
        cmd.arg(args[0])
            .args(["--backend", &c.url])
            .args(["--namespace", &c.namespace])
            .args(["--service", &c.service])
            .args(["--ttl", &format!("{}ms", c.ttl.as_millis())])
            .args(["--heartbeat", &format!("{}ms", c.heartbeat.as_millis())])
            .args(&args[1..])
            .args(
                c.op_timeout
                    .map(|t| ["--op-timeout".to_owned(), format!("{}ms", t.as_millis())])
                    .iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning {:?}: {e}", c.node_bin))?;
        let pid = child.id().ok_or("fault-node exited at once")?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let seen: Arc<Mutex<NodeView>> = Arc::default();
        let s2 = seen.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let mut g = s2.lock().unwrap_or_else(|p| p.into_inner());
                match v["kind"].as_str() {
                    Some("state") => {
                        let id = v["id"].as_str().unwrap_or_default().to_owned();
                        let st = v["state"].as_str().unwrap_or_default().to_owned();
                        if let Some(l) = v["lease"].as_str() {
                            g.leases.insert(id.clone(), l.to_owned());
                        }
                        g.history.push((id.clone(), st.clone()));
                        g.states.insert(id, st);
                    }
                    Some("view") => {
                        g.view = Some(DirView {
                            ids: v["ids"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|x| x.as_str().map(str::to_owned))
                                        .collect()
                                })
                                .unwrap_or_default(),
                            stale: v["stale"].as_bool().unwrap_or(true),
                            synced: v["synced"].as_bool().unwrap_or(false),
                            revision: v["revision"].as_u64().unwrap_or(0),
                        });
                    }
                    Some("error") => g.error = v["error"].as_str().map(str::to_owned),
                    _ => {}
                }
            }
            s2.lock().unwrap_or_else(|p| p.into_inner()).exited = true;
        });
        Ok(Node {
            child,
            pid,
            ids,
            seen,
        })
    }

    /// Every id of every live registrar.
    pub fn expected(&self) -> BTreeSet<String> {
        self.registrars
            .iter()
            .flat_map(|n| n.ids.iter().cloned())
            .collect()
    }

    /// Whether every invariant holds now; `Err` says what does not.
    pub async fn check(&self, truth: &Truth) -> Result<(), Violations> {
        let expected = self.expected();
        let mut v = Violations::default();
        let held = match truth.ids(&self.cfg.namespace, &self.cfg.service).await {
            Ok(t) => t,
            Err(e) => {
                v.why.push(format!("truth unreadable: {e}"));
                return Err(v);
            }
        };
        for n in &self.registrars {
            let nv = n.view();
            if nv.exited {
                v.why.push(format!(
                    "registrar {} exited ({})",
                    n.pid,
                    nv.error.as_deref().unwrap_or("no error line")
                ));
            }
            for id in &n.ids {
                let st = nv.states.get(id).map_or("(nothing yet)", String::as_str);
                let in_truth = held.contains(id);
                if !in_truth {
                    v.lost += 1;
                    if st == "registered" {
                        v.silent_lost += 1;
                        v.why.push(format!(
                            "{id}: its process says registered, the server lacks it"
                        ));
                    } else {
                        v.why.push(format!("{id}: {st}, not on the server"));
                    }
                } else if st != "registered" {
                    v.why
                        .push(format!("{id}: on the server but its process says {st}"));
                }
            }
        }
        let mut phantom_ids: BTreeSet<String> = held.difference(&expected).cloned().collect();
        if !phantom_ids.is_empty() {
            v.why.push(format!(
                "server holds what no live process registered: {phantom_ids:?}"
            ));
        }
        for (k, n) in self.discoverers.iter().enumerate() {
            let nv = n.view();
            if nv.exited {
                v.why.push(format!(
                    "discoverer {k} exited ({})",
                    nv.error.as_deref().unwrap_or("no error line")
                ));
            }
            match &nv.view {
                None => v.why.push(format!("discoverer {k}: no view yet")),
                Some(d) => {
                    let extra: BTreeSet<_> = d.ids.difference(&held).cloned().collect();
                    let missing: BTreeSet<_> = held.difference(&d.ids).cloned().collect();
                    if !extra.is_empty() {
                        v.why.push(format!(
                            "discoverer {k} shows what the server lacks: {extra:?}"
                        ));
                        phantom_ids.extend(extra.into_iter().map(|i| format!("d{k}:{i}")));
                    }
                    if !missing.is_empty() {
                        v.why.push(format!("discoverer {k} misses {missing:?}"));
                    }
                    if d.stale || !d.synced {
                        v.why.push(format!(
                            "discoverer {k}: stale={} synced={}",
                            d.stale, d.synced
                        ));
                    }
                }
            }
        }
        v.phantoms = phantom_ids.len();
        if v.why.is_empty() { Ok(()) } else { Err(v) }
    }

    /// Polls [`check`](Self::check) from `since` until it holds twice in a row 1 s apart, or
    /// `bound` has passed since `since`.
    pub async fn converge(&self, truth: &Truth, since: Instant, bound: Duration) -> Convergence {
        let deadline = since + bound;
        loop {
            let last;
            match self.check(truth).await {
                Ok(()) => {
                    let at = since.elapsed();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match self.check(truth).await {
                        Ok(()) => {
                            return Convergence {
                                converged: Some(at),
                                lost: 0,
                                silent_lost: 0,
                                phantoms: 0,
                                why: String::new(),
                            };
                        }
                        Err(v) => last = v,
                    }
                }
                Err(v) => last = v,
            }
            if Instant::now() >= deadline {
                return Convergence {
                    converged: None,
                    lost: last.lost,
                    silent_lost: last.silent_lost,
                    phantoms: last.phantoms,
                    why: last.why.join("; "),
                };
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Stops every process (SIGTERM, so they deregister).
    pub async fn shutdown(self) {
        for n in self.registrars.into_iter().chain(self.discoverers) {
            let _ = n.terminate(Duration::from_secs(5)).await;
        }
    }
}

/// What is wrong at one moment.
#[derive(Clone, Debug, Default)]
pub struct Violations {
    /// Live registrations missing from the truth.
    pub lost: usize,
    /// Of those, claimed `registered`.
    pub silent_lost: usize,
    /// Phantoms (server or directories).
    pub phantoms: usize,
    /// Descriptions.
    pub why: Vec<String>,
}
