//! The command line: [`parse`] reads it into [`Args`] (see `--help`).

use std::time::Duration;

use crate::serve_load;
use crate::size::Size;

pub(crate) struct Args {
    pub(crate) url: String,
    pub(crate) size: Size,
    pub(crate) out: std::path::PathBuf,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) registry_bin: Option<String>,
    pub(crate) serve: serve_load::Config,
}

/// The arguments of this process, or what to print (a mistake, or the usage for `--help`).
pub(crate) fn parse() -> Result<Args, String> {
    let mut a = Args {
        url: "memory://".into(),
        size: Size::Full,
        out: "bench-results".into(),
        only: None,
        registry_bin: None,
        serve: serve_load::Config::new(Size::Full),
    };
    let (mut sse, mut rps, mut secs, mut stall) = (None, None, None, None);
    let number = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.and_then(|v| v.parse().ok())
            .ok_or(format!("{what} needs a number"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backend" | "-b" => a.url = it.next().ok_or("--backend needs a URL")?,
            "--quick" => a.size = Size::Quick,
            "--smoke" => a.size = Size::Smoke,
            "--out" => a.out = it.next().ok_or("--out needs a directory")?.into(),
            "--only" => {
                a.only = Some(
                    it.next()
                        .ok_or("--only needs a list")?
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            "--registry-bin" => {
                a.registry_bin = Some(it.next().ok_or("--registry-bin needs a path")?)
            }
            "--serve-clients" => sse = Some(number(it.next(), "--serve-clients")? as usize),
            "--serve-rps" => rps = Some(number(it.next(), "--serve-rps")? as u32),
            "--serve-secs" => secs = Some(number(it.next(), "--serve-secs")?),
            "--serve-stall-secs" => stall = Some(number(it.next(), "--serve-stall-secs")?),
            "--help" | "-h" => {
                return Err("usage: registry-bench [--backend URL] [--quick | --smoke] [--out DIR] [--only propagation,scale,heartbeat,ring,lookup,estate,serve-load]\n       serve-load: [--registry-bin PATH] [--serve-clients N] [--serve-rps N] [--serve-secs N] [--serve-stall-secs N]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    a.serve = serve_load::Config::new(a.size);
    if let Some(n) = sse {
        a.serve.sse = n;
        a.serve.stalled = n;
    }
    if let Some(n) = rps {
        a.serve.rps = n;
    }
    if let Some(n) = secs {
        a.serve.phase = Duration::from_secs(n);
    }
    if let Some(n) = stall {
        a.serve.stall_watch = Duration::from_secs(n);
    }
    Ok(a)
}
