//! The report: each section's Markdown lines and JSON value ([`Section`]), put together under a
//! heading for the run ([`assemble`]), and written as `bench-<scheme>.md` and `.json` ([`write`](fn@write)).

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use crate::size::Size;

/// A report section: Markdown lines and a JSON value.
pub(crate) struct Section {
    pub(crate) md: Vec<String>,
    pub(crate) json: Value,
}

/// The report of a run on `url` (whose scheme is `scheme`), started at `started`: its Markdown text
/// and its JSON value, with the sections in the order given.
pub(crate) fn assemble(
    url: &str,
    scheme: &str,
    size: Size,
    started: Instant,
    sections: Vec<(&str, Section)>,
) -> (String, Value) {
    let mut md = vec![
        format!(
            "## Backend {} ({} run{})",
            scheme,
            size.name(),
            if size == Size::Smoke {
                ": it proves each section runs; its figures mean nothing"
            } else {
                ""
            }
        ),
        String::new(),
        format!(
            "Command: `registry-bench --backend {}{}`; {:.0} s.",
            url,
            match size {
                Size::Full => String::new(),
                other => format!(" --{}", other.name()),
            },
            started.elapsed().as_secs_f64()
        ),
    ];
    let mut j = json!({"backend": url, "quick": size == Size::Quick, "size": size.name(), "seconds": started.elapsed().as_secs_f64()});
    for (name, s) in sections {
        md.push(String::new());
        md.extend(s.md);
        j[name] = s.json;
    }
    let text = md.join("\n") + "\n";
    (text, j)
}

/// Writes the report into `out` (made if need be): `bench-<scheme>.md` and `bench-<scheme>.json`.
pub(crate) fn write(out: &Path, scheme: &str, text: &str, j: &Value) -> std::io::Result<()> {
    std::fs::create_dir_all(out)
        .and_then(|_| std::fs::write(out.join(format!("bench-{scheme}.md")), text))
        .and_then(|_| {
            std::fs::write(
                out.join(format!("bench-{scheme}.json")),
                serde_json::to_string_pretty(j).unwrap_or_default(),
            )
        })
}
