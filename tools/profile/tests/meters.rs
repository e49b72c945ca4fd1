//! Energy meters against fixture trees built from the documented formats,
//! with hand-computed expectations (see fixtures/README.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use taskpath_profile::energy::{self, Meter, MeterSpec};
use taskpath_profile::ina3221::{Ina3221, PowerIntegrator, PowerSampler};
use taskpath_profile::rapl::Rapl;
use taskpath_profile::tegrastats;
use taskpath_runtime::EnergyMeter;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A writable copy of a fixture tree, removed on drop.
struct Scratch(PathBuf);
impl Scratch {
    fn of(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "taskpath-profile-{}-{}-{:?}",
            name.replace('/', "_"),
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&fixture(name), &dir);
        Self(dir)
    }
    fn set(&self, file: &str, value: &str) {
        std::fs::write(self.0.join(file), format!("{value}\n")).unwrap();
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn rapl_sums_package_zones_only_and_unwraps_the_counter() {
    let t = Scratch::of("rapl/powercap");
    let mut r = Rapl::open(&t.0).unwrap();
    assert_eq!(r.zones(), ["package-0", "package-1"]);
    assert_eq!(r.name(), "RAPL package-0+package-1");
    assert_eq!(r.read_uj().unwrap(), 0);
    // package-0 wraps: 328850 µJ to the top of the range, then 1000000 more.
    t.set("intel-rapl:0/energy_uj", "1000000");
    t.set("intel-rapl:1/energy_uj", "7000000");
    // Subzones and psys move too; they must not count.
    t.set("intel-rapl:0:0/energy_uj", "97800000000");
    t.set("intel-rapl:2/energy_uj", "123999999999");
    assert_eq!(r.read_uj().unwrap(), 328_850 + 1_000_000 + 2_000_000);
    t.set("intel-rapl:0/energy_uj", "1500000");
    assert_eq!(r.energy_uj(), Ok(3_328_850 + 500_000));
}

#[test]
fn rapl_falls_back_to_psys_and_rejects_values_outside_the_range() {
    let t = Scratch::of("rapl-psys-only/powercap");
    let mut r = Rapl::open(&t.0).unwrap();
    assert_eq!(r.zones(), ["psys"]);
    // A 32-bit range: 4294967000 -> wrap at 4294967295 -> 705.
    t.set("intel-rapl:0/energy_uj", "705");
    assert_eq!(r.read_uj().unwrap(), 295 + 705);
    t.set("intel-rapl:0/energy_uj", "4294967296");
    let e = r.read_uj().unwrap_err().to_string();
    assert!(e.contains("exceeds max_energy_range_uj"), "{e}");
    t.set("intel-rapl:0/energy_uj", "12 joules");
    let e = format!("{:#}", r.read_uj().unwrap_err());
    assert!(e.contains("not a whole number"), "{e}");
}

#[test]
fn missing_powercap_is_an_error_naming_the_path() {
    let e = format!(
        "{:#}",
        Rapl::open(Path::new("/nonexistent/powercap")).unwrap_err()
    );
    assert!(e.contains("/nonexistent/powercap"), "{e}");
    let e = format!("{:#}", Rapl::open(&fixture("ina3221-iio")).unwrap_err());
    assert!(e.contains("no intel-rapl:N zones"), "{e}");
}

#[test]
fn ina3221_iio_rails_read_milliwatts() {
    let d = Ina3221::discover(&fixture("ina3221-iio/sys")).unwrap();
    let names: Vec<&str> = d.rails.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"]);
    let p: Vec<f64> = d.rails.iter().map(|r| r.power_mw().unwrap()).collect();
    assert_eq!(p, [2012.0, 0.0, 331.0]);
    let sel = d.select(None).unwrap();
    assert_eq!(sel.len(), 1);
    assert_eq!(sel[0].name, "POM_5V_IN");
    let e = d.select(Some("VDD_GPU")).unwrap_err().to_string();
    assert!(e.contains("POM_5V_IN, POM_5V_GPU, POM_5V_CPU"), "{e}");
}

#[test]
fn ina3221_hwmon_power_is_voltage_times_current() {
    let d = Ina3221::discover(&fixture("ina3221-hwmon/sys")).unwrap();
    let names: Vec<&str> = d.rails.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]);
    // 5072 mV x 1344 mA = 6816.768 mW.
    assert!((d.rails[0].power_mw().unwrap() - 6816.768).abs() < 1e-9);
    assert!((d.rails[2].power_mw().unwrap() - 5072.0 * 352.0 / 1000.0).abs() < 1e-9);
}

#[test]
fn ina3221_integration_across_a_32_bit_tick_wrap() {
    // Firmware sampling the chip against a 1 kHz 32-bit timer: two samples
    // one second apart straddle the wrap.
    let t = Scratch::of("ina3221-hwmon/sys");
    let d = Ina3221::discover(&t.0).unwrap();
    let rail = d.select(Some("VDD_IN")).unwrap().remove(0);
    let mut integ = PowerIntegrator::new(1000, Some(1 << 32));
    let p0 = rail.power_mw().unwrap();
    integ.add((1u64 << 32) - 500, p0);
    t.set("class/hwmon/hwmon1/curr1_input", "1544");
    let p1 = rail.power_mw().unwrap();
    assert!((p1 - 7831.168).abs() < 1e-9);
    integ.add(500, p1);
    // Trapezoid: (6816.768 + 7831.168) / 2 mW x 1 s = 7323.968 mJ.
    assert!(
        (integ.total_uj() - 7_323_968.0).abs() < 1e-3,
        "{}",
        integ.total_uj()
    );
}

