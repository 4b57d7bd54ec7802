"""`create_app(workdir, db_url)`: the review web app over a workdir (FastAPI, server-rendered Jinja2).

Pages: the experiments (newest first, paginated), an experiment's comparison (the reading, the table
with its uncertainty, the report's plots, the agreement of the LLM judge with the reviewers), every
question's answers side by side (reference, retrieved passages of RAG variants), and the blind review.

Safety, for a page left running: it binds 127.0.0.1 unless told otherwise and answers only requests for
a loopback host name (or the host it was bound to), which stops DNS-rebinding pages from reading it;
every value is escaped by Jinja's autoescape; a POST must carry the per-browser CSRF token from its
SameSite=Strict cookie and, when the browser sends one, an Origin of this server; files are served only
from inside the workdir (workdir.inside), sandboxed (CSP sandbox) so a stray HTML file cannot script
the app. Assets are served from the package: the page loads nothing from the network.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..compare.report import cost_bars, loss_curves, metric_bars
from ..compare.table import table_columns
from ..errors import TunelabError
from ..review.export import preference_rows, rating_rows
from ..review.pairs import candidate_pairs, pick_pair
from ..review.store import CHOICES, AlreadyRated, PendingPair, Rating, RatingStore, check_reviewer
from .agreement import agreement_panel, has_judge_scores
from .workdir import Experiment, NotFound, Workdir, inside

HERE = Path(__file__).parent
REVIEWER_COOKIE = "tunelab_reviewer"
CSRF_COOKIE = "tunelab_csrf"
PER_PAGE = 50
QUESTIONS_PER_PAGE = 20
MAX_FORM = 64 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
CHOICE_TEXT = {"a": "A is better", "b": "B is better", "tie": "tie", "both_wrong": "both wrong"}
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.globals["choice_text"] = CHOICE_TEXT
    return env


def allowed_hosts(host: str) -> list[str]:
    if host in ("0.0.0.0", "::", ""):
        return ["*"]  # the user asked for every interface; a host check would only get in the way
    return sorted({*LOOPBACK, host})


def create_app(workdir: str | Path, db_url: str, *, hosts: list[str] | None = None) -> FastAPI:
    work = Workdir(workdir)
    store = RatingStore(db_url)
    env = _env()
    app = FastAPI(title="tunelab review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.workdir = store, work
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts or allowed_hosts("127.0.0.1"))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        reviewer = _reviewer(request)
        html = env.get_template(template).render(csrf=token, reviewer=reviewer, workdir=str(work.root),
                                                 db=store.display_url, **context)
        response = HTMLResponse(html, status_code=status)
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict")
        return response

    def experiment(name: str) -> Experiment:
        try:
            return work.experiment(name)
        except NotFound:
            raise HTTPException(404, "no such experiment in this workdir") from None

    async def form(request: Request) -> dict[str, str]:
        """The POSTed form, after the CSRF checks (token from the cookie, Origin of this server)."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise HTTPException(415, "send the form as application/x-www-form-urlencoded")
        body = await request.body()
        if len(body) > MAX_FORM:
            raise HTTPException(413, "form too large")
        data = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin is not None:
            parts = urlsplit(origin)
            if (parts.scheme, parts.netloc) != (request.url.scheme, request.url.netloc):
                raise HTTPException(403, "cross-origin form refused")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie, data.get("csrf", "")):
            raise HTTPException(403, "missing or wrong form token: reload the page and try again")
        return data

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return page(request, "error.html.jinja", status=exc.status_code, message=exc.detail, status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, page_no: int = Query(1, alias="page", ge=1)):
        return _index(request, page_no)

    def _index(request: Request, page_no: int) -> HTMLResponse:
        items, total = work.summaries(page_no, PER_PAGE)
        pages = max(1, math.ceil(total / PER_PAGE))
        return page(request, "index.html.jinja", experiments=items, total=total, page_no=page_no, pages=pages)

    @app.get("/exp/{name}", response_class=HTMLResponse)
    def show_experiment(request: Request, name: str):
        exp = experiment(name)
        comparison = exp.comparison
        if "plots" not in exp.cache:  # matplotlib is slow; the plots hold as long as the files do
            metric_plots = [p for p in (metric_bars(comparison, m) for m in comparison.metrics) if p]
            exp.cache["plots"] = {"metrics": [Markup(p) for p in metric_plots],
                                  "loss": Markup(loss_curves(exp.train_logs) or ""),
                                  "cost": Markup(cost_bars(comparison) or "")}
        header, body = table_columns(comparison)
        ratings = store.ratings(name)
        report = agreement_panel(exp, ratings)
        files = [f for f in ("compare/report.html", "compare/table.csv", "compare/table.md", "compare/comparison.json")
                 if (exp.path / f).is_file()]
        cats = sorted({c for per in comparison.categories.values() for c in per})
        return page(request, "experiment.html.jinja", exp=exp, header=header, body=body, plots=exp.cache["plots"],
                    cats=cats,
                    n_ratings=len(ratings), agreement=report, judged=has_judge_scores(exp), files=files)

    @app.get("/exp/{name}/questions", response_class=HTMLResponse)
    def questions(request: Request, name: str, page_no: int = Query(1, alias="page", ge=1)):
        exp = experiment(name)
        qids = exp.question_ids()
        pages = max(1, math.ceil(len(qids) / QUESTIONS_PER_PAGE))
        shown = qids[(page_no - 1) * QUESTIONS_PER_PAGE: page_no * QUESTIONS_PER_PAGE]
        items = [{"id": q, **exp.question(q),
                  "answers": [(v["variant"], bool(v.get("rag")), exp.answers.get(str(v["variant"]), {}).get(q))
                              for v in exp.variants]} for q in shown]
        return page(request, "questions.html.jinja", exp=exp, items=items, page_no=page_no, pages=pages)

    @app.get("/exp/{name}/review", response_class=HTMLResponse)
    def review(request: Request, name: str, change: bool = False):
        exp = experiment(name)
        reviewer = _reviewer(request)
        if reviewer is None or change:
            return page(request, "reviewer.html.jinja", exp=exp, next_url=f"/exp/{quote(name)}/review")
        mine = store.ratings(name, reviewer)
        rated = {(r.question_id, frozenset((r.variant_a, r.variant_b))) for r in mine}
        texts = {label: {q: str(row.get("prediction") or "") for q, row in per.items()}
                 for label, per in exp.answers.items()}
        candidates = candidate_pairs(texts, rated)
        chosen = pick_pair(candidates)
        pair = None
        if chosen is not None:
            qid, va, vb = chosen
            token = secrets.token_urlsafe(24)
            store.put_pair(PendingPair(token, name, qid, va, vb, reviewer))
            pair = {"token": token, **exp.question(qid), "answer_a": texts[va][qid], "answer_b": texts[vb][qid]}
        return page(request, "review.html.jinja", exp=exp, pair=pair, mine=mine, left=len(candidates))

    @app.post("/reviewer")
    async def set_reviewer(request: Request):
        data = await form(request)
        try:
            name = check_reviewer(data.get("name", ""))
        except TunelabError as exc:
            raise HTTPException(400, str(exc)) from None
        target = data.get("next") or "/"
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # only a path of this site: never an open redirect
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(REVIEWER_COOKIE, quote(name), httponly=True, samesite="strict", max_age=365 * 86400)
        return response

    @app.post("/exp/{name}/review")
    async def rate(request: Request, name: str):
        data = await form(request)
        exp = experiment(name)
        reviewer = _reviewer(request)
        if reviewer is None:
            raise HTTPException(400, "give your reviewer name first")
        choice = data.get("choice", "")
        if choice not in CHOICES:
            raise HTTPException(400, f"choice: pick one of {', '.join(CHOICES)}")
        pending = store.pair(data.get("token", ""))
        if pending is None or pending.experiment != name or pending.reviewer != reviewer:
            raise HTTPException(409, "this pair was already rated or is not yours: rate the next one")
        try:
            question = exp.question(pending.question_id)
        except NotFound:  # the comparison was re-run without this question since the pair was shown
            raise HTTPException(409, "this question is no longer in the comparison: rate the next one") from None
        answer = {v: str((exp.answers.get(v, {}).get(pending.question_id) or {}).get("prediction") or "")
                  for v in (pending.variant_a, pending.variant_b)}
        try:
            store.add(Rating(name, pending.question_id, question["question"], question["reference"],
                             pending.variant_a, pending.variant_b, answer[pending.variant_a],
                             answer[pending.variant_b], choice, reviewer, data.get("note", "").strip()),
                      token=pending.token)
        except AlreadyRated as exc:
            raise HTTPException(409, str(exc)) from None
        except TunelabError as exc:
            raise HTTPException(400, str(exc)) from None
        return RedirectResponse(f"/exp/{quote(name)}/review", status_code=303)

    @app.get("/exp/{name}/files/{path:path}")
    def files(name: str, path: str):
        exp = experiment(name)
        try:
            target = inside(exp.path, path)
        except NotFound:
            raise HTTPException(404, "no such file in this experiment") from None
        if not target.is_file() or target.name == ".tunelab-output.json":
            raise HTTPException(404, "no such file in this experiment")
        # sandboxed: an HTML file of the workdir runs no script and cannot reach the app's cookies
        return FileResponse(target, headers={"Content-Security-Policy": "sandbox"})

    @app.get("/export/{kind}.jsonl")
    def export(kind: str, experiment: str | None = None, reviewer: str | None = None):
        if kind not in ("ratings", "preferences"):
            raise HTTPException(404, "export ratings.jsonl or preferences.jsonl")
        ratings = store.ratings(experiment, reviewer)
        rows = rating_rows(ratings) if kind == "ratings" else preference_rows(ratings)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        filename = f"{experiment or 'all'}-{kind}.jsonl".replace('"', "")
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    return app


def _reviewer(request: Request) -> str | None:
    raw = request.cookies.get(REVIEWER_COOKIE)
    if not raw:
        return None
    try:
        return check_reviewer(unquote(raw))
    except TunelabError:
        return None
