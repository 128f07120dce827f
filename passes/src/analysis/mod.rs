//! Analyses that passes share: structure found in the graph (MoE layers)
//! and measurements taken by running it.

pub mod moe;
