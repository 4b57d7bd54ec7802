"""The review app's API under the page: what it serves (only the workdir), how it escapes, how POSTs are
guarded, that ratings survive a restart, the exports, and the agreement panel."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from review_workdir import QUESTIONS, build_workdir
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from tunelab.cli import app as cli_app
from tunelab.data.prepare import load_split
from tunelab.evaluate.agreement import judge_choice
from tunelab.review import RatingStore, default_db_url
from tunelab.ui import create_app

EXPORT_FIELDS = {"experiment", "question_id", "question", "reference", "variant_a", "variant_b", "answer_a",
                 "answer_b", "choice", "reviewer", "note", "created_at"}


def client(workdir: Path) -> TestClient:
    return TestClient(create_app(workdir, default_db_url(workdir)), base_url="http://127.0.0.1")


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def sign_in(c: TestClient, name: str = "ana", exp: str = "exp") -> None:
    page = c.get(f"/exp/{exp}/review")
    r = c.post("/reviewer", data={"csrf": csrf(page.text), "name": name, "next": f"/exp/{exp}/review"},
               follow_redirects=False)
    assert r.status_code == 303, r.text


def rate(c: TestClient, choice: str, note: str = "", exp: str = "exp") -> str:
    page = c.get(f"/exp/{exp}/review").text
    token = re.search(r'name="token" value="([^"]+)"', page).group(1)
    r = c.post(f"/exp/{exp}/review", data={"csrf": csrf(page), "token": token, "choice": choice, "note": note},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return page


def test_pages_show_the_table_reading_plots_and_answers(workdir):
    c = client(workdir)
    assert 'href="/exp/exp"' in c.get("/").text
    page = c.get("/exp/exp").text
    assert "tiny-model tuned" in page and "±" in page  # the table with its uncertainty
    assert "Best on rougeL" in page  # the plain-language reading
    assert page.count("<svg") >= 3  # metric bars, the loss curves from the tuned run's log, latency
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "nothing may load from the network"
    answers = c.get("/exp/exp/questions").text
    assert "Tuned answer 0." in answers and "Grounded answer 0." in answers and "The handbook answer 0." in answers
    assert "Passage 0 from the handbook." in answers and "handbook.md" in answers  # the RAG variant's passages
    assert c.get("/static/app.js").status_code == 200


def test_paths_outside_the_workdir_are_refused(workdir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (workdir / "exp" / "compare" / "leak.txt").symlink_to(secret)
    outside = tmp_path / "elsewhere"
    build_workdir(tmp_path, "elsewhere")
    (workdir / "linked").symlink_to(outside)  # an experiment dir that points out of the workdir
    c = client(workdir)
    assert c.get("/exp/exp/files/compare/table.csv").status_code == 200
    for url in ["/exp/exp/files/compare/leak.txt", "/exp/exp/files/..%2F..%2Fsecret.txt",
                "/exp/exp/files/%2e%2e/%2e%2e/secret.txt", "/exp/exp/files/%2Fetc%2Fpasswd",
                "/exp/..%2F..%2Fsecret.txt/files/x", "/exp/linked", "/exp/linked/questions",
                "/exp/exp/files/.tunelab-output.json"]:
        r = c.get(url)
        assert r.status_code == 404, url
        assert "do not serve" not in r.text and "root:" not in r.text
    assert 'href="/exp/linked"' not in c.get("/").text
    assert c.get("/exp/exp/files/compare/report.html").headers["content-security-policy"] == "sandbox"


def test_a_foreign_host_name_is_refused(workdir):
    # a DNS-rebinding page reaches 127.0.0.1 under its own host name: it gets nothing
    c = TestClient(create_app(workdir, default_db_url(workdir)), base_url="http://evil.example")
    assert c.get("/exp/exp").status_code == 400


def test_html_in_questions_answers_and_notes_is_escaped(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    evil = "<script>alert(1)</script>"
    build_workdir(root, answers={"base": [f"{evil} {i}" for i in range(6)],
                                 "base_rag": [f"<img src=x onerror=alert(2)> {i}" for i in range(6)],
                                 "tuned": [f"T {i}" for i in range(6)]}, question='<b onmouseover="x">Q</b>')
    c = client(root)
    sign_in(c, name="<i>eve</i>")
    rate(c, "a", note="<iframe src=//evil>")
    for url in ["/exp/exp/questions", "/exp/exp/review", "/exp/exp", "/"]:
        page = c.get(url).text
        for raw in ("<script>alert", "<img src=x", "<iframe", "<b onmouseover", "<i>eve"):
            assert raw not in page, (url, raw)
    review = c.get("/exp/exp/review").text
    assert "&lt;iframe src=//evil&gt;" in review and "&lt;i&gt;eve&lt;/i&gt;" in review
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 0" in c.get("/exp/exp/questions").text


def test_posts_need_the_form_token_and_this_origin(workdir):
    c = client(workdir)
    token = csrf(c.get("/exp/exp/review").text)
    assert c.post("/reviewer", data={"name": "ana"}).status_code == 403
    assert c.post("/reviewer", data={"name": "ana", "csrf": "forged"}).status_code == 403
    r = c.post("/reviewer", data={"name": "ana", "csrf": token}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = c.post("/reviewer", data={"name": "ana", "csrf": token, "next": "//evil.example"}, follow_redirects=False,
               headers={"Origin": "http://127.0.0.1"})
    assert r.status_code == 303 and r.headers["location"] == "/"  # no open redirect


def test_review_is_blind_and_ratings_survive_a_restart(workdir):
    c = client(workdir)
    sign_in(c)
    page = rate(c, "a", note="A cites the handbook")
    for label in ("tiny-model base", "tiny-model tuned", "tiny-model base + RAG", "--norag", "--rag"):
        assert label not in page.split("<footer")[0]  # neither names nor ids of the variants
    rate(c, "tie")
    rate(c, "both_wrong")
    c.app.state.store.close()
    again = client(workdir)  # a new process on the same database
    again.cookies.update(c.cookies)
    page = again.get("/exp/exp/review").text
    assert '<b id="rated-count">3</b>' in page and "A cites the handbook" in page
    ratings = RatingStore(default_db_url(workdir)).ratings("exp", "ana")
    assert [r.choice for r in ratings] == ["a", "tie", "both_wrong"]
    keys = {(r.question_id, frozenset((r.variant_a, r.variant_b))) for r in ratings}
    assert len(keys) == 3  # never the same pair twice
    # a rating cannot be sent twice for one pair
    token = re.search(r'name="token" value="([^"]+)"', page).group(1)
    data = {"csrf": csrf(page), "token": token, "choice": "b"}
    assert again.post("/exp/exp/review", data=data, follow_redirects=False).status_code == 303
    assert again.post("/exp/exp/review", data=data, follow_redirects=False).status_code == 409


def test_exports_from_the_page_and_the_cli_feed_data_prepare(workdir, tmp_path):
    c = client(workdir)
    sign_in(c)
    for choice in ("a", "b", "tie", "both_wrong", "a"):
        rate(c, choice)
    lines = c.get("/export/ratings.jsonl?experiment=exp").text.splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 5 and all(set(r) == EXPORT_FIELDS for r in rows)
    assert rows[0]["reviewer"] == "ana" and rows[0]["question"] in QUESTIONS
    prefs = [json.loads(line) for line in c.get("/export/preferences.jsonl?experiment=exp").text.splitlines()]
    assert len(prefs) == 3  # a, b, a: tie and both_wrong are not preferences
    for p, r in zip(prefs, [r for r in rows if r["choice"] in ("a", "b")], strict=True):
        better, worse = (r["answer_a"], r["answer_b"]) if r["choice"] == "a" else (r["answer_b"], r["answer_a"])
        assert p == {"prompt": r["question"], "chosen": better, "rejected": worse}

    runner = CliRunner()
    out = tmp_path / "prefs.jsonl"
    res = runner.invoke(cli_app, ["review", "export", str(workdir), "--out", str(out), "--format", "preferences"])
    assert res.exit_code == 0, res.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == prefs
    again = runner.invoke(cli_app, ["review", "export", str(workdir), "--out", str(out)])
    assert again.exit_code != 0 and "already exists" in again.output  # never replaces a file
    ratings_out = tmp_path / "ratings.jsonl"
    assert runner.invoke(cli_app, ["review", "export", str(workdir), "-o", str(ratings_out)]).exit_code == 0
    assert [json.loads(line) for line in ratings_out.read_text().splitlines()] == rows

    dataset = tmp_path / "ds"
    res = runner.invoke(cli_app, ["data", "prepare", str(out), "--out", str(dataset), "--split", "1,0",
                                  "--dedup", "none"])
    assert res.exit_code == 0, res.output
    records = load_split(dataset, "train")
    assert len(records) == 3 and all(r.kind == "preference" for r in records)
    assert {(r.chosen, r.rejected) for r in records} == {(p["chosen"], p["rejected"]) for p in prefs}


def test_agreement_panel_matches_sklearn(workdir):
    c = client(workdir)
    assert "No ratings yet" in c.get("/exp/exp").text
    sign_in(c)
    for choice in ("a", "b", "a", "tie", "b", "a", "b", "a"):
        rate(c, choice)
    ratings = c.app.state.store.ratings("exp")
    preds = {}
    for d in (workdir / "exp" / "eval").iterdir():
        label = json.loads((d / "summary.json").read_text())["variant"]["label"]
        preds[label] = {str(r["index"]): r for r in map(json.loads, (d / "predictions.jsonl").read_text().splitlines())}
    human, judge = [], []
    for r in ratings:  # oriented: "a" is the variant whose name sorts first
        flip = r.variant_a > r.variant_b
        j = judge_choice(preds[r.variant_a][r.question_id]["judge_accuracy"],
                         preds[r.variant_b][r.question_id]["judge_accuracy"])
        swap = {"a": "b", "b": "a", "tie": "tie"}
        human.append(swap[r.choice] if flip else r.choice)
        judge.append(swap[j] if flip else j)
    expected = cohen_kappa_score(human, judge, labels=["a", "b", "tie"])
    page = c.get("/exp/exp").text
    panel = page.split('id="agreement"')[1].split("</table>")[0]
    overall = re.search(r"<tr><td>all pairs</td><td>(\d+)</td><td>0</td><td>([\d.]+)</td><td>[^<]*</td>\s*<td>(-?[\d.]+)",
                        panel)
    assert overall, panel
    assert int(overall.group(1)) == 8
    assert float(overall.group(2)) == pytest.approx(sum(h == j for h, j in zip(human, judge, strict=True)) / 8, abs=6e-4)
    assert float(overall.group(3)) == pytest.approx(expected, abs=6e-4)
    assert panel.count("<tr><td>") >= 2  # per variant pair too


def test_experiment_list_pages_and_reads_only_the_page(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    src = build_workdir(root, "exp000") / "compare" / "comparison.json"
    for i in range(1, 120):
        d = root / f"exp{i:03d}" / "compare"
        d.mkdir(parents=True)
        (d / "comparison.json").write_text(src.read_text())
        os.utime(d / "comparison.json", (1_000_000 + i, 1_000_000 + i))
    c = client(root)
    first = c.get("/").text
    assert "120 experiment(s)" in first and 'href="/exp/exp119"' in first and 'href="/exp/exp060"' not in first
    assert "page 1 of 3" in first
    assert len(c.app.state.workdir._summaries) == 50  # only the page shown was parsed
    assert 'href="/exp/exp060"' in c.get("/?page=2").text


def test_agreement_leaves_out_ratings_of_answers_the_comparison_no_longer_has(workdir):
    c = client(workdir)
    sign_in(c)
    for choice in ("a", "b", "a", "tie"):
        rate(c, choice)
    ratings = c.app.state.store.ratings("exp")
    # the comparison is re-run and the tuned variant answers differently now: the judge's new scores
    # belong to answers nobody rated
    build_workdir(workdir, answers={"base": [f"Base answer {i}." for i in range(6)],
                                    "base_rag": [f"Grounded answer {i}." for i in range(6)],
                                    "tuned": [f"A new tuned answer {i}." for i in range(6)]})
    stale = sum("tiny-model tuned" in (r.variant_a, r.variant_b) for r in ratings)
    panel = c.get("/exp/exp").text.split('id="agreement"')[1].split("</table>")[0]
    assert f"<tr><td>all pairs</td><td>{4 - stale}</td><td>{stale}</td>" in panel
