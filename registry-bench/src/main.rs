//! `registry-bench --backend URL [--quick | --smoke] [--out DIR]`: how fast, how cheap and how far
//! the registry scales on one backend, each figure next to its baseline measured in the same run.
//! Writes a Markdown report and a JSON file; `--quick` runs everything small, in well under a minute;
//! `--smoke` runs every section at the smallest size that still goes through all of its code, in
//! seconds even in a debug build (its figures mean nothing: `tests/smoke.rs` runs it per backend).
//!
//! `serve-load` (on a backend shared between processes, not memory://) runs the `registry serve`
//! binary (`--registry-bin`, by default next to this one) under many SSE clients and a fixed rate of
//! JSON requests: see `serve_load/`.

mod args;
mod counting;
mod estate;
mod harness;
mod heartbeat;
mod lookup;
mod propagation;
mod raw;
mod report;
mod ring;
mod scale;
mod serve_load;
mod size;
mod stats;

use std::time::Instant;

use report::Section;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = match args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let want = |s: &str| a.only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    let backend = match registry::connect(&a.url).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(3);
        }
    };
    let ns = format!("bench-{}", std::process::id());
    let scheme = a.url.split("://").next().unwrap_or("backend").to_owned();
    let started = Instant::now();
    let mut sections: Vec<(&str, Section)> = Vec::new();
    if want("propagation") {
        eprintln!("propagation ...");
        sections.push((
            "propagation",
            propagation::run(&a.url, backend.clone(), &ns, a.size).await,
        ));
    }
    if want("scale") {
        eprintln!("scale ...");
        sections.push((
            "scale",
            scale::run(&a.url, backend.clone(), &format!("{ns}-scale"), a.size).await,
        ));
    }
    if want("heartbeat") {
        eprintln!("heartbeat ...");
        sections.push((
            "heartbeat",
            heartbeat::run(backend.clone(), &ns, a.size).await,
        ));
    }
    if want("ring") {
        eprintln!("ring ...");
        sections.push(("ring", ring::run(a.size)));
    }
    if want("lookup") {
        eprintln!("lookup ...");
        sections.push(("lookup", lookup::run(a.size).await));
    }
    if want("estate") {
        eprintln!("estate ...");
        let cfg = estate::Config::new(a.size, &scheme);
        sections.push((
            "estate",
            estate::run(&a.url, backend.clone(), &format!("{ns}-estate"), &cfg).await,
        ));
    }
    // Needs a backend that another process can reach: by default on every backend but memory.
    let shared = scheme != "memory";
    let asked = a
        .only
        .as_ref()
        .is_some_and(|o| o.iter().any(|x| x == "serve-load"));
    if asked && !shared {
        eprintln!("serve-load needs a backend shared with the server process, not memory://");
        std::process::exit(2);
    }
    if want("serve-load") && shared {
        eprintln!("serve-load ...");
        let bin = a.registry_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("registry")))
                .map_or("registry".into(), |p| p.display().to_string())
        });
        match serve_load::run(
            &a.url,
            backend.clone(),
            &format!("{ns}-serve"),
            &bin,
            &a.serve,
        )
        .await
        {
            Ok(s) => sections.push(("serve_load", s)),
            Err(e) => {
                eprintln!("error: serve-load: {e}");
                std::process::exit(3);
            }
        }
    }
    let (text, j) = report::assemble(&a.url, &scheme, a.size, started, sections);
    println!("{text}");
    if let Err(e) = report::write(&a.out, &scheme, &text, &j) {
        eprintln!("cannot write results to {}: {e}", a.out.display());
        std::process::exit(3);
    }
}
