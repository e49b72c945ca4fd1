//! A [`Tracer`] that records a timeline, and its Chrome Trace Event Format
//! JSON (the format chrome://tracing, Perfetto and speedscope import).
//!
//! Spans are complete events (`"ph": "X"`) with `ts` and `dur` in
//! microseconds, nested per thread lane: inference ⊃ op ⊃ expert component.
//! Metadata events (`"ph": "M"`) name the process and lanes; counter events
//! (`"ph": "C"`) carry page-ins and cache hits on the same timeline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use taskpath_format::Op;
use taskpath_runtime::Tracer;

/// What a span is.
#[derive(Clone, Debug, PartialEq)]
pub enum SpanKind {
    /// One `Session::run`: task lane, sample index.
    Inference {
        /// Index of the input sample.
        sample: usize,
    },
    /// One op of the task's program.
    Op {
        /// Index in the program.
        index: u32,
        /// The op's kind (`Op::name`).
        op: &'static str,
        /// Weight bytes the op read.
        bytes: u64,
    },
    /// One expert component evaluated inside a `Moe` op.
    Expert {
        /// Global blob index.
        blob: u32,
        /// Expert slot and component, when the blob is an expert's.
        expert: Option<(usize, usize)>,
        /// Residency cache hit (`None` without a cache).
        hit: Option<bool>,
    },
}

/// A finished span, times in nanoseconds since the recorder's origin.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// Lane (one per task).
    pub lane: u32,
    /// Start, ns.
    pub start_ns: u64,
    /// End, ns (`>= start_ns`).
    pub end_ns: u64,
    /// What it is.
    pub kind: SpanKind,
}

/// One router decision.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteEvent {
    /// Lane (task).
    pub lane: u32,
    /// Sample index.
    pub sample: usize,
    /// Global modality index.
    pub modality: u32,
    /// Experts picked, best first.
    pub experts: Vec<u32>,
    /// Their gates.
    pub gates: Vec<f32>,
}

/// A counter sample on the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Counter {
    /// Counter name (a track in the viewer).
    pub name: &'static str,
    /// Time, ns.
    pub at_ns: u64,
    /// Series name and value.
    pub values: Vec<(&'static str, f64)>,
}

/// Records spans, routes and counters; implements [`Tracer`].
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    lane: u32,
    sample: usize,
    /// Finished spans, in end order.
    pub spans: Vec<Span>,
    /// Router decisions, in order.
    pub routes: Vec<RouteEvent>,
    /// Counter samples, in order.
    pub counters: Vec<Counter>,
    inference_start: Option<u64>,
    op: Option<(u32, &'static str, u64, u64)>,
    expert: Option<(u32, u64, Option<bool>)>,
    pending_hit: Option<(u32, bool)>,
    experts_of_blob: BTreeMap<u32, (usize, usize)>,
    /// Residency cache hits seen.
    pub hits: u64,
    /// Residency cache misses seen.
    pub misses: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder whose time origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            lane: 0,
            sample: 0,
            spans: Vec::new(),
            routes: Vec::new(),
            counters: Vec::new(),
            inference_start: None,
            op: None,
            expert: None,
            pending_hit: None,
            experts_of_blob: BTreeMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// Names expert blobs: `blob -> (expert slot, component)`.
    pub fn set_expert_blobs(&mut self, map: BTreeMap<u32, (usize, usize)>) {
        self.experts_of_blob = map;
    }

    /// Nanoseconds since the origin.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Starts an inference span on `lane` for `sample`.
    pub fn begin_inference(&mut self, lane: u32, sample: usize) {
        self.lane = lane;
        self.sample = sample;
        self.inference_start = Some(self.now_ns());
    }

    /// Ends the current inference span; returns its end time.
    pub fn end_inference(&mut self) -> u64 {
        let end = self.now_ns();
        self.close_expert(end);
        if let Some((index, op, start, bytes)) = self.op.take() {
            self.push(start, end, SpanKind::Op { index, op, bytes });
        }
        if let Some(start) = self.inference_start.take() {
            self.push(
                start,
                end,
                SpanKind::Inference {
                    sample: self.sample,
                },
            );
        }
        end
    }

    /// Adds a counter sample at `at_ns`.
    pub fn counter(&mut self, name: &'static str, at_ns: u64, values: Vec<(&'static str, f64)>) {
        self.counters.push(Counter {
            name,
            at_ns,
            values,
        });
    }

    fn push(&mut self, start_ns: u64, end_ns: u64, kind: SpanKind) {
        self.spans.push(Span {
            lane: self.lane,
            start_ns,
            end_ns: end_ns.max(start_ns),
            kind,
        });
    }

    fn close_expert(&mut self, end: u64) {
        if let Some((blob, start, hit)) = self.expert.take() {
            let expert = self.experts_of_blob.get(&blob).copied();
            self.push(start, end, SpanKind::Expert { blob, expert, hit });
        }
    }
}

