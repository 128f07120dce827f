//! Analyses that sharing passes build on: the repeated blocks of a model
//! ([`blocks`]), activations recorded on calibration data ([`calibration`])
//! and the similarity measures used to compare them ([`similarity`]).

pub mod blocks;
pub mod calibration;
pub mod influence;
pub mod moe;
pub mod similarity;
