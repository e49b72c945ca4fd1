//! The packer's exact rewrites (docs/FORMAT.md, "Exact rewrites") against the
//! literal lowering of the same checkpoint: every bundled task on its whole
//! test set, f32 and i4g32 experts, and a stage-1 base with stage-2/3 delta
//! packs. The rewrites remove work whose result is known exactly (a softmax
//! over one key or one token is 1), so the tolerance is zero: outputs must
//! be bit-identical.

use std::path::{Path, PathBuf};

use taskpath_checkpoint::{Checkpoint, Dataset};
use taskpath_format::Op;
use taskpath_pack::{pack, pack_delta, PackOptions};
use taskpath_runtime::{AlignedArena, Model, Session, WeightFormat};

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/reference")
}

fn chain(packages: &[AlignedArena]) -> Model<'_> {
    let mut m = Model::from_bytes(packages[0].as_slice()).unwrap();
    for d in &packages[1..] {
        m = m.with_delta(d.as_slice()).unwrap();
    }
    m
}

/// Per task: (name, op count, output bits over the task's test set).
fn run_all(model: &Model<'_>) -> Vec<(String, usize, Vec<u32>)> {
    (0..model.task_count())
        .map(|t| {
            let info = model.task(t).unwrap();
            let ops = model.ops(&info).count();
            let ds =
                Dataset::load(&reference().join(format!("data/{}.test.json", info.name))).unwrap();
            let mut arena = AlignedArena::new(info.arena_bytes);
            let mut s = Session::new(model, t, arena.as_mut_slice()).unwrap();
            let mut out = vec![0f32; info.outputs];
            let mut bits = Vec::new();
            for x in &ds.samples {
                let refs: Vec<&[f32]> = x.inputs.iter().map(Vec::as_slice).collect();
                s.run(&refs, &mut out).unwrap();
                bits.extend(out.iter().map(|v| v.to_bits()));
            }
            (info.name.to_string(), ops, bits)
        })
        .collect()
}

/// Packs stage 3 (or the stage-1/2/3 chain) with `opts`, literal or not.
fn packages(delta_chain: bool, opts: &PackOptions) -> Vec<AlignedArena> {
    let s3 = Checkpoint::load(&reference().join("stage3")).unwrap();
    if !delta_chain {
        return vec![AlignedArena::from_bytes(&pack(&s3, opts).unwrap())];
    }
    let s1 = Checkpoint::load(&reference().join("stage1")).unwrap();
    let s2 = Checkpoint::load(&reference().join("stage2")).unwrap();
    let mut out = vec![AlignedArena::from_bytes(&pack(&s1, opts).unwrap())];
    let d2 = pack_delta(&s2, &chain(&out), opts).unwrap();
    out.push(AlignedArena::from_bytes(&d2));
    let d3 = pack_delta(&s3, &chain(&out), opts).unwrap();
    out.push(AlignedArena::from_bytes(&d3));
    out
}

fn compare(delta_chain: bool, quant: Option<WeightFormat>) {
    let opts = |literal| PackOptions {
        quant,
        literal,
        ..Default::default()
    };
    let literal = packages(delta_chain, &opts(true));
    let rewritten = packages(delta_chain, &opts(false));
    let (want, got) = (run_all(&chain(&literal)), run_all(&chain(&rewritten)));
    assert_eq!(want.len(), got.len());
    let mut fewer = Vec::new();
    for ((name, ops_lit, bits_lit), (_, ops_rw, bits_rw)) in want.iter().zip(&got) {
        let differing = bits_lit.iter().zip(bits_rw).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing,
            0,
            "{name}: {differing} of {} output values differ from the literal lowering",
            bits_lit.len()
        );
        assert!(
            ops_rw <= ops_lit,
            "{name}: {ops_rw} ops > literal {ops_lit}"
        );
        if ops_rw < ops_lit {
            fewer.push(name.as_str());
        }
    }
    // The all-single-token tasks must actually have been rewritten.
    for task in ["WDBC", "DIAB"] {
        assert!(
            fewer.contains(&task),
            "{task} was not rewritten (rewritten tasks: {fewer:?})"
        );
    }
}

#[test]
fn rewritten_programs_match_the_literal_lowering_bit_for_bit() {
    compare(false, None);
}

#[test]
fn rewritten_quantized_programs_match_the_literal_lowering_bit_for_bit() {
    compare(false, Some(WeightFormat::I4G32));
}

#[test]
fn rewritten_delta_chains_match_the_literal_lowering_bit_for_bit() {
    compare(true, None);
}

/// No single-token modality keeps a q or k projection or an attention core.
#[test]
fn single_token_modalities_have_no_attention_core() {
    let pkg = packages(false, &PackOptions::default());
    let model = chain(&pkg);
    for t in 0..model.task_count() {
        let info = model.task(t).unwrap();
        let single = info.modalities().all(|m| model.modality(m).unwrap().1 == 1);
        let cores = model
            .ops(&info)
            .filter(|op| matches!(op, Op::Attention { .. } | Op::AttnPool { .. }))
            .count();
        if single {
            assert_eq!(cores, 0, "{}: {cores} attention ops left", info.name);
        } else {
            assert!(cores > 0, "{}", info.name);
        }
    }
}
