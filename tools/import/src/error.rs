//! The one error type of the crate. Every variant names what is wrong and
//! where: the file, the field or tensor, and the numbers that disagree.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong while importing a model.
///
/// No input, however malformed, makes this crate panic: it returns one of these.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error while opening, reading or mapping a file.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The path is neither a Hugging Face checkpoint directory (with a
    /// `config.json`) nor a file that starts with the GGUF magic.
    NotAModel {
        /// The path given.
        path: PathBuf,
        /// What was found there instead.
        detail: String,
    },
    /// A file ends before a field it declares.
    Truncated {
        /// The file (or the name given to an in-memory buffer).
        file: String,
        /// The field that does not fit.
        field: String,
        /// The byte offset one past the end of the field.
        needed: u64,
        /// The length of the file.
        len: u64,
    },
    /// A header or metadata field has a value the format does not allow
    /// (bad magic, version, JSON, offsets that overlap, sizes that overflow...).
    Format {
        /// The file.
        file: String,
        /// The field.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A configuration key (config.json or GGUF metadata) is missing or has a
    /// value this importer cannot use.
    Config {
        /// The file the key was read from.
        file: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The model's architecture is not one of the supported ones.
    UnknownArchitecture {
        /// The architecture name found in the file.
        found: String,
        /// The names that are supported, in the file's own vocabulary.
        supported: String,
    },
    /// A tensor the configuration requires is absent.
    MissingTensor {
        /// The neutral name (e.g. `blk.0.expert.3.gate`).
        tensor: String,
        /// The name looked for in the source file(s).
        source_name: String,
        /// The file or directory searched.
        file: String,
    },
    /// A tensor's shape disagrees with the shape the configuration implies.
    ShapeMismatch {
        /// The neutral name.
        tensor: String,
        /// The name in the source file.
        source_name: String,
        /// The shape the configuration implies, in the source's own convention.
        expected: Vec<u64>,
        /// The shape in the file.
        found: Vec<u64>,
    },
    /// A tensor is stored in an element type this importer does not handle.
    UnsupportedType {
        /// The tensor (source name).
        tensor: String,
        /// The element type's name (e.g. `Q5_K`, `I64`).
        dtype: String,
    },
    /// The tokenizer's vocabulary is larger than the model's embedding table.
    VocabMismatch {
        /// Number of ids in the tokenizer.
        vocab: usize,
        /// Rows of the token embedding.
        embedding_rows: usize,
    },
    /// The tokenizer could not be built or failed on an input.
    Tokenizer {
        /// Where the vocabulary came from.
        source_name: String,
        /// What went wrong.
        detail: String,
    },
    /// A call asked for something the value cannot give (e.g. Q8_0 blocks of
    /// an F16 tensor, an expert index past the expert count).
    Usage(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::NotAModel { path, detail } => write!(
                f,
                "{}: not a model: {detail} (expected a Hugging Face directory with config.json \
                 or a GGUF file)",
                path.display()
            ),
            Error::Truncated {
                file,
                field,
                needed,
                len,
            } => write!(
                f,
                "{file}: truncated: {field} needs {needed} bytes but the file has {len}"
            ),
            Error::Format {
                file,
                field,
                detail,
            } => write!(f, "{file}: invalid {field}: {detail}"),
            Error::Config { file, key, detail } => write!(f, "{file}: config key `{key}`: {detail}"),
            Error::UnknownArchitecture { found, supported } => write!(
                f,
                "unknown architecture `{found}`; supported: {supported}"
            ),
            Error::MissingTensor {
                tensor,
                source_name,
                file,
            } => write!(f, "{file}: missing tensor `{source_name}` ({tensor})"),
            Error::ShapeMismatch {
                tensor,
                source_name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{source_name}` ({tensor}) has shape {found:?}, the config implies {expected:?}"
            ),
            Error::UnsupportedType { tensor, dtype } => write!(
                f,
                "tensor `{tensor}` has unsupported type {dtype} (supported: F32, F16, BF16, Q8_0, \
                 Q4_0, Q4_K, Q6_K)"
            ),
            Error::VocabMismatch {
                vocab,
                embedding_rows,
            } => write!(
                f,
                "vocabulary size mismatch: the tokenizer has {vocab} tokens but the token \
                 embedding has {embedding_rows} rows"
            ),
            Error::Tokenizer {
                source_name,
                detail,
            } => write!(f, "tokenizer from {source_name}: {detail}"),
            Error::Usage(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn format_err(file: &str, field: impl Into<String>, detail: impl Into<String>) -> Error {
    Error::Format {
        file: file.to_string(),
        field: field.into(),
        detail: detail.into(),
    }
}
