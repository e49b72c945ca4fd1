//! Helpers shared by the subcommands: opening models, finding tasks, tables,
//! option bounds and printable names.

use std::fmt::Display;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use taskpath_checkpoint::{Gating, ModalityConfig, ModelConfig, TaskConfig, CHECKPOINT_FORMAT};
use taskpath_format::MetaValue;
use taskpath_runtime::{Load, MappedModel, Model, TaskInfo};

/// `writeln!` to stdout that returns the I/O error (a closed pipe is an error
/// message, not a panic as with `println!`), with control characters escaped
/// (see [`terminal_safe`]).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let line = format!($($t)*);
        writeln!(std::io::stdout().lock(), "{}", $crate::util::terminal_safe(&line))?;
    }};
}
pub(crate) use outln;

static READ_WHOLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--no-mmap`: packages are read into memory at open instead of mapped.
pub fn set_no_mmap(on: bool) {
    READ_WHOLE.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn load() -> Load {
    if READ_WHOLE.load(std::sync::atomic::Ordering::Relaxed) {
        Load::Read
    } else {
        Load::Map
    }
}

/// Maps (or, with `--no-mmap`, reads) and validates `base` and its delta
/// packs.
pub fn open_model(base: &Path, deltas: &[PathBuf]) -> Result<MappedModel> {
    open_chain(base, deltas, None)
}

/// [`open_model`] where every package must be signed by `key`.
pub fn open_model_verified(base: &Path, deltas: &[PathBuf], key: &[u8; 32]) -> Result<MappedModel> {
    open_chain(base, deltas, Some(key))
}

fn open_chain(base: &Path, deltas: &[PathBuf], key: Option<&[u8; 32]>) -> Result<MappedModel> {
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
    MappedModel::open_with(base, deltas, key, load())
        .map_err(
            |e| match key.and_then(|k| failed_signature(base, deltas, k)) {
                Some(file) => anyhow::Error::new(e).context(format!("{file}: signature check")),
                None => anyhow::Error::new(e),
            },
        )
        .context(what)
}

/// Which file of a chain failed its signature check, for the error message
/// (only on the failure path: it reads the files again).
fn failed_signature(base: &Path, deltas: &[PathBuf], key: &[u8; 32]) -> Option<String> {
    std::iter::once(base)
        .chain(deltas.iter().map(PathBuf::as_path))
        .find(|p| {
            std::fs::read(p)
                .is_ok_and(|b| taskpath_format::signature::verify_package(&b, key).is_err())
        })
        .map(|p| p.display().to_string())
}

/// Bytes of every package of the chain together (what is mapped).
pub fn chain_bytes(mapped: &MappedModel) -> usize {
    (0..).map_while(|i| mapped.bytes(i)).map(<[u8]>::len).sum()
}

/// Names of every task of the model, comma-separated.
pub fn task_names(model: &Model<'_>) -> String {
    (0..model.task_count())
        .filter_map(|i| model.task(i).ok())
        .map(|t| printable(t.name).into_owned())
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

/// Name of modality `m` (or `#m` when out of range, which validation rules
/// out), as stored: it is a key of input files. Print it through [`printable`].
pub fn modality_name(model: &Model<'_>, m: usize) -> String {
    model
        .modality(m)
        .map_or_else(|| format!("#{m}"), |(n, _, _)| n.to_string())
}

/// The `model.json` equivalent of a package chain (architecture, modalities,
/// tasks), to check datasets against with `Dataset::validate_against`.
pub fn config_of(model: &Model<'_>) -> Result<ModelConfig> {
    anyhow::ensure!(
        model.arch() == "flame",
        "the package holds a {:?} model; this command reads FLAME models",
        model.arch()
    );
    let u = |key: &str| -> Result<usize> {
        match model.meta(key) {
            Some(MetaValue::U32(v)) => Ok(v as usize),
            other => anyhow::bail!("metadata {key} is {other:?}, expected a u32"),
        }
    };
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
        d_model: u("flame.d_model")?,
        heads: u("flame.heads")?,
        experts: u("flame.experts")?,
        top_k: u("flame.top_k")?,
        ffn_hidden: u("flame.ffn_hidden")?,
        rank: u("flame.rank")?,
        stages: model.components(0),
        gating: if model.meta("flame.gating") == Some(MetaValue::Str("softmax")) {
            Gating::Softmax
        } else {
            Gating::Laplace
        },
        ln_eps: match model.meta("flame.ln_eps") {
            Some(MetaValue::F32(v)) => v,
            other => anyhow::bail!("metadata flame.ln_eps is {other:?}, expected an f32"),
        },
        modalities,
        tasks,
    })
}

