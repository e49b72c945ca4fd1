//! TI INA3221 power monitors (NVIDIA Jetson boards) through sysfs.
//!
//! Two driver layouts exist:
//! - **iio** (`ina3221x`, L4T 32.x on TX2, Xavier, Nano): a directory
//!   `/sys/bus/iio/devices/iio:deviceN` with `name` = `ina3221x`,
//!   `rail_name_K`, `in_power{K}_input` (mW), `in_current{K}_input` (mA) and
//!   `in_voltage{K}_input` (mV), K = 0..2.
//! - **hwmon** (mainline `ina3221`, JetPack 5+ on Orin): a directory
//!   `/sys/class/hwmon/hwmonN` with `name` = `ina3221`, `in{K}_label`,
//!   `in{K}_input` (bus voltage, mV) and `curr{K}_input` (mA), K = 1..3;
//!   there is no power file, so power = voltage x current.
//!
//! The chip reports instantaneous power, not energy: a [`PowerSampler`]
//! reads it on a background thread and integrates (trapezoids) with a
//! [`PowerIntegrator`], which also handles a wrapping tick counter for
//! firmware that samples the chip against a 32-bit timer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use taskpath_runtime::{wrapping_delta, EnergyMeter, MeterError};

/// How one channel's power is read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// `in_powerK_input`, mW.
    Power(PathBuf),
    /// `inK_input` (mV) x `currK_input` (mA).
    VoltCurr(PathBuf, PathBuf),
}

/// One monitored rail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rail {
    /// The rail's label (e.g. `VDD_IN`, `POM_5V_IN`).
    pub name: String,
    source: Source,
}

fn read_f64(p: &Path) -> Result<f64> {
    let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    t.trim()
        .parse()
        .with_context(|| format!("{}: {:?} is not a number", p.display(), t.trim()))
}

impl Rail {
    /// Instantaneous power in milliwatts.
    pub fn power_mw(&self) -> Result<f64> {
        match &self.source {
            Source::Power(p) => read_f64(p),
            Source::VoltCurr(v, c) => Ok(read_f64(v)? * read_f64(c)? / 1000.0),
        }
    }
}

/// The INA3221 rails found on a device.
#[derive(Clone, Debug)]
pub struct Ina3221 {
    /// Every channel found, in device then channel order.
    pub rails: Vec<Rail>,
}

