//! Shared by the test files that write packages by hand (no packer).

use taskpath_format::records::*;
use taskpath_format::writer::PackageWriter;

/// A writer holding the smallest metadata a package validates with: D = 4,
/// one expert, one modality "m" of 1 x 1, and one 16-byte f32 head blob;
/// callers add tasks, slots and ops.
pub fn one_head_writer() -> PackageWriter {
    let mut w = PackageWriter::default();
    w.hparams = HParams {
        d_model: 4,
        heads: 1,
        experts: 1,
        top_k: 1,
        ffn_hidden: 4,
        stages: 1,
        ln_eps: 1e-5,
        ..Default::default()
    };
    let (mo, ml) = w.string("m");
    w.modalities.push(ModalityRec {
        name_off: mo,
        name_len: ml,
        tokens: 1,
        features: 1,
    });
    w.blobs.push((
        BlobRec {
            kind: blob_kind::HEAD,
            format: 1,
            modality: NONE16,
            expert: NONE16,
            component: NONE16,
            task: NONE16,
            ..Default::default()
        },
        vec![0u8; 16],
    ));
    w
}