impl Tracer for Recorder {
    fn op_begin(&mut self, index: u32, op: &Op) {
        self.op = Some((index, op.name(), self.now_ns(), 0));
    }
    fn op_end(&mut self, _index: u32, _op: &Op) {
        // The last expert ends, then the op: two readings, so the child ends
        // before its parent (equal ends are legal, but some importers, like
        // speedscope's, then close them in the wrong order).
        let t = self.now_ns();
        self.close_expert(t);
        let end = self.now_ns();
        if let Some((index, op, start, bytes)) = self.op.take() {
            self.push(start, end, SpanKind::Op { index, op, bytes });
        }
    }
    fn blob_read(&mut self, _blob: u32, bytes: usize) {
        if let Some(op) = &mut self.op {
            op.3 += bytes as u64;
        }
    }
    fn expert_fetch(&mut self, blob: u32) {
        // Two readings: the previous component ends before this one starts.
        // Touching siblings are legal, but importers that add `ts + dur` in
        // floating point (speedscope) can see the end after the next start.
        let end = self.now_ns();
        self.close_expert(end);
        let now = self.now_ns();
        let hit = self
            .pending_hit
            .take()
            .filter(|(b, _)| *b == blob)
            .map(|(_, h)| h);
        self.expert = Some((blob, now, hit));
    }
    fn route(&mut self, modality: u32, experts: &[u32], gates: &[f32]) {
        self.routes.push(RouteEvent {
            lane: self.lane,
            sample: self.sample,
            modality,
            experts: experts.to_vec(),
            gates: gates.to_vec(),
        });
    }
    fn cache_access(&mut self, blob: u32, hit: bool) {
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        // The session reports the access after `expert_fetch`; attach it to
        // the open expert span when it is that blob's.
        match &mut self.expert {
            Some((b, _, h)) if *b == blob => *h = Some(hit),
            _ => self.pending_hit = Some((blob, hit)),
        }
    }
}

/// Microseconds with nanosecond digits, printed exactly (no float rounding,
/// so children never end after their parents in the file).
fn us(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Inputs of [`chrome_json`] besides the recorder.
#[derive(Debug)]
pub struct TraceMeta<'a> {
    /// Process name shown by viewers.
    pub process: &'a str,
    /// Lane names (task names), by lane index.
    pub lanes: &'a [String],
    /// Modality names by global index.
    pub modalities: &'a [String],
}

/// The Chrome Trace Event Format JSON object of a recording:
/// `{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}`.
/// Spans are sorted by start (parents before children), as viewers expect.
pub fn chrome_json(rec: &Recorder, meta: &TraceMeta<'_>) -> String {
    const PID: u32 = 1;
    let mut ev: Vec<String> = Vec::new();
    ev.push(format!(
        r#"{{"name":"process_name","ph":"M","pid":{PID},"tid":0,"ts":0,"args":{{"name":{}}}}}"#,
        json_str(meta.process)
    ));
    for (i, l) in meta.lanes.iter().enumerate() {
        ev.push(format!(
            r#"{{"name":"thread_name","ph":"M","pid":{PID},"tid":{},"ts":0,"args":{{"name":{}}}}}"#,
            i + 1,
            json_str(&format!("task {l}"))
        ));
        ev.push(format!(
            r#"{{"name":"thread_sort_index","ph":"M","pid":{PID},"tid":{},"ts":0,"args":{{"sort_index":{}}}}}"#,
            i + 1,
            i + 1
        ));
    }
    let mut spans: Vec<&Span> = rec.spans.iter().collect();
    // Parents first: by start, then longest first.
    spans.sort_by(|a, b| {
        (a.lane, a.start_ns, std::cmp::Reverse(a.end_ns)).cmp(&(
            b.lane,
            b.start_ns,
            std::cmp::Reverse(b.end_ns),
        ))
    });
    // Routes by (lane, sample), to attach to the inference spans.
    let mut routes: BTreeMap<(u32, usize), Vec<&RouteEvent>> = BTreeMap::new();
    for r in &rec.routes {
        routes.entry((r.lane, r.sample)).or_default().push(r);
    }
    let modality = |m: u32| {
        meta.modalities
            .get(m as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{m}"))
    };
    for s in spans {
        let (name, cat, args) = match &s.kind {
            SpanKind::Inference { sample } => {
                let mut a = format!(r#"{{"sample":{sample}"#);
                for r in routes.get(&(s.lane, *sample)).into_iter().flatten() {
                    let gates: Vec<String> = r.gates.iter().map(|g| format!("{g:.4}")).collect();
                    let _ = write!(
                        a,
                        r#",{}:{{"experts":{:?},"gates":[{}]}}"#,
                        json_str(&format!("route {}", modality(r.modality))),
                        r.experts,
                        gates.join(",")
                    );
                }
                a.push('}');
                (
                    format!(
                        "inference {}",
                        meta.lanes.get(s.lane as usize).map_or("", String::as_str)
                    ),
                    "inference",
                    a,
                )
            }
            SpanKind::Op { index, op, bytes } => (
                op.to_string(),
                "op",
                format!(r#"{{"index":{index},"weight_bytes":{bytes}}}"#),
            ),
            SpanKind::Expert { blob, expert, hit } => {
                let name = match expert {
                    Some((e, c)) => format!("expert {e} c{c}"),
                    None => format!("blob {blob}"),
                };
                let hit = hit.map_or("null", |h| if h { "true" } else { "false" });
                (
                    name,
                    "expert",
                    format!(r#"{{"blob":{blob},"cache_hit":{hit}}}"#),
                )
            }
        };
        ev.push(format!(
            r#"{{"name":{},"cat":"{cat}","ph":"X","pid":{PID},"tid":{},"ts":{},"dur":{},"args":{args}}}"#,
            json_str(&name),
            s.lane + 1,
            us(s.start_ns),
            us(s.end_ns - s.start_ns)
        ));
    }
    for c in &rec.counters {
        let vals: Vec<String> = c
            .values
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        ev.push(format!(
            r#"{{"name":{},"ph":"C","pid":{PID},"tid":0,"ts":{},"args":{{{}}}}}"#,
            json_str(c.name),
            us(c.at_ns),
            vals.join(",")
        ));
    }
    let mut out = String::from("{\"traceEvents\":[\n");
    out.push_str(&ev.join(",\n"));
    out.push_str(
        "\n],\"displayTimeUnit\":\"ns\",\"otherData\":{\"producer\":\"taskpath profile\"}}\n",
    );
    out
}