fn name_of(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("name"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

impl Ina3221 {
    /// Finds INA3221 devices under a sysfs root (normally `/sys`; tests pass
    /// a fixture tree): `bus/iio/devices/*` named `ina3221x` and
    /// `class/hwmon/*` named `ina3221`.
    pub fn discover(sys: &Path) -> Result<Self> {
        let mut rails = Vec::new();
        for d in sorted_dirs(&sys.join("bus/iio/devices")) {
            if name_of(&d).as_deref() == Some("ina3221x") {
                rails.extend(Self::iio_rails(&d));
            }
        }
        for d in sorted_dirs(&sys.join("class/hwmon")) {
            if name_of(&d).as_deref() == Some("ina3221") {
                rails.extend(Self::hwmon_rails(&d));
            }
        }
        if rails.is_empty() {
            bail!(
                "no INA3221 under {} (looked for bus/iio/devices/*/name = ina3221x and class/hwmon/*/name = ina3221)",
                sys.display()
            );
        }
        Ok(Self { rails })
    }

    fn iio_rails(d: &Path) -> Vec<Rail> {
        (0..3)
            .filter_map(|k| {
                let power = d.join(format!("in_power{k}_input"));
                power.is_file().then(|| Rail {
                    name: std::fs::read_to_string(d.join(format!("rail_name_{k}")))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| format!("channel {k}")),
                    source: Source::Power(power),
                })
            })
            .collect()
    }

    fn hwmon_rails(d: &Path) -> Vec<Rail> {
        (1..=3)
            .filter_map(|k| {
                let (v, c) = (
                    d.join(format!("in{k}_input")),
                    d.join(format!("curr{k}_input")),
                );
                (v.is_file() && c.is_file()).then(|| Rail {
                    name: std::fs::read_to_string(d.join(format!("in{k}_label")))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| format!("channel {k}")),
                    source: Source::VoltCurr(v, c),
                })
            })
            .collect()
    }

    /// The rail to integrate: `name` if given (an error lists the rails when
    /// absent), else the board input (a rail whose name ends in `_IN`, like
    /// `VDD_IN` or `POM_5V_IN`), else `None` to sum every rail.
    pub fn select(&self, name: Option<&str>) -> Result<Vec<Rail>> {
        let names = || {
            self.rails
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(n) = name {
            return match self.rails.iter().find(|r| r.name == n) {
                Some(r) => Ok(vec![r.clone()]),
                None => bail!("no INA3221 rail named {n:?}; rails: {}", names()),
            };
        }
        if let Some(r) = self.rails.iter().find(|r| r.name.ends_with("_IN")) {
            return Ok(vec![r.clone()]);
        }
        Ok(self.rails.clone())
    }
}

/// Integrates power samples over time (trapezoid rule) into micro-joules.
/// Ticks come from a counter running at `hz` that may wrap at `wrap`.
#[derive(Clone, Copy, Debug)]
pub struct PowerIntegrator {
    hz: u64,
    wrap: Option<u64>,
    last: Option<(u64, f64)>,
    total_uj: f64,
}

impl PowerIntegrator {
    /// An integrator for ticks at `hz` wrapping at `wrap` (`None`: no wrap).
    pub fn new(hz: u64, wrap: Option<u64>) -> Self {
        Self {
            hz: hz.max(1),
            wrap,
            last: None,
            total_uj: 0.0,
        }
    }

    /// Adds a sample of `mw` milliwatts taken at `tick`.
    pub fn add(&mut self, tick: u64, mw: f64) {
        if let Some((t0, p0)) = self.last {
            let dt_s = wrapping_delta(t0, tick, self.wrap) as f64 / self.hz as f64;
            // mW x s = mJ; x 1000 = µJ.
            self.total_uj += (p0 + mw) / 2.0 * dt_s * 1000.0;
        }
        self.last = Some((tick, mw));
    }

    /// Micro-joules integrated so far.
    pub fn total_uj(&self) -> f64 {
        self.total_uj
    }
}

/// Samples rails every `period` on a background thread and integrates their
/// summed power; an [`EnergyMeter`].
#[derive(Debug)]
pub struct PowerSampler {
    label: String,
    state: Arc<Mutex<(PowerIntegrator, Option<String>)>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    rails: Vec<Rail>,
    origin: Instant,
}

impl PowerSampler {
    /// Starts sampling `rails` (checked readable first) every `period`.
    pub fn start(rails: Vec<Rail>, period: Duration) -> Result<Self> {
        if rails.is_empty() {
            bail!("no rails to sample");
        }
        let origin = Instant::now();
        let mut integ = PowerIntegrator::new(1_000_000_000, None);
        let sum = |rails: &[Rail]| -> Result<f64> { rails.iter().map(Rail::power_mw).sum() };
        integ.add(0, sum(&rails)?);
        let state = Arc::new(Mutex::new((integ, None)));
        let stop = Arc::new(AtomicBool::new(false));
        let label = format!(
            "INA3221 {}",
            rails
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join("+")
        );
        let thread = {
            let (rails, state, stop) = (rails.clone(), state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ina3221-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(period);
                        let reading = sum(&rails);
                        let t = origin.elapsed().as_nanos() as u64;
                        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                        match reading {
                            Ok(mw) => s.0.add(t, mw),
                            Err(e) => s.1 = Some(format!("{e:#}")),
                        }
                    }
                })
                .context("starting the INA3221 sampling thread")?
        };
        Ok(Self {
            label,
            state,
            stop,
            thread: Some(thread),
            rails,
            origin,
        })
    }

    /// Micro-joules since start; the first sampling error, if any, is an error.
    pub fn read_uj(&mut self) -> Result<f64> {
        // A fresh sample now, so a short window still ends at the read.
        let mw: f64 = self.rails.iter().map(Rail::power_mw).sum::<Result<f64>>()?;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &s.1 {
            bail!("sampling {}: {e}", self.label);
        }
        s.0.add(self.origin.elapsed().as_nanos() as u64, mw);
        Ok(s.0.total_uj())
    }
}

impl Drop for PowerSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl EnergyMeter for PowerSampler {
    fn energy_uj(&mut self) -> std::result::Result<u64, MeterError> {
        self.read_uj()
            .map(|e| e.round() as u64)
            .map_err(|_| MeterError::Read)
    }
    fn name(&self) -> &str {
        &self.label
    }
}
