//! No secret is ever printed: the CLI's commands and the facade's `connect`, with credentials in
//! every form they accept (user:password@ in the URL, `?password=`, `?token=`, environment
//! variables), against real servers that require them (right and wrong credentials) and against
//! unreachable ones. Everything a person or a log could see is searched for the secret: stdout,
//! stderr with the most verbose logging (`-vv`, `REGISTRY_LOG=trace`), error messages with every
//! cause, `Debug` of errors and builders, and every log line of every crate at TRACE level.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use conformance_tests::testbed::{self, ConsulOptions, RedisOptions};

/// Secrets: long and distinctive, so a hit is never a coincidence.
const REDIS_PASSWORD: &str = "Redis-Secret-7f3a9c";
const REDIS_USER_PASSWORD: &str = "Alice-Secret-2b8e41";
const ETCD_PASSWORD: &str = "Etcd-Secret-5d1f0a";
const CONSUL_TOKEN: &str = "c0ffee00-5ec2-4e7a-9d1b-00000000beef";
/// Wrong credentials are secrets too: a typo of the real one is close to it.
const WRONG: &str = "Wrong-Secret-93ac1d";

fn registry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_registry"));
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") && k != "REGISTRY_TEST_REQUIRED" {
            c.env_remove(k);
        }
    }
    c.env("REGISTRY_LOG", "trace").env("NO_COLOR", "1");
    c
}

/// Everything a run printed.
fn shown(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_hidden(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !text.contains(s),
            "{what}: the secret {s:?} appears in:\n{}",
            // Show where, without flooding: the lines that hold it.
            text.lines()
                .filter(|l| l.contains(s))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Runs the CLI (with the most verbose logging) and returns what it printed. A command that would
/// run until interrupted (`watch`, `register`) is stopped after `for_at_most`.
fn cli(args: &[&str], env: &[(&str, &str)], for_at_most: Duration) -> (Option<i32>, String) {
    let mut cmd = registry();
    cmd.arg("-vv")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run registry");
    // Read both pipes while the child runs: TRACE logging fills a pipe's buffer in no time.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + for_at_most;
    while Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().expect("wait").is_none() {
        // SIGINT: the commands' own shutdown path (deregistering) runs and logs too.
        // The shell's kill builtin: a minimal Debian has no /bin/kill (procps).
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -INT {}", child.id())])
            .status();
        let stop = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() && Instant::now() < stop {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.join().unwrap_or_default()),
        String::from_utf8_lossy(&err.join().unwrap_or_default())
    );
    (status.code(), text)
}

/// The commands a user runs against a backend; each prints and logs what it does.
fn commands() -> Vec<Vec<&'static str>> {
    vec![
        vec!["list"],
        vec!["list", "--json"],
        vec!["find", "web", "user-1"],
        vec!["watch", "web"],
        vec![
            "register",
            "web",
            "--id",
            "web-1",
            "--addr",
            "127.0.0.1:1",
            "--ttl",
            "15s",
        ],
    ]
}

/// Runs every command with the backend URL given as a flag, and the listing also with the URL in
/// REGISTRY_BACKEND, with extra environment, and checks that nothing shows a secret. Returns the
/// exit code of `list` and what it printed.
fn every_command(label: &str, url: &str, env: &[(&str, &str)], secrets: &[&str]) -> (i32, String) {
    let mut listed = (-1, String::new());
    for args in commands() {
        let streaming = matches!(args[0], "watch" | "register");
        let limit = Duration::from_secs(if streaming { 3 } else { 30 });
        let mut with_flag = vec!["--backend", url];
        with_flag.extend(args.iter().copied());
        let (code, text) = cli(&with_flag, env, limit);
        assert_hidden(
            &format!("{label}: registry {}", args.join(" ")),
            &text,
            secrets,
        );
        if args == ["list"] {
            listed = (code.unwrap_or(-1), text);
            let mut env2: Vec<(&str, &str)> = env.to_vec();
            env2.push(("REGISTRY_BACKEND", url));
            let (_, text) = cli(&args, &env2, limit);
            assert_hidden(
                &format!("{label}: REGISTRY_BACKEND=... registry {}", args.join(" ")),
                &text,
                secrets,
            );
        }
    }
    // --help with the URL in the environment must not print it either.
    let (_, text) = cli(
        &["--help"],
        &[("REGISTRY_BACKEND", url)],
        Duration::from_secs(10),
    );
    assert_hidden(&format!("{label}: --help"), &text, secrets);
    listed
}

/// Every log line of this test process, at TRACE for every crate.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

/// The text of an error as a program would show it: Display, Debug, and every cause.
fn error_text(e: &registry::Error) -> String {
    let mut text = format!("{e}\n{e:?}\n");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!("{s}\n{s:?}\n"));
        source = s.source();
    }
    text
}

