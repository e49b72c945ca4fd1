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
