//! The non-finite policy and input bounds of the `taskpath` binary
//! (docs/RELIABILITY.md, "Non-finite values"): a NaN or infinity in a
//! checkpoint, a package, an input or an output is an error naming where it
//! is, never an exit 0 with NaN; inputs are read with a size limit.

#[path = "../../../fuzz/src/mutate.rs"]
#[allow(dead_code)]
mod mutate;

use std::path::Path;

use taskpath_format::Package;
use taskpath_runtime::AlignedArena;

mod common;
use common::{fails, ok, taskpath};

struct Tmp(common::Tmp);

impl Tmp {
    fn new(name: &str) -> Self {
        Self(common::Tmp::new("nonfinite", name))
    }
}

impl std::ops::Deref for Tmp {
    type Target = common::Tmp;
    fn deref(&self) -> &common::Tmp {
        &self.0
    }
}

/// `gen-random --shape small` (modalities a [5x3] and b [3x7]; task0 on
/// a,b, task1 on b) into `t/ck`.
fn checkpoint(t: &Tmp) {
    ok(&[
        "gen-random",
        &t.s("ck"),
        "--shape",
        "small",
        "--seed",
        "3",
        "--train-samples",
        "8",
        "--test-samples",
        "2",
    ]);
}

/// Overwrites value `i` of f32 tensor `name` in a safetensors file.
fn poke_safetensors(path: &Path, name: &str, i: usize, v: f32) {
    let mut b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let t = &header[name];
    assert_eq!(t["dtype"], "F32", "{name}");
    let start = t["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + start + 4 * i;
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(path, b).unwrap();
}

/// A copy of package `src` with `edit(bytes, offset)` applied at the data
/// of tensor `name`, every checksum re-sealed: only the meaning is wrong.
fn edit_tensor(src: &Path, dst: &Path, name: &str, edit: impl FnOnce(&mut [u8], usize)) {
    let mut bytes = std::fs::read(src).unwrap();
    let arena = AlignedArena::from_bytes(&bytes);
    let p = Package::parse(arena.as_slice()).unwrap();
    let (rec, blob) = p
        .tensors()
        .iter()
        .find(|t| p.str(t.name_off, t.name_len) == name)
        .map(|t| (t, (t.blob - p.model().blob_base) as usize))
        .unwrap_or_else(|| panic!("no tensor {name}"));
    let at = p.blob_file_offset(blob).unwrap() as usize + rec.offset as usize;
    edit(&mut bytes, at);
    mutate::reseal_blobs(&mut bytes);
    mutate::reseal(&mut bytes);
    std::fs::write(dst, bytes).unwrap();
}

fn nan_at(b: &mut [u8], at: usize) {
    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
}

/// `{"inputs": ...}` of task0 with every value `v`.
fn task0_json(v: &str) -> String {
    let row = |f: usize| format!("[{}]", vec![v; f].join(","));
    let rows = |l: usize, f: usize| format!("[{}]", vec![row(f); l].join(","));
    format!(
        "{{\"inputs\": {{\"a\": {}, \"b\": {}}}}}",
        rows(5, 3),
        rows(3, 7)
    )
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    std::fs::write(path, b).unwrap();
}

#[test]
fn pack_refuses_non_finite_checkpoint_values_naming_the_tensor() {
    let t = Tmp::new("pack");
    checkpoint(&t);
    let st = t.path("ck/model.safetensors");
    let clean = std::fs::read(&st).unwrap();
    for (name, v) in [
        ("blk.a.ln0.g", f32::NAN),
        ("router.b.0.gate", f32::INFINITY),
        ("expert.1.0.fc1.w", f32::NEG_INFINITY),
    ] {
        std::fs::write(&st, &clean).unwrap();
        poke_safetensors(&st, name, 1, v);
        let err = fails(&["pack", &t.s("ck"), "-o", &t.s("m.tpk")]);
        assert!(err.contains(name) && err.contains("non-finite"), "{err}");
        assert!(!t.path("m.tpk").exists());
    }
}

#[test]
fn verify_run_and_eval_refuse_a_resealed_nan_weight_scale_or_gate() {
    let t = Tmp::new("verify");
    checkpoint(&t);
    let tpk = t.s("m.tpk");
    ok(&["pack", &t.s("ck"), "-o", &tpk, "--quant", "i4g32"]);
    ok(&["verify", &tpk]);
    std::fs::write(t.path("x.json"), task0_json("0.5")).unwrap();
    let run = |f: &str| -> Vec<String> {
        ["run", f, "--task", "task0", "--input", &t.s("x.json")]
            .map(String::from)
            .to_vec()
    };
    let args = run(&tpk);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // A LayerNorm scale, a router gate and the f16 scale of row 0, group 0
    // of a quantized expert matrix (after its 16 x 32 x 4 / 8 weight bytes).
    let (f32_nan, f16_nan) = (f32::NAN.to_le_bytes(), 0x7E00u16.to_le_bytes());
    let cases: [(&str, usize, &[u8]); 3] = [
        ("blk.a.ln0.g", 4, &f32_nan),
        ("router.a.0.gate", 0, &f32_nan),
        ("expert.0.0.fc1.w", 256, &f16_nan),
    ];
    for (name, off, pat) in cases {
        let bad = t.s("bad.tpk");
        edit_tensor(t.path("m.tpk").as_path(), Path::new(&bad), name, |b, at| {
            b[at + off..at + off + pat.len()].copy_from_slice(pat)
        });
        let err = fails(&["verify", &bad]);
        assert!(
            err.contains(&format!("tensor \"{name}\"")) && err.contains("NaN or infinite"),
            "{name}: {err}"
        );
        assert!(err.contains("blob "), "{err}");
        // `run` and `eval` compute with it: a NaN output is an error naming
        // the task, never printed with exit 0.
        let args = run(&bad);
        let o = taskpath(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(!out.contains("NaN"), "{name}: NaN printed: {out}");
        if !o.status.success() {
            assert!(
                err.contains("task task0") && err.contains("not finite"),
                "{name}: {err}"
            );
        }
    }
    // The LayerNorm scale reaches every output of task0: eval fails too.
    edit_tensor(
        t.path("m.tpk").as_path(),
        &t.path("bad.tpk"),
        "blk.a.ln0.g",
        nan_at,
    );
    let args = run(&t.s("bad.tpk"));
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("task task0, sample 0: output"), "{err}");
    let err = fails(&["eval", &t.s("bad.tpk"), "--data", &t.s("ck/data")]);
    assert!(
        err.contains("task task0") && err.contains("not finite"),
        "{err}"
    );
}

#[test]
fn inputs_are_checked_after_conversion_to_f32() {
    let t = Tmp::new("inputs");
    checkpoint(&t);
    let tpk = t.s("m.tpk");
    ok(&["pack", &t.s("ck"), "-o", &tpk]);
    // 1e39 is a finite f64 and +inf as f32.
    std::fs::write(t.path("big.json"), task0_json("1e39")).unwrap();
    let err = fails(&["run", &tpk, "--task", "task0", "--input", &t.s("big.json")]);
    assert!(
        err.contains("modality a, token 0, feature 0") && err.contains("not finite as a 32-bit"),
        "{err}"
    );
    // The same in a dataset file.
    let row = vec!["1e39"; 15].join(",");
    let b = vec!["0.5"; 21].join(",");
    let ds = format!(
        "{{\"format\": \"taskpath-dataset/1\", \"task\": \"task0\", \"modalities\": [\"a\", \"b\"], \
         \"samples\": [{{\"inputs\": [[{row}], [{b}]], \"label\": null}}]}}"
    );
    std::fs::write(t.path("ds.json"), ds).unwrap();
    let err = fails(&["run", &tpk, "--input", &t.s("ds.json")]);
    assert!(err.contains("modality a: value 0 is not finite"), "{err}");
    // .npy inputs: NaN and infinity named by modality, token and feature.
    let mut a = vec![0.25f32; 15];
    let bv = vec![0.25f32; 21];
    write_npy(&t.path("b.npy"), &[3, 7], &bv);
    for (v, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        a[4] = v;
        write_npy(&t.path("a.npy"), &[5, 3], &a);
        let err = fails(&[
            "run",
            &tpk,
            "--task",
            "task0",
            "--input",
            &t.s("a.npy"),
            "--input",
            &t.s("b.npy"),
        ]);
        assert!(
            err.contains("for modality a: token 1, feature 1 is") && err.contains(what),
            "{err}"
        );
    }
    // Finite inputs whose activations overflow: the outputs are not finite,
    // which is an error naming the task, not an exit 0 with NaN.
    std::fs::write(t.path("huge.json"), task0_json("3e38")).unwrap();
    let o = taskpath(&["run", &tpk, "--task", "task0", "--input", &t.s("huge.json")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.to_lowercase().contains("nan"), "{out}");
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("task task0, sample 0: output"), "{err}");
    }
}

