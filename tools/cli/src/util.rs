//! Helpers shared by the subcommands: opening models, finding tasks, tables.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use taskpath_checkpoint::{Gating, ModalityConfig, ModelConfig, TaskConfig, CHECKPOINT_FORMAT};
use taskpath_format::records::gating;
use taskpath_runtime::{MappedModel, Model, TaskInfo};

/// `writeln!` to stdout that returns the I/O error (a closed pipe is an error
/// message, not a panic as with `println!`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?;
    }};
}
pub(crate) use outln;

/// Maps and validates `base` and its delta packs.
pub fn open_model(base: &Path, deltas: &[PathBuf]) -> Result<MappedModel> {
    let what = if deltas.is_empty() {
        format!("opening {}", base.display())
    } else {
        let d: Vec<String> = deltas.iter().map(|p| p.display().to_string()).collect();
        format!("opening {} with deltas {}", base.display(), d.join(", "))
    };
    for p in std::iter::once(base).chain(deltas.iter().map(PathBuf::as_path)) {
        if !p.is_file() {
            bail!("{what}: {} does not exist or is not a file", p.display());
        }
    }
    MappedModel::open_with_deltas(base, deltas).context(what)
}

/// Names of every task of the model, comma-separated.
pub fn task_names(model: &Model<'_>) -> String {
    (0..model.task_count())
        .filter_map(|i| model.task(i).ok())
        .map(|t| t.name.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The task named `name`, or an error listing the available tasks.
pub fn task_by_name<'a>(model: &Model<'a>, name: &str) -> Result<TaskInfo<'a>> {
    match model.task_index(name) {
        Ok(i) => Ok(model.task(i)?),
        Err(_) => bail!(
            "unknown task {name:?}; available tasks: {}",
            task_names(model)
        ),
    }
}

/// Name of modality `m` (or `#m` when out of range, which validation rules out).
pub fn modality_name(model: &Model<'_>, m: usize) -> String {
    model
        .modality(m)
        .map_or_else(|| format!("#{m}"), |(n, _, _)| n.to_string())
}

/// The `model.json` equivalent of a package chain (architecture, modalities,
/// tasks), to check datasets against with `Dataset::validate_against`.
pub fn config_of(model: &Model<'_>) -> Result<ModelConfig> {
    let hp = model.hparams();
    let modalities = (0..model.modality_count())
        .filter_map(|m| model.modality(m))
        .map(|(name, tokens, features)| ModalityConfig {
            name: name.to_string(),
            tokens,
            features,
        })
        .collect();
    let tasks = (0..model.task_count())
        .map(|i| {
            let t = model.task(i)?;
            Ok(TaskConfig {
                name: t.name.to_string(),
                modalities: t.modalities().map(|m| modality_name(model, m)).collect(),
                stage: t.stage,
                outputs: t.outputs,
            })
        })
        .collect::<Result<_>>()?;
    Ok(ModelConfig {
        format: CHECKPOINT_FORMAT.to_string(),
        d_model: hp.d_model as usize,
        heads: hp.heads as usize,
        experts: hp.experts as usize,
        top_k: hp.top_k as usize,
        ffn_hidden: hp.ffn_hidden as usize,
        rank: hp.rank as usize,
        stages: hp.stages as usize,
        gating: if hp.gating == gating::SOFTMAX {
            Gating::Softmax
        } else {
            Gating::Laplace
        },
        ln_eps: hp.ln_eps,
        modalities,
        tasks,
    })
}

/// Index of the largest value (the first on ties; NaN sorts highest).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if x.total_cmp(&v[best]).is_gt() {
            best = i;
        }
    }
    best
}

/// `0x` and 16 hex digits.
pub fn hex(v: u64) -> String {
    format!("{v:#018x}")
}

/// Bytes in binary units, e.g. `12.5 KiB`.
pub fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Writes an output file atomically, creating its directory first.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    taskpath_checkpoint::write_atomic(path, bytes)
}

/// A text table with aligned columns: numbers right-aligned, text left.
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells print empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines of text, each prefixed by `indent`.
    pub fn render(&self, indent: &str) -> String {
        let n = self.header.len();
        let cell = |r: &Vec<String>, i: usize| r.get(i).cloned().unwrap_or_default();
        let width: Vec<usize> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([self.header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // A column is numeric when every cell starts like a number or is a
        // placeholder (empty, "-"), and at least one is a number.
        let number =
            |c: &str| c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-' || ch == '+');
        let numeric: Vec<bool> = (0..n)
            .map(|i| {
                let cells = || self.rows.iter().map(|r| cell(r, i));
                cells().all(|c| c.is_empty() || c == "-" || number(&c))
                    && cells().any(|c| c != "-" && number(&c))
            })
            .collect();
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = (0..n)
                .map(|i| {
                    let c = cell(r, i);
                    if numeric[i] {
                        format!("{c:>w$}", w = width[i])
                    } else {
                        format!("{c:<w$}", w = width[i])
                    }
                })
                .collect();
            format!("{indent}{}", cells.join("  ").trim_end())
        };
        let mut out = vec![line(&self.header)];
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        out.push(format!("{indent}{}", rule.join("  ")));
        out.extend(self.rows.iter().map(line));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[-2.0]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn bytes_print_in_binary_units() {
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }

    #[test]
    fn tables_align_numbers_right_and_text_left() {
        let mut t = Table::new(&["name", "n"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["long".into(), "100".into()]);
        assert_eq!(t.render(""), "name    n\n----  ---\na       1\nlong  100");
    }
}
