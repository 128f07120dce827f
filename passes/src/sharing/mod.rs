//! Parameter-sharing passes: they make a trained model smaller by making
//! several layers use the same stored parameters, and say what that cost.

pub mod dictionary;
pub mod expert_reuse;
