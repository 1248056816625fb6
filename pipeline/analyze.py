"""What is wrong with these images? ``python -m pipeline.analyze PATH… [--json]``

Prints one line per image — with ``--json`` the object
``{"path", "degradations": [{"type", "score", "params"}, …], "text", "classifier"}``, most likely
type first, ``classifier`` naming the weights that scored it (their digest, as in the sample json) —
or, for an unusable file, ``{"path", "error"}``; the batch always goes on. A directory stands for
the image files directly inside it. Exit status: 0 if every image was analysed; 1 if any file
failed (or none was found), counted on stderr's last line.
No model is downloaded: see pipeline/analysis.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline import cli
from pipeline.analysis.analyze import analyze
from pipeline.image_files import ImageError, images_in, load_rgb, read_bytes


def expand(paths: list[str]) -> list[str]:
    """Paths with each directory replaced by the image files directly inside it, sorted."""
    out = []
    for p in paths:
        if Path(p).is_dir():
            out.extend(str(f) for f in images_in(p))
        else:
            out.append(p)
    return out


def analyze_path(path: str) -> dict:
    """The output object for one file: its analysis, or its error."""
    try:
        loaded = load_rgb(path)
        data = read_bytes(path) if loaded.source_format == "JPEG" else None
        result = analyze(loaded.pixels, jpeg_bytes=data)
    except ImageError as e:
        return {"path": path, "error": e.reason}
    except ValueError as e:
        return {"path": path, "error": f"cannot analyse: {e}"}
    return {"path": path, "degradations": result.to_dict()["degradations"], "text": result.text,
            "classifier": result.classifier, **({"notes": list(loaded.notes)} if loaded.notes else {})}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.analyze", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories of images")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = expand(args.paths)
    failed = 0
    for path in paths:
        out = analyze_path(path)
        failed += "error" in out
        if args.json:
            print(json.dumps(out, ensure_ascii=False), flush=True)
        elif "error" in out:
            print(f"{path}: error: {out['error']}", flush=True)
        else:
            top = ", ".join(f"{d['type']} {d['score']:.2f}" for d in out["degradations"])
            print(f"{path}: {out['text']}  [{top}]", flush=True)
    if not paths:
        return cli.fail(f"no image files found in {' '.join(args.paths)}", status=1)
    if failed:
        # On stderr, so that --json output stays one object per line.
        return cli.fail(f"{failed} of {len(paths)} files could not be analysed (see their lines above)", status=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
