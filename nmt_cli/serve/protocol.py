"""The JSON of ``POST /translate``: bodies checked into texts and settings (decode keys through
``config.with_overrides``, the rest as ``RequestOptions``), every problem an ``ApiError`` with an
HTTP status and its field, never a 500; translations rendered back."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

from nmt_cli.config import DecodeConfig, with_overrides
from nmt_cli.serve.settings import RequestOptions, ServeConfig
from nmt_cli.errors import ConfigError

# Decode settings that belong to the server (how it batches and bounds work), not to a request.
SERVER_ONLY = {"batch_size": "--max-batch-sentences", "batch_type": "--max-batch-sentences",
               "max_src_len": "--set decode.max_src_len",
               "precision": "--set decode.precision; the model is cast once, when it loads"}
TEXT_KEYS = ("text", "texts")
CONSTRAINTS = "constraints"  # target phrases: one list for every text, or a list per text


class ApiError(Exception):
    def __init__(self, status: int, field: str, message: str, headers: dict | None = None):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message, self.headers = status, field, message, headers

    def body(self) -> dict[str, str]:
        return {"error": f"{self.field}: {self.message}", "field": self.field}


@dataclass(frozen=True)
class TranslateRequest:
    texts: list[str]
    decode: DecodeConfig
    options: RequestOptions
    work: list[int]  # what each text may cost: beam (or samples) x output-length cap
    constraints: list[list[str]] | None = None  # each text's target phrases

    def lines(self) -> list:
        """What the batcher carries: each text, or (text, phrases) for a constrained request."""
        if self.constraints is None:
            return list(self.texts)
        return [(text, tuple(c)) for text, c in zip(self.texts, self.constraints)]


def line_work(text: str, decode: DecodeConfig, phrases: int = 0) -> int:
    """An upper bound on a text's search: rows times the longest output its length allows (a
    subword holds at least one byte, so the source has at most its bytes plus one). A text with
    constraints is searched with a wider beam (``constrained_beam``)."""
    rows = decode.n_best if decode.sample else decode.beam_size
    if phrases:
        rows = max(rows, phrases + 1)
    source = min(decode.max_src_len, len(text.encode("utf-8")) + 1)
    return rows * max(1, int(decode.max_len_a * source) + decode.max_len_b)


def request_settings() -> list[str]:
    """Every key a request body may hold."""
    decode = [f.name for f in dataclasses.fields(DecodeConfig) if f.name not in SERVER_ONLY]
    return [*TEXT_KEYS, CONSTRAINTS, *(f.name for f in dataclasses.fields(RequestOptions)),
            *decode]


def body_limit(limits: ServeConfig) -> int:
    """Bytes a body may have: every text at its longest, each character escaped (``\\uXXXX``)."""
    return limits.max_texts * (limits.max_chars * 12 + 8) + 65536


def decode_json(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "body", f"is not valid UTF-8 (byte {exc.start}); send UTF-8 "
                                    "JSON") from None
    try:
        value = json.loads(text, parse_float=_finite, parse_int=_integer,
                           parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "body", f"malformed JSON at line {exc.lineno} column {exc.colno}: "
                                    f"{exc.msg}") from None
    except RecursionError:
        raise ApiError(400, "body", "nested too deeply") from None
    except ValueError as exc:  # anything else json or int() may refuse
        raise ApiError(400, "body", f"not JSON this server can read ({exc})") from None
    if not isinstance(value, dict):
        raise ApiError(422, "body", 'must be a JSON object, such as {"texts": ["..."]}')
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, "body", f"the number {text[:20]} is too large")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # Python refuses to convert more than 4,300 digits
        raise ApiError(400, "body", f"the integer {text[:20]}... has {len(text):,} digits; "
                                    "that is too long") from None


def _no_constant(name: str):
    raise ApiError(400, "body", f"{name} is not JSON; numbers must be finite")


def parse_request(raw: dict[str, Any], defaults: DecodeConfig,
                  limits: ServeConfig) -> TranslateRequest:
    texts = _texts(raw, limits)
    known = request_settings()
    options_raw, decode_raw = {}, {}
    option_names = {f.name for f in dataclasses.fields(RequestOptions)}
    for name, value in raw.items():
        if name in TEXT_KEYS or name == CONSTRAINTS:
            continue
        if name in SERVER_ONLY:
            raise ApiError(422, name, f"is set by the server, not per request "
                                      f"({SERVER_ONLY[name]})")
        if name not in known:
            hint = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            tail = f"did you mean '{hint[0]}'?" if hint else "known: " + ", ".join(known)
            raise ApiError(422, str(name), f"unknown setting; {tail}")
        (options_raw if name in option_names else decode_raw)[name] = value
    try:
        options = with_overrides(RequestOptions(), options_raw)
        decode = with_overrides(defaults, decode_raw)
    except ConfigError as exc:
        key = exc.key or "body"
        raise ApiError(422, key.removeprefix("decode."),
                       str(exc).removeprefix(f"{key}: ")) from None
    _check_work(decode, options, decode_raw, limits)
    constraints = _constraints(raw, len(texts), decode, limits) if CONSTRAINTS in raw else None
    work = [line_work(text, decode, len(constraints[i]) if constraints else 0)
            for i, text in enumerate(texts)]
    if sum(work) > limits.max_work:
        raise ApiError(422, "texts", f"this request may cost {sum(work):,} units of work (per "
                                     "text, beam or samples x its output-length cap); this "
                                     f"server takes {limits.max_work:,} at most (--max-work): "
                                     "send fewer or shorter texts, or a smaller beam")
    return TranslateRequest(texts, decode, options, work, constraints)


def _constraints(raw: dict[str, Any], texts: int, decode: DecodeConfig,
                 limits: ServeConfig) -> list[list[str]] | None:
    """``constraints``: a list of target phrases for every text, or one such list per text
    (``texts``); None when no text has any."""
    from nmt_cli.decoding.constraints import MAX_PHRASES

    value = raw[CONSTRAINTS]
    shape = ('a list of target phrases (strings) for every text, or one such list per text, '
             'such as ["Haus"] or [["Haus"], []]')
    if not isinstance(value, list):
        raise ApiError(422, CONSTRAINTS, f"expected {shape}; got {_short(value)}")
    if value and all(isinstance(v, list) for v in value):
        if len(value) != texts:
            raise ApiError(422, CONSTRAINTS, f"{len(value)} lists of phrases for {texts} "
                                             "text(s); give one list per text, or one list of "
                                             "strings for every text")
        per_text, names = value, [f"{CONSTRAINTS}[{i}]" for i in range(texts)]
    elif all(isinstance(v, str) for v in value):
        per_text, names = [value] * texts, [CONSTRAINTS] * texts
    else:
        raise ApiError(422, CONSTRAINTS, f"expected {shape}; do not mix strings and lists")
    out = []
    for phrases, name in zip(per_text, names):
        for j, phrase in enumerate(phrases):
            where = f"{name}[{j}]"
            if not isinstance(phrase, str):
                raise ApiError(422, where, f"expected a string, got {_short(phrase)}")
            if not phrase.strip():
                raise ApiError(422, where, "is empty; a constraint is a phrase the translation "
                                           "must contain")
            if "\t" in phrase or "\n" in phrase or "\r" in phrase:
                raise ApiError(422, where, "holds a tab or a line break; give each phrase as its "
                                           "own string")
            _check_string(phrase, where, limits)
        if len(phrases) > MAX_PHRASES:
            raise ApiError(422, name, f"{len(phrases)} phrases; a text may have at most "
                                      f"{MAX_PHRASES}")
        if phrases and len(phrases) + 1 > limits.max_beam_size:
            raise ApiError(422, name, f"{len(phrases)} phrases need a beam of {len(phrases) + 1} "
                                      "(one row per phrase and one more); this server's limit "
                                      f"is {limits.max_beam_size} (--max-beam-size)")
        out.append([" ".join(p.split()) for p in phrases])
    if not any(out):
        return None
    if decode.sample:
        raise ApiError(422, CONSTRAINTS, "constraints need beam search; they cannot be combined "
                                         "with sample: true")
    return out


def _texts(raw: dict[str, Any], limits: ServeConfig) -> list[str]:
    if "text" in raw and "texts" in raw:
        raise ApiError(422, "text", "give either text (one string) or texts (a list), not both")
    if "text" in raw:
        if not isinstance(raw["text"], str):
            raise ApiError(422, "text", f"expected a string, got {_short(raw['text'])}")
        texts, name = [raw["text"]], "text"
    elif "texts" in raw:
        texts, name = raw["texts"], "texts"
        if not isinstance(texts, list):
            raise ApiError(422, "texts", f"expected a list of strings, got {_short(texts)}")
        if not texts:
            raise ApiError(422, "texts", "the list is empty; give at least one text")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ApiError(422, f"texts[{i}]", f"expected a string, got {_short(text)}")
    else:
        raise ApiError(422, "texts", "required: give texts (a list of strings) or text (a "
                                     "string)")
    if len(texts) > limits.max_texts:
        raise ApiError(413, "texts", f"{len(texts)} texts in one request; this server takes at "
                                     f"most {limits.max_texts} (--max-texts)")
    for i, text in enumerate(texts):
        _check_string(text, name if name == "text" else f"texts[{i}]", limits)
    return texts


def _check_string(text: str, where: str, limits: ServeConfig) -> None:
    """A text or a phrase: at most ``--max-chars`` characters (413), valid Unicode (422)."""
    if len(text) > limits.max_chars:
        raise ApiError(413, where, f"{len(text)} characters; this server takes at most "
                                   f"{limits.max_chars} per text (--max-chars)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(422, where, f"holds an unpaired surrogate at character {exc.start} "
                                   "(a \\uD800-\\uDFFF escape); send valid Unicode") from None


def _check_work(decode: DecodeConfig, options: RequestOptions, changed: dict[str, Any],
                limits: ServeConfig) -> None:
    """Bound the work one request can ask for: beam size, n-best, lengths, and numbers that
    would not fit the model's integer tensors."""
    if decode.beam_size > limits.max_beam_size and "beam_size" in changed:
        raise ApiError(422, "beam_size", f"{decode.beam_size} is above this server's limit of "
                                         f"{limits.max_beam_size} (--max-beam-size)")
    if decode.n_best > limits.max_beam_size and "n_best" in changed:
        raise ApiError(422, "n_best", f"{decode.n_best} is above this server's limit of "
                                      f"{limits.max_beam_size} (--max-beam-size)")
    for kind in ("max", "min"):
        a, b = f"{kind}_len_a", f"{kind}_len_b"
        if not {a, b} & set(changed):
            continue
        try:
            longest = getattr(decode, a) * (decode.max_src_len + 1) + getattr(decode, b)
        except OverflowError:
            longest = math.inf
        if longest > limits.max_output_len:
            name = a if a in changed else b
            raise ApiError(422, name, f"{a} and {b} ask for outputs of {longest:.0f} subwords; "
                                      f"this server allows at most {limits.max_output_len} "
                                      "(--max-output-len)")
    if decode.no_repeat_ngram > limits.max_output_len:
        raise ApiError(422, "no_repeat_ngram", f"{decode.no_repeat_ngram} is longer than any "
                                               f"output ({limits.max_output_len} subwords, "
                                               "--max-output-len)")
    if decode.seed >= 2 ** 63 or decode.top_k >= 2 ** 63:
        name = "seed" if decode.seed >= 2 ** 63 else "top_k"
        raise ApiError(422, name, "must be below 2**63")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _score(value: float) -> float | None:
    """JSON has no infinity: a hypothesis the search had to force gets null."""
    return value if math.isfinite(value) else None


def render(translations: list, options: RequestOptions, n_best: int) -> dict[str, Any]:
    """``{"translations": [...]}``, one object per text, in input order."""
    from nmt_cli.decoding.alignment import hard_alignment, pharaoh

    out = []
    for t in translations:
        best = t.hypotheses[0] if t.hypotheses else None
        item: dict[str, Any] = {"text": t.text}
        if options.return_scores:
            item["score"] = _score(best.score) if best is not None else 0.0
        if n_best > 1:
            item["hypotheses"] = [{"text": text, "score": _score(h.score)}
                                  for h, text in zip(t.hypotheses, t.texts or [t.text])] \
                or [{"text": "", "score": 0.0}]
        if options.return_alignments:
            pairs = [] if best is None or best.attention is None else \
                hard_alignment(best.attention, t.src_pieces, len(best.tokens))
            item["alignment"] = pharaoh(pairs)
        if t.truncated:
            item["truncated"] = True
        if t.warning is not None:
            item["warning"] = t.warning  # its constraints were not used, and why
        out.append(item)
    return {"translations": out}
