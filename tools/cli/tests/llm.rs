//! The language-model commands end to end on the committed tiny models
//! (models/llm-tiny): `pack` of a Hugging Face directory and a GGUF file,
//! `inspect`, and `generate`, whose greedy continuation must be
//! transformers' (the fixtures of scripts/llm/make_fixtures.py); domain
//! paths on the tiny OLMoE and a small corpus cut from
//! models/lm-domains/corpus: `pack --calibration --path-coverage`, `inspect`,
//! `eval --corpus [--cross]`, `routes --corpus`, `profile --corpus`, and the
//! errors of each.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/llm-tiny")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("taskpath-cli-llm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

mod common;
use common::ok;

/// A failed command (1) or a refused argument (2).
fn fails(args: &[&str]) -> String {
    common::exits_with(args, &[1, 2])
}

fn read_u32(p: &Path) -> Vec<u32> {
    std::fs::read(p)
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn greedy_generate_continues_the_prompt_as_transformers_does() {
    let d = tmp("greedy");
    for (source, name) in [
        ("qwen3moe", "hf.tpk"),
        ("gguf/qwen3moe-f32.gguf", "gguf.tpk"),
    ] {
        let pkg = d.join(name).display().to_string();
        let src = root().join(source).display().to_string();
        let out = ok(&[
            "pack",
            &src,
            "-o",
            &pkg,
            "--context",
            "128",
            "--chunk",
            "16",
        ]);
        assert!(out.contains("Qwen3MoeForCausalLM"), "{out}");
        let info = ok(&["inspect", &pkg]);
        assert!(info.contains("language-model tasks"), "{info}");
        assert!(info.contains("llm.context = 128"), "{info}");

        // The fixture prompt as text, which must tokenize back to itself.
        let ck = taskpath_import::Checkpoint::open(root().join(source)).unwrap();
        let tok = ck.tokenizer().unwrap();
        let prompt = read_u32(&root().join("fixtures/qwen3moe/prompt.u32"));
        let text = tok.decode(&prompt).unwrap();
        assert_eq!(
            tok.encode_with_special(&text).unwrap(),
            prompt,
            "round trip"
        );
        let greedy = read_u32(&root().join("fixtures/qwen3moe/hf.greedy.u32"));
        let want = tok.decode(&greedy[..24]).unwrap();

        let out = ok(&["generate", &pkg, "-p", &text, "-n", "24", "--temp", "0"]);
        let (gen, stats) = out.split_once("\n\nprompt: ").expect("summary line");
        assert_eq!(
            gen.strip_suffix('\n').unwrap_or(gen),
            format!("{text}{want}")
        );
        assert!(stats.starts_with("64 tokens"), "{stats}");
        assert!(stats.contains("decode: 24 tokens"), "{stats}");
        assert!(stats.contains("bytes of weights read"), "{stats}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn language_model_errors_name_the_problem() {
    let d = tmp("errors");
    let pkg = d.join("m.tpk").display().to_string();
    let src = root().join("olmoe").display().to_string();
    ok(&["pack", &src, "-o", &pkg, "--context", "32", "--chunk", "8"]);
    let long = "word ".repeat(40);
    let e = fails(&["generate", &pkg, "-p", &long, "-n", "4"]);
    assert!(e.contains("exceeds the package's context of 32"), "{e}");
    let e = fails(&["generate", &pkg, "-p", "hi", "-n", "4", "--task", "nope"]);
    assert!(
        e.contains("no task \"nope\"") && e.contains("generate"),
        "{e}"
    );
    let e = fails(&["generate", &pkg, "-p", "hi", "-n", "4", "--top-p", "0"]);
    assert!(e.contains("--top-p"), "{e}");
    let e = fails(&["generate", &pkg, "-p", "hi", "-n", "99999999999"]);
    assert!(e.contains("absurd") || e.contains("at most"), "{e}");
    for (budget, why) in [
        ("1e300", "not a byte count"),
        ("0", "at least 1"),
        ("150%", "(0, 100]"),
        ("1000", "expert budget too small"),
    ] {
        let e = fails(&[
            "generate",
            &pkg,
            "-p",
            "hi",
            "-n",
            "2",
            "--expert-budget",
            budget,
        ]);
        assert!(e.contains(why), "--expert-budget {budget}: {e}");
    }
    // Greedy text is bit-identical whatever the expert budget; the cache's
    // report comes with it.
    let text = |extra: &[&str]| {
        let out = ok(&[
            &["generate", &pkg, "-p", "hi", "-n", "12", "--temp", "0"][..],
            extra,
        ]
        .concat());
        let (text, report) = out.split_once("\nprompt:").expect("report");
        (text.to_string(), report.to_string())
    };
    let (full, _) = text(&[]);
    for b in ["25%", "50%", "100%"] {
        let (t, report) = text(&["--expert-budget", b]);
        assert_eq!(t, full, "--expert-budget {b}");
        assert!(
            report.contains("hit rate") && report.contains("ideal reads"),
            "{report}"
        );
    }
    let md = ok(&[
        "bench",
        &pkg,
        "-p",
        "8",
        "-n",
        "4",
        "-r",
        "1",
        "--expert-budget",
        "50%",
    ]);
    assert!(
        md.contains("tg4 threads 1: expert cache of") && md.contains("hit rate"),
        "{md}"
    );
    let e = fails(&["pack", &src, "-o", &pkg, "--chunk", "64", "--context", "32"]);
    assert!(e.contains("--chunk"), "{e}");
    let unknown = d.join("unknown");
    std::fs::create_dir_all(&unknown).unwrap();
    std::fs::write(
        unknown.join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}"#,
    )
    .unwrap();
    let e = fails(&["pack", &unknown.display().to_string(), "-o", &pkg]);
    assert!(
        e.contains("LlamaForCausalLM") && e.contains("MixtralForCausalLM"),
        "{e}"
    );
    let e = fails(&["pack", &d.display().to_string(), "-o", &pkg]);
    assert!(e.contains("not a model directory"), "{e}");
    // A truncated GGUF file.
    let bytes = std::fs::read(root().join("gguf/olmoe-f32.gguf")).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = fails(&["pack", &cut.display().to_string(), "-o", &pkg]);
    assert!(e.contains("cut.gguf"), "{e}");
    // The package of the failed packs is the first one, untouched.
    ok(&["verify", &pkg]);
    let _ = std::fs::remove_dir_all(&d);
}

/// Three domains, the first lines (about `bytes` bytes) of each split.
fn corpus(d: &Path, bytes: usize) -> PathBuf {
    let c = d.join("corpus");
    for domain in ["de-man", "en-bible", "rust"] {
        std::fs::create_dir_all(c.join(domain)).unwrap();
        for split in ["calib", "test"] {
            let text = std::fs::read_to_string(
                root().join(format!("../lm-domains/corpus/{domain}/{split}.txt")),
            )
            .unwrap();
            let mut cut = String::new();
            for line in text.lines() {
                if cut.len() >= bytes {
                    break;
                }
                cut.push_str(line);
                cut.push('\n');
            }
            std::fs::write(c.join(domain).join(format!("{split}.txt")), cut).unwrap();
        }
    }
    c
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn domain_paths_pack_eval_route_and_profile() {
    let d = tmp("paths");
    let c = s(&corpus(&d, 600));
    let src = s(&root().join("olmoe"));
    let pkg = s(&d.join("m.tpk"));
    let base = [
        "pack",
        &src,
        "-o",
        &pkg,
        "--context",
        "64",
        "--chunk",
        "16",
        "--calibration",
        &c,
    ];
    let out = ok(&[&base[..], &["--path-coverage", "0.6"]].concat());
    assert!(
        out.contains("calibrated on") && out.contains("windows of 64"),
        "{out}"
    );
    assert!(out.contains("path of rust at coverage 0.6: L0 ["), "{out}");
    assert!(out.contains("4 tasks"), "{out}");

    // inspect: the tasks and the stored routing statistics.
    let info: Value = serde_json::from_str(&ok(&["inspect", &pkg, "--json"])).unwrap();
    let tasks = info["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["generate", "de-man", "en-bible", "rust"]);
    for t in tasks {
        let routing = t["routing"].as_object().expect("routing statistics");
        assert_eq!(routing.len(), 2, "one entry per layer");
        for (_, experts) in routing {
            let picks: u64 = experts
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["picks"].as_u64().unwrap())
                .sum();
            let samples = experts[0]["samples"].as_u64().unwrap();
            assert_eq!(picks, 2 * samples, "top-2 per token");
        }
    }
    assert!(ok(&["inspect", &pkg]).contains("layer.1.experts/0"));

    // eval: every domain on its path and on the full model; the path's
    // share of expert bytes is its share of (layer, expert) blobs (all equal).
    let e: Value = serde_json::from_str(&ok(&[
        "eval", &pkg, "--corpus", &c, "--json", "--cross", "--jobs", "2",
    ]))
    .unwrap();
    assert_eq!(e["split"], "test");
    assert_eq!(e["window"], 64);
    let rows = e["domains"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for (i, r) in rows.iter().enumerate() {
        let full = r["full_ppl"].as_f64().unwrap();
        let path = r["path_ppl"].as_f64().unwrap();
        assert!(full.is_finite() && full > 1.0 && path.is_finite(), "{r}");
        assert_eq!(
            r["scored"].as_u64().unwrap() + r["windows"].as_u64().unwrap(),
            r["tokens"].as_u64().unwrap()
        );
        let experts: u64 = r["path_experts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum();
        assert!((2 * 2..2 * 8).contains(&experts), "{r}");
        assert!((r["path_share"].as_f64().unwrap() - experts as f64 / 16.0).abs() < 1e-12);
        // The cross matrix's diagonal is the own-path figure.
        let cross = e["cross"]["ppl"][i][i].as_f64().unwrap();
        assert_eq!(cross, path);
    }
    assert_eq!(e["cross"]["paths"].as_array().unwrap().len(), 3);
    let md = ok(&["eval", &pkg, "--corpus", &c, "--max-tokens", "40"]);
    assert!(
        md.contains("| domain | tokens |") && md.contains("| rust | 40 |"),
        "{md}"
    );

    // routes: the shares and entropies, consistent with the counts.
    let r: Value = serde_json::from_str(&ok(&["routes", &pkg, "--corpus", &c, "--json"])).unwrap();
    assert_eq!(r["task"], "generate");
    for (d, per_layer) in r["counts"].as_array().unwrap().iter().enumerate() {
        let tokens = r["tokens"][d].as_u64().unwrap();
        for (l, counts) in per_layer.as_array().unwrap().iter().enumerate() {
            let c: Vec<u64> = counts
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert_eq!(c.iter().sum::<u64>(), 2 * tokens);
            let h: f64 = c
                .iter()
                .filter(|&&x| x > 0)
                .map(|&x| {
                    let p = x as f64 / (2 * tokens) as f64;
                    -p * p.log2()
                })
                .sum();
            assert!((r["entropy_bits"][d][l].as_f64().unwrap() - h).abs() < 1e-9);
        }
    }
    let md = ok(&["routes", &pkg, "--corpus", &c, "--task", "rust"]);
    assert!(
        md.contains("task rust") && md.contains("I(domain; expert)"),
        "{md}"
    );

    // profile: one heat map per layer.
    let out = d.join("prof");
    ok(&["profile", &pkg, "--corpus", &c, "--out", &s(&out)]);
    for f in [
        "routes.md",
        "routes.json",
        "experts-layer-0-experts.png",
        "experts-layer-1-experts.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // residency: each domain's fetches replayed under eight policies; the
    // command itself fails when the runtime cache's counts differ from the
    // LRU+pin simulation's. Belady bounds every policy.
    let md = ok(&["residency", &pkg, "--corpus", &c, "--budgets", "0.25,0.5"]);
    let pct = |cell: &str| -> f64 { cell.trim().trim_end_matches('%').parse().unwrap() };
    let mut rows = 0;
    for line in md.lines().filter(|l| l.contains("(= simulation)")) {
        let cells: Vec<&str> = line.split("  ").filter(|c| !c.trim().is_empty()).collect();
        // domain, budget, slots, LRU, LFU, LRU+pin, pinned, layer-cyclic,
        // layer-LFU, + prediction, + step oracle, Belady, best/Belady, runtime
        let belady = pct(cells[11]);
        for k in [3, 4, 5, 7, 8, 9, 10] {
            assert!(pct(cells[k]) <= belady + 1e-9, "{line}");
        }
        rows += 1;
    }
    assert_eq!(rows, 3 * 2, "{md}");
    assert!(md.contains("all (pooled)"), "{md}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn domain_path_errors_name_the_problem() {
    let d = tmp("path-errors");
    let c = s(&corpus(&d, 200));
    let src = s(&root().join("olmoe"));
    let pkg = s(&d.join("m.tpk"));
    let pack = |extra: &[&str]| {
        let mut a = vec!["pack", &src, "-o", &pkg, "--context", "64", "--chunk", "16"];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<String>>()
    };
    let run = |a: Vec<String>| fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let e = run(pack(&["--calibration", &s(&d.join("nope"))]));
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    for bad in ["0", "1.5", "nan"] {
        let e = run(pack(&["--calibration", &c, "--path-coverage", bad]));
        assert!(
            e.contains("--path-coverage") && e.contains("greater than 0 and at most 1"),
            "{e}"
        );
    }
    let e = run(pack(&["--path-coverage", "0.9"]));
    assert!(e.contains("--path-coverage needs --calibration"), "{e}");
    let e = run(pack(&["--budget", "30%"]));
    assert!(
        e.contains("--budget for a language model needs --calibration"),
        "{e}"
    );
    let e = run(pack(&[
        "--budget",
        "30%",
        "--quant",
        "int8",
        "--calibration",
        &c,
    ]));
    assert!(e.contains("exclude each other"), "{e}");
    let e = run(pack(&["--budget", "130%", "--calibration", &c]));
    assert!(e.contains("percentage must be in (0, 100]"), "{e}");
    // A checkpoint without its tokenizer.
    let bare = d.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root().join("olmoe").join(f), bare.join(f)).unwrap();
    }
    let e = fails(&["pack", &s(&bare), "-o", &pkg, "--calibration", &c]);
    assert!(e.contains("--calibration tokenizes"), "{e}");
    // A domain folder without calib.txt.
    let partial = d.join("partial");
    std::fs::create_dir_all(partial.join("only-test")).unwrap();
    std::fs::write(partial.join("only-test/test.txt"), "text").unwrap();
    let e = run(pack(&["--calibration", &s(&partial)]));
    assert!(
        e.contains("domain only-test has no split \"calib\"") && e.contains("test"),
        "{e}"
    );
    // A domain named like the full model's task.
    let clash = d.join("clash");
    std::fs::create_dir_all(clash.join("generate")).unwrap();
    std::fs::write(clash.join("generate/calib.txt"), "some calibration text").unwrap();
    let e = run(pack(&["--calibration", &s(&clash)]));
    assert!(e.contains("may not be named \"generate\""), "{e}");
    assert!(!Path::new(&pkg).exists(), "no package from failed packs");

    ok(&pack(&["--calibration", &c])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let e = fails(&["eval", &pkg, "--corpus", &s(&d.join("nope"))]);
    assert!(e.contains("does not exist"), "{e}");
    let e = fails(&["eval", &pkg, "--corpus", &c, "--split", "nope"]);
    assert!(
        e.contains("no split \"nope\"") && e.contains("calib, test"),
        "{e}"
    );
    let e = fails(&["eval", &pkg, "--corpus", &c, "--window", "65"]);
    assert!(
        e.contains("--window") && e.contains("at most 64, got 65"),
        "{e}"
    );
    let e = fails(&["eval", &pkg, "--data", &c]);
    assert!(e.contains("give --corpus"), "{e}");
    let e = fails(&["eval", &pkg, "--corpus", &c, "--jobs", "0"]);
    assert!(e.contains("--jobs"), "{e}");
    let e = fails(&["routes", &pkg, "--corpus", &c, "--task", "nope"]);
    assert!(e.contains("no task \"nope\""), "{e}");
    let e = fails(&["profile", &pkg, "--out", &s(&d.join("p"))]);
    assert!(e.contains("--corpus"), "{e}");
    let e = fails(&["routes", &pkg, "--corpus", &c, "--data", &c]);
    assert!(e.contains("exclude each other"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
