//! How f32 values become bf16 and int8, for weights at load and activations per call;
//! every layout stores the same values, whichever kernel runs them.

/// `(max |values| / 127, 127 / max |values|)`, the inverse 0 when all are zero: the
/// symmetric int8 scale of a row (or block) and its reciprocal.
pub(super) fn int8_scale(values: &[f32]) -> (f32, f32) {
    let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    (amax / 127.0, if amax > 0.0 { 127.0 / amax } else { 0.0 })
}

/// `v · inverse_scale` rounded half away from zero to an int8 step (`f32::round` is a
/// libm call on baseline x86-64, and this runs for every weight at load and every
/// activation per layer).
pub(super) fn quantize(v: f32, inverse_scale: f32) -> i8 {
    let t = v * inverse_scale;
    (t + 0.5f32.copysign(t)).clamp(-127.0, 127.0) as i8
}

/// `v` rounded to bf16, nearest even (as `half::bf16::from_f32`, inlined).
pub(super) fn bf16_bits(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7fc0;
    }
    let bits = v.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}
