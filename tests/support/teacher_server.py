"""A scripted teacher for the synth tests: the loopback OpenAI-compatible server (openai_server.py), answering
tunelab's synth prompts with well-formed JSON built from the chunk it is shown.

Markers in a chunk's text script failures: BROKEN (never JSON), FIXME (not JSON first, good after the
re-ask), BADLABEL (a label outside the set first), CRASH (HTTP 500 every time), SLOW (answers after
`slow_s`), WRONG (the grounding judge rejects its answers). The label judge rejects the label "wrong".
The judge prompts are answered too: an answer is "supported" when every number in it is in the source.

    import teacher_server as teacher
    server = teacher.start()                 # an OpenAIServer with the scripted responder
    teacher.write_docs(tmp_path / "docs", sections=6)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import openai_server

_A, _B, _C = ("bra", "cle", "dro", "fla", "gri", "plo"), ("ven", "mar", "tis", "dol", "gan", "rup"), ("ox", "el", "ia")


def word(section: int, k: int) -> str:
    """A made-up word, unique for each (section < 36, k < 3): sections never share their facts."""
    return _A[section % 6] + _B[(section // 6) % 6] + _C[k]



def write_docs(root: Path, sections: int = 6, docs: int = 2, marker: dict[int, str] | None = None) -> Path:
    """`docs` Markdown files with `sections` sections in all, each with three distinct facts; section i
    gets the text marker[i] appended (BROKEN, FIXME, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    per_doc = -(-sections // docs)
    for d in range(docs):
        parts = [f"# Handbook part {d + 1}\n"]
        for s in range(d * per_doc, min(sections, (d + 1) * per_doc)):
            w = [word(s, k) for k in range(3)]
            text = (f"The {w[0]} team meets every {s + 2} days in room {100 + s}. "
                    f"Requests for {w[1]} supplies go to the {w[2]} desk before {9 + s % 8}:00. "
                    f"Each {w[0]} member may claim {20 + s} {w[1]} vouchers per quarter.")
            if marker and s in marker:
                text += f" {marker[s]} note for section {s}."
            parts.append(f"## Section {w[0]} {s}\n\n{text}\n")
        (root / f"part-{d + 1}.md").write_text("\n".join(parts), encoding="utf-8")
    return root


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]


def _topic(sentence: str) -> str:
    return " ".join(sentence.rstrip(".").split()[:6])


def _items(request: str, text: str, retry: bool) -> dict[str, Any]:
    n = int(re.search(r"Write (\d+)", request).group(1))
    sents = _sentences(text)
    picked = sents[:n] if len(sents) >= n else (sents * n)[:n]
    if '{"pairs"' in request:
        return {"pairs": [{"question": f"What should I know about {_topic(s)}?", "answer": s} for s in picked]}
    if '{"items": [{"instruction"' in request:
        return {"items": [{"instruction": f"Explain {_topic(s)} to a new colleague.", "input": "", "response": s}
                          for s in picked]}
    if '{"conversations"' in request:
        turns = int(re.search(r"of (\d+) turns", request).group(1))
        convs = []
        for k in range(n):
            seq = [sents[(k + t) % len(sents)] for t in range(turns)]
            convs.append({"turns": [{"user": f"Tell me about {_topic(s)} please.", "assistant": s} for s in seq]})
        return {"conversations": convs}
    if '{"examples"' in request:
        labels = [x.strip() for x in re.search(r"one of these labels: (.*?)\.\n", request).group(1).split(",")]
        if "BADLABEL" in text and not retry:
            labels = ["Other"]
        return {"examples": [{"text": f"Hello, {s[0].lower()}{s[1:]}", "label": labels[i % len(labels)]}
                             for i, s in enumerate(picked)]}
    if '{"items": [{"question"' in request:
        out = []
        for s in picked:
            wrong = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), s, count=1)
            if wrong == s:
                wrong = s.rstrip(".") + " for 42 extra people."
            out.append({"question": f"What should I know about {_topic(s)}?", "chosen": s, "rejected": wrong})
        return {"items": out}
    raise AssertionError(f"unexpected request: {request[:200]}")


def responder(body: dict[str, Any], slow_s: float = 1.0):
    Reply = openai_server.Reply
    messages = body["messages"]
    last = messages[-1]["content"]
    retry = last.startswith("That reply could not be used")
    request = next(m["content"] for m in reversed(messages)
                   if m["role"] == "user" and not m["content"].startswith("That reply could not be used"))
    if "Decide whether every claim" in request:
        source = request.split("SOURCE", 1)[1].split("QUESTION:", 1)[0]
        answer = request.split("ANSWER:", 1)[1].split("Reply with JSON", 1)[0]
        ok = set(re.findall(r"\d+", answer)) <= set(re.findall(r"\d+", source)) and "WRONG" not in source
        return json.dumps({"reason": "checked", "supported": ok})
    if "single best label" in request:
        return json.dumps({"reason": "checked", "correct": 'Is "wrong" the single best label' not in request})
    if "Rewrite this question" in request:
        question = request.rsplit("Question: ", 1)[1].strip()
        return json.dumps({"paraphrase": "Could you tell me " + question[0].lower() + question[1:]})
    text = re.search(r"Text \(from .*?\):\n(.*)", request, re.S).group(1)
    if "CRASH" in text:
        return Reply(status=500)
    if "BROKEN" in text:
        return "Sure! Here are some questions: what is it?"
    if "FIXME" in text and not retry:
        return '{"pairs": [{"question": "unterminated'
    reply = json.dumps(_items(request, text, retry))
    return Reply(content=reply, delay_s=slow_s) if "SLOW" in text else reply


def start(slow_s: float = 1.0):
    return openai_server.OpenAIServer(lambda body: responder(body, slow_s)).start()


def requests_to_teacher(server) -> int:
    return len(server.requests)