/// Experts per group (the widest group: FLAME has one).
pub fn expert_count(model: &Model<'_>) -> usize {
    (0..model.group_count() as u32)
        .filter_map(|g| model.group(g))
        .map(|g| g.experts as usize)
        .max()
        .unwrap_or(0)
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

/// `range` in words, e.g. `at least 1 and at most 1000000`.
pub fn describe_range<T: Display>(range: &impl RangeBounds<T>) -> String {
    let lo = match range.start_bound() {
        Bound::Included(v) => Some(format!("at least {v}")),
        Bound::Excluded(v) => Some(format!("greater than {v}")),
        Bound::Unbounded => None,
    };
    let hi = match range.end_bound() {
        Bound::Included(v) => Some(format!("at most {v}")),
        Bound::Excluded(v) => Some(format!("less than {v}")),
        Bound::Unbounded => None,
    };
    match (lo, hi) {
        (Some(l), Some(h)) => format!("{l} and {h}"),
        (Some(b), None) | (None, Some(b)) => b,
        (None, None) => "any value".into(),
    }
}

/// Checks a value computed from options (or bounded by the package) against
/// `range`; the error names the option and states the range. NaN is outside
/// every range.
pub fn check_range<T, R>(option: &str, value: T, range: R) -> Result<T>
where
    T: PartialOrd + Display,
    R: RangeBounds<T>,
{
    if range.contains(&value) {
        Ok(value)
    } else {
        bail!("{option} must be {}, got {value}", describe_range(&range))
    }
}

/// A clap value parser accepting numbers in `range` only, so an option is
/// refused before anything is opened or allocated. The message states the
/// range (clap adds the option's name); NaN and infinities fall outside every
/// finite range.
pub fn within<T, R>(
    range: R,
) -> impl Fn(&str) -> std::result::Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Send + Sync + 'static,
    T::Err: Display,
    R: RangeBounds<T> + Clone + Send + Sync + 'static,
{
    move |s: &str| {
        let want = describe_range(&range);
        let v: T = s
            .trim()
            .parse()
            .map_err(|e| format!("{e}; it must be a number {want}"))?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(format!("must be {want}"))
        }
    }
}

/// `(0, 1]`: a share of something that cannot be empty.
pub const FRACTION: (Bound<f64>, Bound<f64>) = (Bound::Excluded(0.0), Bound::Included(1.0));

/// Characters that must not reach a terminal raw: C0 and C1 controls (ESC
/// and CSI start escape sequences, CR rewrites the line) and the bidi
/// controls that reorder what is displayed.
fn unsafe_on_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every character for which `escape` holds written as `\uXXXX`
/// (valid inside a JSON string too, so JSON output stays JSON).
fn escape_where(s: &str, escape: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(&escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escape(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A name from a package or a file (task, modality, tensor, group, domain)
/// made safe to print: every control character, newlines included, is
/// escaped, so a hostile name can neither move the cursor, recolour or
/// rewrite what was printed, nor fake a line of output.
pub fn printable(name: &str) -> std::borrow::Cow<'_, str> {
    escape_where(name, unsafe_on_terminal)
}

/// A whole line (or block) of output made safe for a terminal: like
/// [`printable`] but keeping the newlines and tabs the output itself lays out.
/// Everything printed goes through this (see `outln!` and `main`), so a name
/// that reaches a message without [`printable`] still cannot emit an escape
/// sequence.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    escape_where(text, |c| c != '\n' && c != '\t' && unsafe_on_terminal(c))
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

    /// Appends a row (missing cells print empty). Cells hold names from
    /// packages, so each is made [`printable`] here, once for every table.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| printable(&c).into_owned())
                .collect(),
        );
    }

    /// Per column: whether every cell starts like a number or is a
    /// placeholder (empty, "-"), and at least one is a number.
    fn numeric(&self) -> Vec<bool> {
        let cell = |r: &Vec<String>, i: usize| r.get(i).cloned().unwrap_or_default();
        let number =
            |c: &str| c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-' || ch == '+');
        (0..self.header.len())
            .map(|i| {
                let cells = || self.rows.iter().map(|r| cell(r, i));
                cells().all(|c| c.is_empty() || c == "-" || number(&c))
                    && cells().any(|c| c != "-" && number(&c))
            })
            .collect()
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
        let numeric = self.numeric();
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

    /// The table as a Markdown pipe table (numeric columns right-aligned).
    pub fn markdown(&self) -> String {
        let n = self.header.len();
        let cell = |r: &Vec<String>, i: usize| r.get(i).cloned().unwrap_or_default();
        let row = |r: &Vec<String>| {
            let cells: Vec<String> = (0..n).map(|i| cell(r, i).replace('|', "\\|")).collect();
            format!("| {} |", cells.join(" | "))
        };
        let numeric = self.numeric();
        let rule: Vec<&str> = numeric
            .iter()
            .map(|&num| if num { "---:" } else { "---" })
            .collect();
        let mut out = vec![row(&self.header), format!("|{}|", rule.join("|"))];
        out.extend(self.rows.iter().map(row));
        out.join("\n")
    }
}

