//! Terminal output: colour only on a terminal (and never with `NO_COLOR`), aligned tables.

use std::io::IsTerminal;
use std::sync::OnceLock;

fn colour_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none()
            && std::env::var("TERM").map_or(true, |t| t != "dumb")
    })
}

fn paint(code: &str, s: &str) -> String {
    if colour_on() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

pub(crate) fn bold(s: &str) -> String {
    paint("1", s)
}
pub(crate) fn green(s: &str) -> String {
    paint("32", s)
}
pub(crate) fn red(s: &str) -> String {
    paint("31", s)
}
pub(crate) fn yellow(s: &str) -> String {
    paint("33", s)
}
pub(crate) fn dim(s: &str) -> String {
    paint("2", s)
}

/// Prints rows as left-aligned columns under a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_owned()
    };
    println!(
        "{}",
        bold(&line(header.iter().map(|h| h.to_string()).collect()))
    );
    for row in rows {
        println!("{}", line(row.clone()));
    }
}