#[test]
fn inputs_are_read_with_a_size_limit_stated_in_the_error() {
    let t = Tmp::new("limits");
    checkpoint(&t);
    let tpk = t.s("m.tpk");
    ok(&["pack", &t.s("ck"), "-o", &tpk]);
    // `.npy` of modality a: 15 values, so at most 64 KiB + 60 bytes.
    std::os::unix::fs::symlink("/dev/zero", t.path("zero.npy")).unwrap();
    write_npy(&t.path("b.npy"), &[3, 7], &[0.5; 21]);
    let npy = |a: &str| {
        fails(&[
            "run",
            &tpk,
            "--task",
            "task0",
            "--input",
            a,
            "--input",
            &t.s("b.npy"),
        ])
    };
    let err = npy(&t.s("zero.npy"));
    assert!(
        err.contains("is larger than 65596 bytes")
            && err.contains("an .npy input of 15 float32 values"),
        "{err}"
    );
    let mut big = std::fs::read(t.path("b.npy")).unwrap();
    big.resize(70_000, 0);
    std::fs::write(t.path("big.npy"), big).unwrap();
    let err = npy(&t.s("big.npy"));
    assert!(err.contains("is larger than 65596 bytes"), "{err}");
    // JSON: /dev/zero fails at its first byte, not after reading gigabytes.
    let started = std::time::Instant::now();
    let err = fails(&["run", &tpk, "--task", "task0", "--input", "/dev/zero"]);
    assert!(err.contains("parsing /dev/zero"), "{err}");
    assert!(started.elapsed().as_secs() < 20);
    // A JSON input past its limit (task0: 15 + 21 inputs and 2 logits per
    // sample, 64 bytes each plus 256, 10000 samples, plus 1 MiB) is refused
    // with the limit; the file is whitespace, so only the limit can stop it.
    let limit = (38 * 64 + 256) * 10_000 + (1 << 20);
    let mut f = std::fs::File::create(t.path("big.json")).unwrap();
    let chunk = vec![b' '; 1 << 20];
    let mut left = limit + 1;
    while left > 0 {
        let n = left.min(chunk.len());
        std::io::Write::write_all(&mut f, &chunk[..n]).unwrap();
        left -= n;
    }
    drop(f);
    let err = fails(&["run", &tpk, "--task", "task0", "--input", &t.s("big.json")]);
    assert!(
        err.contains(&format!(
            "is larger than {limit} bytes, the most a JSON input for task task0"
        )),
        "{err}"
    );
}
