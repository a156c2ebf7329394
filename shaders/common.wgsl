// Shared by every kernel file (prepended after the generated prelude, which defines
// `st` (the storage type, f32 or f16), the erf coefficients ERF_A/ERF_B/ERF_CLAMP taken
// from cbert.backends.numpy_backend, and the kernel's shape constants).

// The largest finite f32: the masked-key bias (Hugging Face's convention), never -inf,
// which WGSL cannot spell and which turns an all-masked row into NaN.
const FLT_MAX: f32 = 3.40282346638528859812e+38;

// Eigen's rational erf, the same coefficients as the numpy reference, so GELU agrees.
fn erf_f32(v: f32) -> f32 {
    let x = clamp(v, -ERF_CLAMP, ERF_CLAMP);
    let x2 = x * x;
    var p = ERF_A[0];
    for (var i = 1u; i < 7u; i++) { p = p * x2 + ERF_A[i]; }
    var q = ERF_B[0];
    for (var i = 1u; i < 5u; i++) { q = q * x2 + ERF_B[i]; }
    return x * p / q;
}

// tanh through exp(-2|x|): the built-in returns NaN for large inputs on some drivers (gpuweb #4458).
fn tanh_safe(v: f32) -> f32 {
    let t = exp(-2.0 * abs(v));
    return sign(v) * (1.0 - t) / (1.0 + t);
}

// ACT follows cbert.ir.ACTIVATIONS: none, gelu, gelu_tanh, relu, silu, tanh.
fn activate(v: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return 0.5 * v * (1.0 + erf_f32(v * 0.7071067811865476)); }
        case 2u: { return 0.5 * v * (1.0 + tanh_safe(0.7978845608028654 * (v + 0.044715 * v * v * v))); }
        case 3u: { return max(v, 0.0); }
        case 4u: { return v / (1.0 + exp(min(-v, 80.0))); }
        case 5u: { return tanh_safe(v); }
        default: { return v; }
    }
}
