//! `dictionary`: MASA's matrix dictionary learning, without training.

pub mod math;
