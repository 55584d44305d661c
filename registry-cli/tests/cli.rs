//! The `registry` binary as a user runs it: output and exit codes, on memory and against etcd.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

fn registry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_registry"));
    c.env_remove("REGISTRY_BACKEND")
        .env_remove("REGISTRY_NAMESPACE");
    c
}

fn run(args: &[&str]) -> Output {
    registry().args(args).output().expect("run registry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn demo_on_memory_tells_the_whole_story() {
    let started = Instant::now();
    let out = run(&["demo"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        stdout,
        text(&out.stderr)
    );
    for expected in [
        "on memory://",
        "1  Five instances register",
        "+ api/api-1",
        "2  A client discovers both services",
        "api    3 online  api-1 api-2 api-3",
        "3  20 keys are routed",
        "4  api-2 goes offline",
        "keys moved, exactly api-2's",
        "5  api-3 crashes",
        "5s 4s 3s 2s 1s",
        "gone",
        "6  cache-1 drains",
        "Directory now: api 1 online (api-1), cache 1 online (cache-2)",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks {expected:?}:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains('\x1b'),
        "colour codes in output that is not a terminal"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "demo took {:?}",
        started.elapsed()
    );
}

#[test]
fn help_reads_well_and_usage_errors_exit_2() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for cmd in [
        "demo",
        "register",
        "list",
        "watch",
        "find",
        "completions",
        "Exit codes",
    ] {
        assert!(help.contains(cmd), "help lacks {cmd}:\n{help}");
    }
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        run(&["register", "web"]).status.code(),
        Some(2),
        "missing --id and --addr"
    );
    let out = run(&[
        "register", "web", "--id", "a", "--addr", "x:1", "--ttl", "soon",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("15s"), "{}", text(&out.stderr));
    let out = run(&["--backend", "zookeeper://zk:2181", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("etcd://"),
        "a bad URL says what a good one looks like: {}",
        text(&out.stderr)
    );
    let out = run(&["--backend", "etcd://nohostport", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("host:port"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["register", "web/../x", "--id", "a", "--addr", "x:1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn unreachable_backend_exits_3_naming_the_address() {
    let port = conformance_tests::testbed::free_port();
    for url in [
        format!("etcd://127.0.0.1:{port}?connect_timeout=1s&timeout=1s"),
        format!("redis://127.0.0.1:{port}"),
        format!("consul://127.0.0.1:{port}"),
    ] {
        let out = run(&["--backend", &url, "list"]);
        assert_eq!(out.status.code(), Some(3), "{url}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("127.0.0.1:{port}")) && err.contains("check"),
            "{url}: {err}"
        );
    }
}

#[test]
fn find_with_no_instance_exits_4_and_completions_work() {
    let out = run(&["find", "web", "user-1"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no online instance of service web"));
    let out = run(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("registry"));
}

/// Lines of a child's stdout, readable with a timeout.
fn lines(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for(
    rx: &Receiver<String>,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(e) => panic!(
                "no matching line within {limit:?} ({}); lines seen meanwhile: {seen:?}",
                match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => "timed out",
                    std::sync::mpsc::RecvTimeoutError::Disconnected =>
                        "the process closed its output",
                }
            ),
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && pred(&v)
        {
            return v;
        }
        seen.push(line);
    }
}

struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_json_sees_another_process_register_and_vanish() {
    let Some(endpoint) = conformance_tests::testbed::shared_etcd() else {
        return;
    };
    let url = format!("etcd://{endpoint}");
    let ns = conformance_tests::testbed::fresh_namespace("cli");
    let common = ["--backend", url.as_str(), "--namespace", ns.as_str()];
    let mut watch = Killer(
        registry()
            .args(common)
            .args(["watch", "web", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn watch"),
    );
    let events = lines(&mut watch.0);
    let register = || {
        registry()
            .args(common)
            .args([
                "register",
                "web",
                "--id",
                "w1",
                "--addr",
                "10.0.0.1:8080",
                "--meta",
                "zone=a",
            ])
            .args(["--ttl", "3s", "--heartbeat", "1s"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn register")
    };
    let is =
        |event: &'static str| move |v: &serde_json::Value| v["event"] == event && v["id"] == "w1";

    // Killed with SIGKILL: nobody deregisters; the instance vanishes when its TTL runs out.
    let mut first = register();
    let ins = wait_for(&events, Duration::from_secs(30), is("insert"));
    assert_eq!(ins["instance"]["addrs"][0], "10.0.0.1:8080");
    assert_eq!(ins["instance"]["meta"]["zone"], "a");
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Instant::now();
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    wait_for(&events, Duration::from_secs(15), is("remove"));
    let took = killed.elapsed();
    // The lease expires a TTL (3 s) after its last keep-alive, which came at most a heartbeat (1
    // s) before the kill on schedule; on a loaded machine a keep-alive can be late (CI once saw
    // the removal 1.47 s after the kill), so the bound allows two heartbeats. Any removal not by
    // expiry (the process cannot deregister after SIGKILL) would come at once.
    assert!(
        took >= Duration::from_millis(900),
        "removed {took:?} after SIGKILL: sooner than the TTL allows"
    );
    assert!(
        took <= Duration::from_secs(3 + 2 + 2),
        "removed {took:?} after SIGKILL: later than TTL + slack"
    );

    // Stopped with SIGINT: it deregisters at once.
    let second = register();
    let pid = second.id().to_string();
    let mut second = Killer(second);
    let reg_lines = lines(&mut second.0);
    wait_for(&events, Duration::from_secs(30), is("insert"));
    let stopped = Instant::now();
    assert!(
        // The shell's kill builtin: a minimal Debian has no /bin/kill (procps).
        Command::new("sh")
            .args(["-c", &format!("kill -INT {pid}")])
            .status()
            .expect("kill -INT")
            .success()
    );
    wait_for(&events, Duration::from_secs(15), is("remove"));
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "SIGINT deregistration took {took:?}"
    );
    let status = second.0.wait().expect("wait register");
    assert!(status.success(), "register exited with {status}");
    let said: Vec<String> = reg_lines.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("registered")), "{said:?}");
    assert!(said.iter().any(|l| l.contains("deregistered")), "{said:?}");
}

#[test]
fn list_find_and_demo_against_etcd() {
    let Some(endpoint) = conformance_tests::testbed::shared_etcd() else {
        return;
    };
    let url = format!("etcd://{endpoint}");
    let ns = conformance_tests::testbed::fresh_namespace("cli");
    let common = ["--backend", url.as_str(), "--namespace", ns.as_str()];
    let mut regs = Vec::new();
    for id in ["a1", "a2"] {
        let mut child = Killer(
            registry()
                .args(common)
                .args([
                    "register",
                    "api",
                    "--id",
                    id,
                    "--addr",
                    &format!("10.9.0.{}:80", id.len()),
                ])
                .args(["--instance-version", "2.1.0"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn register"),
        );
        let out = lines(&mut child.0);
        let line = out
            .recv_timeout(Duration::from_secs(15))
            .expect("first line");
        assert!(line.contains("registering"), "{line}");
        regs.push((child, out));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let out = run(&[&common[..], &["list", "api", "--json"]].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("list --json is JSON");
        if v.as_array().is_some_and(|a| a.len() == 2) || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(listed[0]["version"], "2.1.0");
    let out = run(&[&common[..], &["list"]].concat());
    let table = text(&out.stdout);
    assert!(
        table.starts_with("SERVICE") && table.contains("a1") && table.contains("a2"),
        "{table}"
    );
    let out = run(&[
        &common[..],
        &["find", "api", "user-7", "--count", "5", "--json"],
    ]
    .concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("find --json is JSON");
    assert_eq!(
        v["owners"].as_array().map(Vec::len),
        Some(2),
        "distinct owners, at most the members"
    );
    let out = run(&["--backend", &url, "demo"]);
    assert!(
        out.status.success(),
        "demo against etcd: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("Directory now: api 1 online (api-1), cache 1 online (cache-2)")
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `registry demo | head -1`: the reader goes away after one line.
    let mut child = registry()
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn demo");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    assert!(first.contains("registry demo"), "{first}");
    // The pipe's read end is closed now; the next write must not panic.
    let out = child.wait_with_output().expect("wait");
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?} {err}", out.status);
}

/// `GET path` on a Consul agent (Consul's own API, not our client): the status and the body.
fn consul_get(endpoint: &str, path: &str) -> (u16, String) {
    conformance_tests::consul_api::http_blocking(endpoint, "GET", path, "")
}

fn until_consul(what: &str, limit: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !probe() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// On Consul the tool attaches the catalog mirror, so what `registry register` registers is a
/// Consul service too (and leaves the catalog on Ctrl-C); `catalog=false` registers only in KV.
#[test]
fn register_on_consul_is_in_the_catalog_unless_catalog_false() {
    let Some(endpoint) = conformance_tests::testbed::shared_consul() else {
        return;
    };
    for (option, mirrored) in [("", true), ("?catalog=false", false)] {
        let service = if mirrored {
            "cli-mirrored"
        } else {
            "cli-kv-only"
        };
        let url = format!("consul://{endpoint}{option}");
        let child = Killer(
            registry()
                .args(["--backend", url.as_str(), "register", service])
                .args(["--id", "c1", "--addr", "10.12.0.1:8080", "--ttl", "10s"])
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn register"),
        );
        let kv = format!("/v1/kv/registry/registry/{service}/c1");
        until_consul(
            "the instance in Consul's KV",
            Duration::from_secs(20),
            || consul_get(&endpoint, &kv).0 == 200,
        );
        let catalog = format!("/v1/catalog/service/{service}");
        if mirrored {
            until_consul(
                "the service in Consul's catalog",
                Duration::from_secs(10),
                || consul_get(&endpoint, &catalog).1.contains("10.12.0.1"),
            );
            // Ctrl-C deregisters, and the catalog follows before the process ends.
            let pid = child.0.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-INT", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            let mut child = child;
            let exited = child.0.wait().expect("the tool ends on Ctrl-C");
            assert!(exited.success(), "{exited:?}");
            assert_eq!(consul_get(&endpoint, &catalog).1.trim(), "[]");
        } else {
            // A few heartbeats: nothing appears late either.
            std::thread::sleep(Duration::from_secs(3));
            assert_eq!(consul_get(&endpoint, &catalog).1.trim(), "[]");
            drop(child);
        }
    }
}
