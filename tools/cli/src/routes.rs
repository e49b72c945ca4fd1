//! `taskpath routes`: the measured distribution of routed experts per task
//! and modality on a data set, next to the path stored in the package (for
//! a language model on a text corpus: crate::routes_llm).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use taskpath_checkpoint::Dataset;
use taskpath_runtime::{AlignedArena, Session, Tracer};

use crate::util::{modality_name, open_model, outln, Table};
use crate::DeltaArgs;

/// Arguments of `routes`.
#[derive(Debug, clap::Args)]
pub struct RoutesArgs {
    /// The package (.tpk).
    #[arg(value_name = "FILE.tpk")]
    pub file: PathBuf,
    /// Directory of `{TASK}.{split}.json` datasets (FLAME packages).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Language-model packages: the text corpus to route.
    #[command(flatten)]
    pub corpus: crate::lm::CorpusArgs,
    /// Which split to route (`test` or `train`; a corpus: any of its splits).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Language models: the task the text runs on (default: the full model).
    #[arg(long, value_name = "TASK")]
    pub task: Option<String>,
    /// Language models: print JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// Delta packs applied on top of the base.
    #[command(flatten)]
    pub deltas: DeltaArgs,
}

/// Per modality: per expert (picks, gate mass).
#[derive(Default)]
struct Tally(BTreeMap<u32, Vec<(u64, f64)>>);

impl Tracer for Tally {
    fn route(&mut self, modality: u32, experts: &[u32], gates: &[f32]) {
        let v = self.0.entry(modality).or_insert_with(|| vec![(0, 0.0); 64]);
        for (&e, &g) in experts.iter().zip(gates) {
            v[e as usize].0 += 1;
            v[e as usize].1 += f64::from(g);
        }
    }
}

/// Runs `taskpath routes`.
pub fn main(a: &RoutesArgs) -> Result<()> {
    let mapped = open_model(&a.file, &a.deltas.deltas)?;
    let model = mapped.model()?;
    if let Some(texts) =
        crate::lm::corpus_texts(&model, &a.corpus, a.data.as_deref(), "--data", &a.split)?
    {
        let task = crate::lm::task_or_full(&model, a.task.as_deref())?;
        let r = crate::routes_llm::measure(&model, &texts, task, a.corpus.jobs)?;
        return crate::lm::print_report(&r, a.json, crate::routes_llm::markdown);
    }
    let data = a.data.as_deref().context("--data is required")?;
    let n = crate::util::expert_count(&model);
    let mut header = vec![
        "task".to_string(),
        "modality".to_string(),
        "samples".to_string(),
    ];
    header.extend((0..n).map(|j| format!("E{j}")));
    header.push("path".to_string());
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header);
    for t in 0..model.task_count() {
        let info = model.task(t)?;
        let path = data.join(format!("{}.{}.json", info.name, a.split));
        if !path.is_file() {
            continue;
        }
        let ds = Dataset::load(&path).with_context(|| format!("loading {}", path.display()))?;
        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut s = Session::new(&model, t, arena.as_mut_slice())?;
        let mut tally = Tally::default();
        let mut out = vec![0f32; info.outputs];
        for x in &ds.samples {
            let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
            s.run_traced(&refs, &mut out, &mut tally)?;
        }
        for m in info.modalities() {
            let v = tally.0.get(&(m as u32)).cloned().unwrap_or_default();
            let mass: f64 = v.iter().map(|x| x.1).sum();
            let mut row = vec![
                info.name.to_string(),
                modality_name(&model, m),
                ds.samples.len().to_string(),
            ];
            row.extend((0..n).map(|j| {
                let share = v.get(j).map_or(0.0, |x| x.1) / mass.max(1e-12);
                format!("{:.1}%", 100.0 * share)
            }));
            let experts: Vec<String> = model
                .paths(&info)
                .filter(|e| e.router as usize == m)
                .flat_map(|e| e.mask.iter().collect::<Vec<_>>())
                .map(|j| j.to_string())
                .collect();
            row.push(format!("[{}]", experts.join(",")));
            table.row(row);
        }
    }
    outln!(
        "share of gate mass per expert on the {} split; path = the package's expert mask",
        a.split
    );
    outln!("{}", table.render(""));
    Ok(())
}