#[test]
fn ina3221_sampler_integrates_constant_power_over_wall_time() {
    let d = Ina3221::discover(&fixture("ina3221-iio/sys")).unwrap();
    let rails = d.select(None).unwrap();
    let before = Instant::now();
    let mut s = PowerSampler::start(rails, Duration::from_millis(2)).unwrap();
    let started = before.elapsed();
    std::thread::sleep(Duration::from_millis(30));
    let t_read = before.elapsed();
    let e = s.read_uj().unwrap();
    let t_after = before.elapsed();
    // 2012 mW constant: energy = 2012 mW x elapsed, with elapsed between the
    // bounds the clock gives on either side of start and read.
    let lo = 2012.0 * (t_read - started).as_secs_f64() * 1000.0;
    let hi = 2012.0 * t_after.as_secs_f64() * 1000.0;
    assert!(e >= lo * 0.999 && e <= hi * 1.001, "{lo} <= {e} <= {hi}");
    assert_eq!(s.name(), "INA3221 POM_5V_IN");
}

#[test]
fn tegrastats_jetpack5_log_integrates_across_midnight_of_a_new_year() {
    let text = std::fs::read_to_string(fixture("tegrastats-orin-nano.log")).unwrap();
    let s = tegrastats::parse(&text);
    assert_eq!(s.len(), 4);
    assert_eq!(
        s[0].rails.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    );
    assert_eq!(s[1].rails[1], ("VDD_CPU_GPU_CV".to_string(), 1398.0, 998.0));
    // 2024-01-01T00:00:00 is 1704067200 s after the epoch.
    assert_eq!(s[2].time_s, Some(1_704_067_200));
    assert_eq!(s[1].time_s, Some(1_704_067_199));
    assert_eq!(tegrastats::input_rail(&s).as_deref(), Some("VDD_IN"));
    // (4000+5000)/2 + (5000+6000)/2 + (6000+4000)/2 mW x 1 s = 15000 mJ.
    let e = tegrastats::energy_uj(&s, "VDD_IN", None).unwrap();
    assert!((e - 15_000_000.0).abs() < 1e-6, "{e}");
}

#[test]
fn tegrastats_l4t32_log_needs_the_interval() {
    let path = fixture("tegrastats-nano.log");
    let s = tegrastats::parse(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].time_s, None);
    // RAM, SWAP and IRAM look like NAME a/b but carry units: not rails.
    assert!(s[0].rails.iter().all(|r| r.0.starts_with("POM_")));
    let e = tegrastats::energy_uj(&s, "POM_5V_IN", None).unwrap_err();
    assert!(e.to_string().contains("give the interval"), "{e}");
    // (1000+2000)/2 + (2000+3000)/2 mW x 0.1 s = 400 mJ.
    let e = tegrastats::energy_uj(&s, "POM_5V_IN", Some(100)).unwrap();
    assert!((e - 400_000.0).abs() < 1e-6, "{e}");
    let mut m = tegrastats::TegrastatsLog::open(&path, None, Some(100)).unwrap();
    assert_eq!(m.name(), "tegrastats POM_5V_IN");
    assert_eq!(m.energy_uj(), Ok(400_000));
}

#[test]
fn meter_specs_parse_and_explicit_meters_fail_loudly() {
    assert_eq!(
        MeterSpec::parse("auto", None, None).unwrap(),
        MeterSpec::Auto
    );
    assert_eq!(
        MeterSpec::parse("rapl:/x", None, None).unwrap(),
        MeterSpec::Rapl("/x".into())
    );
    assert!(MeterSpec::parse("watts", None, None).is_err());
    assert!(MeterSpec::parse("tegrastats", None, None).is_err());
    let spec = MeterSpec::Rapl(fixture("rapl/powercap"));
    assert!(matches!(energy::open(&spec).unwrap(), Meter::Some(_)));
    assert!(energy::open(&MeterSpec::Rapl("/nonexistent".into())).is_err());
    assert!(matches!(
        energy::open(&MeterSpec::None).unwrap(),
        Meter::None(_)
    ));
}

#[test]
fn auto_on_a_machine_without_meters_says_no_meter() {
    // Only meaningful where neither powercap nor an INA3221 exists (this
    // development machine and CI containers); elsewhere auto must find one.
    let has_rapl = Path::new("/sys/class/powercap/intel-rapl:0/energy_uj").exists();
    let has_ina = Ina3221::discover(Path::new("/sys")).is_ok();
    match energy::open(&MeterSpec::Auto).unwrap() {
        Meter::None(why) => {
            assert!(!has_ina);
            assert!(why.contains("RAPL") && why.contains("INA3221"), "{why}");
        }
        Meter::Some(m) => assert!(has_rapl || has_ina, "{}", m.name()),
    }
}
