// Y[m, n] = act(X[m, :] . W[n, :] + bias[n]), W as Hugging Face stores it ([N, K]), so both
// operands stream along K. A 16x16 workgroup computes a 64x64 tile, 4x4 outputs per thread,
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

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.K; k0 += TK) {
        // 256 threads stage 64x16 of each operand, 4 elements each; neighbouring threads
        // read neighbouring k of one row, so the global loads coalesce.
        for (var i = 0u; i < 4u; i++) {
            let e = li + i * 256u;
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
            // Thread (tx, ty) owns rows ty + 16i and columns tx + 16j: strided ownership
            // keeps the epilogue's stores coalesced along a row.
            let b = vec4<f32>(ws[k * LDS + lid.x], ws[k * LDS + lid.x + 16u],
                              ws[k * LDS + lid.x + 32u], ws[k * LDS + lid.x + 48u]);
            for (var i = 0u; i < 4u; i++) {
                acc[i] = fma(vec4<f32>(xs[k * LDS + lid.y + 16u * i]), b, acc[i]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let gm = m0 + lid.y + 16u * i;
        if (gm >= p.M) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let gn = n0 + lid.x + 16u * j;
            if (gn < p.N) {
                y[p.y_base + gm * p.y_ld + gn] = st(activate(acc[i][j] + bias[p.b_base + gn], ACT));
            }
        }
    }
}
