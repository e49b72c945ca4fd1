//! `taskpath inspect`: everything a package chain holds, as tables or JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use taskpath_format::records::{blob_kind, format, gating, section, SectionRec, NONE16};
use taskpath_format::{Package, Record};
use taskpath_runtime::Model;

use crate::util::{hex, human_bytes, modality_name, open_model, outln, Table};
use crate::DeltaArgs;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One package file of the chain.
#[derive(Debug, Serialize)]
pub struct PackageReport {
    /// Position in the chain (0 = base).
    pub index: usize,
    /// The file it was read from.
    pub file: String,
    /// Header fields.
    pub header: HeaderReport,
    /// Section table.
    pub sections: Vec<SectionReport>,
    /// Records per table.
    pub counts: BTreeMap<&'static str, usize>,
}

/// Header fields of one package.
#[derive(Debug, Serialize)]
pub struct HeaderReport {
    /// `major.minor`.
    pub version: String,
    /// Header length in bytes.
    pub header_len: u32,
    /// Flag bits.
    pub flags: u32,
    /// Whether the package is a delta pack.
    pub delta: bool,
    /// log2 of the blob alignment.
    pub align_log2: u32,
    /// Blob alignment in bytes.
    pub alignment: u64,
    /// File length in bytes.
    pub file_len: u64,
    /// Start of the data region.
    pub data_off: u64,
    /// Length of the data region.
    pub data_len: u64,
    /// The package id (metadata checksum), hex.
    pub package_id: String,
    /// The base package's id for a delta, else null.
    pub base_id: Option<String>,
}

/// One section table entry.
#[derive(Debug, Serialize)]
pub struct SectionReport {
    /// Section name (or `unknown(N)`).
    pub kind: String,
    /// Flag bits (1 = required).
    pub flags: u32,
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Architecture hyper-parameters.
#[derive(Debug, Serialize)]
pub struct HParamsReport {
    /// Model width D.
    pub d_model: u32,
    /// Attention heads.
    pub heads: u32,
    /// Expert pool size N.
    pub experts: u32,
    /// Experts kept per (sample, modality).
    pub top_k: u32,
    /// Expert FFN hidden width.
    pub ffn_hidden: u32,
    /// Low-rank rank (informational).
    pub rank: u32,
    /// Stages along the chain.
    pub stages: u32,
    /// `laplace` or `softmax`.
    pub gating: String,
    /// LayerNorm epsilon.
    pub ln_eps: f32,
}

/// One modality.
#[derive(Debug, Serialize)]
pub struct ModalityReport {
    /// Index in fusion order.
    pub index: usize,
    /// Name.
    pub name: String,
    /// Tokens L.
    pub tokens: usize,
    /// Features per token F.
    pub features: usize,
}

/// Routing statistics of one expert for one (task, modality).
#[derive(Debug, Serialize)]
pub struct ExpertStat {
    /// Expert slot.
    pub expert: u32,
    /// Calibration samples that picked it.
    pub picks: u32,
    /// Its share of the gate mass (0..=1).
    pub mass: f32,
    /// Calibration samples.
    pub samples: u32,
}

/// One task.
#[derive(Debug, Serialize)]
pub struct TaskReport {
    /// Global task index.
    pub index: usize,
    /// Name.
    pub name: String,
    /// Package of the chain defining it.
    pub package: usize,
    /// Modality names in model order.
    pub modalities: Vec<String>,
    /// 0-based stage.
    pub stage: usize,
    /// Outputs (logits).
    pub outputs: usize,
    /// Arena bytes its plan needs.
    pub arena_bytes: usize,
    /// Ops in its program.
    pub ops: u32,
    /// Per modality, the experts on its path.
    pub experts: BTreeMap<String, Vec<usize>>,
    /// Blobs on its path.
    pub path_blobs: usize,
    /// Bytes of weights on its path.
    pub path_bytes: usize,
    /// Per modality, calibration routing statistics (absent when not stored).
    pub routing: Option<BTreeMap<String, Vec<ExpertStat>>>,
}

/// One blob.
#[derive(Debug, Serialize)]
pub struct BlobReport {
    /// Global blob index.
    pub id: u32,
    /// Package of the chain holding it.
    pub package: usize,
    /// `trunk`, `router`, `expert` or `head`.
    pub kind: String,
    /// Modality name (trunks, routers).
    pub modality: Option<String>,
    /// Expert slot (experts).
    pub expert: Option<u16>,
    /// Component / router head (experts, routers).
    pub component: Option<u16>,
    /// Task name (heads).
    pub task: Option<String>,
    /// Absolute offset in its package file.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Weight format, e.g. `f32`.
    pub format: String,
    /// xxh3-64 of its bytes, hex.
    pub checksum: String,
}

/// Everything `inspect` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Packages of the chain, base first.
    pub packages: Vec<PackageReport>,
    /// Architecture.
    pub hparams: HParamsReport,
    /// Modalities.
    pub modalities: Vec<ModalityReport>,
    /// Tasks.
    pub tasks: Vec<TaskReport>,
    /// Blobs, by global index.
    pub blobs: Vec<BlobReport>,
    /// Bytes of all blobs together.
    pub blob_bytes: u64,
}

