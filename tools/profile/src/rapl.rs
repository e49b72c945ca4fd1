//! Linux RAPL energy counters through the powercap sysfs interface.
//!
//! Layout (Documentation/power/powercap/powercap.rst): each top-level zone
//! is a directory `intel-rapl:N` under `/sys/class/powercap` (AMD Zen uses
//! the same names), holding `name` (`package-0`, `psys`, ...), `energy_uj`
//! (a counter in micro-joules that wraps) and `max_energy_range_uj` (its
//! range). Subzones (`intel-rapl:N:M`: core, uncore, dram) are parts of
//! their package, so only top-level zones are summed; `psys` (the whole
//! platform) contains the packages and is used only when no package zone
//! exists, so nothing is counted twice.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use taskpath_runtime::{wrapping_delta, EnergyMeter, MeterError};

/// The default powercap root.
pub const POWERCAP: &str = "/sys/class/powercap";

#[derive(Debug)]
struct Zone {
    name: String,
    energy: PathBuf,
    range_uj: u64,
    last: u64,
}

/// A RAPL meter summing the package zones (or `psys`) of a powercap tree.
#[derive(Debug)]
pub struct Rapl {
    zones: Vec<Zone>,
    total_uj: u64,
    label: String,
}

fn read_u64(p: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            anyhow::anyhow!(
                "{}: permission denied (since Linux 5.10 energy_uj is readable by root only; \
                 run as root or make it readable)",
                p.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("reading {}", p.display()))
        }
    })?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: {:?} is not a whole number", p.display(), text.trim()))
}

impl Rapl {
    /// Opens the top-level RAPL zones under `powercap` (normally
    /// [`POWERCAP`]; tests pass a fixture tree) and takes a first reading.
    pub fn open(powercap: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(powercap)
            .with_context(|| format!("no powercap tree at {}", powercap.display()))?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("intel-rapl:"))
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains(':'))
            })
            .collect();
        dirs.sort();
        let mut zones = Vec::new();
        for d in dirs {
            let name = std::fs::read_to_string(d.join("name"))
                .with_context(|| format!("reading {}", d.join("name").display()))?
                .trim()
                .to_string();
            let range_uj = read_u64(&d.join("max_energy_range_uj"))?;
            if range_uj == 0 {
                bail!("{}: max_energy_range_uj is 0", d.display());
            }
            let energy = d.join("energy_uj");
            let last = read_u64(&energy)?;
            zones.push(Zone {
                name,
                energy,
                range_uj,
                last,
            });
        }
        if zones.is_empty() {
            bail!("no intel-rapl:N zones under {}", powercap.display());
        }
        let (packages, others): (Vec<Zone>, Vec<Zone>) = zones
            .into_iter()
            .partition(|z| z.name.starts_with("package"));
        let (psys, others): (Vec<Zone>, Vec<Zone>) =
            others.into_iter().partition(|z| z.name == "psys");
        let zones = [packages, psys, others]
            .into_iter()
            .find(|z| !z.is_empty())
            .unwrap_or_default();
        let label = format!(
            "RAPL {}",
            zones
                .iter()
                .map(|z| z.name.as_str())
                .collect::<Vec<_>>()
                .join("+")
        );
        Ok(Self {
            zones,
            total_uj: 0,
            label,
        })
    }

    /// Zone names summed by this meter.
    pub fn zones(&self) -> Vec<&str> {
        self.zones.iter().map(|z| z.name.as_str()).collect()
    }

    /// Micro-joules since [`Rapl::open`], unwrapping each counter (at most
    /// one wrap between reads: 2^32 µJ takes minutes at full package power).
    pub fn read_uj(&mut self) -> Result<u64> {
        for z in &mut self.zones {
            let now = read_u64(&z.energy)?;
            if now > z.range_uj {
                bail!(
                    "{}: {now} exceeds max_energy_range_uj {}",
                    z.energy.display(),
                    z.range_uj
                );
            }
            self.total_uj += wrapping_delta(z.last, now, Some(z.range_uj));
            z.last = now;
        }
        Ok(self.total_uj)
    }
}

impl EnergyMeter for Rapl {
    fn energy_uj(&mut self) -> std::result::Result<u64, MeterError> {
        self.read_uj().map_err(|_| MeterError::Read)
    }
    fn name(&self) -> &str {
        &self.label
    }
}
