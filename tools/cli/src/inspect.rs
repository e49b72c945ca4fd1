//! `taskpath inspect`: everything a package chain holds, as tables or JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use taskpath_format::records::{blob_kind, section, SectionRec, NONE16};
use taskpath_format::{ExpertKind, MetaValue, Package, Record, WeightFormat};
use taskpath_runtime::Model;

use crate::util::{hex, human_bytes, modality_name, open_model, outln, printable, Table};
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

/// The architecture: its tag and metadata (key/value, as the package states it).
#[derive(Debug, Serialize)]
pub struct ArchReport {
    /// Architecture tag (`flame`, ...).
    pub arch: String,
    /// Every metadata entry of the last package of the chain.
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// One expert group.
#[derive(Debug, Serialize)]
pub struct GroupReport {
    /// Global group index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Experts in the group.
    pub experts: u32,
    /// Experts a routing op keeps.
    pub top_k: u32,
    /// What an expert computes.
    pub kind: String,
    /// Components per expert along the chain (stages).
    pub components: usize,
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
    /// Arena bytes a session needs on this machine (plan + slots).
    pub arena_bytes: usize,
    /// Bytes of its slots (the package's memory plan).
    pub slot_bytes: usize,
    /// Ops in its program.
    pub ops: u32,
    /// Per router (FLAME: per modality), the experts on its path.
    pub experts: BTreeMap<String, Vec<usize>>,
    /// Blobs on its path.
    pub path_blobs: usize,
    /// Bytes of weights on its path.
    pub path_bytes: usize,
    /// Per router, calibration routing statistics (absent when not stored).
    pub routing: Option<BTreeMap<String, Vec<ExpertStat>>>,
    /// A language-model task's token shape and memory (absent otherwise).
    pub tokens: Option<TokenReport>,
}

/// What a token-stream (language-model) task holds, fixed when a session
/// is created: nothing is allocated per token.
#[derive(Debug, Serialize)]
pub struct TokenReport {
    /// Most tokens one step takes (the prefill chunk).
    pub chunk: usize,
    /// Positions the KV cache holds.
    pub context: usize,
    /// Vocabulary (logits per step).
    pub vocab: usize,
    /// Bytes of the KV caches (the task's state slots).
    pub kv_cache_bytes: usize,
    /// Bytes of everything else a step uses (scratch slots, plan).
    pub scratch_bytes: usize,
}

fn token_report(
    model: &Model<'_>,
    t: &taskpath_runtime::TaskInfo<'_>,
) -> Result<Option<TokenReport>> {
    let mut b = taskpath_runtime::plan::PlanBuffers::new(t);
    let plan = taskpath_runtime::plan::Plan::build(model, t.index, b.storage())?;
    Ok(plan.tokens().map(|s| {
        let kv = 4 * plan.state().len();
        TokenReport {
            chunk: s.capacity,
            context: s.context,
            vocab: s.vocab,
            kv_cache_bytes: kv,
            scratch_bytes: t.arena_bytes.saturating_sub(kv),
        }
    }))
}

/// One blob.
#[derive(Debug, Serialize)]
pub struct BlobReport {
    /// Global blob index.
    pub id: u32,
    /// Package of the chain holding it.
    pub package: usize,
    /// `shared`, `router`, `expert`, `head` or `data`.
    pub kind: String,
    /// Modality name (shared trunks, routers).
    pub modality: Option<String>,
    /// Expert group (experts).
    pub group: Option<u16>,
    /// Expert (experts).
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
    pub arch: ArchReport,
    /// Expert groups.
    pub groups: Vec<GroupReport>,
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
        section::MODEL => "model",
        section::METADATA => "metadata",
        section::MODALITIES => "modalities",
        section::TENSORS => "tensors",
        section::GROUPS => "groups",
        section::EXPERTS => "experts",
        section::COMPONENTS => "components",
        section::TASKS => "tasks",
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
        blob_kind::SHARED => "shared".into(),
        blob_kind::ROUTER => "router".into(),
        blob_kind::EXPERT => "expert".into(),
        blob_kind::HEAD => "head".into(),
        blob_kind::DATA => "data".into(),
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
        ("metadata", p.metadata().len()),
        ("modalities", p.modalities().len()),
        ("tensors", p.tensors().len()),
        ("groups", p.groups().len()),
        ("experts", p.experts().len()),
        ("components", p.components().len()),
        ("tasks", p.tasks().len()),
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
    let last = model.parts().last().unwrap_or_else(|| model.base());
    let arch = ArchReport {
        arch: model.arch().to_string(),
        metadata: last
            .meta_entries()
            .map(|(k, v)| {
                let v = match v {
                    MetaValue::U32(x) => serde_json::json!(x),
                    MetaValue::I32(x) => serde_json::json!(x),
                    MetaValue::U64(x) => serde_json::json!(x),
                    MetaValue::F32(x) => serde_json::json!(x),
                    MetaValue::F64(x) => serde_json::json!(x),
                    MetaValue::Bool(x) => serde_json::json!(x),
                    MetaValue::Str(x) => serde_json::json!(x),
                };
                (k.to_string(), v)
            })
            .collect(),
    };
    let groups = (0..model.group_count() as u32)
        .filter_map(|g| {
            let r = model.group(g)?;
            Some(GroupReport {
                index: g,
                name: model.group_name(g).unwrap_or("").to_string(),
                experts: r.experts,
                top_k: r.top_k,
                kind: match ExpertKind::from_u32(r.kind) {
                    Some(ExpertKind::ConvFfn) => "conv_ffn".into(),
                    Some(ExpertKind::SwiGlu) => "swiglu".into(),
                    None => format!("unknown({})", r.kind),
                },
                components: model.components(g),
            })
        })
        .collect();
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
        for e in model.paths(&t) {
            experts.insert(
                router_name(model, e.group, e.router),
                e.mask.iter().collect::<Vec<usize>>(),
            );
        }
        let mut routing: BTreeMap<String, Vec<ExpertStat>> = BTreeMap::new();
        for p in model.parts() {
            for s in p.stats().iter().filter(|s| s.task as usize == i) {
                routing
                    .entry(router_name(model, s.group, s.router))
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
            slot_bytes: t.slot_bytes,
            ops: t.rec.program_len,
            experts,
            path_blobs: model.path_blobs(&t).count(),
            path_bytes: model.path_bytes(&t),
            routing: (!routing.is_empty()).then_some(routing),
            tokens: token_report(model, &t)?,
        });
    }
    let mut blobs = Vec::new();
    for (part, p) in model.parts().enumerate() {
        let base = p.model().blob_base;
        for (local, rec) in p.blobs().iter().enumerate() {
            let opt = |v: u16| (v != NONE16).then_some(v);
            let is_head = rec.kind == blob_kind::HEAD;
            blobs.push(BlobReport {
                id: base + local as u32,
                package: part,
                kind: kind_name(rec.kind),
                modality: opt(rec.owner)
                    .filter(|_| !is_head)
                    .map(|m| modality_name(model, m.into())),
                group: opt(rec.group),
                expert: opt(rec.expert),
                component: opt(rec.component),
                task: opt(rec.owner).filter(|_| is_head).map(|t| {
                    model
                        .task(t.into())
                        .map_or_else(|_| format!("#{t}"), |t| t.name.to_string())
                }),
                offset: p.blob_file_offset(local).unwrap_or(0),
                length: rec.len,
                format: WeightFormat::from_u16(rec.format.into())
                    .map_or_else(|| format!("unknown({})", rec.format), |f| f.name().into()),
                checksum: hex(rec.checksum),
            });
        }
    }
    let blob_bytes = blobs.iter().map(|b| b.length).sum();
    Ok(Report {
        packages,
        arch,
        groups,
        modalities,
        tasks,
        blobs,
        blob_bytes,
    })
}