fn section_name(kind: u32) -> String {
    let name = match kind {
        section::STRINGS => "strings",
        section::HPARAMS => "hparams",
        section::MODALITIES => "modalities",
        section::TENSORS => "tensors",
        section::EXPERTS => "experts",
        section::TASKS => "tasks",
        section::ROUTERS => "routers",
        section::PATHS => "paths",
        section::PROGRAM => "program",
        section::SLOTS => "slots",
        section::BLOBS => "blobs",
        section::ROUTE_STATS => "route_stats",
        k => return format!("unknown({k})"),
    };
    name.to_string()
}

/// Name of a blob kind.
pub fn kind_name(kind: u8) -> String {
    match kind {
        blob_kind::TRUNK => "trunk".into(),
        blob_kind::ROUTER => "router".into(),
        blob_kind::EXPERT => "expert".into(),
        blob_kind::HEAD => "head".into(),
        k => format!("unknown({k})"),
    }
}

fn sections(p: &Package<'_>) -> Vec<SectionReport> {
    let h = p.header();
    let bytes = p.bytes();
    (0..h.section_count as usize)
        .filter_map(|i| {
            let at = usize::try_from(h.section_table_off).ok()? + i * SectionRec::SIZE;
            let rec = SectionRec::decode(bytes.get(at..at + SectionRec::SIZE)?);
            Some(SectionReport {
                kind: section_name(rec.kind),
                flags: rec.flags,
                offset: rec.offset,
                length: rec.len,
            })
        })
        .collect()
}

fn package_report(index: usize, file: String, p: &Package<'_>) -> PackageReport {
    let h = p.header();
    let counts = BTreeMap::from([
        ("modalities", p.modalities().len()),
        ("tensors", p.tensors().len()),
        ("experts", p.experts().len()),
        ("tasks", p.tasks().len()),
        ("routers", p.routers().len()),
        ("paths", p.paths().len()),
        ("program", p.program().len()),
        ("slots", p.slots().len()),
        ("blobs", p.blobs().len()),
        ("route_stats", p.stats().len()),
    ]);
    PackageReport {
        index,
        file,
        header: HeaderReport {
            version: format!("{}.{}", h.version_major, h.version_minor),
            header_len: h.header_len,
            flags: h.flags,
            delta: p.is_delta(),
            align_log2: h.align_log2,
            alignment: h.align(),
            file_len: h.file_len,
            data_off: h.data_off,
            data_len: h.data_len,
            package_id: hex(p.id()),
            base_id: (h.base_id != 0).then(|| hex(h.base_id)),
        },
        sections: sections(p),
        counts,
    }
}

