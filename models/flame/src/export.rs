//! Checkpoint export, parameter counts and the evaluation fixtures of the runtime.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use taskpath_checkpoint::{write_atomic, Checkpoint};

use crate::data::{TaskData, TaskSplit};
use crate::model::Model;
use crate::train::predict;

/// Writes the model as `dir/model.json` + `dir/model.safetensors`.
pub fn save(model: &Model, dir: &Path) -> Result<Checkpoint> {
    let ck = model.to_checkpoint()?;
    ck.save(dir)?;
    Ok(ck)
}

/// Scalar counts of a checkpoint, by part.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ParamCount {
    /// Every stored scalar.
    pub total: usize,
    /// Expert component `c` of every expert slot, per stage c (as stored).
    pub expert_components: Vec<usize>,
    /// Router heads `h` of every modality, per stage h.
    pub router_heads: Vec<usize>,
    /// Task heads of the tasks of each stage.
    pub task_heads: Vec<usize>,
    /// Encoders, attention blocks and their LayerNorms.
    pub modality_blocks: usize,
    /// What one stage's expert components would take at full rank.
    pub full_pool_per_stage: usize,
}

/// Counts the scalars of a checkpoint by part.
pub fn count_params(ck: &Checkpoint) -> ParamCount {
    let s = ck.config.stages;
    let mut c = ParamCount {
        expert_components: vec![0; s],
        router_heads: vec![0; s],
        task_heads: vec![0; s],
        ..Default::default()
    };
    for (name, t) in &ck.tensors {
        let n = t.data.len();
        c.total += n;
        let parts: Vec<&str> = name.split('.').collect();
        match parts[0] {
            "expert" => c.expert_components[parts[2].parse::<usize>().unwrap_or(0)] += n,
            "router" => c.router_heads[parts[2].parse::<usize>().unwrap_or(0)] += n,
            "head" => {
                let task = name["head.".len()..]
                    .trim_end_matches(".ln.g")
                    .trim_end_matches(".ln.b")
                    .trim_end_matches(".w")
                    .trim_end_matches(".b");
                let stage = ck
                    .config
                    .tasks
                    .iter()
                    .find(|t| t.name == task)
                    .map_or(0, |t| t.stage);
                c.task_heads[stage] += n;
            }
            _ => c.modality_blocks += n,
        }
    }
    let (d, h) = (ck.config.d_model, ck.config.ffn_hidden);
    c.full_pool_per_stage = ck.config.experts * (d * 3 * d + d + 2 * d + h * d + h + d * h + d);
    c
}

#[derive(Serialize)]
struct Sample<'a> {
    inputs: Vec<&'a [f32]>,
    label: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<&'a [f32]>,
}

#[derive(Serialize)]
struct Fixture<'a> {
    format: &'static str,
    task: &'a str,
    modalities: Vec<&'a str>,
    samples: Vec<Sample<'a>>,
}

fn write_split(
    path: &Path,
    task: &TaskData,
    split: &TaskSplit,
    logits: Option<&[Vec<f32>]>,
) -> Result<()> {
    let widths: Vec<usize> = task
        .modalities
        .iter()
        .map(|m| m.tokens * m.features)
        .collect();
    let samples = (0..split.len())
        .map(|i| Sample {
            inputs: split
                .inputs
                .iter()
                .zip(&widths)
                .map(|(flat, w)| &flat[i * w..(i + 1) * w])
                .collect(),
            label: split.labels[i],
            logits: logits.map(|l| l[i].as_slice()),
        })
        .collect();
    let f = Fixture {
        format: "taskpath-dataset/1",
        task: &task.name,
        modalities: task.modalities.iter().map(|m| m.name.as_str()).collect(),
        samples,
    };
    // serde_json writes f32 in the shortest form that reads back exactly (<= 9
    // significant digits)
    let mut s = serde_json::to_string(&f)?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

/// Writes `dir/data/{TASK}.{train,test}.json` (test with the model's logits) and
/// `dir/inputs/{TASK}.json` (the first test sample, as [tokens][features]).
pub fn write_fixtures(model: &Model, tasks: &[TaskData], dir: &Path) -> Result<()> {
    let data_dir = dir.join("data");
    let in_dir = dir.join("inputs");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::create_dir_all(&in_dir)?;
    for t in tasks {
        let logits = predict(model, t, &t.test)?;
        write_split(
            &data_dir.join(format!("{}.train.json", t.name)),
            t,
            &t.train,
            None,
        )?;
        write_split(
            &data_dir.join(format!("{}.test.json", t.name)),
            t,
            &t.test,
            Some(&logits),
        )?;
        // written by hand to keep the fusion order and f32 shortest formatting
        let mut s = String::from("{\"inputs\":{");
        for (k, (m, flat)) in t.modalities.iter().zip(&t.test.inputs).enumerate() {
            let w = m.tokens * m.features;
            let rows: Vec<Vec<f32>> = flat[..w].chunks(m.features).map(<[f32]>::to_vec).collect();
            if k > 0 {
                s.push(',');
            }
            s += &format!(
                "{}:{}",
                serde_json::to_string(&m.name)?,
                serde_json::to_string(&rows)?
            );
        }
        s += "}}\n";
        write_atomic(&in_dir.join(format!("{}.json", t.name)), s.as_bytes())?;
    }
    Ok(())
}
