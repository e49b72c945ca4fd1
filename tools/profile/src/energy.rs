//! Choosing an energy meter, and the CPU time reported when there is none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use taskpath_runtime::EnergyMeter;

use crate::ina3221::{Ina3221, PowerSampler};
use crate::rapl::{Rapl, POWERCAP};
use crate::tegrastats::TegrastatsLog;

/// Which meter to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeterSpec {
    /// RAPL if readable, else an INA3221, else none.
    Auto,
    /// No meter: report CPU time only.
    None,
    /// RAPL under this powercap root.
    Rapl(PathBuf),
    /// INA3221 under this sysfs root, optionally one named rail.
    Ina3221(PathBuf, Option<String>),
    /// A tegrastats log being written, its rail and `--interval` in ms.
    Tegrastats(PathBuf, Option<String>, Option<u64>),
}

impl MeterSpec {
    /// Parses `auto`, `none`, `rapl[:ROOT]`, `ina3221[:SYSROOT]`,
    /// `tegrastats:LOG`; `rail` and `interval_ms` go to the meters that take them.
    pub fn parse(s: &str, rail: Option<&str>, interval_ms: Option<u64>) -> Result<Self> {
        let (kind, arg) = s.split_once(':').map_or((s, None), |(k, a)| (k, Some(a)));
        let path = |default: &str| PathBuf::from(arg.unwrap_or(default));
        Ok(match kind {
            "auto" => Self::Auto,
            "none" => Self::None,
            "rapl" => Self::Rapl(path(POWERCAP)),
            "ina3221" => Self::Ina3221(path("/sys"), rail.map(str::to_string)),
            "tegrastats" => match arg {
                Some(a) => Self::Tegrastats(a.into(), rail.map(str::to_string), interval_ms),
                None => bail!("--meter tegrastats:LOGFILE needs the log's path"),
            },
            _ => bail!(
                "unknown meter {s:?}: expected auto, none, rapl[:POWERCAP_DIR], ina3221[:SYSFS_ROOT] or tegrastats:LOGFILE"
            ),
        })
    }
}

/// The meter in use, or why there is none.
pub enum Meter {
    /// A working meter.
    Some(Box<dyn EnergyMeter + Send>),
    /// No meter; the reason, printed in the report next to "no meter".
    None(String),
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Meter::Some(m) => write!(f, "Meter({})", m.name()),
            Meter::None(why) => write!(f, "no meter ({why})"),
        }
    }
}

const SAMPLE_PERIOD: Duration = Duration::from_millis(10);

fn ina(root: &Path, rail: Option<&str>) -> Result<Box<dyn EnergyMeter + Send>> {
    let rails = Ina3221::discover(root)?.select(rail)?;
    Ok(Box::new(PowerSampler::start(rails, SAMPLE_PERIOD)?))
}

/// Opens the meter `spec` names. An explicit meter that fails is an error;
/// `auto` falls back to [`Meter::None`] with the reasons.
pub fn open(spec: &MeterSpec) -> Result<Meter> {
    Ok(match spec {
        MeterSpec::None => Meter::None("disabled with --meter none".into()),
        MeterSpec::Rapl(root) => Meter::Some(Box::new(Rapl::open(root)?)),
        MeterSpec::Ina3221(root, rail) => Meter::Some(ina(root, rail.as_deref())?),
        MeterSpec::Tegrastats(log, rail, ms) => {
            Meter::Some(Box::new(TegrastatsLog::open(log, rail.as_deref(), *ms)?))
        }
        MeterSpec::Auto => match Rapl::open(Path::new(POWERCAP)) {
            Ok(r) => Meter::Some(Box::new(r)),
            Err(rapl) => match ina(Path::new("/sys"), None) {
                Ok(m) => Meter::Some(m),
                Err(ina) => Meter::None(format!("RAPL: {rapl:#}; INA3221: {ina:#}")),
            },
        },
    })
}

/// CPU time of this process (user + system), from `CLOCK_PROCESS_CPUTIME_ID`.
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
