// Multi-head attention over a packed qkv [B, S, 3 * NH * HD] and an additive f32 key bias
// [B, S]. One thread per query row, QT rows per workgroup; keys and values stream through
// workgroup memory KT at a time; scores, softmax statistics and accumulators in f32.
// `attention` is flash-style (online softmax): the [B, NH, S, S] scores never exist.
// `attn_probs` / `attn_apply` materialise them, for output_attentions only.
// The prelude defines HD (head dim), NH (heads), KT (keys per tile) and SCALE = 1/sqrt(HD).

// B is the sequences of one dispatch, one per workgroup along z: it sizes the grid.
struct Params { S: u32, qkv_base: u32, bias_base: u32, out_base: u32, probs_base: u32, B: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<st>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<st>;
@group(0) @binding(4) var<storage, read> probs: array<st>;

const QT: u32 = 32u;
const HID: u32 = NH * HD;

// Head vectors as vec4s (HD4 of them, zero-padded past HD): a short constant-count loop over
// vec4s, which compilers unroll and keep in registers, where a loop over HD scalars of a
// private array is demoted to scratch memory.
const HD4: u32 = (HD + 3u) / 4u;

var<workgroup> ks: array<vec4<f32>, KT * HD4>;
var<workgroup> vs: array<vec4<f32>, KT * HD4>;

fn ld(at: u32, d: u32) -> f32 {
    if (d < HD) { return f32(qkv[at + d]); }
    return 0.0;
}

fn ld4(at: u32, d4: u32) -> vec4<f32> {
    let d = 4u * d4;
    return vec4<f32>(ld(at, d), ld(at, d + 1u), ld(at, d + 2u), ld(at, d + 3u));
}

fn stage_kv(b: u32, h: u32, k0: u32, t: u32) {
    workgroupBarrier();  // the previous tile has been consumed
    for (var e = t; e < KT * HD4; e += QT) {
        let key = k0 + e / HD4;
        var kv = vec4<f32>();
        var vv = vec4<f32>();
        if (key < p.S) {
            let at = p.qkv_base + (b * p.S + key) * 3u * HID + h * HD;
            kv = ld4(at + HID, e % HD4);
            vv = ld4(at + 2u * HID, e % HD4);
        }
        ks[e] = kv;
        vs[e] = vv;
    }
    workgroupBarrier();
}

fn load_q(b: u32, h: u32, qi: u32) -> array<vec4<f32>, HD4> {
    var q: array<vec4<f32>, HD4>;
    if (qi < p.S) {
        let at = p.qkv_base + (b * p.S + qi) * 3u * HID + h * HD;
        for (var d = 0u; d < HD4; d++) { q[d] = ld4(at, d); }
    }
    return q;
}

// Score of key k0 + j (staged) for query q: scaled dot plus bias, never below -FLT_MAX, so
// a fully masked row stays finite and comes out uniform, as in the numpy reference.
fn score(q: ptr<function, array<vec4<f32>, HD4>>, b: u32, k0: u32, j: u32) -> f32 {
    var dot4 = vec4<f32>();
    for (var d = 0u; d < HD4; d++) { dot4 = fma((*q)[d], ks[j * HD4 + d], dot4); }
    let dot = dot4.x + dot4.y + dot4.z + dot4.w;
    return max(dot * SCALE + bias[p.bias_base + b * p.S + k0 + j], -FLT_MAX);
}

fn store_row(at: u32, v: vec4<f32>, d4: u32) {
    for (var i = 0u; i < 4u; i++) {
        if (4u * d4 + i < HD) { out[at + 4u * d4 + i] = st(v[i]); }
    }
}

@compute @workgroup_size(QT)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let qi = wg.x * QT + t;
    let h = wg.y;
    let b = wg.z;
    var q = load_q(b, h, qi);
    var m = -FLT_MAX;
    var l = 0.0;
    var acc: array<vec4<f32>, HD4>;
    var s: array<f32, KT>;
    for (var k0 = 0u; k0 < p.S; k0 += KT) {
        stage_kv(b, h, k0, t);
        let n = min(KT, p.S - k0);
        var tmax = m;
        for (var j = 0u; j < n; j++) { s[j] = score(&q, b, k0, j); tmax = max(tmax, s[j]); }
        // Rescale once per tile, not once per key.
        let c = exp(m - tmax);
        l *= c;
        for (var d = 0u; d < HD4; d++) { acc[d] *= c; }
        for (var j = 0u; j < n; j++) {
            let pj = exp(s[j] - tmax);
            l += pj;
            for (var d = 0u; d < HD4; d++) { acc[d] = fma(vec4<f32>(pj), vs[j * HD4 + d], acc[d]); }
        }
        m = tmax;
    }
    if (qi < p.S) {
        let at = p.out_base + (b * p.S + qi) * HID + h * HD;
        for (var d = 0u; d < HD4; d++) { store_row(at, acc[d] / l, d); }
    }
}

// softmax(q k^T * SCALE + bias) -> out as probs [B, NH, S, S]: a max/sum pass, then a write pass.
@compute @workgroup_size(QT)
fn attn_probs(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let qi = wg.x * QT + t;
    let h = wg.y;
    let b = wg.z;
    var q = load_q(b, h, qi);
    var m = -FLT_MAX;
    var l = 0.0;
    for (var k0 = 0u; k0 < p.S; k0 += KT) {
        stage_kv(b, h, k0, t);
        let n = min(KT, p.S - k0);
        for (var j = 0u; j < n; j++) {
            let sj = score(&q, b, k0, j);
            let mn = max(m, sj);
            l = l * exp(m - mn) + exp(sj - mn);
            m = mn;
        }
    }
    let row = p.out_base + ((b * NH + h) * p.S + qi) * p.S;
    for (var k0 = 0u; k0 < p.S; k0 += KT) {
        stage_kv(b, h, k0, t);
        let n = min(KT, p.S - k0);
        for (var j = 0u; j < n; j++) {
            let pj = exp(score(&q, b, k0, j) - m) / l;
            if (qi < p.S) { out[row + k0 + j] = st(pj); }
        }
    }
}

// probs [B, NH, S, S] @ v -> context [B, S, NH * HD].
@compute @workgroup_size(QT)
fn attn_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let qi = wg.x * QT + t;
    let h = wg.y;
    let b = wg.z;
    let row = p.probs_base + ((b * NH + h) * p.S + min(qi, p.S - 1u)) * p.S;
    var acc: array<vec4<f32>, HD4>;
    for (var k0 = 0u; k0 < p.S; k0 += KT) {
        stage_kv(b, h, k0, t);
        let n = min(KT, p.S - k0);
        for (var j = 0u; j < n; j++) {
            let pj = vec4<f32>(f32(probs[row + k0 + j]));
            for (var d = 0u; d < HD4; d++) { acc[d] = fma(pj, vs[j * HD4 + d], acc[d]); }
        }
    }
    if (qi < p.S) {
        let at = p.out_base + (b * p.S + qi) * HID + h * HD;
        for (var d = 0u; d < HD4; d++) { store_row(at, acc[d], d); }
    }
}
