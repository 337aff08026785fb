"""The reuse dashboard: a FastAPI app serving server-rendered pages of one store.

Pages: `/` studies, `/study/<name>` one study, `/cache` every entry,
`/entry/<key>` one entry. JSON: `/api/fingerprint` (pages poll it and reload
when the store changed: live while a study runs), `/api/verify` (checks every
entry's files in a background thread), `/api/studies`.

Read-only: the store is opened without creating anything and only read
(listings, JSON docs, manifests, entry files for verify and the trajectory
plot). Links to Prefect flow runs use the Prefect UI when its URL is known.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from cache.keys import is_key
from cache.store import ArtifactStore, CorruptEntryError, EntryNotFoundError, StoreError
from dashboard import data, svg, views
from flows.run_records import round_sig

__all__ = ["DEFAULT_PORT", "create_app", "prefect_ui_url", "serve"]

DEFAULT_PORT = 8765
HERE = Path(__file__).parent
AUTO_VERIFY_BYTES = 512 * 2**20  # verify on first visit of the cache page up to this size


def prefect_ui_url() -> str | None:
    """The Prefect UI to link runs to: $PREFECT_UI_URL, else from the API memotune uses."""
    if os.environ.get("PREFECT_UI_URL"):
        return os.environ["PREFECT_UI_URL"].rstrip("/")
    from flows.server import api_url, configured_api, healthy

    api = configured_api()
    if api is None and healthy(api_url(), timeout=0.5):
        api = api_url()
    return ui_from_api(api) if api else None


def ui_from_api(api: str) -> str:
    api = api.rstrip("/")
    if "api.prefect.cloud/api/accounts/" in api:  # Prefect Cloud
        rest = api.split("/api/accounts/", 1)[1]
        account, _, workspace = rest.partition("/workspaces/")
        return f"https://app.prefect.cloud/account/{account}/workspace/{workspace}"
    return api.removesuffix("/api")


class _Verifier:
    """`store.verify_all()` in a background thread; one at a time, result kept."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.report: dict[str, list[str]] | None = None
        self.error: str | None = None
        self.started: float | None = None
        self.finished: float | None = None

    def start(self) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return
            self.started, self.finished, self.error = time.time(), None, None
            self.thread = threading.Thread(target=self._run, daemon=True,
                                           name="memotune-dashboard-verify")
            self.thread.start()

    def _run(self) -> None:
        try:
            report = self.store.verify_all()
            error = None
        except Exception as e:  # shown on the page; the dashboard keeps serving
            report, error = None, f"{type(e).__name__}: {e}"
        with self.lock:
            self.report, self.error, self.finished = report, error, time.time()

    def state(self) -> dict[str, Any]:
        with self.lock:
            running = self.thread is not None and self.thread.is_alive()
            report = self.report
            out: dict[str, Any] = {"state": "running" if running else
                                   ("done" if self.finished else "idle"),
                                   "started": self.started, "finished": self.finished,
                                   "error": self.error}
        if report is not None:
            leftovers = {k for k, v in report.items() if v and all(
                "uncommitted garbage" in i or "(orphan)" in i for i in v)}
            damaged = {k: v for k, v in report.items() if v and k not in leftovers}
            out.update(checked=len(report) - len(leftovers), damaged=damaged,
                       leftovers=sorted(leftovers),
                       sound=sorted(k for k, v in report.items() if not v))
        return out


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 100:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _fmt_size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _fmt_when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _fmt_ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = max(0.0, time.time() - ts)
    if d < 90:
        return f"{d:.0f} s ago"
    if d < 5400:
        return f"{d / 60:.0f} min ago"
    if d < 2 * 86400:
        return f"{d / 3600:.1f} h ago"
    return f"{d / 86400:.0f} days ago"


