// Row kernels: LayerNorm (alone, after a residual add, after the embedding gather), the
// additive attention mask and the first-token slice. One workgroup of RW threads per row;
// each thread keeps its ROW_PT elements in registers; statistics in f32 through a
// workgroup-memory tree, two passes (mean, then centred variance) as the numpy reference.
// The prelude defines H (row length) and ROW_PT = ceil(H / RW).

struct Params { rows: u32, x_base: u32, r_base: u32, y_base: u32, id0: u32, id1: u32, id2: u32, n: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<st>;
@group(0) @binding(2) var<storage, read> res: array<st>;
@group(0) @binding(3) var<storage, read> ln_w: array<f32>;
@group(0) @binding(4) var<storage, read> ln_b: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<st>;
@group(0) @binding(6) var<storage, read> ids: array<i32>;
@group(0) @binding(7) var<storage, read> table0: array<st>;
@group(0) @binding(8) var<storage, read> table1: array<st>;
@group(0) @binding(9) var<storage, read> table2: array<st>;
@group(0) @binding(10) var<storage, read_write> ybias: array<f32>;

override EPS: f32 = 1e-12;
// How many (table, ids) pairs EMBED sums: word, position and, when the model has them, token types.
override NTAB: u32 = 3u;

const RW: u32 = 128u;

var<workgroup> red: array<f32, RW>;

fn row_sum(v: f32, t: u32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var s = RW / 2u; s > 0u; s >>= 1u) {
        if (t < s) { red[t] += red[t + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();  // red is reused by the next reduction
    return total;
}

// Normalises v (this thread's elements of row `row`) and stores it.
fn normalise_store(v: ptr<function, array<f32, ROW_PT>>, row: u32, t: u32) {
    var s = 0.0;
    for (var i = 0u; i < ROW_PT; i++) { s += (*v)[i]; }
    let mean = row_sum(s, t) / f32(H);
    var ss = 0.0;
    for (var i = 0u; i < ROW_PT; i++) {
        let c = t + i * RW;
        if (c < H) { let d = (*v)[i] - mean; (*v)[i] = d; ss += d * d; }
    }
    let inv = 1.0 / sqrt(row_sum(ss, t) / f32(H) + EPS);
    for (var i = 0u; i < ROW_PT; i++) {
        let c = t + i * RW;
        if (c < H) { y[p.y_base + row * H + c] = st((*v)[i] * inv * ln_w[c] + ln_b[c]); }
    }
}

@compute @workgroup_size(RW)
fn layernorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let row = wg.x;
    var v: array<f32, ROW_PT>;
    for (var i = 0u; i < ROW_PT; i++) {
        let c = t + i * RW;
        if (c < H) { v[i] = f32(x[p.x_base + row * H + c]); }
    }
    normalise_store(&v, row, t);
}

@compute @workgroup_size(RW)
fn add_ln(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let row = wg.x;
    var v: array<f32, ROW_PT>;
    for (var i = 0u; i < ROW_PT; i++) {
        let c = t + i * RW;
        if (c < H) { v[i] = f32(x[p.x_base + row * H + c]) + f32(res[p.r_base + row * H + c]); }
    }
    normalise_store(&v, row, t);
}

// Sum of table_i[ids_i[row]] then LayerNorm; ids are int32 sections of the inputs buffer.
@compute @workgroup_size(RW)
fn embed(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let row = wg.x;
    let r0 = u32(ids[p.id0 + row]) * H;
    let r1 = u32(ids[p.id1 + row]) * H;
    var r2 = 0u;
    if (NTAB > 2u) { r2 = u32(ids[p.id2 + row]) * H; }
    var v: array<f32, ROW_PT>;
    for (var i = 0u; i < ROW_PT; i++) {
        let c = t + i * RW;
        if (c < H) {
            var s = f32(table0[r0 + c]);
            if (NTAB > 1u) { s += f32(table1[r1 + c]); }
            if (NTAB > 2u) { s += f32(table2[r2 + c]); }
            v[i] = s;
        }
    }
    normalise_store(&v, row, t);
}

// 0 where attended, -FLT_MAX where masked; kept in f32 whatever the storage type, so the
// f16 path cannot overflow when it is added to an (f32) score.
@compute @workgroup_size(256)
fn mask_bias(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) { ybias[p.y_base + i] = select(-FLT_MAX, 0.0, ids[p.id0 + i] != 0); }
}

// x[:, 0] of x [rows, n, H] -> [rows, H].
@compute @workgroup_size(256)
fn first_token(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.rows * H) {
        let b = i / H;
        y[p.y_base + i] = x[p.x_base + b * p.n * H + i % H];
    }
}
