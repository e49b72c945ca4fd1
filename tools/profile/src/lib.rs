//! Profiling for energy and latency.
//!
//! - Energy meters behind the runtime's [`taskpath_runtime::EnergyMeter`]:
//!   Linux RAPL via powercap ([`rapl`]), INA3221 rails via sysfs
//!   ([`ina3221`]), tegrastats logs ([`tegrastats`]); [`energy::open`]
//!   picks one or says "no meter" with the reason, and CPU time is always
//!   reported beside it.
//! - A [`chrome::Recorder`] (a [`taskpath_runtime::Tracer`]) and its Chrome
//!   Trace Event Format JSON ([`chrome::chrome_json`]).
//! - Page-ins from `mincore` and `/proc/self/io` ([`pagein`]).
//! - A driver that runs tasks traced and timed ([`driver`]), the summary
//!   ([`summary`]) and plots as PNG and SVG ([`plot`]).
//!
//! The `taskpath profile` and `taskpath bench` commands are built on this.

pub mod chrome;
pub mod driver;
pub mod energy;
pub mod ina3221;
pub mod pagein;
pub mod plot;
pub mod rapl;
pub mod stats;
pub mod summary;
pub mod tegrastats;
