//! Terminal output: colour only on a terminal (and never with `NO_COLOR`), aligned tables.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

/// Writes to standard output; when the reader went away (`registry watch --json | head -1`),
/// exits quietly with success instead of panicking as `println!` does on a closed pipe.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let result = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that survives a closed pipe ([`write_stdout`]).
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*), true) };
}

/// `print!` that survives a closed pipe ([`write_stdout`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*), false) };
}

pub(crate) use {out, outln};

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

/// Text from the backend (written by anyone) made safe to print on a terminal: control characters
/// (C0, DEL, C1: escape sequences that move the cursor, change colours or retitle the window) and
/// the Unicode controls that reorder or hide text (bidirectional overrides and isolates, zero-width
/// characters) are shown as `\u{..}` escapes; a backslash is doubled so an escape cannot be forged.
pub(crate) fn clean(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs_escape(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'
        )
}

/// A JSON document on one line, with the characters JSON allows raw but a terminal interprets
/// (DEL and the C1 controls, U+007F to U+009F, and the Unicode controls of [`clean`]) escaped as
/// `\uXXXX`: still the same JSON value for any parser.
pub(crate) fn json_line(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if !text.chars().any(|c| c != '\\' && needs_escape(c)) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c != '\\' && needs_escape(c) {
            // Serialised JSON holds no raw C0 characters, so these are all inside strings, and
            // every one of them is in the Basic Multilingual Plane.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
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
    outln!(
        "{}",
        bold(&line(header.iter().map(|h| h.to_string()).collect()))
    );
    for row in rows {
        outln!("{}", line(row.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(clean("web-1"), "web-1");
        assert_eq!(clean("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(clean("x\ny\r\t"), "x\\u{a}y\\u{d}\\u{9}");
        assert_eq!(clean("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(clean("evil\u{202e}txt"), "evil\\u{202e}txt");
        // A backslash is doubled, so text cannot pretend to be an escape.
        assert_eq!(clean("\\u{1b}\x07"), "\\\\u{1b}\\u{7}");
        assert_eq!(clean("zone=eu, ünïcödé ok"), "zone=eu, ünïcödé ok");
    }

    #[test]
    fn json_lines_escape_what_json_leaves_raw() {
        let v = serde_json::json!({"m": "a\u{9b}b\u{7f}\u{202e}\x1b", "k": "back\\slash"});
        let line = json_line(&v);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back, v);
    }
}
