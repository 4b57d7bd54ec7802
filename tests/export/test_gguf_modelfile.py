"""The Ollama Modelfile's TEMPLATE renders what the training (Jinja) template renders.

Go templates are rendered by a small interpreter of the subset tunelab emits (text/template's actions:
range with two variables, if / else if / else, variable assignment, field access, and the builtins eq,
ne, and, or, not, len, slice, index; `{{-` and `-}}` trim whitespace), so the check runs without Go or
Ollama. Each conversation is rendered both ways and compared with the Jinja rendering: with the
generation prompt when the chat ends on a user turn, and with the final assistant turn left open when it
ends on the assistant's (Ollama continues it).
"""

from __future__ import annotations

import re

import pytest

from tunelab.errors import TunelabError
from tunelab.export.gguf import read_sidecar
from tunelab.export.ollama import TurnFormat, modelfile_params, recognise, render_jinja, write_modelfile
from tunelab.models.templates import GEMMA_TURNS_TEMPLATE

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PLAIN_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA_SPECIALS = {"bos_token": "<bos>", "eos_token": "<eos>"}
CHATML_SPECIALS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}


# -- a Go text/template subset ---------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|\$[\w]*(?:\.\w+)*|\.\w+(?:\.\w+)*|\d+|[A-Za-z_]\w*)')


def _lex(template: str) -> list[tuple[str, str]]:
    parts, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", m.group(2)))
        trim_next, pos = bool(m.group(3)), m.end()
    parts.append(("text", template[pos:].lstrip() if trim_next else template[pos:]))
    return parts


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    while pos < len(expr.rstrip()):
        m = _TOKEN.match(expr, pos)
        assert m, f"cannot lex {expr[pos:]!r}"
        out.append(m.group(1))
        pos = m.end()
    return out


_FUNCS = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "not": lambda a: not a,
    "and": lambda *a: next((x for x in a if not x), a[-1]), "or": lambda *a: next((x for x in a if x), a[-1]),
    "len": len, "slice": lambda seq, i: seq[i:], "index": lambda seq, i: seq[i],
}


def _field(value, path: list[str]):
    for name in path:
        value = value[name]
    return value


def _eval(tokens: list[str], scope: dict, dot):
    """Evaluate one command (a function call or a single operand) given as tokens."""
    def operand(i):
        tok = tokens[i]
        if tok == "(":
            depth, j = 0, i
            while True:
                depth += {"(": 1, ")": -1}.get(tokens[j], 0)
                if depth == 0:
                    break
                j += 1
            value = _eval(tokens[i + 1:j], scope, dot)
            if j + 1 < len(tokens) and tokens[j + 1].startswith(".") and not tokens[j + 1].startswith(".."):
                return _field(value, tokens[j + 1][1:].split(".")), j + 2
            return value, j + 1
        if tok.startswith('"'):
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape"), i + 1
        if tok.isdigit():
            return int(tok), i + 1
        if tok.startswith("$"):
            name, *path = tok.split(".")
            return _field(dot if name == "$" and "$" not in scope else scope[name], path), i + 1
        if tok.startswith("."):
            return _field(dot, tok[1:].split(".")), i + 1
        raise AssertionError(f"unexpected token {tok}")

    if tokens[0] in _FUNCS:
        args, i = [], 1
        while i < len(tokens):
            value, i = operand(i)
            args.append(value)
        return _FUNCS[tokens[0]](*args)
    value, i = operand(0)
    assert i == len(tokens), tokens
    return value


def _parse(parts, i=0, stop=("end",)):
    """Nodes until an action in `stop`; returns (nodes, index of the stopping action)."""
    nodes = []
    while i < len(parts):
        kind, body = parts[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split()[0]
        if word in stop or body.startswith("else"):
            return nodes, i
        if word == "if":
            branches, j = [], i
            cond = body[3:]
            while True:
                inner, j = _parse(parts, j + 1)
                branches.append((cond, inner))
                closing = parts[j][1]
                if closing == "end":
                    break
                cond = closing[len("else if "):] if closing.startswith("else if") else None
            nodes.append(("if", branches))
            i = j + 1
        elif word == "range":
            m = re.match(r"range (\$\w+), (\$\w+) := (.*)", body)
            inner, j = _parse(parts, i + 1)
            nodes.append(("range", (m.group(1), m.group(2), m.group(3), inner)))
            i = j + 1
        elif re.match(r"\$\w+ :=", body):
            name, expr = body.split(":=", 1)
            nodes.append(("set", (name.strip(), expr)))
            i += 1
        else:
            nodes.append(("out", body))
            i += 1
    return nodes, i


def _run(nodes, scope: dict, dot) -> str:
    out = []
    for kind, arg in nodes:
        if kind == "text":
            out.append(arg)
        elif kind == "out":
            out.append(str(_eval(_tokens(arg), scope, dot)))
        elif kind == "set":
            scope[arg[0]] = _eval(_tokens(arg[1]), scope, dot)
        elif kind == "if":
            for cond, inner in arg:
                if cond is None or _eval(_tokens(cond), scope, dot):
                    out.append(_run(inner, scope, dot))
                    break
        elif kind == "range":
            index_var, item_var, expr, inner = arg
            for i, item in enumerate(_eval(_tokens(expr), scope, dot)):
                out.append(_run(inner, {**scope, index_var: i, item_var: item}, item))
    return "".join(out)


def render_go(template: str, messages: list[dict[str, str]]) -> str:
    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    nodes, _ = _parse(_lex(template), 0, stop=())
    return _run(nodes, {"$": data}, data)


def test_go_renderer_follows_text_template_rules():
    template = 'a\n{{- if eq 1 1 }} b {{ else }}c{{ end -}}\n d{{ range $i, $m := .Messages }}[{{ $i }}{{ $m.Role }}]{{ end }}'
    assert render_go(template, [{"role": "user", "content": "x"}]) == "a b d[0user]"


# -- the Modelfile template equals the training template -------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "What is the leave policy?"}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Hi there"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?\nExplain."}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Bye"}],
]