/// `registry::connect(url)` in this process: the error (if any) and everything logged show no
/// secret. Returns whether it connected.
async fn facade(label: &str, url: &str, secrets: &[&str]) -> bool {
    let logs = logs();
    let before = logs.0.lock().unwrap().len();
    let result = tokio::time::timeout(Duration::from_secs(20), registry::connect(url)).await;
    let connected = match result {
        Err(_) => panic!("{label}: connect did not return within 20 s"),
        Ok(Ok(backend)) => {
            // Use it, so that requests (and their logging) happen with the credentials.
            let _ = backend.list("secrets-test/").await;
            true
        }
        Ok(Err(e)) => {
            assert_hidden(&format!("{label}: connect error"), &error_text(&e), secrets);
            false
        }
    };
    // Background tasks log a little later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()[before..]).into_owned();
    assert_hidden(&format!("{label}: logs at TRACE"), &logged, secrets);
    connected
}

fn unreachable_port() -> u16 {
    testbed::free_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passwords_are_never_shown() {
    let redis = match testbed::start_redis(RedisOptions {
        extra_args: [
            "--requirepass",
            REDIS_PASSWORD,
            "--user",
            "alice",
            "on",
            &format!(">{REDIS_USER_PASSWORD}"),
            "~*",
            "&*",
            "+@all",
        ]
        .map(String::from)
        .to_vec(),
        ..RedisOptions::default()
    })
    .await
    {
        Ok(r) => r,
        Err(reason) => return testbed::unavailable::<()>("redis", &reason).unwrap_or(()),
    };
    let ep = redis.endpoint.clone();
    let dead = format!("127.0.0.1:{}", unreachable_port());
    let all = [REDIS_PASSWORD, REDIS_USER_PASSWORD, WRONG];
    // Right credentials, in each accepted form: they connect, and nothing shows them.
    for url in [
        format!("redis://:{REDIS_PASSWORD}@{ep}"),
        format!("redis://alice:{REDIS_USER_PASSWORD}@{ep}/0"),
        format!("redis://{ep}?password={REDIS_PASSWORD}"),
        format!("redis://{ep}?user=alice&password={REDIS_USER_PASSWORD}"),
    ] {
        assert!(
            facade("redis right", &url, &all).await,
            "{ep}: not connected"
        );
        let (code, out) = every_command("redis right", &url, &[], &all);
        assert_eq!(code, 0, "list with the right password works:\n{out}");
    }
    // Wrong credentials, a malformed URL around a password, and an unreachable server.
    for url in [
        format!("redis://:{WRONG}@{ep}"),
        format!("redis://alice:{WRONG}@{ep}"),
        format!("redis://{ep}?password={WRONG}"),
        format!("redis://:{WRONG}@{ep}/bad"),
        format!("redis://:{WRONG}@{dead}"),
        format!("rediss://:{WRONG}@{dead}"),
    ] {
        assert!(!facade("redis wrong", &url, &all).await, "{url} connected");
        let (code, out) = every_command("redis wrong", &url, &[], &all);
        assert!(code > 0, "list fails with an error:\n{out}");
    }
    // The builder's environment variables, against the server (right and wrong) and a dead one.
    for (addr, password) in [(&ep, REDIS_PASSWORD), (&ep, WRONG), (&dead, WRONG)] {
        from_env_in_child(
            "redis",
            &[
                ("REGISTRY_REDIS_URL", &format!("redis://{addr}")),
                ("REGISTRY_REDIS_PASSWORD", password),
            ],
            &all,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passwords_are_never_shown() {
    let etcd = match testbed::start_etcd(Default::default()).await {
        Ok(e) => e,
        Err(reason) => return testbed::unavailable::<()>("etcd", &reason).unwrap_or(()),
    };
    let ep = etcd.endpoint.clone();
    // Turn authentication on with a root user.
    let admin = registry::etcd::EtcdBuilder::new()
        .endpoints([ep.clone()])
        .connect()
        .await
        .expect("connect before auth is on");
    let mut c = admin.client();
    c.user_add("root", ETCD_PASSWORD, None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();
    let dead = format!("127.0.0.1:{}", unreachable_port());
    let all = [ETCD_PASSWORD, WRONG];
    let url = format!("etcd://root:{ETCD_PASSWORD}@{ep}");
    assert!(facade("etcd right", &url, &all).await, "not connected");
    let (code, out) = every_command("etcd right", &url, &[], &all);
    assert_eq!(code, 0, "list with the right password works:\n{out}");
    for url in [
        format!("etcd://root:{WRONG}@{ep}"),
        format!("etcd://root:{WRONG}@{ep}/ns?colour=red"),
        format!("etcd://root:{WRONG}@{dead}?connect_timeout=1s&timeout=1s"),
        format!("etcds://root:{WRONG}@{dead}?connect_timeout=1s&timeout=1s"),
    ] {
        assert!(!facade("etcd wrong", &url, &all).await, "{url} connected");
        let (code, out) = every_command("etcd wrong", &url, &[], &all);
        assert!(code > 0, "list fails with an error:\n{out}");
    }
    for (addr, password) in [(&ep, ETCD_PASSWORD), (&ep, WRONG), (&dead, WRONG)] {
        from_env_in_child(
            "etcd",
            &[
                ("REGISTRY_ETCD_ENDPOINTS", addr),
                ("REGISTRY_ETCD_USER", "root"),
                ("REGISTRY_ETCD_PASSWORD", password),
            ],
            &all,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_tokens_are_never_shown() {
    let consul = match testbed::start_consul(ConsulOptions {
        extra_args: vec![
            "-hcl".into(),
            format!(
                r#"acl {{ enabled = true default_policy = "deny" tokens {{ master = "{CONSUL_TOKEN}" agent = "{CONSUL_TOKEN}" }} }}"#
            ),
        ],
        ..ConsulOptions::default()
    })
    .await
    {
        Ok(c) => c,
        Err(reason) => return testbed::unavailable::<()>("consul", &reason).unwrap_or(()),
    };
    let ep = consul.endpoint.clone();
    let dead = format!("127.0.0.1:{}", unreachable_port());
    let all = [CONSUL_TOKEN, WRONG];
    let url = format!("consul://{ep}?token={CONSUL_TOKEN}");
    // ACL bootstrap of a fresh agent takes a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !facade("consul right", &url, &all).await {
        assert!(
            Instant::now() < deadline,
            "the master token is never accepted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (code, out) = every_command("consul right", &url, &[], &all);
    assert_eq!(code, 0, "list with the right token works:\n{out}");
    for url in [
        format!("consul://{ep}?token={WRONG}"),
        format!("consul://{ep}/ns?token={WRONG}&colour=red"),
        format!("consul://{dead}?token={WRONG}"),
        format!("consuls://{dead}?token={WRONG}"),
    ] {
        assert!(!facade("consul wrong", &url, &all).await, "{url} connected");
        let (code, out) = every_command("consul wrong", &url, &[], &all);
        assert!(code > 0, "list fails with an error:\n{out}");
    }
    for (addr, token) in [(&ep, CONSUL_TOKEN), (&ep, WRONG), (&dead, WRONG)] {
        from_env_in_child(
            "consul",
            &[("CONSUL_HTTP_ADDR", addr), ("CONSUL_HTTP_TOKEN", token)],
            &all,
        );
    }
}

/// Runs [`from_env_child`] in a child process of this test binary with `env` set (this process's
/// environment is not changed: other tests run in parallel), and checks what it printed.
fn from_env_in_child(backend: &str, env: &[(&str, &str)], secrets: &[&str]) {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "from_env_child",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("SECRETS_TEST_CHILD", backend);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the child");
    let text = shown(&out);
    assert!(
        out.status.success() && text.contains("from_env child done"),
        "{backend} child failed:\n{text}"
    );
    assert_hidden(&format!("{backend} from_env {env:?}"), &text, secrets);
}

/// The child side of [`from_env_in_child`]: does nothing unless `SECRETS_TEST_CHILD` names a
/// backend. Builds that backend from the environment, connects and uses it, printing the
/// builder's `Debug`, the error with its causes, and (through the TRACE subscriber on stderr)
/// every log line.
#[test]
fn from_env_child() {
    let Ok(backend) = std::env::var("SECRETS_TEST_CHILD") else {
        return;
    };
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connected: registry::Result<std::sync::Arc<dyn registry::Backend>> =
            match backend.as_str() {
                "redis" => {
                    let b = registry::redis::RedisBuilder::from_env().expect("from_env");
                    println!("builder: {b:?}");
                    b.connect().await.map(|b| std::sync::Arc::new(b) as _)
                }
                "etcd" => {
                    let b = registry::etcd::EtcdBuilder::from_env()
                        .expect("from_env")
                        .connect_timeout(Duration::from_secs(2));
                    println!("builder: {b:?}");
                    b.connect().await.map(|b| std::sync::Arc::new(b) as _)
                }
                "consul" => {
                    let b = registry::consul::ConsulBuilder::from_env().expect("from_env");
                    println!("builder: {b:?}");
                    b.connect().await.map(|b| std::sync::Arc::new(b) as _)
                }
                other => panic!("unknown backend {other}"),
            };
        match connected {
            Ok(b) => {
                let r = b.list("secrets-test/").await;
                println!("connected; list: {:?}", r.map(|l| l.entries.len()));
            }
            Err(e) => println!("error: {}", error_text(&e)),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    println!("from_env child done");
}