def _fmt_sig(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{round_sig(v):g}"
    return str(v)


def _fmt_objective(v: Any) -> str:
    """Objectives with 5 significant digits (params get 4): close trials stay apart."""
    return f"{round_sig(float(v), 5):g}" if isinstance(v, int | float) else _fmt_sig(v)


def create_app(store_url: str, prefect_ui: str | None = None, poll_s: float = 5.0) -> FastAPI:
    """The app for one store. `prefect_ui`: base URL of the Prefect UI for run links."""
    store = ArtifactStore(store_url)  # no I/O, creates nothing
    verifier = _Verifier(store)
    app = FastAPI(title="memotune reuse dashboard", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters.update(seconds=_fmt_seconds, size=_fmt_size, when=_fmt_when, ago=_fmt_ago,
                       sig=_fmt_sig, obj=_fmt_objective)
    env.globals.update(store_url=store.url, prefect_ui=prefect_ui, poll_ms=int(poll_s * 1000),
                       reuse_color=svg.reuse_color)

    def run_link(run_id: str | None) -> str | None:
        if not prefect_ui or not run_id:
            return None
        return f"{prefect_ui}/runs/flow-run/{run_id}"

    env.globals["run_link"] = run_link

    def page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        try:
            fp = data.fingerprint(store)
        except StoreError:
            fp = ""
        return templates.TemplateResponse(request, name, {"fingerprint": fp, **ctx})

    def snapshot(**kw: Any) -> data.Snapshot:
        try:
            return data.read_snapshot(store, **kw)
        except StoreError as e:
            raise HTTPException(503, f"cannot read the store: {e}") from None

    @app.get("/", response_class=HTMLResponse)
    def studies_page(request: Request) -> HTMLResponse:
        snap = snapshot(entries=False)
        rows = views.study_rows(snap)
        used = views.usages(snap)
        totals = {"studies": len(rows), "runs": len(snap.runs),
                  "saved_s": sum(u.stage.saved_s for u in used),
                  "stage_runs": len(used), "reused": sum(u.stage.cached for u in used)}
        return page(request, "studies.html", rows=rows, runs=views.runs_of(snap),
                    totals=totals, skipped=snap.skipped,
                    live=any(r.state == "running" for r in rows))

    @app.get("/study/{name}", response_class=HTMLResponse)
    def study_page(request: Request, name: str) -> HTMLResponse:
        skipped: list[str] = []
        try:
            rec = data.read_study(store, name, skipped)
        except StoreError as e:
            raise HTTPException(503, f"cannot read the store: {e}") from None
        if rec is None:
            raise HTTPException(404, f"no readable study {name!r} in this store"
                                + (f" ({skipped[0]})" if skipped else ""))
        roots, columns = views.reuse_tree(rec.trials)
        columns_p = rec.param_columns()
        trials = [(t, t.flat_params(rec.tuned_stages)) for t in rec.trials]
        best = rec.best
        return page(request, "study.html", rec=rec, state=views.study_state(rec),
                    trials=trials, param_columns=columns_p, best=best,
                    rungs=any(t.rung is not None for t in rec.trials),
                    progress_svg=svg.progress_svg(rec), cost_svg=svg.cost_svg(rec),
                    legend=svg.legend_html(max((len(t.stages) for t in rec.trials), default=4)),
                    tree_svg=svg.tree_svg(columns), n_nodes=sum(len(c) for c in columns),
                    columns=columns, objective=_objective_label(rec),
                    live=views.study_state(rec) == "running")

    @app.get("/cache", response_class=HTMLResponse)
    def cache_page(request: Request) -> HTMLResponse:
        snap = snapshot()
        state = verifier.state()
        report = verifier.report if state["state"] == "done" else None
        rows = views.entry_rows(snap, report)
        totals = views.cache_totals(rows, snap)
        if state["state"] == "idle" and totals.bytes <= AUTO_VERIFY_BYTES:
            verifier.start()
            state = verifier.state()
        return page(request, "cache.html", rows=rows, totals=totals, verify=state,
                    skipped=snap.skipped, live=False)

    @app.get("/entry/{key}", response_class=HTMLResponse)
    def entry_page(request: Request, key: str) -> HTMLResponse:
        m = _manifest(store, key)
        snap = snapshot(entries=False)
        snap.entries = [m]
        row = views.entry_rows(snap)[0]
        files = {f.name for f in m.files}
        return page(request, "entry.html", row=row, m=m,
                    meta=m.meta.get("meta") or {}, metrics=m.meta.get("metrics") or {},
                    params=m.meta.get("params"), upstream=m.meta.get("upstream") or {},
                    trajectory="trajectory.png" in files, live=False)

    @app.get("/entry/{key}/trajectory.png")
    def trajectory_png(key: str) -> Response:
        _manifest(store, key)
        try:
            png = store.read_bytes(key, "trajectory.png")  # verified against the manifest
        except (EntryNotFoundError, CorruptEntryError) as e:
            raise HTTPException(404, str(e)) from None
        return Response(png, media_type="image/png")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response((HERE / "static" / "favicon.svg").read_bytes(),
                        media_type="image/svg+xml")

    @app.get("/api/fingerprint")
    def api_fingerprint() -> JSONResponse:
        try:
            return JSONResponse({"fingerprint": data.fingerprint(store)})
        except StoreError as e:
            return JSONResponse({"fingerprint": "", "error": str(e)}, status_code=503)

    @app.get("/api/verify")
    def api_verify() -> JSONResponse:
        return JSONResponse(verifier.state())

    @app.post("/api/verify")
    def api_verify_start() -> JSONResponse:
        verifier.start()
        return JSONResponse(verifier.state())

    @app.get("/api/studies")
    def api_studies() -> JSONResponse:
        snap = snapshot(entries=False, runs=False)
        return JSONResponse([
            {"study": r.rec.study, "tuner": r.rec.tuner, "state": r.state,
             "trials": len(r.rec.trials),
             "best": r.rec.best.objective if r.rec.best else None,
             "spent_s": r.rec.spent, "saved_s": r.rec.saved_s, "hit_rate": r.rec.hit_rate}
            for r in views.study_rows(snap)])

    return app


def _objective_label(rec: Any) -> str:
    """The tuner maximizes the objective: a loss is shown as -loss."""
    name = (rec.config or {}).get("objective") or "objective"
    return "-loss" if name == "loss" else str(name)


def _manifest(store: ArtifactStore, key: str) -> Any:
    if not is_key(key):
        raise HTTPException(404, "not a content key")
    try:
        m = store.manifest(key)
    except CorruptEntryError as e:
        raise HTTPException(404, str(e)) from None
    except StoreError as e:
        raise HTTPException(503, f"cannot read the store: {e}") from None
    if m is None:
        raise HTTPException(404, f"no entry {key} in this store")
    return m


def serve(store_url: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          prefect_ui: str | None = None) -> None:
    """Check the store exists (creating nothing), then serve until interrupted."""
    import uvicorn

    store = ArtifactStore.open(store_url, create=False)  # StoreError if unreachable
    ui = prefect_ui or prefect_ui_url()
    app = create_app(store.url, prefect_ui=ui)
    shown = f"[{host}]" if ":" in host else host
    print(f"memotune dashboard for {store.url}: http://{shown}:{port}/"
          + (f"  (Prefect UI: {ui})" if ui else "  (no Prefect UI found: runs are not linked)"),
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
