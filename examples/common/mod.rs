//! Shared by the examples: argument parsing, the deterministic payload and JSON output.
#![allow(dead_code)] // each example uses a different part

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;

/// Message `i`'s payload: `i` as a little-endian u64, then bytes derived from `i`, so the
/// receiver can check every byte. `len` is at least 8.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(8));
    p.extend_from_slice(&i.to_le_bytes());
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while p.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(x as u8);
    }
    p
}

/// The index of a payload if every byte is as [`payload`] makes it.
pub fn verify(p: &[u8]) -> Option<u64> {
    let i = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    (payload(i, p.len()) == p).then_some(i)
}

/// `--flag value` and `--switch` arguments.
pub struct Args {
    values: HashMap<String, String>,
    switches: Vec<String>,
    prog: &'static str,
}

impl Args {
    /// Parses the process arguments; `valued` and `switches` list the accepted flags.
    pub fn parse(prog: &'static str, valued: &[&str], switches: &[&str]) -> Result<Args, String> {
        let mut a = Args {
            values: HashMap::new(),
            switches: Vec::new(),
            prog,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                return Err(String::from("help"));
            }
            if valued.contains(&flag.as_str()) {
                let v = it.next().ok_or(format!("{flag} needs a value"))?;
                a.values.insert(flag, v);
            } else if switches.contains(&flag.as_str()) {
                a.switches.push(flag);
            } else {
                return Err(format!("unknown argument {flag:?} (try --help)"));
            }
        }
        Ok(a)
    }

    /// A flag's parsed value, or `default` when absent.
    pub fn get<T: std::str::FromStr>(&self, flag: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(flag) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("{flag} {v:?}: {e}")),
        }
    }

    /// A required flag's parsed value.
    pub fn required<T: std::str::FromStr>(&self, flag: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.values.get(flag).ok_or(format!("{flag} is required"))?;
        v.parse().map_err(|e| format!("{flag} {v:?}: {e}"))
    }

    /// Whether a switch was given.
    pub fn has(&self, switch: &str) -> bool {
        self.switches.iter().any(|s| s == switch)
    }

    /// Prints a one-line error and returns exit status 2.
    pub fn fail(&self, msg: &str) -> ExitCode {
        eprintln!("{}: {msg}", self.prog);
        ExitCode::from(2)
    }
}

/// A flat JSON object, printed on one line.
#[derive(Default)]
pub struct Json(String);

impl Json {
    /// Adds an integer field.
    pub fn int(mut self, k: &str, v: u64) -> Self {
        self.sep();
        let _ = write!(self.0, "\"{k}\":{v}");
        self
    }

    /// Adds a number field.
    pub fn num(mut self, k: &str, v: f64) -> Self {
        self.sep();
        let v = if v.is_finite() { v } else { 0.0 };
        let _ = write!(self.0, "\"{k}\":{v:.3}");
        self
    }

    /// Adds a string field (no escaping needed for the values used here).
    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.sep();
        let _ = write!(self.0, "\"{k}\":\"{v}\"");
        self
    }

    /// Adds a boolean field.
    pub fn bool(mut self, k: &str, v: bool) -> Self {
        self.sep();
        let _ = write!(self.0, "\"{k}\":{v}");
        self
    }

    fn sep(&mut self) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
    }

    /// The finished object.
    pub fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}
