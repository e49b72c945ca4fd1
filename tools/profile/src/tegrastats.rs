//! Parser for NVIDIA `tegrastats` logs (Jetson boards).
//!
//! Each line is one sample. Power rails appear as `NAME CUR/AVG`, in
//! milliwatts: `VDD_IN 4767mW/4767mW` (JetPack 5+) or `POM_5V_IN 1115/1115`
//! (L4T 32, no unit). Lines may start with a `MM-DD-YYYY HH:MM:SS`
//! timestamp (JetPack 5+, or `--logfile` on newer releases). Other fields
//! (`RAM 2298/30536MB`, `CPU [...]`, temperatures) are skipped: a rail's
//! value has only digits, optionally with `mW`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use taskpath_runtime::{EnergyMeter, MeterError};

/// One tegrastats line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since 1970-01-01 of the line's timestamp (local time as
    /// printed, treated as UTC), when it has one.
    pub time_s: Option<i64>,
    /// `(rail, current mW, average mW)` in line order.
    pub rails: Vec<(String, f64, f64)>,
}

impl Sample {
    /// Current milliwatts of `rail`.
    pub fn power_mw(&self, rail: &str) -> Option<f64> {
        self.rails.iter().find(|r| r.0 == rail).map(|r| r.1)
    }
}

fn milliwatts(v: &str) -> Option<f64> {
    let digits = v.strip_suffix("mW").unwrap_or(v);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn is_rail_name(s: &str) -> bool {
    s.contains('_')
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn timestamp(date: &str, time: &str) -> Option<i64> {
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let ([mo, da, ye], [h, mi, s]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    let ok = (1..=12).contains(mo) && (1..=31).contains(da) && *h < 24 && *mi < 60 && *s < 61;
    ok.then(|| days_from_civil(*ye, *mo, *da) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Parses one line; `None` when it holds no rail.
pub fn parse_line(line: &str) -> Option<Sample> {
    let tok: Vec<&str> = line.split_whitespace().collect();
    let time_s = match tok.as_slice() {
        [d, t, ..] => timestamp(d, t),
        _ => None,
    };
    let mut rails = Vec::new();
    for w in tok.windows(2) {
        let Some((cur, avg)) = w[1].split_once('/') else {
            continue;
        };
        if let (true, Some(c), Some(a)) = (is_rail_name(w[0]), milliwatts(cur), milliwatts(avg)) {
            rails.push((w[0].to_string(), c, a));
        }
    }
    (!rails.is_empty()).then_some(Sample { time_s, rails })
}

/// Parses a whole log, skipping lines without rails.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The board input rail of a log: the first rail named `*_IN`.
pub fn input_rail(samples: &[Sample]) -> Option<String> {
    samples
        .iter()
        .flat_map(|s| &s.rails)
        .map(|r| r.0.clone())
        .find(|n| n.ends_with("_IN"))
}

/// Micro-joules on `rail` over the samples (trapezoids between consecutive
/// samples). The step is `interval_ms` (tegrastats' `--interval`) when
/// given, else the difference of the lines' timestamps, which have one-second
/// resolution: give the interval when it is under a few seconds.
pub fn energy_uj(samples: &[Sample], rail: &str, interval_ms: Option<u64>) -> Result<f64> {
    let mut total = 0.0;
    for (i, w) in samples.windows(2).enumerate() {
        let p = |s: &Sample| {
            s.power_mw(rail)
                .with_context(|| format!("sample {}: no rail {rail}", i + 1))
        };
        let (p0, p1) = (p(&w[0])?, p(&w[1])?);
        let dt_s = match (interval_ms, w[0].time_s, w[1].time_s) {
            (Some(ms), _, _) => ms as f64 / 1000.0,
            (None, Some(a), Some(b)) if b >= a => (b - a) as f64,
            (None, Some(_), Some(_)) => bail!("sample {}: timestamp goes backwards", i + 1),
            _ => bail!(
                "samples {} and {} lack timestamps: give the interval",
                i,
                i + 1
            ),
        };
        total += (p0 + p1) / 2.0 * dt_s * 1000.0;
    }
    Ok(total)
}

/// An [`EnergyMeter`] over a tegrastats log that is being written
/// (`tegrastats --interval MS --logfile FILE` running alongside): each read
/// parses the file again and integrates the chosen rail from its first line.
#[derive(Debug)]
pub struct TegrastatsLog {
    path: PathBuf,
    rail: String,
    interval_ms: Option<u64>,
    label: String,
}

impl TegrastatsLog {
    /// Opens `path`, checking that it parses and has `rail` (default: the
    /// input rail).
    pub fn open(path: &Path, rail: Option<&str>, interval_ms: Option<u64>) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let samples = parse(&text);
        if samples.is_empty() {
            bail!("{}: no tegrastats power rails in it", path.display());
        }
        let rail = match rail {
            Some(r) => r.to_string(),
            None => input_rail(&samples).with_context(|| {
                format!("{}: no *_IN rail; name one with --rail", path.display())
            })?,
        };
        Ok(Self {
            path: path.to_path_buf(),
            label: format!("tegrastats {rail}"),
            rail,
            interval_ms,
        })
    }

    /// Micro-joules integrated over the log so far.
    pub fn read_uj(&self) -> Result<f64> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        energy_uj(&parse(&text), &self.rail, self.interval_ms)
    }
}

impl EnergyMeter for TegrastatsLog {
    fn energy_uj(&mut self) -> std::result::Result<u64, MeterError> {
        self.read_uj()
            .map(|e| e.round() as u64)
            .map_err(|_| MeterError::Read)
    }
    fn name(&self) -> &str {
        &self.label
    }
}
