"""The comparison page: `comparison.html` and its PNG plots, in the run report's style, from
`comparison.json` and the trainers' logs only (it opens from disk with no network)."""

import html
import json
import os

from crawl2clip.transforms.compare.train import read_training

PAGE = "comparison.html"
PLOTS = "comparison-plots"
RECALL_KS = (1, 5, 10)
COLORS = ("#3b7dd8", "#2a9d55", "#e0a030", "#8a5cc2", "#d94b3b", "#4bb8c4")


def _plots(comparison: dict, output: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(os.path.join(output, PLOTS), exist_ok=True)
    rows = comparison["variants"]
    names = [row["variant"] for row in rows]
    plots = {}

    def save(fig, name: str) -> None:
        path = os.path.join(PLOTS, f"{name}.png")
        fig.tight_layout()
        fig.savefig(os.path.join(output, path), dpi=90)
        plt.close(fig)
        plots[name] = path

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(rows)))
    ax.barh(names[::-1], [row["rows"] for row in rows][::-1], color="#3b7dd8")
    ax.set_xlabel("training pairs")
    ax.set_title("Training set of each variant")
    save(fig, "training_pairs")

    trained = [row for row in rows if row.get("image_to_text_recall@1") is not None]
    if trained:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
        width = 0.8 / len(trained)
        for ax, direction, title in ((axes[0], "image_to_text", "image → text"),
                                     (axes[1], "text_to_image", "text → image")):
            for i, row in enumerate(trained):
                values = [row[f"{direction}_recall@{k}"] for k in RECALL_KS]
                ax.bar(np.arange(len(RECALL_KS)) + i * width, values, width, label=row["variant"],
                       color=COLORS[i % len(COLORS)])
            ax.set_xticks(np.arange(len(RECALL_KS)) + width * (len(trained) - 1) / 2, [f"R@{k}" for k in RECALL_KS])
            ax.set_title(f"Held-out retrieval, {title}")
        axes[0].set_ylabel("recall")
        axes[1].legend(fontsize=8)
        save(fig, "retrieval")

    zero_shot = [row for row in rows if row.get("zero_shot_top1") is not None]
    if zero_shot:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([row["variant"] for row in zero_shot], [row["zero_shot_top1"] for row in zero_shot],
               color=[COLORS[i % len(COLORS)] for i in range(len(zero_shot))])
        ax.set_ylabel("top-1 accuracy")
        ax.set_title("Zero-shot classification")
        save(fig, "zero_shot")

    curves = [(row["variant"], read_training(os.path.join(output, "train", _slug(row["variant"])))["losses"])
              for row in rows if row["status"] == "trained"]
    if any(losses for _, losses in curves):
        fig, ax = plt.subplots(figsize=(6, 3))
        for i, (name, losses) in enumerate(curves):
            ax.plot(range(1, len(losses) + 1), losses, label=name, color=COLORS[i % len(COLORS)], linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("contrastive loss (batch)")
        ax.legend(fontsize=8)
        ax.set_title("Training loss")
        save(fig, "loss")
    return plots


def _slug(name: str) -> str:
    return name.replace(":", "-")


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _page(comparison: dict, plots: dict[str, str]) -> str:
    e = html.escape
    settings = comparison["settings"]["training"]
    held = comparison["held_out"]
    columns = [("variant", "variant"), ("status", "status"), ("rows", "training pairs"), ("steps", "steps"),
               ("samples_seen", "samples seen"), ("final_loss", "final loss")]
    columns += [(f"image_to_text_recall@{k}", f"I→T R@{k}") for k in RECALL_KS]
    columns += [(f"text_to_image_recall@{k}", f"T→I R@{k}") for k in RECALL_KS]
    columns += [("zero_shot_top1", "zero-shot top-1"), ("zero_shot_top5", "top-5")]
    header = "".join(f"<th>{e(label)}</th>" for _, label in columns)
    body = "".join("<tr>" + "".join(f"<td class={'n' if i > 1 else 't'}>{_cell(row.get(key))}</td>"
                                    for i, (key, _) in enumerate(columns)) + "</tr>" for row in comparison["variants"])
    notes = [f"{row['variant']}: {row['note']}" for row in comparison["variants"] if row.get("note")]
    notes += comparison.get("notes", [])
    note_html = "".join(f"<p class=note>{e(note)}</p>" for note in notes)
    errors = "".join(f"<tr><td>{e(reason)}</td><td class=n>{n:,}</td></tr>"
                     for reason, n in comparison.get("errors", {}).items()) or "<tr><td colspan=2>none</td></tr>"
    zero_shot = comparison.get("zero_shot")
    zero_text = "no zero-shot dataset" if not zero_shot else (
        f"zero-shot: {zero_shot['images']:,} images of {len(zero_shot['classes'])} classes, "
        f"{zero_shot['prompts']} prompts per class ({zero_shot['dir']})")
    figures = "".join(f"<figure><img src='{e(path)}' alt='{e(name)}'><figcaption>{e(name)}</figcaption></figure>"
                      for name, path in plots.items())
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>crawl2clip comparison</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}}
table{{border-collapse:collapse;margin:0 2em 1em 0;display:inline-table;vertical-align:top}}
td,th{{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:left}} .n{{text-align:right}}
figure{{display:inline-block;margin:0 1em 1em 0}} figure img{{max-width:560px}}
.note{{background:#fff4d6;padding:.4em .8em}}
</style></head><body>
<h1>crawl2clip comparison</h1>
<p>{e(comparison['run'])}</p>
<p id=compute>Every variant: {e(str(settings['model']))} from scratch, {settings['steps']:,} steps × batch
{settings['batch_size']} = {settings['steps'] * settings['batch_size']:,} samples seen, seed {settings['seed']},
learning rate {settings['lr']}, open_clip's trainer.</p>
<p id=held-out>Held out before any variant: {held['pairs']:,} of {held['downloaded']:,} downloaded pairs
({held['images']:,} images, {held['texts']:,} captions); {e(zero_text)}.</p>
{note_html}
<h2>Results</h2><table id=comparison><tr>{header}</tr>{body}</table>
<table id=errors><tr><th>errors</th><th>count</th></tr>{errors}</table>
<h2>Plots</h2>
{figures}
</body></html>
"""


def write_page(output: str) -> str:
    """Writes OUTPUT/comparison.html and OUTPUT/comparison-plots/*.png; returns the page's path."""
    with open(os.path.join(output, "comparison.json")) as f:
        comparison = json.load(f)
    page = os.path.join(output, PAGE)
    with open(page, "w") as f:
        f.write(_page(comparison, _plots(comparison, output)))
    return page
