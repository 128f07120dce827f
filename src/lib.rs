//! sharc
