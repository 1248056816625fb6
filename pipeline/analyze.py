"""What is wrong with these images? ``python -m pipeline.analyze PATH… [--json]``

Prints one line per image — with ``--json`` the object
``{"path", "degradations": [{"type", "score", "params"}, …], "text", "classifier"}``, most likely
type first, ``classifier`` naming the weights that scored it (their digest, as in the sample json) —
or, for an unusable file, ``{"path", "error"}``; the batch always goes on. A directory stands for
the image files directly inside it. Exit status: 0 if any image was analysed, 1 if none was.
No model is downloaded: see pipeline/analysis.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.analyze", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories of images")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args(argv)
    paths = expand(args.paths)
    ok = 0
    for path in paths:
        out = analyze_path(path)
        ok += "error" not in out
        if args.json:
            print(json.dumps(out, ensure_ascii=False), flush=True)
        elif "error" in out:
            print(f"{path}: error: {out['error']}", flush=True)
        else:
            top = ", ".join(f"{d['type']} {d['score']:.2f}" for d in out["degradations"])
            print(f"{path}: {out['text']}  [{top}]", flush=True)
    if not paths:
        print("no image files found", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
