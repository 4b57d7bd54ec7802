"""Upload a run's adapter (or a merged / fully trained model) to the Hugging Face Hub with its model card.

    result = push(Path("runs/exp/train/smollm2-135m-instruct"), "me/exp-lora")
    result = push(Path("merged/"), "me/exp-merged", run=Path("runs/exp/train/smollm2-135m-instruct"))

What is sent, and in what order:
1. The files are staged in a local directory first (default `<run>/hub-staging`, for a model directory
   `<dir>.hub-staging` beside it): the weights and their configs, the tokenizer and chat template, and the
   card (export.card) as README.md. The staging directory is tunelab's own output (marker), replaced
   whole on the next push, and kept afterwards: it is exactly what was (or is to be) uploaded.
2. Before anything leaves the machine: the repo id is checked (ORG/NAME), a token is found (the `token`
   argument, else HF_TOKEN or huggingface_hub's stored login; never a config file), and offline mode
   (HF_HUB_OFFLINE) is refused. Each failure is a TunelabError that says how to fix it, where the staged
   files are and the `hf upload` command that uploads them later.
3. The upload: HfApi.create_repo(exist_ok=True), then ONE create_commit with every staged file, so the
   repo gets all of them or none (large files are uploaded before the commit and are invisible until it
   lands). A connection failure or a refusal by the Hub is a TunelabError; the staged files stay.

The token is never printed or written: it goes to huggingface_hub only, and tunelab.secrets masks the
value of HF_TOKEN in every message.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..io import OUTPUT_MARKER, atomic_dir, write_text
from .card import CARD_MARKER, build_card

STAGE_KIND = "hub-staging"  # the marker kind of a staging directory (tunelab.io)
# The Hub's rule for a repo name: letters, digits, '-', '_', '.', not starting or ending with '-' or '.',
# no '--' or '..', at most 96 characters (checked separately)
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_REPO = re.compile(rf"^{_PART}/{_PART}$")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_FILES = ("adapter_config.json",)
MODEL_FILES = ("config.json", "generation_config.json")
# tokenizer and chat template files as transformers writes them; each is staged when present
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


@dataclass
class HubResult:
    repo: str
    kind: str  # adapter | merged | full
    staged: Path
    files: list[str] = field(default_factory=list)
    private: bool = False
    url: str | None = None  # the commit's URL on the Hub
    commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"staged": str(self.staged)}


def check_repo_id(repo: str) -> str:
    repo = repo.strip()
    if not _REPO.match(repo) or "--" in repo or ".." in repo or any(len(p) > 96 for p in repo.split("/")):
        raise TunelabError(f"--repo {repo!r}: give the Hub repo as ORG/NAME (letters, digits, '-', '_' and '.'; "
                           "e.g. my-org/smollm2-faq-lora)")
    return repo


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _adapter_weights(path: Path) -> str | None:
    return next((name for name in ADAPTER_WEIGHTS if (path / name).is_file()), None)


def plan_upload(source: Path, run: Path | None = None, repo: str | None = None) -> tuple[str, list[str], str]:
    """(kind, the files of `source` to upload, the card text) for a run directory or a model directory."""
    source = Path(source)
    if not source.is_dir():
        raise TunelabError(f"{source}: no such directory; give a training run directory or a merged model directory")
    tokenizer = [n for n in TOKENIZER_FILES if (source / n).is_file()]
    weights = _adapter_weights(source)
    if (source / "adapter_config.json").is_file() and weights:
        return "adapter", [*ADAPTER_FILES, weights, *tokenizer], build_card(run or source, kind="adapter", repo=repo)
    if not _is_model_dir(source):
        raise TunelabError(f"{source}: neither a run with an adapter (adapter_config.json + {ADAPTER_WEIGHTS[0]}) "
                           "nor a model directory (config.json + *.safetensors); is training finished?")
    files = [n for n in MODEL_FILES if (source / n).is_file()]
    files += sorted(p.name for p in source.iterdir()
                    if p.suffix == ".safetensors" or p.name.endswith(".safetensors.index.json"))
    files += tokenizer
    if run is not None:
        return "merged", files, build_card(run, kind="merged", repo=repo)
    if (source / "summary.json").is_file():  # a run that trained the whole model
        return "full", files, build_card(source, kind="merged", repo=repo)
    readme = source / "README.md"
    text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
    if CARD_MARKER in text:  # the card `tunelab export merge` wrote beside the weights
        return "merged", files, text
    raise TunelabError(f"{source} is a model directory without a tunelab model card: name the training run it was "
                       "merged from with --run RUN, so the card can say how it was trained")


def default_stage_dir(source: Path) -> Path:
    source = Path(source).resolve()
    if (source / "summary.json").is_file():  # a run directory: staged inside it
        return source / "hub-staging"
    return source.with_name(f"{source.name}.hub-staging")


def stage(source: Path, stage_dir: Path | None = None, *, run: Path | None = None,
          repo: str | None = None) -> tuple[str, Path, list[str]]:
    """Copy what would be uploaded (and the card as README.md) into the staging directory; (kind, dir, files)."""
    source = Path(source)
    kind, files, card = plan_upload(source, run, repo)
    target = Path(stage_dir) if stage_dir is not None else default_stage_dir(source)
    with atomic_dir(target, kind=STAGE_KIND, inputs=[source / name for name in files]) as tmp:
        for name in files:
            _link_or_copy(source / name, tmp / name)
        write_text(tmp / "README.md", card)
    return kind, target, sorted([*files, "README.md"])


def _link_or_copy(src: Path, dst: Path) -> None:
    # a hard link costs no space for multi-GB weights; tunelab replaces weight files by renaming, never in
    # place, so the staged link keeps the content that was staged
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def upload_command(repo: str, staged: Path, private: bool) -> str:
    return (f"hf upload {shlex.quote(repo)} {shlex.quote(str(staged))} . --exclude {shlex.quote(OUTPUT_MARKER)}"
            + (" --private" if private else ""))


def _token(token: str | None) -> str | None:
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def push(run_or_dir: Path, repo: str, *, private: bool = False, token: str | None = None,
         stage_dir: Path | None = None, run: Path | None = None, endpoint: str | None = None) -> HubResult:
    """Stage the adapter or model with its card, then upload it in one commit; see the module docstring.
    run: the training run a merged model directory came from (for its card). endpoint: the Hub's URL
    (default HF_ENDPOINT, else huggingface.co)."""
    repo = check_repo_id(repo)
    kind, staged, files = stage(Path(run_or_dir), stage_dir, run=run, repo=repo)
    result = HubResult(repo, kind, staged, files, private)
    later = f"The files are staged in {staged}; upload them later with: {upload_command(repo, staged, private)}"
    token = _token(token)
    if not token:
        # (worded without "token: ..." or "token=...", which the secret redactor would mask as an assignment)
        raise TunelabError("found no Hugging Face token. Set HF_TOKEN in the environment (a write token from "
                           "https://huggingface.co/settings/tokens) or log in with `hf auth login`. Nothing was sent. "
                           + later)
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise TunelabError("Hugging Face offline mode is on (HF_HUB_OFFLINE=1), so nothing was sent; unset it to "
                           "upload. " + later)
    commit = _upload(staged, files, repo, private=private, token=token,
                     endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, later=later)
    result.url, result.commit = commit.commit_url, commit.oid
    return result


def _upload(staged: Path, files: list[str], repo: str, *, private: bool, token: str, endpoint: str | None,
            later: str) -> Any:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(staged / name)) for name in files]
        return api.create_commit(repo, operations, repo_type="model",
                                 commit_message="Upload model and card from tunelab")
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        why = {401: "the token was refused (is it valid?)",
               403: f"the token may not write to {repo} (a write token, and membership of the organisation)"
               }.get(status or 0, f"the Hub answered {status}")
        raise TunelabError(f"upload to {repo} failed: {why}: {_first_line(exc)}. Nothing was committed. {later}") from None
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise TunelabError(f"upload to {repo} failed: the Hub could not be reached ({type(exc).__name__}: "
                           f"{_first_line(exc)}). Nothing was committed. {later}") from None
    except Exception as exc:  # httpx's transport errors are not OSErrors; anything else means not uploaded
        if type(exc).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise
        raise TunelabError(f"upload to {repo} failed: the Hub could not be reached ({type(exc).__name__}: "
                           f"{_first_line(exc)}). Nothing was committed. {later}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
