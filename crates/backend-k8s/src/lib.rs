//! The `kubernetes` backend: each activity as a pod.

pub mod diagnose;
pub mod render;
