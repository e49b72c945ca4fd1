//! examples/firmware-c compiled with the system C compiler against this
//! test build's staticlib, run on an embedded package and from the file,
//! plainly and under AddressSanitizer + UndefinedBehaviorSanitizer (with
//! LeakSanitizer): it must exit 0, report nothing, and print outputs
//! bit-identical to the Rust API's. Skipped (with a message) where no `cc`
//! is installed; scripts/c-example.sh runs the release build the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use taskpath_checkpoint::{random_checkpoint, RandomSpec};
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Model, Session};

fn have_cc() -> bool {
    Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The staticlib cargo built for this test run (next to the test binary).
fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().join("libtaskpath_ffi.a")
}

/// The package as flash would hold it: a const, 16-byte aligned C array.
fn write_model_c(bytes: &[u8], path: &Path) {
    let mut s = String::from("__attribute__((aligned(16)))\nconst unsigned char model_tpk[] = {");
    for (i, b) in bytes.iter().enumerate() {
        if i % 16 == 0 {
            s.push_str("\n ");
        }
        s.push_str(&format!(" 0x{b:02x},"));
    }
    s.push_str(&format!(
        "\n}};\nconst unsigned int model_tpk_len = {};\n",
        bytes.len()
    ));
    std::fs::write(path, s).unwrap();
}

/// Same formula as examples/firmware-c/main.c.
fn input_value(task: usize, input: usize, j: usize) -> f32 {
    (((j * 7 + input * 13 + task * 5) % 17) as i32 - 8) as f32 * 0.125
}

fn rust_outputs(bytes: &[u8]) -> Vec<(String, Vec<u32>)> {
    let model = Model::from_bytes(bytes).unwrap();
    (0..model.task_count().min(2))
        .map(|t| {
            let info = model.task(t).unwrap();
            let xs: Vec<Vec<f32>> = info
                .modalities()
                .enumerate()
                .map(|(i, m)| {
                    let (_, l, f) = model.modality(m).unwrap();
                    (0..l * f).map(|j| input_value(t, i, j)).collect()
                })
                .collect();
            let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
            let mut a = AlignedArena::new(info.arena_bytes);
            let mut s = Session::new(&model, t, a.as_mut_slice()).unwrap();
            let mut out = vec![0f32; info.outputs];
            s.run(&refs, &mut out).unwrap();
            (
                info.name.to_string(),
                out.iter().map(|x| x.to_bits()).collect(),
            )
        })
        .collect()
}

/// `(source, task) -> bits` from the program's `out` lines.
fn printed(stdout: &str, source: &str) -> Vec<(String, Vec<u32>)> {
    let mut v: Vec<(String, Vec<u32>)> = Vec::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 6 && f[0] == "out" && f[1] == source {
            let bits = u32::from_str_radix(f[5].trim_start_matches("0x"), 16).unwrap();
            match v.last_mut() {
                Some((t, b)) if t == f[2] => b.push(bits),
                _ => v.push((f[2].to_string(), vec![bits])),
            }
        }
    }
    v
}

/// Compiles the example; `None` only when a sanitizer runtime is missing.
fn build(dir: &Path, name: &str, extra: &[&str]) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let exe = dir.join(name);
    let out = Command::new("cc")
        .args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"])
        .args(extra)
        .arg("-I")
        .arg(root.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("examples/firmware-c/main.c"))
        .arg(dir.join("model_data.c"))
        .arg(staticlib())
        .args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !extra.is_empty() && (err.contains("asan") || err.contains("ubsan"))
    {
        eprintln!("skipped the sanitizer build: its runtime is not installed:\n{err}");
        return None;
    }
    assert!(out.status.success(), "cc {extra:?} failed:\n{err}");
    Some(exe)
}

#[test]
fn c_example_matches_the_rust_api_plain_and_under_sanitizers() {
    if !have_cc() {
        eprintln!("skipped: no C compiler (`cc`) on this machine");
        return;
    }
    assert!(
        staticlib().is_file(),
        "no staticlib at {}",
        staticlib().display()
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-example-test");
    std::fs::create_dir_all(&dir).unwrap();
    let ck = random_checkpoint(&RandomSpec::small(16, 2, 4, 2, 2), 3);
    let bytes = pack(&ck, &PackOptions::default()).unwrap();
    let tpk = dir.join("model.tpk");
    std::fs::write(&tpk, &bytes).unwrap();
    write_model_c(&bytes, &dir.join("model_data.c"));
    let want = rust_outputs(AlignedArena::from_bytes(&bytes).as_slice());
    assert_eq!(want.len(), 2);

    let plain = build(&dir, "firmware_c", &[]);
    let san = build(
        &dir,
        "firmware_c_san",
        &[
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=all",
        ],
    );
    let runs = [(plain, false), (san, true)];
    for (exe, sanitized) in runs.into_iter().filter_map(|(e, s)| Some((e?, s))) {
        let out = Command::new(&exe)
            .arg("--file")
            .arg(&tpk)
            .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
            .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{exe:?} failed:\n{stdout}\n{stderr}");
        if sanitized {
            assert!(stderr.trim().is_empty(), "sanitizers reported:\n{stderr}");
        }
        assert!(stdout.lines().any(|l| l == "ok"), "{stdout}");
        assert!(
            stdout.contains("error arena too small: TP_ERR_ARENA_TOO_SMALL"),
            "{stdout}"
        );
        assert_eq!(printed(&stdout, "memory"), want, "{exe:?}: memory outputs");
        assert_eq!(printed(&stdout, "file"), want, "{exe:?}: file outputs");
    }
}
