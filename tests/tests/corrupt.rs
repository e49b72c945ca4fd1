//! Corrupt, truncated and hostile packages: every header field and table
//! field mutated on its own (with checksums re-sealed so validation, not the
//! checksum, has to catch it) gets an error naming that field, and no byte
//! pattern panics the reader, session creation or `run`.

use taskpath_checkpoint::{random_checkpoint, random_inputs, RandomSpec, SplitMix64};
use taskpath_format::{FormatError, Package};
use taskpath_pack::{pack, PackOptions};
use taskpath_runtime::{AlignedArena, Error, Model, Session};

fn package() -> Vec<u8> {
    pack(
        &random_checkpoint(&RandomSpec::small(16, 2, 5, 2, 2), 5),
        &PackOptions::default(),
    )
    .unwrap()
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn rd64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn wr32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn wr64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes the metadata and header checksums after a deliberate edit.
fn reseal(b: &mut [u8]) {
    let data_off = rd64(b, 48) as usize;
    if data_off >= 128 && data_off <= b.len() {
        let m = xxhash_rust::xxh3::xxh3_64(&b[128..data_off]);
        wr64(b, 64, m);
    }
    let h = xxhash_rust::xxh3::xxh3_64(&b[..120]);
    wr64(b, 120, h);
}

/// Absolute offset of the section of `kind`.
fn section(b: &[u8], kind: u32) -> (usize, usize) {
    let (st, n) = (rd64(b, 32) as usize, rd32(b, 40) as usize);
    (0..n)
        .map(|i| st + 24 * i)
        .find(|&e| rd32(b, e) == kind)
        .map(|e| (rd64(b, e + 8) as usize, rd64(b, e + 16) as usize))
        .expect("section present")
}

/// Opens, builds a session for every task and runs it; must never panic.
fn exercise(bytes: &[u8]) -> Result<(), Error> {
    let a = AlignedArena::from_bytes(bytes);
    let model = Model::from_bytes(a.as_slice())?;
    static CK: std::sync::OnceLock<taskpath_checkpoint::Checkpoint> = std::sync::OnceLock::new();
    let ck = CK.get_or_init(|| random_checkpoint(&RandomSpec::small(16, 2, 5, 2, 2), 5));
    let mut rng = SplitMix64::new(1);
    for t in 0..model.task_count() {
        let info = model.task(t)?;
        let mut arena = AlignedArena::new(info.arena_bytes.min(1 << 24));
        let Ok(mut s) = Session::new(&model, t, arena.as_mut_slice()) else {
            continue;
        };
        let x = random_inputs(&ck.config, t.min(ck.config.tasks.len() - 1), &mut rng);
        let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        let mut out = vec![0f32; info.outputs];
        let _ = s.run(&refs, &mut out);
    }
    Ok(())
}

fn format_err(bytes: &[u8]) -> FormatError {
    let a = AlignedArena::from_bytes(bytes);
    match Package::parse(a.as_slice()) {
        Err(e) => e,
        Ok(_) => panic!("mutation was accepted"),
    }
}

#[test]
fn pristine_package_is_accepted() {
    let b = package();
    exercise(&b).unwrap();
    let a = AlignedArena::from_bytes(&b);
    Model::from_bytes(a.as_slice()).unwrap().verify().unwrap();
}

#[test]
fn header_fields_each_get_their_own_error() {
    let b = package();
    let len = b.len() as u64;
    // (offset, width, value, expected field)
    let cases: &[(usize, usize, u64, &str)] = &[
        (0, 8, 0x4b50_5489_0000_0000, "header.magic"),
        (8, 2, 3, "header.version_major"),
        (8, 2, 1, "header.version_major"),
        (12, 4, 64, "header.header_len"),
        (16, 4, 2, "header.flags"),
        (20, 4, 11, "header.align_log2"),
        (20, 4, 40, "header.align_log2"),
        (24, 8, len + 1, "header.file_len"),
        (24, 8, u64::MAX, "header.file_len"),
        (32, 8, 1 << 40, "header.section_table_off"),
        (32, 8, 8, "header.section_table_off"),
        (40, 4, 65, "header.section_count"),
        (48, 8, 4097, "header.data_off"),
        (56, 8, 3, "header.data_len"),
        (56, 8, u64::MAX, "header.data_len"),
        (64, 8, 12345, "metadata"),
        (72, 8, 99, "header.base_id"),
        (96, 8, 1, "header.reserved"),
    ];
    for &(at, w, v, field) in cases {
        let mut m = b.clone();
        match w {
            2 => m[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes()),
            4 => wr32(&mut m, at, v as u32),
            _ => wr64(&mut m, at, v),
        }
        if field != "metadata" {
            reseal(&mut m);
        } else {
            let h = xxhash_rust::xxh3::xxh3_64(&m[..120]);
            wr64(&mut m, 120, h);
        }
        let e = format_err(&m);
        assert_eq!(e.field(), field, "header+{at} = {v}: got {e}");
        assert!(!e.to_string().is_empty());
    }
    // Any unsealed flip after the version is a header checksum error (the
    // version is read first so that a future major version is named as such).
    for at in 10..120 {
        let mut m = b.clone();
        m[at] ^= 0x10;
        let e = format_err(&m);
        assert!(
            matches!(
                e,
                FormatError::Checksum {
                    field: "header",
                    ..
                }
            ),
            "byte {at}: {e}"
        );
    }
}

#[test]
fn table_fields_each_get_their_own_error() {
    use taskpath_format::records::section as s;
    let b = package();
    // (section kind, offset in first record, width, value, expected field)
    let cases: &[(u32, usize, usize, u64, &str)] = &[
        (s::MODEL, 0, 4, 1 << 30, "model.arch"),
        (s::MODEL, 4, 4, 0, "model.arch"),
        (s::MODEL, 8, 4, 1, "model.tensor_base"),
        (s::MODEL, 24, 4, 1, "model.group_base"),
        (s::MODEL, 28, 4, 1, "model.reserved"),
        (s::METADATA, 0, 4, 1 << 30, "metadata.key"),
        (s::METADATA, 8, 4, 99, "metadata.vtype"),
        (s::METADATA, 12, 4, 1, "metadata.reserved"),
        (s::METADATA, 20, 4, 1, "metadata.value"),
        (s::MODALITIES, 0, 4, 1 << 30, "modalities.name"),
        (s::MODALITIES, 8, 4, 0, "modalities.tokens"),
        (s::MODALITIES, 12, 4, 1 << 20, "modalities.features"),
        (s::MODALITIES, 16, 4, 1, "modalities.features"),
        (s::MODALITIES, 16, 4, 9, "modalities.kind"),
        (s::MODALITIES, 20, 4, 1, "modalities.reserved"),
        (s::TENSORS, 0, 4, u64::from(u32::MAX), "tensors.name"),
        (s::TENSORS, 8, 4, 9999, "tensors.blob"),
        (s::TENSORS, 12, 2, 99, "tensors.format"),
        (s::TENSORS, 12, 2, 0, "tensors.format"),
        (s::TENSORS, 14, 2, 5, "tensors.layout"),
        (s::TENSORS, 16, 4, 4, "tensors.offset"),
        (s::TENSORS, 16, 4, 1 << 30, "tensors.offset"),
        (s::TENSORS, 20, 4, 0, "tensors.rows"),
        (s::TENSORS, 20, 4, u64::from(u32::MAX), "tensors.bytes"),
        (s::TENSORS, 36, 4, 3, "tensors.bytes"),
        (s::TENSORS, 36, 4, u64::from(u32::MAX), "tensors.bytes"),
        (s::TENSORS, 44, 4, 1, "tensors.reserved"),
        (s::GROUPS, 0, 4, 1 << 30, "groups.name"),
        (s::GROUPS, 8, 4, 0, "groups.experts"),
        (s::GROUPS, 8, 4, 257, "groups.experts"),
        (s::GROUPS, 12, 4, 0, "groups.top_k"),
        (s::GROUPS, 12, 4, 6, "groups.top_k"),
        (s::GROUPS, 16, 4, 9, "groups.kind"),
        (s::GROUPS, 20, 4, 1, "groups.reserved"),
        (s::EXPERTS, 0, 4, 99, "experts.group"),
        (s::EXPERTS, 4, 2, 99, "experts.expert"),
        (s::EXPERTS, 6, 2, 999, "experts.component"),
        (s::EXPERTS, 8, 4, 12345, "experts.blob"),
        (s::EXPERTS, 12, 4, 0, "experts.tensor_start"),
        (
            s::EXPERTS,
            12,
            4,
            u64::from(u32::MAX),
            "experts.tensor_start",
        ),
        (s::EXPERTS, 16, 4, 3, "experts.tensor_count"),
        (s::EXPERTS, 20, 4, 1, "experts.reserved"),
        (s::COMPONENTS, 0, 4, 99, "components.first_expert"),
        (s::COMPONENTS, 8, 4, 1, "components.first_expert"),
        (s::COMPONENTS, 12, 4, 1, "components.reserved"),
        (s::TASKS, 8, 4, 999, "tasks.stage"),
        (s::TASKS, 12, 4, 0, "tasks.outputs"),
        (s::TASKS, 16, 4, 0, "tasks.modality_mask"),
        (s::TASKS, 16, 4, 1 << 5, "tasks.modality_mask"),
        (s::TASKS, 24, 4, u64::from(u32::MAX), "tasks.program_len"),
        (s::TASKS, 24, 4, 0, "tasks.program_len"),
        (s::TASKS, 32, 4, 1 << 20, "tasks.slot_count"),
        (s::TASKS, 40, 4, 1 << 20, "tasks.path_len"),
        (s::TASKS, 44, 4, 1 << 20, "tasks.output_slot"),
        (s::TASKS, 48, 4, 1 << 20, "tasks.plan_tensors"),
        (s::TASKS, 52, 4, 1, "tasks.reserved"),
        (s::TASKS, 56, 8, 4, "tasks.slot_bytes"),
        (s::TASKS, 56, 8, 3, "tasks.slot_bytes"),
        // Well-formed but far more than the slots use: every session would
        // allocate it (issue 17's 4 GiB arena).
        (s::TASKS, 56, 8, 0xFFFF_FFF0, "tasks.slot_bytes"),
        (s::PATHS, 0, 4, 99, "paths.task"),
        (s::PATHS, 4, 4, 99, "paths.group"),
        (s::PATHS, 8, 4, 99, "paths.router"),
        (s::PATHS, 12, 4, 1, "paths.reserved"),
        (s::PATHS, 16, 8, 0, "paths.mask"),
        (s::PATHS, 16, 8, 1 << 40, "paths.mask"),
        (s::PATHS, 40, 8, 1, "paths.mask"),
        (s::PROGRAM, 0, 2, 99, "program.opcode"),
        (s::PROGRAM, 2, 2, 1, "program.flags"),
        (s::PROGRAM, 8, 4, u64::from(u32::MAX), "program.args"),
        (s::PROGRAM, 44, 4, 1, "program.args"),
        (s::SLOTS, 0, 4, u64::from(u32::MAX), "tasks.slot_bytes"),
        (s::SLOTS, 8, 4, 9, "slots.kind"),
        (s::BLOBS, 0, 8, 100, "blobs.offset"),
        (s::BLOBS, 8, 8, 1 << 40, "blobs.len"),
        (s::BLOBS, 8, 8, u64::MAX, "blobs.len"),
        (s::BLOBS, 24, 1, 9, "blobs.kind"),
        (s::BLOBS, 25, 1, 99, "blobs.format"),
        (s::BLOBS, 26, 2, 1, "blobs.reserved"),
        (s::BLOBS, 28, 2, 0, "blobs.group"),
        (s::BLOBS, 34, 2, 99, "blobs.owner"),
    ];
    for &(kind, at, w, v, field) in cases {
        eprintln!("case: section {kind} +{at} = {v} ({field})");
        let mut m = b.clone();
        let (off, _) = section(&m, kind);
        let at = off + at;
        match w {
            1 => m[at] = v as u8,
            2 => m[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes()),
            4 => wr32(&mut m, at, v as u32),
            _ => wr64(&mut m, at, v),
        }
        reseal(&mut m);
        let e = format_err(&m);
        assert_eq!(
            e.field(),
            field,
            "section {kind} +{} = {v}: got {e}",
            at - off
        );
    }
}

/// A package of the previous major version gets an error naming both
/// versions and what to do.
#[test]
fn a_package_of_the_previous_version_says_repack() {
    let mut m = package();
    m[8..10].copy_from_slice(&1u16.to_le_bytes());
    reseal(&mut m);
    let e = format_err(&m);
    assert_eq!(
        e,
        FormatError::Version {
            found: 1,
            supported: 2
        }
    );
    let msg = e.to_string();
    for want in ["version 1", "version 2", "repack", "taskpath pack"] {
        assert!(msg.contains(want), "{msg}");
    }
}

#[test]
fn section_table_entries_are_checked() {
    let b = package();
    let st = rd64(&b, 32) as usize;
    let data_off = rd64(&b, 48);
    // Offset into the header, past the metadata, overlapping the section table,
    // a duplicate kind, an unknown required kind, and unknown flags.
    let cases = [
        (st + 8, 8, 16u64, "sections.offset"),
        (st + 8, 8, data_off, "sections.len"),
        (st + 8, 8, st as u64, "sections.offset"),
        (st + 24, 4, 1, "sections.kind"),
        (st + 24, 4, 77, "sections.kind"),
        (st + 4, 4, 6, "sections.flags"),
    ];
    for (at, w, v, field) in cases {
        let mut m = b.clone();
        if w == 4 {
            wr32(&mut m, at, v as u32)
        } else {
            wr64(&mut m, at, v)
        }
        reseal(&mut m);
        let e = format_err(&m);
        assert_eq!(e.field(), field, "section table +{} = {v}: {e}", at - st);
    }
    // A required section missing: rename the tasks section to an unknown, optional kind.
    let mut m = b.clone();
    let n = rd32(&m, 40) as usize;
    let e = (0..n)
        .map(|i| st + 24 * i)
        .find(|&e| rd32(&m, e) == 6)
        .unwrap();
    wr32(&mut m, e, 200);
    wr32(&mut m, e + 4, 0);
    reseal(&mut m);
    assert!(matches!(
        format_err(&m),
        FormatError::MissingSection { section: "tasks" }
    ));
}

#[test]
fn blob_corruption_is_caught_by_checksum_and_names_the_blob() {
    let b = package();
    let a = AlignedArena::from_bytes(&b);
    let p = Package::parse(a.as_slice()).unwrap();
    for i in [0usize, 3, p.blobs().len() - 1] {
        let at = p.blob_file_offset(i).unwrap() as usize + 5;
        let mut m = b.clone();
        m[at] ^= 1;
        let a = AlignedArena::from_bytes(&m);
        // Metadata is intact, so the model opens; verification names the blob.
        let model = Model::from_bytes(a.as_slice()).unwrap();
        let e = model.verify().unwrap_err();
        assert!(
            matches!(e, Error::Format(FormatError::Checksum { field: "blobs", index: Some(x), .. }) if x as usize == i),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("blobs[{i}]")), "{e}");
        // Exactly the sessions whose path holds the blob refuse to start.
        for t in 0..model.task_count() {
            let info = model.task(t).unwrap();
            let on_path = model.path_blobs(&info).any(|x| x.index as usize == i);
            let mut arena = AlignedArena::new(info.arena_bytes);
            let r = Session::new(&model, t, arena.as_mut_slice());
            assert_eq!(r.is_err(), on_path, "task {t}, blob {i}");
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    let b = package();
    let data_off = rd64(&b, 48) as usize;
    let step = 1;
    for len in (0..data_off + 64)
        .step_by(step)
        .chain((data_off..b.len()).step_by(509))
    {
        let a = AlignedArena::from_bytes(&b[..len]);
        let e = Package::parse(a.as_slice()).unwrap_err();
        assert!(
            matches!(e, FormatError::Truncated { .. } | FormatError::BadMagic),
            "len {len}: {e}"
        );
    }
}

#[test]
fn no_word_of_the_metadata_panics_anything() {
    // Every 32-bit word of the metadata set to hostile values, resealed.
    let b = package();
    let data_off = rd64(&b, 48) as usize;
    let mut accepted = 0;
    for at in (128..data_off).step_by(4) {
        let orig = rd32(&b, at);
        for v in [
            0,
            1,
            orig.wrapping_add(1),
            orig.wrapping_sub(1),
            u32::MAX,
            0x8000_0000,
            orig ^ 0x100,
        ] {
            let mut m = b.clone();
            wr32(&mut m, at, v);
            reseal(&mut m);
            if exercise(&m).is_ok() {
                accepted += 1;
            }
        }
    }
    // Names and float weights-free fields can legitimately change; most must not pass.
    assert!(accepted > 0);
}

#[test]
fn misaligned_bytes_are_refused() {
    let b = package();
    let mut a = AlignedArena::new(b.len() + 4);
    a.as_mut_slice()[4..].copy_from_slice(&b);
    let e = Package::parse(&a.as_slice()[4..]).unwrap_err();
    assert!(matches!(e, FormatError::Misaligned { required: 16 }));
}

/// Outputs of every task on fixed inputs, or the first error building a
/// session (which is where a package's meaning is checked).
fn outputs(bytes: &[u8]) -> Result<Vec<Vec<u32>>, Error> {
    let a = AlignedArena::from_bytes(bytes);
    let model = Model::from_bytes(a.as_slice())?;
    // What `verify` and the CLI's open check (sessions rely on it).
    taskpath_runtime::plan::check_all(&model)?;
    let ck = random_checkpoint(&RandomSpec::small(16, 2, 5, 2, 2), 5);
    let mut rng = SplitMix64::new(7);
    let mut all = Vec::new();
    for t in 0..model.task_count() {
        let info = model.task(t)?;
        let mut arena = AlignedArena::new(info.arena_bytes);
        let mut s = Session::new(&model, t, arena.as_mut_slice())?;
        let x = random_inputs(&ck.config, t.min(ck.config.tasks.len() - 1), &mut rng);
        let refs: Vec<&[f32]> = x.iter().map(|v| v.as_slice()).collect();
        let mut out = vec![0f32; info.outputs];
        s.run(&refs, &mut out)?;
        all.push(out.iter().map(|v| v.to_bits()).collect());
    }
    Ok(all)
}

/// Semantic mutations that pass every checksum (issue 17): each slot moved
/// onto another slot's bytes, re-sealed. The meaning check (`check_all`,
/// which `verify` and every CLI command run on open) must refuse every alias
/// that changes what the package computes:
/// an accepted mutation computes exactly the pristine outputs (the planner
/// reuses bytes of slots whose live ranges do not meet, so some moves are
/// harmless), and at least the aliases of slots live at once are refused.
#[test]
fn aliased_slots_are_refused_or_harmless() {
    use taskpath_format::records::section as s;
    let b = package();
    let want = outputs(&b).expect("pristine package runs");
    let (off, len) = section(&b, s::SLOTS);
    let n = len / 12;
    let (mut refused, mut harmless) = (0, 0);
    for k in 0..n {
        for j in 0..n {
            let (ok_, oj) = (off + 12 * k, off + 12 * j);
            if k == j || rd32(&b, ok_) == rd32(&b, oj) {
                continue;
            }
            let mut m = b.clone();
            // Slot k starts where slot j does (one that would then pass the
            // end of the slots region is refused by the reader).
            wr32(&mut m, ok_, rd32(&b, oj));
            reseal(&mut m);
            match outputs(&m) {
                Err(_) => refused += 1,
                Ok(got) => {
                    assert_eq!(
                        got, want,
                        "slot {k} moved onto slot {j}: accepted but computes something else"
                    );
                    harmless += 1;
                }
            }
        }
    }
    eprintln!("slot aliases: {refused} refused, {harmless} accepted and harmless");
    assert!(refused > 0, "no alias was refused");
}

/// Semantic rewrites of the op program that pass every checksum (issue 17):
/// each `Moe` replaced by a `Copy` of its input, each `Route` by a `Copy` of
/// its logits, each attention op over zero tokens, and every task's program
/// cut short, re-encoded and re-sealed. Each computes plausible numbers if it
/// runs; the meaning check must refuse every one before the first run.
#[test]
fn rewritten_programs_are_refused() {
    use taskpath_format::records::{section as s, OpRec};
    use taskpath_format::{Op, Record};
    let b = package();
    outputs(&b).expect("pristine package runs");
    let (off, len) = section(&b, s::PROGRAM);
    let rewrite = |i: usize, op: Op| {
        let mut m = b.clone();
        let mut rec = Vec::new();
        op.encode().encode(&mut rec);
        m[off + i * OpRec::SIZE..][..OpRec::SIZE].copy_from_slice(&rec);
        reseal(&mut m);
        m
    };
    let mut mutants = Vec::new();
    for i in 0..len / OpRec::SIZE {
        let rec = OpRec::decode(&b[off + i * OpRec::SIZE..][..OpRec::SIZE]);
        let copy = |src, dst, len| Op::Copy {
            src,
            src_offset: 0,
            dst,
            dst_offset: 0,
            len,
        };
        match Op::decode(&rec, 0).expect("packed op decodes") {
            Op::Moe { u, out, width, .. } => {
                mutants.push((
                    format!("op {i}: Moe -> Copy"),
                    rewrite(i, copy(u, out, width)),
                ));
            }
            Op::Route { logits, route, .. } => {
                mutants.push((
                    format!("op {i}: Route -> Copy"),
                    rewrite(i, copy(logits, route, 1)),
                ));
            }
            Op::Attention {
                q,
                k,
                v,
                out,
                width,
                heads,
                scratch,
                ..
            } => {
                let op = Op::Attention {
                    q,
                    k,
                    v,
                    out,
                    tokens: 0,
                    width,
                    heads,
                    scratch,
                };
                mutants.push((format!("op {i}: Attention over 0 tokens"), rewrite(i, op)));
            }
            Op::AttnPool {
                u,
                query,
                out,
                scratch,
                ..
            } => {
                let op = Op::AttnPool {
                    u,
                    tokens: 0,
                    query,
                    out,
                    scratch,
                };
                mutants.push((format!("op {i}: AttnPool over 0 tokens"), rewrite(i, op)));
            }
            _ => {}
        }
    }
    // program_len of every task cut to each shorter length (0 included).
    let (toff, tlen) = section(&b, s::TASKS);
    for t in 0..tlen / 64 {
        let at = toff + 64 * t + 24;
        for n in 0..rd32(&b, at) {
            let mut m = b.clone();
            wr32(&mut m, at, n);
            reseal(&mut m);
            mutants.push((format!("task {t}: program cut to {n} ops"), m));
        }
    }
    let kinds = ["Moe", "Route", "Attention", "AttnPool", "cut"];
    for k in kinds {
        assert!(mutants.iter().any(|(w, _)| w.contains(k)), "no {k} mutant");
    }
    for (what, m) in &mutants {
        assert!(outputs(m).is_err(), "{what}: accepted");
    }
    eprintln!("program rewrites: {} tried, all refused", mutants.len());
}

/// A package read whole (`Load::Read`, the CLI's `--no-mmap`) no longer
/// depends on its file: truncated and then overwritten with other bytes
/// after the open (which would be SIGBUS and garbage through a mapping),
/// every task still computes what a fresh open of the pristine bytes does.
#[test]
fn a_package_read_whole_survives_its_file_being_truncated_and_rewritten() {
    use taskpath_runtime::{Load, MappedModel};
    let b = package();
    let want = outputs(&b).expect("pristine package runs");
    let dir = std::env::temp_dir().join(format!("taskpath-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.tpk");
    std::fs::write(&path, &b).unwrap();
    let read = MappedModel::open_with(&path, &[] as &[&std::path::Path], None, Load::Read).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(0).unwrap();
    std::fs::write(&path, vec![0xA5u8; b.len()]).unwrap();
    let got = outputs(read.bytes(0).unwrap()).expect("runs from its own copy");
    assert_eq!(got, want);
    std::fs::remove_dir_all(&dir).unwrap();
}