/// Builds the report of a model chain opened from `files` (base first).
pub fn report(model: &Model<'_>, files: &[String]) -> Result<Report> {
    let packages = model
        .parts()
        .enumerate()
        .map(|(i, p)| package_report(i, files.get(i).cloned().unwrap_or_default(), &p))
        .collect();
    let hp = model.hparams();
    let hparams = HParamsReport {
        d_model: hp.d_model,
        heads: hp.heads,
        experts: hp.experts,
        top_k: hp.top_k,
        ffn_hidden: hp.ffn_hidden,
        rank: hp.rank,
        stages: hp.stages,
        gating: match hp.gating {
            gating::LAPLACE => "laplace".into(),
            gating::SOFTMAX => "softmax".into(),
            g => format!("unknown({g})"),
        },
        ln_eps: hp.ln_eps,
    };
    let modalities = (0..model.modality_count())
        .filter_map(|m| {
            let (name, tokens, features) = model.modality(m)?;
            Some(ModalityReport {
                index: m,
                name: name.to_string(),
                tokens,
                features,
            })
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..model.task_count() {
        let t = model.task(i)?;
        let mut experts = BTreeMap::new();
        for m in t.modalities() {
            let mask = model.path_mask(&t, m).unwrap_or(0);
            let list: Vec<usize> = (0..64).filter(|j| mask & (1u64 << j) != 0).collect();
            experts.insert(modality_name(model, m), list);
        }
        let mut routing: BTreeMap<String, Vec<ExpertStat>> = BTreeMap::new();
        for p in model.parts() {
            for s in p.stats().iter().filter(|s| s.task as usize == i) {
                routing
                    .entry(modality_name(model, s.modality as usize))
                    .or_default()
                    .push(ExpertStat {
                        expert: s.expert,
                        picks: s.picks,
                        mass: s.mass,
                        samples: s.samples,
                    });
            }
        }
        tasks.push(TaskReport {
            index: i,
            name: t.name.to_string(),
            package: t.part,
            modalities: t.modalities().map(|m| modality_name(model, m)).collect(),
            stage: t.stage,
            outputs: t.outputs,
            arena_bytes: t.arena_bytes,
            ops: t.rec.program_len,
            experts,
            path_blobs: model.path_blobs(&t).count(),
            path_bytes: model.path_bytes(&t),
            routing: (!routing.is_empty()).then_some(routing),
        });
    }
    let mut blobs = Vec::new();
    for (part, p) in model.parts().enumerate() {
        let base = p.hparams().blob_base;
        for (local, rec) in p.blobs().iter().enumerate() {
            let opt = |v: u16| (v != NONE16).then_some(v);
            blobs.push(BlobReport {
                id: base + local as u32,
                package: part,
                kind: kind_name(rec.kind),
                modality: opt(rec.modality).map(|m| modality_name(model, m.into())),
                expert: opt(rec.expert),
                component: opt(rec.component),
                task: opt(rec.task).map(|t| {
                    model
                        .task(t.into())
                        .map_or_else(|_| format!("#{t}"), |t| t.name.to_string())
                }),
                offset: p.blob_file_offset(local).unwrap_or(0),
                length: rec.len,
                format: if u16::from(rec.format) == format::F32 {
                    "f32".into()
                } else {
                    format!("unknown({})", rec.format)
                },
                checksum: hex(rec.checksum),
            });
        }
    }
    let blob_bytes = blobs.iter().map(|b| b.length).sum();
    Ok(Report {
        packages,
        hparams,
        modalities,
        tasks,
        blobs,
        blob_bytes,
    })
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn print_human(r: &Report) -> Result<()> {
    for p in &r.packages {
        let h = &p.header;
        outln!(
            "package {} ({}): {}",
            p.index,
            if h.delta { "delta" } else { "base" },
            p.file
        );
        outln!(
            "  version {}, header {} bytes, flags {:#x}, alignment {} (2^{}), file length {} ({})",
            h.version,
            h.header_len,
            h.flags,
            h.alignment,
            h.align_log2,
            h.file_len,
            human_bytes(h.file_len as usize)
        );
        outln!(
            "  package id {}, base id {}, data region {}..{}",
            h.package_id,
            h.base_id.as_deref().unwrap_or("-"),
            h.data_off,
            h.data_off + h.data_len
        );
        let mut t = Table::new(&["section", "flags", "offset", "length", "records"]);
        for s in &p.sections {
            let records = p.counts.get(s.kind.as_str()).map(|n| n.to_string());
            t.row(vec![
                s.kind.clone(),
                format!("{}", s.flags),
                s.offset.to_string(),
                s.length.to_string(),
                dash(records),
            ]);
        }
        outln!("{}\n", t.render("  "));
    }
    let hp = &r.hparams;
    outln!(
        "architecture: d_model {}, heads {}, experts {}, top_k {}, ffn_hidden {}, rank {}, stages {}, gating {}, ln_eps {:e}\n",
        hp.d_model,
        hp.heads,
        hp.experts,
        hp.top_k,
        hp.ffn_hidden,
        hp.rank,
        hp.stages,
        hp.gating,
        hp.ln_eps
    );
    outln!("modalities:");
    let mut t = Table::new(&["#", "name", "tokens", "features"]);
    for m in &r.modalities {
        t.row(vec![
            m.index.to_string(),
            m.name.clone(),
            m.tokens.to_string(),
            m.features.to_string(),
        ]);
    }
    outln!("{}\n", t.render("  "));
    outln!("tasks:");
    let mut t = Table::new(&[
        "#",
        "name",
        "pkg",
        "stage",
        "outputs",
        "modalities",
        "ops",
        "arena",
        "path blobs",
        "path bytes",
        "of all",
    ]);
    for task in &r.tasks {
        t.row(vec![
            task.index.to_string(),
            task.name.clone(),
            task.package.to_string(),
            task.stage.to_string(),
            task.outputs.to_string(),
            task.modalities.join(","),
            task.ops.to_string(),
            task.arena_bytes.to_string(),
            task.path_blobs.to_string(),
            task.path_bytes.to_string(),
            format!(
                "{:.1}%",
                100.0 * task.path_bytes as f64 / r.blob_bytes.max(1) as f64
            ),
        ]);
    }
    outln!("{}\n", t.render("  "));
    outln!("paths (experts per task and modality; routing: expert picks/samples gate-mass share):");
    let mut t = Table::new(&["task", "modality", "experts", "routing"]);
    for task in &r.tasks {
        for m in &task.modalities {
            let experts = task.experts.get(m).map_or_else(String::new, |v| {
                v.iter()
                    .map(|j| j.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let routing = task.routing.as_ref().and_then(|r| r.get(m)).map_or_else(
                || "-".to_string(),
                |v| {
                    v.iter()
                        .map(|s| {
                            format!(
                                "e{}:{}/{} {:.1}%",
                                s.expert,
                                s.picks,
                                s.samples,
                                100.0 * s.mass
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("  ")
                },
            );
            t.row(vec![
                task.name.clone(),
                m.clone(),
                format!("[{experts}]"),
                routing,
            ]);
        }
    }
    outln!("{}\n", t.render("  "));
    outln!("blobs ({} bytes in {} blobs):", r.blob_bytes, r.blobs.len());
    let mut t = Table::new(&[
        "id", "pkg", "kind", "modality", "expert", "comp", "task", "offset", "length", "format",
        "checksum",
    ]);
    for b in &r.blobs {
        t.row(vec![
            b.id.to_string(),
            b.package.to_string(),
            b.kind.clone(),
            dash(b.modality.clone()),
            dash(b.expert),
            dash(b.component),
            dash(b.task.clone()),
            b.offset.to_string(),
            b.length.to_string(),
            b.format.clone(),
            b.checksum.clone(),
        ]);
    }
    outln!("{}", t.render("  "));
    Ok(())
}

/// Runs `inspect`.
pub fn main(a: &InspectArgs) -> Result<()> {
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    let model = mapped.model()?;
    let files: Vec<String> = std::iter::once(&a.file)
        .chain(&a.deltas.deltas)
        .map(|p| p.display().to_string())
        .collect();
    let r = report(&model, &files)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_human(&r)?;
    }
    Ok(())
}
