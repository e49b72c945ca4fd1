//! Shared by the test files that write packages by hand (no packer).

use taskpath_format::records::*;
use taskpath_format::writer::PackageWriter;

/// A writer holding the smallest metadata a package validates with: arch
/// "flame", one expert group of one expert, one modality "m" of 1 x 1, one
/// 16-byte f32 head blob and one op (a zero-length `Copy` of slot 0, which
/// every task may share as its program); callers add tasks, slots and paths.
pub fn one_head_writer() -> PackageWriter {
    let mut w = PackageWriter::default();
    w.arch("flame");
    let (go, gl) = w.string("experts");
    w.groups.push(GroupRec {
        name_off: go,
        name_len: gl,
        experts: 1,
        top_k: 1,
        kind: taskpath_format::ExpertKind::ConvFfn as u32,
        ..Default::default()
    });
    let (mo, ml) = w.string("m");
    w.modalities.push(ModalityRec {
        name_off: mo,
        name_len: ml,
        tokens: 1,
        features: 1,
        ..Default::default()
    });
    w.blobs.push((
        BlobRec {
            kind: blob_kind::HEAD,
            format: 1,
            group: NONE16,
            expert: NONE16,
            component: NONE16,
            owner: NONE16,
            ..Default::default()
        },
        vec![0u8; 16],
    ));
    let s0 = taskpath_format::SlotId(0);
    w.program.push(
        taskpath_format::Op::Copy {
            src: s0,
            src_offset: 0,
            dst: s0,
            dst_offset: 0,
            len: 0,
        }
        .encode(),
    );
    w
}

/// The path entry of task `task`: group 0, router 0, expert 0.
pub fn one_expert_path(task: u32) -> PathRec {
    PathRec {
        task,
        mask0: 1,
        ..Default::default()
    }
}

/// Adds task "t" (one modality, two outputs, one path entry, output slot 1)
/// whose program is the `program_len` ops from index 1 and whose slots are
/// the first `slot_count` records.
pub fn one_task(w: &mut PackageWriter, program_len: u32, slot_count: u32, slot_bytes: u64) {
    let (no, nl) = w.string("t");
    w.tasks.push(TaskRec {
        name_off: no,
        name_len: nl,
        outputs: 2,
        modality_mask: 1,
        program_len,
        slot_count,
        path_len: 1,
        output_slot: 1,
        program_start: 1,
        slot_bytes,
        ..Default::default()
    });
    w.paths.push(one_expert_path(0));
}
