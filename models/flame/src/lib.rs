//! `taskpath-flame`: the reference FLAME-style multitask, multimodal, continual
//! mixture-of-experts model of docs/CHECKPOINT.md, its data loaders, candle
//! training and checkpoint export (docs/TRAINING.md).

pub mod data;
pub mod export;
pub mod model;
pub mod svd;
pub mod train;
