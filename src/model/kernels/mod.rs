//! Hand-written CPU kernels for f32: the packed matmul, decode-step attention over the
//! self-attention cache and over the encoder's keys, and activations on slices.
//!
//! Each has a portable path and SIMD paths compiled with `#[target_feature]`; which runs
//! is decided once per process ([`dispatch`]), so one binary serves every x86-64 CPU
//! (and builds for other targets with the portable kernels only). A SIMD path is only
//! entered with a [`dispatch::Kernels`] value, which exists only for sets the CPU has.

pub mod activation;
pub mod cpu;
pub mod cross_attention;
pub mod dispatch;
pub mod dot;
mod epilogue;
pub mod packed;
mod rounding;
pub mod small_attention;
