//! Hand-written CPU kernels for f32: the packed matmul, decode-step attention over the
//! self-attention cache and over the encoder's keys, and activations on slices.
//! Each has an AVX2 + FMA path and a portable one.

pub mod activation;
pub mod cpu;
pub mod cross_attention;
pub mod packed;
pub mod small_attention;
