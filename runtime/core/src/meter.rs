//! Time and energy sources for profiling, as traits so that the same
//! profiler code runs over a cycle counter on a microcontroller, `Instant` on
//! a host, or a power rail read through a firmware callback.
//!
//! Nothing here allocates or needs `std`. The host implementations (RAPL via
//! powercap, INA3221 rails, tegrastats logs) live in the `taskpath-profile`
//! crate; here are the traits and the callback adapters firmware uses.

/// A monotonic tick counter.
pub trait Clock {
    /// The current tick count. Counters narrower than 64 bits may wrap;
    /// [`Clock::wrap_ticks`] says where, so a reader can undo the wrap.
    fn ticks(&mut self) -> u64;
    /// Ticks per second.
    fn ticks_per_second(&self) -> u64;
    /// The counter's range when it wraps (a 32-bit cycle counter: `1 << 32`),
    /// `None` when it never wraps in practice.
    fn wrap_ticks(&self) -> Option<u64> {
        None
    }
    /// Ticks from `earlier` to `later`, assuming at most one wrap between them.
    fn elapsed(&self, earlier: u64, later: u64) -> u64 {
        wrapping_delta(earlier, later, self.wrap_ticks())
    }
}

/// Why an energy reading failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeterError {
    /// This device has no such meter (the report then says "no meter").
    Unavailable,
    /// The meter exists but this read failed (permission, I/O, a malformed value).
    Read,
}

impl core::fmt::Display for MeterError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MeterError::Unavailable => "no energy meter on this device",
            MeterError::Read => "reading the energy meter failed",
        })
    }
}

/// A source of cumulative energy.
pub trait EnergyMeter {
    /// Energy in micro-joules since an arbitrary origin fixed at creation.
    /// Never decreases: implementations over wrapping hardware counters
    /// unwrap them (read at least once per wrap period).
    fn energy_uj(&mut self) -> Result<u64, MeterError>;
    /// What is measured, e.g. `"RAPL package-0"` or `"VDD_IN"`.
    fn name(&self) -> &str;
}

/// `later - earlier` for a counter that wraps at `range` (`None`: 64-bit,
/// plain wrapping subtraction). At most one wrap is assumed between readings.
pub fn wrapping_delta(earlier: u64, later: u64, range: Option<u64>) -> u64 {
    match range {
        Some(r) if later < earlier => r.saturating_sub(earlier).saturating_add(later),
        _ => later.wrapping_sub(earlier),
    }
}

/// A [`Clock`] over a firmware callback (e.g. reading DWT->CYCCNT).
#[derive(Clone, Copy)]
pub struct CallbackClock<F: FnMut() -> u64> {
    read: F,
    hz: u64,
    wrap: Option<u64>,
}

impl<F: FnMut() -> u64> CallbackClock<F> {
    /// A clock that calls `read` for ticks running at `hz`, wrapping at `wrap`.
    pub fn new(read: F, hz: u64, wrap: Option<u64>) -> Self {
        Self { read, hz, wrap }
    }
}

impl<F: FnMut() -> u64> core::fmt::Debug for CallbackClock<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CallbackClock")
            .field("hz", &self.hz)
            .field("wrap", &self.wrap)
            .finish()
    }
}

impl<F: FnMut() -> u64> Clock for CallbackClock<F> {
    fn ticks(&mut self) -> u64 {
        (self.read)()
    }
    fn ticks_per_second(&self) -> u64 {
        self.hz
    }
    fn wrap_ticks(&self) -> Option<u64> {
        self.wrap
    }
}

/// An [`EnergyMeter`] over a firmware callback that returns a raw energy
/// counter in micro-joules (or `None` when the read failed). A counter that
/// wraps at `wrap` is unwrapped here, so firmware can hand over a register.
pub struct CallbackMeter<'n, F: FnMut() -> Option<u64>> {
    read: F,
    name: &'n str,
    wrap: Option<u64>,
    last: Option<u64>,
    total: u64,
}

impl<'n, F: FnMut() -> Option<u64>> CallbackMeter<'n, F> {
    /// A meter named `name` over `read`, whose counter wraps at `wrap`.
    pub fn new(name: &'n str, read: F, wrap: Option<u64>) -> Self {
        Self {
            read,
            name,
            wrap,
            last: None,
            total: 0,
        }
    }
}

impl<F: FnMut() -> Option<u64>> core::fmt::Debug for CallbackMeter<'_, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CallbackMeter")
            .field("name", &self.name)
            .field("wrap", &self.wrap)
            .field("total", &self.total)
            .finish()
    }
}

impl<F: FnMut() -> Option<u64>> EnergyMeter for CallbackMeter<'_, F> {
    fn energy_uj(&mut self) -> Result<u64, MeterError> {
        let raw = (self.read)().ok_or(MeterError::Read)?;
        if let Some(last) = self.last {
            self.total = self
                .total
                .saturating_add(wrapping_delta(last, raw, self.wrap));
        }
        self.last = Some(raw);
        Ok(self.total)
    }
    fn name(&self) -> &str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapping_counter_is_unwrapped_against_hand_computed_energy() {
        // A 16-bit µJ register: 65000 -> 65535 -> wrap -> 100 is 536 + 100 µJ.
        let mut readings = [65_000u64, 65_300, 100, 400].into_iter();
        let mut m = CallbackMeter::new("rail", move || readings.next(), Some(65_536));
        assert_eq!(m.energy_uj(), Ok(0));
        assert_eq!(m.energy_uj(), Ok(300));
        assert_eq!(m.energy_uj(), Ok(300 + 236 + 100));
        assert_eq!(m.energy_uj(), Ok(936));
        assert_eq!(m.energy_uj(), Err(MeterError::Read));
        assert_eq!(m.name(), "rail");
    }

    #[test]
    fn a_32_bit_cycle_counter_wraps_once_between_readings() {
        let c = CallbackClock::new(|| 0, 1_000_000, Some(1 << 32));
        assert_eq!(c.elapsed(u32::MAX as u64 - 9, 5), 15);
        assert_eq!(c.elapsed(10, 25), 15);
        assert_eq!(wrapping_delta(u64::MAX, 1, None), 2);
    }
}