def _expected(template, conv, specials, strip_bos: str = "") -> str:
    if conv[-1]["role"] == "assistant":  # Ollama continues an open assistant turn
        text = render_jinja(template, conv, False, specials)
        closing = "<|im_end|>\n" if "<|im_end|>" in text else "<end_of_turn>\n"
        text = text[: -len(closing)]
    else:
        text = render_jinja(template, conv, True, specials)
    return text[len(strip_bos):] if strip_bos and text.startswith(strip_bos) else text


@pytest.mark.parametrize("template", [SMOLLM2_TEMPLATE, PLAIN_CHATML], ids=["smollm2", "chatml"])
def test_chatml_templates_render_like_the_training_template(template):
    fmt = recognise(template, CHATML_SPECIALS)
    go = fmt.go_template(tokenizer_adds_bos=False)
    for conv in CONVERSATIONS + [CONVERSATIONS[2][:2]]:
        assert render_go(go, conv) == _expected(template, conv, CHATML_SPECIALS)


def test_smollm2_default_system_prompt_is_carried():
    fmt = recognise(SMOLLM2_TEMPLATE, CHATML_SPECIALS)
    assert fmt.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert recognise(PLAIN_CHATML, CHATML_SPECIALS).default_system is None


def test_gemma_turns_render_like_the_training_template_bos_left_to_the_tokenizer():
    fmt = recognise(GEMMA_TURNS_TEMPLATE, GEMMA_SPECIALS)
    assert fmt.name == "gemma" and fmt.bos_text == "<bos>"
    for conv in CONVERSATIONS + [CONVERSATIONS[2][:2]]:
        # the GGUF's tokenizer adds <bos>, so Ollama's prompt text starts after it
        assert render_go(fmt.go_template(True), conv) == _expected(GEMMA_TURNS_TEMPLATE, conv, GEMMA_SPECIALS, "<bos>")
        assert render_go(fmt.go_template(False), conv) == _expected(GEMMA_TURNS_TEMPLATE, conv, GEMMA_SPECIALS)


def test_a_changed_template_is_not_matched_to_the_wrong_format():
    # the same markers, but a different layout (no newline after the role): no format renders it
    odd = PLAIN_CHATML.replace("'\\n' + message['content']", "': ' + message['content']").replace(
        "+ '\n' + message['content']", "+ ': ' + message['content']")
    assert odd != PLAIN_CHATML
    with pytest.raises(TunelabError, match="not one tunelab can translate"):
        recognise(odd, CHATML_SPECIALS)
    with pytest.raises(TunelabError, match="not one tunelab can translate"):
        recognise("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", CHATML_SPECIALS)


def test_turnformat_model_is_what_jinja_renders():
    fmt = TurnFormat("chatml")
    assert fmt.render(CONVERSATIONS[0], True) == render_jinja(PLAIN_CHATML, CONVERSATIONS[0], True, CHATML_SPECIALS)


# -- the file ------------------------------------------------------------------------------------------


def test_modelfile_beside_gguf_with_stops_and_params(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")  # the Modelfile only names it
    path = write_modelfile(gguf, chat_template=SMOLLM2_TEMPLATE, stop_tokens=["<|im_end|>"],
                           params=modelfile_params({"do_sample": True, "temperature": 0.7, "max_new_tokens": 64}),
                           special_tokens=CHATML_SPECIALS, tokenizer_adds_bos=False)
    text = path.read_text()
    assert path == tmp_path / "m.Modelfile"
    assert "FROM ./m.gguf\n" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER temperature 0.7" in text and "PARAMETER num_predict 64" in text
    go = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    assert render_go(go, CONVERSATIONS[1]) == _expected(SMOLLM2_TEMPLATE, CONVERSATIONS[1], CHATML_SPECIALS)
    assert "m.Modelfile" in read_sidecar(gguf)["files"]
    # written again: it is tunelab's now
    write_modelfile(gguf, chat_template=SMOLLM2_TEMPLATE, stop_tokens=["<|im_end|>"], params=None,
                    special_tokens=CHATML_SPECIALS, tokenizer_adds_bos=False)
    assert "PARAMETER temperature 0.0" in path.read_text()


def test_modelfile_never_replaces_a_users_file(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "m.Modelfile").write_text("FROM llama3\n")
    with pytest.raises(TunelabError, match="tunelab did not write it"):
        write_modelfile(gguf, chat_template=PLAIN_CHATML, stop_tokens=["<|im_end|>"],
                        special_tokens=CHATML_SPECIALS, tokenizer_adds_bos=False)
    assert (tmp_path / "m.Modelfile").read_text() == "FROM llama3\n"


def test_modelfile_errors(tmp_path):
    gguf = tmp_path / "m.gguf"
    with pytest.raises(TunelabError, match="never stop"):
        write_modelfile(gguf, chat_template=PLAIN_CHATML, stop_tokens=[], special_tokens=CHATML_SPECIALS,
                        tokenizer_adds_bos=False)
    with pytest.raises(TunelabError, match="no Ollama Modelfile parameter"):
        modelfile_params({"beam_width": 3})
    assert not (tmp_path / "m.Modelfile").exists()