/// Option `flag`'s value `v`: a byte count, or `N%` of `whole` bytes with N
/// in (0, 100].
pub fn bytes_or_percent(flag: &str, v: &str, whole: usize) -> Result<usize> {
    match v.strip_suffix('%') {
        Some(p) => {
            let frac: f64 = p
                .trim()
                .parse()
                .with_context(|| format!("{flag} {v}: not a percentage"))?;
            anyhow::ensure!(
                frac > 0.0 && frac <= 100.0,
                "{flag} {v}: the percentage must be in (0, 100]"
            );
            Ok((whole as f64 * frac / 100.0) as usize)
        }
        None => {
            let n: usize = v
                .trim()
                .parse()
                .with_context(|| format!("{flag} {v}: not a byte count (or N%)"))?;
            check_range(flag, n, 1..=usize::MAX)
        }
    }
}

/// Bytes this process has caused to be read from storage so far (Linux
/// `/proc/self/io` `read_bytes`: page-cache misses and direct reads, not
/// page-cache hits); `None` elsewhere.
pub fn storage_read_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
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
    fn ranges_are_checked_and_stated() {
        let p = within(1..=10usize);
        assert_eq!(p("3"), Ok(3));
        assert_eq!(p("0").unwrap_err(), "must be at least 1 and at most 10");
        assert!(p("18446744073709551616")
            .unwrap_err()
            .contains("at least 1 and at most 10"));
        let f = within(FRACTION);
        assert_eq!(f("1"), Ok(1.0));
        for bad in ["0", "1.5", "1e300", "NaN", "inf", "-0.1"] {
            assert_eq!(
                f(bad).unwrap_err(),
                "must be greater than 0 and at most 1",
                "{bad}"
            );
        }
        let e = check_range("--window", 9usize, 2..=8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--window must be at least 2 and at most 8, got 9"
        );
        assert!(check_range("--x", f64::NAN, 0.0..).is_err());
    }

    #[test]
    fn control_characters_in_names_are_escaped() {
        assert_eq!(printable("task_0"), "task_0");
        assert_eq!(printable("a\x1b[2Jb\n"), "a\\u001b[2Jb\\u000a");
        assert_eq!(printable("caf\u{e9}"), "caf\u{e9}");
        assert_eq!(printable("\u{9b}31m\u{202e}"), "\\u009b31m\\u202e");
        assert_eq!(terminal_safe("a\tb\nc\rd\x07"), "a\tb\nc\\u000dd\\u0007");
        // Escaped JSON stays JSON with the same value.
        let v = serde_json::json!({"name": "x\u{9b}\u{7f}y"});
        let text = serde_json::to_string(&v).unwrap();
        let safe = terminal_safe(&text);
        assert!(!safe.chars().any(char::is_control));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
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
        assert_eq!(
            t.markdown(),
            "| name | n |\n|---|---:|\n| a | 1 |\n| long | 100 |"
        );
    }
}
