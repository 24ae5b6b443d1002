//! What the guest sends back: JSON lines between two marker lines, on a serial port of
//! its own (`ttyS1`; the console, `ttyS0`, carries the kernel's messages, which could land
//! in the middle of a line).
//!
//! ```text
//! === layerspec-vm begin {"kernel":"6.1.0-56-cloud-amd64"}
//! {"scenario":"whiteout/basic","driver":"overlay2","backend":"vm","status":"pass","detail":"","ms":41}
//! ...
//! === layerspec-vm end {"lines":1,"exit":0}
//! ```
//!
//! The end line counts the lines sent, so a cut stream is told from a complete one.

use serde_json::{json, Value};
use std::io::Write;

/// The first line the guest prints, before a JSON header.
pub const BEGIN: &str = "=== layerspec-vm begin";
/// The last line the guest prints, before a JSON trailer.
pub const END: &str = "=== layerspec-vm end";

/// The guest's side: prints the markers and the lines between them, flushing each line.
pub struct Writer<W: Write> {
    out: W,
    lines: usize,
}

impl<W: Write> Writer<W> {
    /// Prints the begin marker with the guest kernel's release.
    pub fn begin(mut out: W) -> std::io::Result<Writer<W>> {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        writeln!(out, "{BEGIN} {}", json!({ "kernel": kernel.trim() }))?;
        out.flush()?;
        Ok(Writer { out, lines: 0 })
    }

    /// Prints one record as one line.
    pub fn line(&mut self, v: &Value) -> std::io::Result<()> {
        writeln!(self.out, "{v}")?;
        self.out.flush()?;
        self.lines += 1;
        Ok(())
    }

    /// Prints the end marker with the count of lines and the guest command's exit code.
    pub fn end(mut self, exit: u8) -> std::io::Result<()> {
        writeln!(
            self.out,
            "{END} {}",
            json!({ "lines": self.lines, "exit": exit })
        )?;
        self.out.flush()
    }
}

/// The host's side: what a (maybe partial) stream holds so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stream {
    /// The begin marker's header (`{"kernel": ...}`), once seen.
    pub header: Option<Value>,
    /// The lines between the markers, in order.
    pub lines: Vec<Value>,
    /// The end marker's trailer, once seen.
    pub trailer: Option<Value>,
    /// Lines between the markers that are not JSON (a damaged stream).
    pub garbled: Vec<String>,
}

impl Stream {
    /// Parses the complete lines of `text` (a trailing partial line is left for later).
    pub fn parse(text: &str) -> Stream {
        let mut s = Stream::default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        for raw in complete.lines() {
            // A serial port turns "\n" into "\r\n".
            let line = raw.trim_end_matches('\r');
            if let Some(rest) = line.strip_prefix(BEGIN) {
                s.header = Some(serde_json::from_str(rest.trim()).unwrap_or(Value::Null));
                continue;
            }
            if s.header.is_none() || s.trailer.is_some() {
                continue;
            }
            if let Some(rest) = line.strip_prefix(END) {
                s.trailer = Some(serde_json::from_str(rest.trim()).unwrap_or(Value::Null));
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(v) => s.lines.push(v),
                Err(_) => s.garbled.push(line.to_string()),
            }
        }
        s
    }

    /// The guest kernel's release, from the header.
    pub fn kernel(&self) -> String {
        self.header
            .as_ref()
            .and_then(|h| h["kernel"].as_str())
            .unwrap_or("?")
            .to_string()
    }

    /// Whether the end marker came and counts the lines received.
    pub fn complete(&self) -> bool {
        self.trailer
            .as_ref()
            .is_some_and(|t| t["lines"].as_u64() == Some(self.lines.len() as u64))
            && self.garbled.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_stream_parses_back() {
        let mut buf = Vec::new();
        let mut w = Writer::begin(&mut buf).unwrap();
        w.line(&json!({"scenario": "a", "status": "pass"})).unwrap();
        w.line(&json!({"scenario": "b", "status": "fail"})).unwrap();
        w.end(1).unwrap();
        let text = format!(
            "noise\r\n{}",
            String::from_utf8(buf).unwrap().replace('\n', "\r\n")
        );
        let s = Stream::parse(&text);
        assert!(s.complete(), "{s:?}");
        assert_eq!(s.lines.len(), 2);
        assert_eq!(s.lines[1]["scenario"], "b");
        assert_eq!(s.trailer.unwrap()["exit"], 1);
    }

    #[test]
    fn a_cut_stream_is_incomplete() {
        let s = Stream::parse(&format!("{BEGIN} {{}}\n{{\"a\":1}}\n{{\"b\""));
        assert_eq!(s.lines.len(), 1);
        assert!(!s.complete());
        let s = Stream::parse(&format!(
            "{BEGIN} {{}}\n{{\"a\":1}}\n{END} {{\"lines\":2}}\n"
        ));
        assert!(!s.complete());
    }
}
