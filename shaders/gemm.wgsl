// Y[m, n] = act(X[m, :] . W[n, :] + bias[n]), W as Hugging Face stores it ([N, K]), so both
// operands stream along K. An 8x8 workgroup computes a 64x64 tile, 8x8 outputs per thread,
// K in steps of 16 through workgroup memory; f32 accumulation; bias and activation in the
// epilogue. Bases are element offsets inside the bound (alignment-rounded) views, so the
// executor can split a product that exceeds maxStorageBufferBindingSize.

struct Params { M: u32, N: u32, K: u32, x_base: u32, x_ld: u32, w_base: u32, b_base: u32, y_base: u32, y_ld: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read> w: array<st>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<st>;

override ACT: u32 = 0u;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;
// Rows of the staged tiles are padded by one so the transposing store is bank-conflict free.
const LDS: u32 = 65u;

var<workgroup> xs: array<f32, 1040>;  // [TK][LDS], x tile transposed (k-major)
var<workgroup> ws: array<f32, 1040>;  // [TK][LDS], w tile transposed (k-major)

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    var acc: array<vec4<f32>, 16>;  // [row i][column j / 4]
    for (var k0 = 0u; k0 < p.K; k0 += TK) {
        // 64 threads stage 64x16 of each operand, 16 elements each; neighbouring threads
        // read neighbouring k of one row, so the global loads coalesce.
        for (var i = 0u; i < TM * TK / 64u; i++) {
            let e = li + i * 64u;
            let r = e / TK;
            let c = e % TK;
            let gk = k0 + c;
            var xv = 0.0;
            if (m0 + r < p.M && gk < p.K) { xv = f32(x[p.x_base + (m0 + r) * p.x_ld + gk]); }
            xs[c * LDS + r] = xv;
            var wv = 0.0;
            if (n0 + r < p.N && gk < p.K) { wv = f32(w[p.w_base + (n0 + r) * p.K + gk]); }
            ws[c * LDS + r] = wv;
        }
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            // Thread (tx, ty) owns rows ty + 8i and columns tx + 8j: strided ownership
            // keeps the epilogue's stores coalesced along a row.
            let wk = k * LDS + lid.x;
            let b0 = vec4<f32>(ws[wk], ws[wk + 8u], ws[wk + 16u], ws[wk + 24u]);
            let b1 = vec4<f32>(ws[wk + 32u], ws[wk + 40u], ws[wk + 48u], ws[wk + 56u]);
            for (var i = 0u; i < 8u; i++) {
                let a = vec4<f32>(xs[k * LDS + lid.y + 8u * i]);
                acc[2u * i] = fma(a, b0, acc[2u * i]);
                acc[2u * i + 1u] = fma(a, b1, acc[2u * i + 1u]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 8u; i++) {
        let gm = m0 + lid.y + 8u * i;
        if (gm >= p.M) { continue; }
        for (var j = 0u; j < 8u; j++) {
            let gn = n0 + lid.x + 8u * j;
            if (gn < p.N) {
                y[p.y_base + gm * p.y_ld + gn] = st(activate(acc[2u * i + j / 4u][j % 4u] + bias[p.b_base + gn], ACT));
            }
        }
    }
}
