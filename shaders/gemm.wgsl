// Y[m, n] = act(X[m, :] . W[n, :] + bias[n]), W as Hugging Face stores it ([N, K]), so both
// operands stream along K. An 8x8 workgroup computes a TM x 64 tile: each thread owns TM/8
// consecutive rows and two groups of 4 consecutive columns (4tx.. and 32 + 4tx..), held as
// 4x4 blocks in mat4x4 registers named one by one (no dynamically indexed private array,
// which compilers demote to scratch memory). K advances TK at a time through workgroup
// memory stored k-major as vec4s, so one k step reads TM/32 + 2 vec4s for TM outer-product
// FMAs. f32 accumulation; bias and activation in the epilogue. Bases are element offsets
// inside the bound (alignment-rounded) views, so the executor can split a product that
// exceeds maxStorageBufferBindingSize.
// The prelude defines TM (32 or 64: rows per tile, chosen per GEMM shape at plan time) and TK.

struct Params { M: u32, N: u32, K: u32, x_base: u32, x_ld: u32, w_base: u32, b_base: u32, y_base: u32, y_ld: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read> w: array<st>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<st>;

override ACT: u32 = 0u;

const TN: u32 = 64u;
const RM: u32 = TM / 8u;  // rows per thread: 4 or 8

var<workgroup> xs: array<vec4<f32>, TK * TM / 4u>;  // [TK][TM / 4]: rows 4r..4r+3 of column k
var<workgroup> ws: array<vec4<f32>, TK * TN / 4u>;  // [TK][TN / 4]

fn ld_x(r: u32, k: u32) -> f32 {
    if (r < p.M && k < p.K) { return f32(x[p.x_base + r * p.x_ld + k]); }
    return 0.0;
}

fn ld_w(n: u32, k: u32) -> f32 {
    if (n < p.N && k < p.K) { return f32(w[p.w_base + n * p.K + k]); }
    return 0.0;
}

fn store4(r: u32, c: u32, v: vec4<f32>) {
    if (r >= p.M) { return; }
    let at = p.y_base + r * p.y_ld;
    for (var j = 0u; j < 4u; j++) {
        if (c + j < p.N) { y[at + c + j] = st(activate(v[j] + bias[p.b_base + c + j], ACT)); }
    }
}

// A 4x4 block c (column j = rows r..r+3 of output column c + j) as four row stores.
fn store_block(r: u32, c: u32, blk: mat4x4<f32>) {
    let t = transpose(blk);
    store4(r, c, t[0]);
    store4(r + 1u, c, t[1]);
    store4(r + 2u, c, t[2]);
    store4(r + 3u, c, t[3]);
}

// c + a b^T, column by column as fused multiply-adds.
fn outer_fma(a: vec4<f32>, b: vec4<f32>, c: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(fma(a, vec4<f32>(b.x), c[0]), fma(a, vec4<f32>(b.y), c[1]), fma(a, vec4<f32>(b.z), c[2]),
                       fma(a, vec4<f32>(b.w), c[3]));
}

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;
    var c00 = mat4x4<f32>();  // rows RM * ty + 0..3, columns 4tx + 0..3
    var c01 = mat4x4<f32>();  // rows RM * ty + 0..3, columns 32 + 4tx + 0..3
    var c10 = mat4x4<f32>();  // rows 8ty + 4..7 (TM = 64 only)
    var c11 = mat4x4<f32>();
    for (var k0 = 0u; k0 < p.K; k0 += TK) {
        // Each thread stages vec4s of 4 rows at one k; neighbouring threads take neighbouring
        // k, so every one of the 4 global loads coalesces along K.
        for (var e = li; e < TK * TM / 4u; e += 64u) {
            let k = e % TK;
            let r = m0 + 4u * (e / TK);
            let gk = k0 + k;
            xs[k * (TM / 4u) + e / TK] = vec4<f32>(ld_x(r, gk), ld_x(r + 1u, gk), ld_x(r + 2u, gk), ld_x(r + 3u, gk));
        }
        for (var e = li; e < TK * TN / 4u; e += 64u) {
            let k = e % TK;
            let n = n0 + 4u * (e / TK);
            let gk = k0 + k;
            ws[k * (TN / 4u) + e / TK] = vec4<f32>(ld_w(n, gk), ld_w(n + 1u, gk), ld_w(n + 2u, gk), ld_w(n + 3u, gk));
        }
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            // Lanes along x read consecutive vec4s of ws; lanes along y share xs (a broadcast).
            let b0 = ws[k * (TN / 4u) + lid.x];
            let b1 = ws[k * (TN / 4u) + 8u + lid.x];
            let a0 = xs[k * (TM / 4u) + (RM / 4u) * lid.y];
            c00 = outer_fma(a0, b0, c00);
            c01 = outer_fma(a0, b1, c01);
            if (RM == 8u) {
                let a1 = xs[k * (TM / 4u) + 2u * lid.y + 1u];
                c10 = outer_fma(a1, b0, c10);
                c11 = outer_fma(a1, b1, c11);
            }
        }
        workgroupBarrier();
    }
    let r = m0 + RM * lid.y;
    store_block(r, n0 + 4u * lid.x, c00);
    store_block(r, n0 + 32u + 4u * lid.x, c01);
    if (RM == 8u) {
        store_block(r + 4u, n0 + 4u * lid.x, c10);
        store_block(r + 4u, n0 + 32u + 4u * lid.x, c11);
    }
}
