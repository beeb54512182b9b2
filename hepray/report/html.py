"""``<run_dir>/report.html``: one page per run with the job, its summary and metrics as tables and
every plot; ``hepray report RUN_DIR`` writes it again, and the demo links every step's page
from ``runs/demo/index.html``. Plain HTML with relative links: it opens from a disk, a web
server or an object store alike, and needs nothing but the run folder.

>>> write_report("runs/demo/templates")   # doctest: +SKIP
PosixPath('runs/demo/templates/report.html')
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path

IMAGES = (".png", ".svg", ".jpg", ".jpeg", ".gif")
TABLES = ("metrics.json", "fit.json")  # next to summary.json, when the workload writes them
MAX_LIST = 12  # longer lists are shortened in the tables

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.k{font-family:monospace;white-space:nowrap}
pre{background:#f7f7f7;padding:.8em;font-size:.8em;overflow:auto}.plots{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;max-width:48%}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.75em;color:#555}"""


def _flatten(obj, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    if isinstance(obj, list) and obj and all(isinstance(v, Mapping) for v in obj[:MAX_LIST]):
        for i, v in enumerate(obj[:MAX_LIST]):
            rows += _flatten(v, f"{prefix}[{i}]")
        if len(obj) > MAX_LIST:
            rows.append((f"{prefix}[...]", f"{len(obj) - MAX_LIST} more"))
        return rows
    if isinstance(obj, list):
        text = ", ".join(_fmt(v) for v in obj[:MAX_LIST]) + (f", ... ({len(obj)} in all)" if len(obj) > MAX_LIST else "")
        return [(prefix, f"[{text}]")]
    return [(prefix, _fmt(obj))]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)[:200]
    return str(v)


def _table(obj) -> str:
    rows = "".join(f"<tr><td class=k>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _flatten(obj))
    return f"<table><tr><th>field</th><th>value</th></tr>{rows}</table>"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def images(run_dir: Path) -> list[Path]:
    """Every image under the run folder (plots/ and workload folders), parts excluded."""
    return sorted(p for p in run_dir.rglob("*") if p.suffix.lower() in IMAGES and p.is_file()
                  and "parts" not in p.relative_to(run_dir).parts[:1])


def render(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    summary = _read_json(run_dir / "summary.json") or {}
    title = f"hepray {summary.get('kind', '')}: {summary.get('job', run_dir.name)}"
    out = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
           f"<p>run folder <code>{html.escape(str(run_dir))}</code></p>"]
    if summary:
        brief = {k: v for k, v in summary.items() if k not in ("redone", "scan")}
        out.append("<h2>Summary</h2>" + _table(brief))
    for name in TABLES:
        data = _read_json(run_dir / name)
        if data:
            if isinstance(data, Mapping):
                data = {k: v for k, v in data.items() if k != "scan"}
            out.append(f"<h2>{html.escape(name)}</h2>" + _table(data))
    pics = images(run_dir)
    if pics:
        figs = "".join(f'<figure><a href="{html.escape(p.relative_to(run_dir).as_posix())}"><img src="'
                       f'{html.escape(p.relative_to(run_dir).as_posix())}" alt="{html.escape(p.stem)}"></a>'
                       f"<figcaption>{html.escape(p.relative_to(run_dir).as_posix())}</figcaption></figure>"
                       for p in pics)
        out.append(f"<h2>Plots ({len(pics)})</h2><div class=plots>{figs}</div>")
    files = [n for n in ("templates.root", "workspace.json", "datacard.txt", "fit.json", "metrics.json",
                         "parts/_manifest.json") if (run_dir / n).is_file()]
    if files:
        out.append("<h2>Files</h2><ul>" + "".join(f'<li><a href="{html.escape(n)}">{html.escape(n)}</a></li>'
                                                  for n in files) + "</ul>")
    job = run_dir / "job.yaml"
    if job.is_file():
        out.append(f"<h2>Job</h2><pre>{html.escape(job.read_text())}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.html`` (a local run folder) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        from ..errors import InputError

        raise InputError(str(run_dir), "not a run folder (no such directory)")
    if not (run_dir / "summary.json").is_file() and not (run_dir / "job.yaml").is_file():
        from ..errors import InputError

        raise InputError(str(run_dir), "not a hepray run folder (no summary.json or job.yaml)")
    path = run_dir / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(render(run_dir))
    tmp.replace(path)
    return path


def write_index(root: str | Path, steps: Mapping[str, dict], title: str = "hepray demo") -> Path:
    """``<root>/index.html`` linking each step's ``report.html`` (relative links), with its time
    and headline numbers."""
    root = Path(root)
    rows = []
    for name, r in steps.items():
        run_dir = Path(r.get("run_dir") or "")
        report = run_dir / "report.html"
        try:
            link = report.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            link = report.resolve().as_uri()
        brief = ", ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in ("run_dir", "seconds"))
        rows.append(f'<tr><td><a href="{html.escape(link)}">{html.escape(name)}</a></td>'
                    f"<td>{r.get('seconds', '')}</td><td>{html.escape(brief)}</td></tr>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{CSS}"
            f"</style></head><body><h1>{html.escape(title)}</h1><table><tr><th>step</th><th>seconds</th>"
            f"<th>results</th></tr>{''.join(rows)}</table></body></html>")
    root.mkdir(parents=True, exist_ok=True)
    path = root / "index.html"
    path.write_text(page)
    return path
