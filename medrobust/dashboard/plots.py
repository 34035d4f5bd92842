"""Plotly figures for the dashboard, built from result dicts and progress records (no Streamlit here).

Every figure colours a model with :func:`medrobust.dashboard.palette.colour_for`, so a model has the same
colour on every page. A degenerate model is drawn dashed and marked "⚠" in the legend.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from medrobust.metrics import predictive_entropy
from medrobust import report
from medrobust.report import METRIC_LABELS
from medrobust.dashboard.palette import colour_for, rgba

NOISE_TITLES = {"gaussian": "Gaussian noise", "salt_and_pepper": "Salt & pepper", "speckle": "Speckle noise"}
LN2 = math.log(2.0)


def result_colour(r: dict[str, Any]) -> str:
    return r.get("_colour") or colour_for(r.get("_run") or r["name"], r.get("method"), shipped=not r.get("_run"))


def _legend_name(r: dict[str, Any]) -> str:
    return f"⚠ {r['name']} (degenerate)" if r.get("degenerate") else r["name"]


def _series(r: dict[str, Any], pert: str, metric: str, *, with_clean: bool) -> tuple[list, list, list, list]:
    rows = [x for x in r["rows"] if x["perturbation"] == pert]
    if with_clean:
        rows = [x for x in r["rows"] if x["perturbation"] == "clean"] + rows
    xs = [0.0 if x["perturbation"] == "clean" else x["severity"] for x in rows]
    ys = [x[metric] for x in rows]
    lo = [x.get("ci", {}).get(metric, [math.nan, math.nan])[0] for x in rows]
    hi = [x.get("ci", {}).get(metric, [math.nan, math.nan])[1] for x in rows]
    return xs, ys, lo, hi


METRIC_TITLES = METRIC_LABELS


def _suite_columns(results: Sequence[dict[str, Any]], suite: str) -> list[tuple[str, str]]:
    norm = results[0].get("params", {}).get("norm", "l2") if results else "l2"
    cols = [(f"pgd_{norm}", f"Attack {norm.upper()}, worst case (eps at 224 px)")]
    if suite == "paper":
        return cols + list(NOISE_TITLES.items())
    perts = dict.fromkeys(x["perturbation"] for r in results for x in r["rows"] if x.get("suite") == suite)
    return cols + [(p, p.split("/", 1)[-1].replace("_", " ")) for p in perts]


def robustness_curves(results: Sequence[dict[str, Any]], *, metric: str = "balanced_accuracy", suite: str = "paper",
                      height: int | None = None) -> go.Figure:
    """``metric`` (accuracy, balanced accuracy or AUROC) against PGD eps and each corruption's severity in
    ``suite`` ("paper": the paper's noises at 0.1-1.0; "clinical": nine corruptions at levels 1-5), with
    95 % CI error bars; x = 0 is the clean score. Chance is dotted: 1/K for balanced accuracy, 0.5 for AUROC."""
    if metric not in METRIC_TITLES:
        raise ValueError(f"Unknown metric {metric!r}; choose one of {', '.join(METRIC_TITLES)}.")
    cols = _suite_columns(results, suite)
    chance = report.chance_balanced_accuracy(results) if metric == "balanced_accuracy" else 0.5
    ncols = min(5, len(cols))
    nrows = -(-len(cols) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, shared_yaxes=True, horizontal_spacing=0.03, vertical_spacing=0.16,
                        subplot_titles=[t for _, t in cols])
    for r in results:
        colour = result_colour(r)
        dash = "dash" if r.get("degenerate") else "solid"
        for i, (pert, _) in enumerate(cols):
            row, col = divmod(i, ncols)
            xs, ys, lo, hi = _series(r, pert, metric, with_clean=True)
            if len(xs) <= 1:
                continue
            err_p = [h - y if not math.isnan(h) else 0 for h, y in zip(hi, ys)]
            err_m = [y - l if not math.isnan(l) else 0 for l, y in zip(lo, ys)]
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=_legend_name(r), legendgroup=r["name"],
                showlegend=(i == 0), line=dict(color=colour, dash=dash, width=2),
                marker=dict(size=5), error_y=dict(type="data", array=err_p, arrayminus=err_m, thickness=1,
                                                  width=2, color=rgba(colour, 0.5)),
                hovertemplate=f"{r['name']}<br>%{{x}}: %{{y:.3f}}<extra>{METRIC_TITLES[metric]}</extra>"),
                row=row + 1, col=col + 1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".2f" if metric == "auroc" else ".0%")
    for row in range(1, nrows + 1):
        fig.update_yaxes(title_text=METRIC_TITLES[metric], row=row, col=1)
    for i, (pert, _) in enumerate(cols):
        row, col = divmod(i, ncols)
        fig.update_xaxes(title_text="eps" if i == 0 else ("level" if suite == "clinical" else "severity"),
                         row=row + 1, col=col + 1)
        if metric != "accuracy":
            fig.add_hline(y=chance, line=dict(color="#999", width=1, dash="dot"), row=row + 1, col=col + 1)
    fig.update_layout(height=height or 320 * nrows + 80, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.12), hovermode="closest")
    return fig


def reliability_diagram(r: dict[str, Any], *, height: int = 420) -> go.Figure:
    """Accuracy vs confidence per bin (bars), the gap to the diagonal (red), and the counts below."""
    colour = result_colour(r)
    bins = r.get("reliability") or []
    cal = r.get("calibration", {})
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.05)
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    widths = [b["upper"] - b["lower"] for b in bins]
    filled = [i for i, b in enumerate(bins) if b["count"] > 0]
    fig.add_trace(go.Bar(x=[centres[i] for i in filled], y=[bins[i]["accuracy"] for i in filled],
                         width=[widths[i] * 0.95 for i in filled], marker_color=colour, name="accuracy",
                         hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=[centres[i] for i in filled], y=[bins[i]["gap"] for i in filled],
                         base=[bins[i]["accuracy"] for i in filled], width=[widths[i] * 0.95 for i in filled],
                         marker=dict(color="rgba(214,39,40,0.35)", line=dict(color="rgba(214,39,40,0.9)", width=1)),
                         name="gap (confidence − accuracy)",
                         hovertemplate="gap %{y:+.2f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#444", dash="dash", width=1),
                             name="perfect calibration", hoverinfo="skip"), row=1, col=1)
    fig.add_trace(go.Bar(x=centres, y=[b["count"] for b in bins], width=[w * 0.95 for w in widths],
                         marker_color=rgba(colour, 0.6), name="images per bin", showlegend=False,
                         hovertemplate="%{y:.0f} images<extra></extra>"), row=2, col=1)
    title = (f"{_legend_name(r)} — RMSCE {cal.get('rmsce', math.nan):.3f} "
             f"(plug-in {cal.get('rmsce_plugin', math.nan):.3f}), ECE {cal.get('ece', math.nan):.3f}")
    lo = min([bins[i]["lower"] for i in filled], default=0.0)
    fig.update_xaxes(range=[min(lo, 0.45), 1.0], row=1, col=1)
    fig.update_xaxes(range=[min(lo, 0.45), 1.0], title_text="confidence (top-class probability)", row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="count", row=2, col=1)
    fig.update_layout(title=dict(text=title, font=dict(size=14)), barmode="overlay", height=height,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0,
                                                                       font=dict(size=10)),
                      showlegend=True)
    fig.update_layout(title_y=0.98, legend_y=1.02)
    return fig


def clean_probs(r: dict[str, Any]) -> np.ndarray:
    """The clean test images' class probabilities (N, K) a result carries (K = 2 results keep P(second class))."""
    pred = r.get("predictions", {})
    if pred.get("probs"):
        return np.asarray(pred["probs"], dtype=np.float64)
    p = np.asarray(pred.get("p_covid", []), dtype=np.float64)
    return np.stack([1 - p, p], axis=1) if p.size else np.zeros((0, 2))


def _confidence(r: dict[str, Any]) -> np.ndarray:
    return clean_probs(r).max(axis=1) if clean_probs(r).size else np.zeros(0)


def confidence_histograms(results: Sequence[dict[str, Any]], *, height: int = 360) -> go.Figure:
    """Distribution of the top-class probability on the clean test images, per model (from 1/K up to 1)."""
    fig = go.Figure()
    lowest = 0.5
    for r in results:
        conf = _confidence(r)
        if conf.size == 0:
            continue
        lowest = min(lowest, 1.0 / max(2, len(r.get("classes") or (0, 0))))
        fig.add_trace(go.Histogram(x=conf, name=_legend_name(r), marker_color=result_colour(r), opacity=0.55,
                                   xbins=dict(start=0.0, end=1.0, size=0.025), histnorm="percent"))
    fig.update_layout(barmode="overlay", height=height, xaxis_title="confidence (top-class probability)",
                      yaxis_title="% of test images", margin=dict(l=10, r=10, t=30, b=10),
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(range=[lowest, 1.0])
    return fig


def entropy_figure(results: Sequence[dict[str, Any]], *, height: int = 360) -> go.Figure:
    """Per-sample predictive entropy (box) and its mean (diamond) per model; ln K is the maximum."""
    fig = go.Figure()
    top = LN2
    for r in results:
        p = clean_probs(r)
        colour = result_colour(r)
        top = max(top, math.log(max(2, p.shape[1] if p.size else len(r.get("classes") or (0, 0)))))
        if p.size:
            ent = predictive_entropy(probs=p)
            fig.add_trace(go.Box(y=ent, name=_legend_name(r), marker_color=colour, boxmean=True, showlegend=False))
        else:
            fig.add_trace(go.Scatter(x=[_legend_name(r)], y=[r["calibration"]["entropy"]], mode="markers",
                                     marker=dict(color=colour, size=12, symbol="diamond"), showlegend=False))
    k = round(math.exp(top))
    fig.add_hline(y=top, line=dict(color="#999", dash="dot"), annotation_text=f"ln {k} (maximal uncertainty)",
                  annotation_position="top left")
    fig.update_layout(height=height, yaxis_title="predictive entropy (nats)", yaxis_range=[0, top * 1.08],
                      margin=dict(l=10, r=10, t=30, b=10))
    return fig


def confusion_figure(r: dict[str, Any], *, height: int = 360) -> go.Figure:
    """The clean confusion matrix of one result (rows = true class), as row percentages with counts."""
    cm = np.asarray(r["clean"]["confusion"], dtype=np.float64)
    classes = list(r.get("classes") or range(cm.shape[0]))
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) * 100
    text = [[f"{pct[i, j]:.0f} %<br>({int(cm[i, j])})" for j in range(cm.shape[1])] for i in range(cm.shape[0])]
    fig = go.Figure(go.Heatmap(z=pct, x=classes, y=classes, text=text, texttemplate="%{text}", zmin=0, zmax=100,
                               colorscale="Blues", showscale=False))
    fig.update_layout(height=height, title=_legend_name(r), xaxis_title="predicted", yaxis_title="true",
                      yaxis_autorange="reversed", margin=dict(l=10, r=10, t=40, b=10))
    return fig


def loss_figure(steps: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]], *, colour: str,
                height: int = 300) -> go.Figure:
    """Training loss per logged step, and mean loss per epoch."""
    fig = go.Figure()
    if steps:
        fig.add_trace(go.Scatter(x=[s["step"] for s in steps], y=[s["loss"] for s in steps], mode="lines+markers",
                                 name="loss (step)", line=dict(color=rgba(colour, 0.5), width=1), marker=dict(size=4)))
    if epochs:
        spe = max(1, max((s["step"] for s in steps), default=1) // max(1, len(epochs))) if steps else 1
        fig.add_trace(go.Scatter(x=[e["epoch"] * spe for e in epochs], y=[e.get("train_loss") for e in epochs],
                                 mode="lines+markers", name="mean loss (epoch)", line=dict(color=colour, width=2)))
    fig.update_layout(height=height, xaxis_title="step", yaxis_title="training loss",
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def validation_figure(epochs: Sequence[dict[str, Any]], *, colour: str, height: int = 300) -> go.Figure:
    """Validation accuracy and balanced accuracy per epoch (collapse shows as bal. acc near 50 %)."""
    fig = go.Figure()
    xs = [e["epoch"] for e in epochs]
    fig.add_trace(go.Scatter(x=xs, y=[e.get("val", {}).get("accuracy") for e in epochs], mode="lines+markers",
                             name="val accuracy", line=dict(color=colour, width=2)))
    fig.add_trace(go.Scatter(x=xs, y=[e.get("val", {}).get("balanced_accuracy") for e in epochs],
                             mode="lines+markers", name="val balanced accuracy", line=dict(color=colour, dash="dash")))
    fig.add_trace(go.Scatter(x=xs, y=[e.get("train_accuracy") for e in epochs], mode="lines",
                             name="train accuracy", line=dict(color="#999", width=1)))
    fig.add_hline(y=0.5, line=dict(color="#bbb", dash="dot"))
    fig.update_layout(height=height, xaxis_title="epoch", yaxis=dict(range=[0, 1.02], tickformat=".0%"),
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.3))
    return fig


def flip_eps_figure(items: Sequence[tuple[str, str, float | None]], *, max_eps: float, height: int = 260) -> go.Figure:
    """Smallest flipping eps per model (name, colour, eps or None = not flipped up to max_eps)."""
    fig = go.Figure()
    for name, colour, eps in items:
        fig.add_trace(go.Bar(x=[name], y=[eps if eps is not None else max_eps], marker_color=colour,
                             marker_pattern_shape="" if eps is not None else "/", showlegend=False,
                             text=[f"{eps:.2f}" if eps is not None else f"> {max_eps:g}"], textposition="outside",
                             hovertemplate=f"{name}: %{{text}}<extra></extra>"))
    fig.update_layout(height=height, yaxis=dict(title="smallest flipping eps (L2 @224 px)", range=[0, max_eps * 1.2]),
                      margin=dict(l=10, r=10, t=20, b=10))
    return fig


def risk_coverage_figure(results: Sequence[dict[str, Any]], *, condition: str = "clean@0", height: int = 340) -> go.Figure:
    """Risk (error rate of the answered cases) against coverage (fraction answered, most confident first), one line
    per model with a fitted decision rule, at ``condition`` (a key of ``trust.assessment.conditions``)."""
    fig = go.Figure()
    for r in results:
        conds = {c["condition"]: c for c in ((r.get("trust") or {}).get("assessment") or {}).get("conditions", [])}
        c = conds.get(condition)
        if not c or not c.get("curve"):
            continue
        fig.add_trace(go.Scatter(x=c["curve"]["coverage"], y=c["curve"]["risk"], mode="lines",
                                 name=f"{_legend_name(r)} (AURC {c['aurc']:.3f})",
                                 line=dict(color=result_colour(r), width=2),
                                 hovertemplate=f"{r['name']}<br>answered %{{x:.0%}}: error %{{y:.1%}}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.25),
                      xaxis_title="coverage: fraction of images answered (most confident first)",
                      yaxis_title="error rate of the answered images")
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig
