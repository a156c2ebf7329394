"""The explanation page: one self-contained HTML file (inline CSS, JavaScript and SVG; heatmaps as
PNG data inside the SVG), so it opens offline and makes no request when viewed.

Sections: the prediction; the text highlighted by each method side by side; every token's
attribution; the attention of every layer and head with the tokens as axes; the attention rollout
(and flow) map; the counterfactual edits; the sanity checks.
"""

from __future__ import annotations

import base64
import html
import struct
import zlib

import numpy as np

# matplotlib's viridis at nine points: dark (0) to yellow (1).
_VIRIDIS = np.array([(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141), (39, 173, 129),
                     (92, 200, 99), (170, 220, 50), (253, 231, 37)], np.float64)

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
.meta{color:#57606a;font-size:12px}.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 12px;background:#fff}
.methods{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px}
.method h3{margin:0 0 6px;font-size:14px}.text{white-space:pre-wrap;line-height:1.9}
.w{border-radius:3px;padding:1px 0}.note{color:#57606a;font-size:12px;margin-top:6px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #d0d7de;padding:2px 6px;text-align:left}
th{background:#f6f8fa}.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:10px;background:#0969da;vertical-align:middle}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.grid{display:grid;gap:4px;align-items:center}.thumb{cursor:pointer;border:2px solid transparent}
.thumb.on{border-color:#cf222e}.maps{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
svg text{font:11px ui-monospace,SFMono-Regular,Menlo,monospace;fill:#1f2328}
"""

_JS = """
document.querySelectorAll('.thumb').forEach(function(t){t.addEventListener('click',function(){
  document.querySelectorAll('.thumb').forEach(function(o){o.classList.remove('on')});t.classList.add('on');
  document.getElementById('bigmap').setAttribute('href',t.getAttribute('data-src'));
  document.getElementById('bigtitle').textContent=t.getAttribute('data-title');});});
"""


def render_page(report: dict) -> str:
    """The report (:func:`cbert.explain.report.build_report`) as one HTML document."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cbert explain: "
             f"{_e(_target_line(report))}</title><style>{_CSS}</style></head><body>",
             "<h1>Why did the model say that?</h1>",
             f"<div class='meta'>{_e(report['architecture'])} from {_e(report['model'])} on {_e(report['backend'])}; "
             f"task {_e(report['task'])}; {report['windows']} window(s)</div>",
             _prediction(report), _methods(report), _token_table(report), _attention(report), _rollout(report),
             _counterfactuals(report), _sanity(report), f"<script>{_JS}</script></body></html>"]
    return "\n".join(parts)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _target_line(report: dict) -> str:
    t = report["target"]
    what = {"classify": lambda: f"label {t['label']}", "ner": lambda: f"entity {t['text']!r} ({t['entity']})",
            "qa": lambda: f"answer {t['answer']!r}",
            "fill-mask": lambda: f"{t['token']!r} at the masked position"}[report["task"]]()
    return f"{what}, probability {report['probability']:.4f}"


def _prediction(report: dict) -> str:
    out = ["<h2>Prediction</h2><div class='card'>", f"<div><b>{_e(_target_line(report))}</b></div>"]
    if report.get("question"):
        out.append(f"<div class='note'>question: {_e(report['question'])}</div>")
    if "labels" in report:
        out.append("<table style='margin-top:6px'>")
        for label, p in sorted(report["labels"].items(), key=lambda kv: -kv[1]):
            out.append(f"<tr><td>{_e(label)}</td><td class='num'>{p:.4f}</td><td><span class='bar' "
                       f"style='width:{200 * p:.1f}px'></span></td></tr>")
        out.append("</table>")
    out.append("</div>")
    return "".join(out)


def _color(score: float, scale: float) -> str:
    a = min(abs(score) / scale, 1.0) * 0.85 if scale > 0 else 0.0
    return f"rgba(207,34,46,{a:.3f})" if score >= 0 else f"rgba(9,105,218,{a:.3f})"


def _highlighted(text: str, words: list[dict]) -> str:
    scale = max((abs(w["score"]) for w in words), default=0.0)
    out, at = [], 0
    for w in words:
        out.append(_e(text[at:w["start"]]))
        out.append(f"<span class='w' style='background:{_color(w['score'], scale)}' title='{w['score']:.4g}'>"
                   f"{_e(text[w['start']:w['end']])}</span>")
        at = w["end"]
    out.append(_e(text[at:]))
    return "".join(out)


def _method_note(name: str, method: dict, sanity: dict | None) -> str:
    notes = []
    d = method["details"]
    if "completeness_gap" in d:
        notes.append(f"completeness gap {100 * d['completeness_gap']:.2f}% of f(x) - f(baseline) "
                     f"({sum(c['points'] for c in d['completeness'])} gradient points)")
    if sanity:
        r, dl = sanity["randomization"], sanity["deletion"]
        rho = r["stages"][-1]["spearman_abs"]
        notes.append(f"randomized weights: |Spearman| {'n/a' if rho is None else f'{abs(rho):.2f}'} "
                     f"{_verdict(r['passed'])}; deletion AUC {dl['auc_top']:.3f} vs random {dl['auc_random']:.3f} "
                     f"{_verdict(dl['passed'])}")
    return "".join(f"<div class='note'>{n}</div>" for n in notes)


def _verdict(passed: bool) -> str:
    return "<span class='pass'>pass</span>" if passed else "<span class='fail'>fail</span>"


def _methods(report: dict) -> str:
    out = ["<h2>Attributions</h2><div class='note'>Red: the word raises the target's probability; blue: lowers "
           "it; each method scaled to its own largest |attribution|.</div><div class='methods'>"]
    for name, m in report["methods"].items():
        sanity = report.get("sanity", {}).get(name)
        out.append(f"<div class='card method'><h3>{_e(name)}</h3><div class='text'>"
                   f"{_highlighted(report['text'], m['words'])}</div>{_method_note(name, m, sanity)}</div>")
    out.append("</div>")
    return "".join(out)


def _token_table(report: dict) -> str:
    names = list(report["methods"])
    out = [f"<h2>Tokens</h2><details open><summary>{len(report['tokens'])} tokens, their characters and "
           "attributions</summary><table><tr><th>#</th><th>token</th><th>characters</th>"]
    out += [f"<th>{_e(n)}</th>" for n in names]
    out.append("</tr>")
    for i, t in enumerate(report["tokens"]):
        cells = "".join(f"<td class='num'>{report['methods'][n]['tokens'][i]['score']:.4g}</td>" for n in names)
        out.append(f"<tr><td class='num'>{i}</td><td>{_e(t['token'])}</td><td class='num'>{t['start']}-{t['end']}"
                   f"</td>{cells}</tr>")
    out.append("</table></details>")
    return "".join(out)


def _png(values: np.ndarray) -> str:
    """A data: URL of ``values`` [rows, cols] in [0, 1] as a viridis PNG, one pixel per cell."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float64)), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (v - lo)[..., None]
    rgb = (_VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac).round().astype(np.uint8)
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _scaled(m: np.ndarray) -> np.ndarray:
    top = float(np.max(m)) if m.size else 0.0
    return m / top if top > 0 else m


def _heatmap(src: str, rows: list[str], cols: list[str], title: str, image_id: str = "", title_id: str = "") -> str:
    """An SVG heatmap: the image ``src`` with the ``rows`` tokens down the left and ``cols`` along the bottom."""
    cell = max(4, min(22, 560 // max(len(cols), 1)))
    font = max(5, min(11, cell - 2))
    label = 8 + font * 0.62 * max([len(t) for t in rows + cols] + [1])
    w, h = max(label + cell * len(cols), label + 7 * len(title)), 20 + cell * len(rows) + label
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w:.0f}' height='{h:.0f}'>",
           f"<text x='{label:.0f}' y='13' {'id=' + repr(title_id) if title_id else ''}>{_e(title)}</text>",
           f"<image {'id=' + repr(image_id) if image_id else ''} x='{label:.0f}' y='20' width='{cell * len(cols)}' "
           f"height='{cell * len(rows)}' preserveAspectRatio='none' style='image-rendering:pixelated' href='{src}'/>"]
    for i, t in enumerate(rows):
        out.append(f"<text x='{label - 4:.0f}' y='{20 + cell * (i + 0.5):.1f}' text-anchor='end' "
                   f"dominant-baseline='middle' style='font-size:{font}px'>{_e(t)}</text>")
    y0 = 20 + cell * len(rows) + 4
    for j, t in enumerate(cols):
        x = label + cell * (j + 0.5)
        out.append(f"<text transform='translate({x:.1f},{y0}) rotate(90)' dominant-baseline='middle' "
                   f"style='font-size:{font}px'>{_e(t)}</text>")
    out.append("</svg>")
    return "".join(out)


def _attention(report: dict) -> str:
    att = report["attention"]
    maps, tokens = att["maps"], att["tokens"]
    n_layers, n_heads = maps.shape[:2]
    out = [f"<h2>Attention</h2><div class='note'>Window {att['window']} of the note: every layer (rows) and head "
           "(columns, then their mean); rows of a map attend to its columns. Click a map to enlarge it.</div>",
           "<div class='maps'><div class='grid' style='grid-template-columns:auto "
           f"repeat({n_heads + 1},52px)'><div></div>"]
    out += [f"<div class='note'>head {h}</div>" for h in range(n_heads)] + ["<div class='note'>mean</div>"]
    first = None
    for layer in range(n_layers):
        out.append(f"<div class='note'>layer {layer}</div>")
        for head in list(range(n_heads)) + ["mean"]:
            m = maps[layer].mean(0) if head == "mean" else maps[layer, head]
            src = _png(_scaled(m))
            title = f"layer {layer}, {'mean of the heads' if head == 'mean' else f'head {head}'}"
            first = first or (src, title)
            out.append(f"<svg class='thumb{' on' if first[0] is src else ''}' width='48' height='48' "
                       f"data-src='{src}' data-title='{_e(title)}'><title>{_e(title)}</title><image width='48' "
                       f"height='48' preserveAspectRatio='none' style='image-rendering:pixelated' href='{src}'/></svg>")
    out.append("</div>")
    out.append(_heatmap(first[0], tokens, tokens, first[1], image_id="bigmap", title_id="bigtitle"))
    out.append("</div>")
    return "".join(out)


def _rollout(report: dict) -> str:
    att = report["attention"]
    tokens = att["tokens"]
    out = ["<h2>Attention rollout and flow</h2><div class='note'>Rollout (Abnar &amp; Zuidema, 2020): each layer's "
           "head-mean attention plus the residual, (A + I) / 2, multiplied through the layers; row i: how much "
           "top-layer token i draws on each input token.</div><div class='maps'>",
           _heatmap(_png(_scaled(att["rollout"])), tokens, tokens, "attention rollout")]
    rows = [(n, report["methods"][n]) for n in ("attention-rollout", "attention-flow") if n in report["methods"]]
    if rows:
        scores = np.array([[t["score"] for t in m["tokens"]] for _, m in rows])
        scaled = scores / np.maximum(scores.max(1, keepdims=True), 1e-30)
        out.append(_heatmap(_png(scaled), [n for n, _ in rows], [t["token"] for t in report["tokens"]],
                            "into the tokens the prediction reads (whole note)"))
    out.append("</div>")
    return "".join(out)


def _counterfactuals(report: dict) -> str:
    c = report["counterfactuals"]
    out = ["<h2>Counterfactuals</h2><div class='card'>"]
    if "skipped" in c:
        out.append(f"<div class='note'>None: {_e(c['skipped'])}.</div></div>")
        return "".join(out)
    out.append(f"<div class='note'>Words proposed by {_e(c['source'])} at the words that most support the "
               f"prediction ({_e(', '.join(w['word'] for w in c['words']))}); {c['tried']} edited texts tried.</div>")
    if not c["counterfactuals"]:
        out.append("<div><b>No edit changed the predicted label.</b></div></div>")
        return "".join(out)
    out.append("<table><tr><th>edits</th><th>new label</th><th>probability</th><th>edited text</th></tr>")
    for cf in c["counterfactuals"][:20]:
        edits = "; ".join(f"{e['original']} &rarr; {_e(e['replacement'])}" for e in cf["edits"])
        out.append(f"<tr><td>{edits}</td><td>{_e(cf['label'])}</td><td class='num'>{cf['probability']:.4f}</td>"
                   f"<td>{_e(cf['text'])}</td></tr>")
    more = len(c["counterfactuals"]) - 20
    out.append("</table>" + (f"<div class='note'>and {more} more in the JSON file</div>" if more > 0 else ""))
    out.append("</div>")
    return "".join(out)


def _curve(d: dict) -> str:
    """A small SVG of the deletion curves: top-attributed first (red) and random orders (grey)."""
    w, h, pad = 220, 110, 24

    def path(ys) -> str:
        return " ".join(f"{pad + x * (w - 2 * pad):.1f},{h - pad - y * (h - 2 * pad):.1f}"
                        for x, y in zip(d["fractions"], ys))

    return (f"<svg width='{w}' height='{h}'><rect x='{pad}' y='{pad}' width='{w - 2 * pad}' height='{h - 2 * pad}' "
            f"fill='none' stroke='#d0d7de'/><polyline fill='none' stroke='#8c959f' stroke-width='2' "
            f"points='{path(d['random'])}'/><polyline fill='none' stroke='#cf222e' stroke-width='2' "
            f"points='{path(d['top'])}'/><text x='{pad}' y='{h - 6}'>words removed &rarr;</text>"
            f"<text x='{pad}' y='14'>p(target)</text></svg>")


def _sanity(report: dict) -> str:
    if "sanity" not in report:
        return "<h2>Sanity checks</h2><div class='note'>Not run.</div>"
    out = ["<h2>Sanity checks</h2><div class='note'>Model randomization (Adebayo et al., 2018): the method on the "
           "model with re-initialized weights should correlate weakly (|Spearman| of |attributions| &lt; 0.5) with "
           "the trained model's. Deletion: removing the most attributed words first should lower the target's "
           "probability faster (smaller area) than random orders.</div><table><tr><th>method</th>"
           "<th>|Spearman| vs randomized</th><th></th><th>deletion AUC: top first</th><th>random</th><th></th>"
           "<th>curves (red: top first, grey: random)</th></tr>"]
    for name, s in report["sanity"].items():
        r, d = s["randomization"], s["deletion"]
        rho = r["stages"][-1]["spearman_abs"]
        out.append(f"<tr><td>{_e(name)}</td><td class='num'>{'n/a' if rho is None else f'{abs(rho):.3f}'}</td>"
                   f"<td>{_verdict(r['passed'])}</td><td class='num'>{d['auc_top']:.4f}</td>"
                   f"<td class='num'>{d['auc_random']:.4f}</td><td>{_verdict(d['passed'])}</td>"
                   f"<td>{_curve(d)}</td></tr>")
    out.append("</table>")
    return "".join(out)