/// How `inspect` names router `router` of `group`: FLAME routers are its
/// modalities; other architectures' are `group/router`.
pub fn router_name(model: &Model<'_>, group: u32, router: u32) -> String {
    if model.arch() == "flame" {
        return modality_name(model, router as usize);
    }
    format!("{}/{router}", model.group_name(group).unwrap_or("group"))
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
    outln!("architecture: {}", printable(&r.arch.arch));
    for (k, v) in &r.arch.metadata {
        outln!("  {} = {}", printable(k), printable(&v.to_string()));
    }
    outln!("\nexpert groups:");
    let mut t = Table::new(&["#", "name", "experts", "top_k", "kind", "components"]);
    for g in &r.groups {
        t.row(vec![
            g.index.to_string(),
            g.name.clone(),
            g.experts.to_string(),
            g.top_k.to_string(),
            g.kind.clone(),
            g.components.to_string(),
        ]);
    }
    outln!("{}\n", t.render("  "));
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
        "slots",
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
            task.slot_bytes.to_string(),
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
    if r.tasks.iter().any(|t| t.tokens.is_some()) {
        outln!("language-model tasks (memory fixed at session creation):");
        let mut t = Table::new(&["task", "chunk", "context", "vocab", "KV cache", "scratch"]);
        for task in &r.tasks {
            if let Some(k) = &task.tokens {
                t.row(vec![
                    task.name.clone(),
                    k.chunk.to_string(),
                    k.context.to_string(),
                    k.vocab.to_string(),
                    format!("{} ({})", k.kv_cache_bytes, human_bytes(k.kv_cache_bytes)),
                    format!("{} ({})", k.scratch_bytes, human_bytes(k.scratch_bytes)),
                ]);
            }
        }
        outln!("{}\n", t.render("  "));
    }
    outln!("paths (experts per task and router; routing: expert picks/samples gate-mass share):");
    let mut t = Table::new(&["task", "router", "experts", "routing"]);
    for task in &r.tasks {
        for m in task.experts.keys() {
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
        "id", "pkg", "kind", "modality", "group", "expert", "comp", "task", "offset", "length",
        "format", "checksum",
    ]);
    for b in &r.blobs {
        t.row(vec![
            b.id.to_string(),
            b.package.to_string(),
            b.kind.clone(),
            dash(b.modality.clone()),
            dash(b.group),
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
