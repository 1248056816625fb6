"""A web page to restore a photo: see what is wrong with it, restore it, guide it, compare.

    python -m restore.app [--host 127.0.0.1] [--port 7860] [--checkpoint RUN_OR_CHECKPOINT]
                          [--preset offline|...] [--max-pixels N] [--device auto|cpu|cuda] [--threads N]

Then open http://127.0.0.1:7860. The page takes an upload or one of the example photos, shows the
weight-free analysis (each degradation type's score as a bar, the noise σ, JPEG quality,
exposure, haze and rain estimates, and the analysis's sentence), restores with the shipped
checkpoint (or ``--checkpoint``) automatically or guided by typed text, shows before | after on a
slider and offers the restored PNG at full resolution for download. Large images are restored in
tiles with a progress bar. It runs on the CPU. Gradio serves it, as the field's demos are served;
it listens on 127.0.0.1 only unless ``--host`` says otherwise, and sends no telemetry.

A file that cannot be restored (not an image, truncated, too large, too small) gets its reason
on the page; the server goes on serving.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Before gradio is imported: no usage statistics or version check leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pipeline.image_files import MAX_PIXELS, ImageError, LoadedImage, save_png  # noqa: E402
from restore import checkpoint as checkpoints  # noqa: E402
from restore.app_examples import write_examples  # noqa: E402
from restore.evaluate import add_device_arguments, load_restorer, pick_device, use_threads  # noqa: E402
from restore.infer import read_image, restore_one  # noqa: E402
from restore.model.tiling import WHOLE_IMAGE_PIXELS  # noqa: E402
from restore.priors_online import (  # noqa: E402
    PRESET_CHOICES,
    UserPriors,
    load_or_analysis_only,
    unused_words_note,
)

# The page restores on a CPU: past this many pixels a restoration takes many minutes. Larger
# images are refused with that reason (restore.infer takes them, tiled).
PAGE_MAX_PIXELS = 24_000_000


@dataclass(frozen=True)
class Restoration:
    """One photo through the page: what the analysis found and the restored pixels."""

    loaded: LoadedImage
    analysis: dict
    # The degradation text the restorer was given: the analysis's sentence, for its own types or
    # for those the user's words name.
    text: str
    restored: np.ndarray


def analysis_bars(analysis: dict) -> dict[str, float]:
    """The analysis's score per degradation type (and ``clean``), for the page's bar chart."""
    return {t: float(s) for t, s in analysis["scores"].items()}


def analysis_table(analysis: dict, loaded: LoadedImage, text: str) -> str:
    """Markdown: the analysis's sentence and estimates, the image's size and any conversion made."""
    est = analysis["estimates"]
    params = {d["type"]: d["params"] for d in analysis["degradations"]}
    rain = params.get("rain")
    rain_cell = (f"streaks at {rain['angle_deg']:.0f}°, covering {100 * rain['coverage']:.1f} %"
                 if rain else "none detected")
    rows = [
        ("noise σ (0–255)", f"{est['noise_sigma']:.1f}"),
        ("JPEG quality", f"{est['jpeg_quality']:.0f}" if est["jpeg_quality"] < 100 else "no blocking seen"),
        ("exposure (mean luminance)", f"{est['mean_luminance']:.2f}"),
        ("haze (1 − transmission)", f"{1 - est['transmission']:.2f}"),
        ("rain", rain_cell),
        ("edge width (px)", f"{est['edge_width_px']:.1f}"),
    ]
    lines = [f"**Analysis:** {analysis['text']}", ""]
    if text != analysis["text"]:
        lines += [f"**Restored as:** {text}", ""]
    lines += ["| estimate | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    size = f"{loaded.width} × {loaded.height} px, {loaded.source_format or 'image'}"
    notes = f"; {', '.join(loaded.notes)}" if loaded.notes else ""
    lines += ["", f"Image: {size}{notes}."]
    return "\n".join(lines)


class PhotoRestorer:
    """The restorer and its prior models, loaded once, shared by every request of the page."""

    def __init__(self, checkpoint: str | None = None, preset: str | None = None, device: str = "auto",
                 max_pixels: int = PAGE_MAX_PIXELS):
        self.device = pick_device(device)
        self.checkpoint = checkpoints.find(checkpoint)
        self.model, trained_preset = load_restorer(self.checkpoint, self.device)
        self.priors = load_or_analysis_only(preset or trained_preset or "analysis-only")
        self.max_pixels = max_pixels

    def prepare(self, path: str, name: str, degradation: str | None = None):
        """The decoded photo and its priors (``degradation``: the user's words, or None)."""
        raw, loaded = read_image(path, self.max_pixels)  # refuses images below the analysis's size
        user = UserPriors(degradation=degradation or None)
        sample = self.priors.sample(f"user/app/{Path(name).stem}", loaded.pixels,
                                    raw if loaded.source_format == "JPEG" else None, user)
        return loaded, sample

    def restore(self, path: str, name: str, degradation: str | None = None) -> Restoration:
        """Analyse and restore one uploaded file (tiles beyond 1 MP, with a tqdm bar per tile)."""
        loaded, sample = self.prepare(path, name, degradation)
        restored = restore_one(self.model, sample, self.device, label=f"restoring {name}")
        return Restoration(loaded, sample.meta.analysis, sample.meta.degradation_text, restored)


def build_page(restorer: PhotoRestorer, examples: list[Path], out_dir: Path):
    """The Gradio Blocks of the page."""
    import gradio as gr

    def upload_name(path: str | None) -> str:
        if not path:
            raise gr.Error("Choose a photo first: upload one or click an example.")
        return Path(path).name

    def failed(name: str, e: Exception) -> gr.Error:
        reason = e.reason if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
        return gr.Error(f"{name}: {reason}", title="Cannot restore this file", print_exception=False)

    def on_upload(path: str | None):
        if not path:
            return None, "", None
        name = Path(path).name
        try:
            loaded, sample = restorer.prepare(path, name)
        except (ValueError, OSError, MemoryError) as e:
            raise failed(name, e) from None
        return (analysis_bars(sample.meta.analysis),
                analysis_table(sample.meta.analysis, loaded, sample.meta.degradation_text), loaded.pixels)

    # Gradio finds the progress tracker by this default argument (its documented form).
    def on_restore(path: str | None, guide: str, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        name = upload_name(path)
        progress(0.0, desc="analysing")
        try:
            h = restorer.restore(path, name, guide.strip() or None)
        except (ValueError, OSError, MemoryError, RuntimeError) as e:
            raise failed(name, e) from None
        folder = Path(tempfile.mkdtemp(dir=out_dir))
        target = folder / f"{Path(name).stem}_restored.png"
        save_png(h.restored, str(target))
        tiled = h.loaded.height * h.loaded.width > WHOLE_IMAGE_PIXELS
        status = (f"Restored {name} ({h.loaded.width} × {h.loaded.height} px, "
                  f"{'in tiles' if tiled else 'whole image'}) as: *{h.text}*")
        note = unused_words_note(guide.strip())
        if note:
            status += f". Note: {note}."
        return (analysis_bars(h.analysis), analysis_table(h.analysis, h.loaded, h.text),
                (h.loaded.pixels, h.restored), str(target), status)

    with gr.Blocks(title="lmdir: restore a photo", analytics_enabled=False) as page:
        gr.Markdown("# lmdir: restore a photo\nOne model for noise, rain, haze, blur, low light, JPEG and "
                    "snow. Upload a photo (or pick an example): the analysis says what is wrong; "
                    "**Restore** fixes it, or type what to fix to guide it.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Photo", file_count="single", elem_id="photo")
                preview = gr.Image(label="Input", interactive=False, format="png", elem_id="preview")
                gr.Examples([[str(p)] for p in examples], inputs=[upload], label="Examples")
                guide = gr.Textbox(label="What to fix (optional)", elem_id="guide",
                                   placeholder="e.g. remove the rain; leave empty to restore what the analysis found")
                button = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column(scale=2):
                bars = gr.Label(label="Degradation scores (weight-free analysis)", num_top_classes=8,
                                elem_id="scores")
                details = gr.Markdown(elem_id="analysis")
                status = gr.Markdown(elem_id="status")
                slider = gr.ImageSlider(label="Before | after", format="png", max_height=800,
                                        buttons=["fullscreen"], elem_id="compare")
                download = gr.File(label="Restored PNG (full resolution)", elem_id="download")
        # A new file first clears what the last one showed, so a refused file never sits beside
        # the previous photo's analysis or result.
        upload.change(lambda: (None, "", None, None, None, ""),
                      outputs=[bars, details, preview, slider, download, status]).then(
            on_upload, inputs=[upload], outputs=[bars, details, preview])
        button.click(on_restore, inputs=[upload, guide], outputs=[bars, details, slider, download, status])
    return page


def page_theme():
    """Gradio's Soft theme on the system's fonts: the page fetches nothing from outside."""
    import gradio as gr

    return gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m restore.app", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves every interface)")
    ap.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    ap.add_argument("--checkpoint", default=None,
                    help="run folder or checkpoint folder (default: the checkpoint shipped in the package)")
    ap.add_argument("--preset", default=None, choices=PRESET_CHOICES,
                    help="prior models to use (default: the preset the restorer was trained with)")
    ap.add_argument("--max-pixels", type=int, default=PAGE_MAX_PIXELS,
                    help=f"refuse larger photos (default {PAGE_MAX_PIXELS}: minutes of CPU; at most {MAX_PIXELS})")
    ap.add_argument("--out", default=None,
                    help="folder for the examples and restored PNGs (default: a new temporary folder)")
    add_device_arguments(ap)
    args = ap.parse_args(argv)
    use_threads(args.threads)
    try:
        restorer = PhotoRestorer(args.checkpoint, args.preset, args.device, min(args.max_pixels, MAX_PIXELS))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out or tempfile.mkdtemp(prefix="lmdir-app-"))
    page = build_page(restorer, write_examples(out / "examples"), out)
    print(f"lmdir page: http://{args.host}:{args.port}  (checkpoint {restorer.checkpoint}, "
          f"priors {restorer.priors.preset}, device {restorer.device}); Ctrl-C stops it", flush=True)
    try:
        page.queue(default_concurrency_limit=1).launch(
            server_name=args.host, server_port=args.port, theme=page_theme(), show_error=True,
            allowed_paths=[str(out)], quiet=True, footer_links=[])
    except KeyboardInterrupt:
        print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
