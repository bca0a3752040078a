"""Facts files: what a user asks the model to learn, read from JSONL or a JSON array.

Three item layouts are accepted, detected per item by its keys: EasyEdit
(`prompt`, `subject`, `target_new`, ...; with KnowEdit's `portability` and
`locality` groups), raw ZsRE (`src`, `alt`, ...) and the original CounterFact
(`requested_rewrite`, ...). All of them map onto `Fact`, which carries lists of
probes for evaluation: rephrases, locality prompts, portability probes and
same-subject probes (docs/facts.md has the mapping).
Every problem is reported as one line naming the file and the line (JSONL) or
record (JSON array), so users can fix their file without reading a traceback.
This module stays stdlib-only: the CLI validates input before loading a model.
"""

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass

from memedit_cli.errors import FactsError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ID_RULE = "use 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit, and no '..'"

REQUIRED = ("prompt", "subject", "target_new")
OPTIONAL = ("ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth")
EASYEDIT_FIELDS = ("id",) + REQUIRED + OPTIONAL
# Keys of the other layouts (used or knowingly ignored): never "near misses".
# Lists of probes (evaluation only): stored under these keys, each a list of {"prompt", "ground_truth"}.
PROBE_LISTS = ("locality", "portability", "subject_locality")
# KnowEdit's locality group that asks about the edited subject itself through another relation.
SAME_SUBJECT_GROUP = "Relation_Specificity"
KNOWN_KEYS = set(EASYEDIT_FIELDS) | set(PROBE_LISTS) | {
    "case_id", "src", "alt", "answers", "rephrase", "loc", "loc_ans", "pred", "cond",
    "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts",
    "attribute_prompts", "generation_prompts", "pararel_idx",
}
# Keys that may hold a list of answers; the first one is the answer used.
LIST_OK = {"ground_truth", "locality_ground_truth", "loc_ans", "answers"}


_ABSENT = object()  # a key not given at all, unlike an explicit JSON null


class _Invalid(ValueError):
    """A problem inside one item; the parser adds the file and line or record."""


def _json_type(value) -> str:
    """Name a value's type the way the user wrote it: in JSON terms."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), ((int, float), "number"), (str, "string"),
                       (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _show(text: str, limit: int = 40) -> str:
    """Quote user text on one line (repr escapes newlines), shortened if long."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_text(value, key: str, required: bool):
    """Validate one text field; return it unchanged (no stripping) or None if absent.

    An optional field given as null counts as absent; a required one is a type error.
    """
    if (value is _ABSENT or value is None) and not required:
        return None
    if value is _ABSENT:
        raise _Invalid(f"missing required field {key!r}; every fact needs prompt, subject and target_new")
    if not isinstance(value, str):
        raise _Invalid(f"field {key!r} must be a string, found {_json_type(value)}")
    if not value.strip():
        # An empty prompt or target cannot be tokenized into an edit; an empty
        # optional field is more likely a slip than a meaningful value.
        hint = "give it some text" if required else "give it some text or remove the field"
        raise _Invalid(f"field {key!r} is empty; {hint}")
    if "\x00" in value:
        raise _Invalid(f"field {key!r} contains a NUL character (\\u0000); remove it")
    try:
        value.encode("utf-8")  # a lone "\ud800" escape parses but can never be written out
    except UnicodeEncodeError:
        raise _Invalid(f"field {key!r} contains an unpaired surrogate escape (\\ud800-\\udfff); "
                       "fix the text") from None
    return value


def _check_id(value) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"field 'id' must be a string, found {_json_type(value)}")
    # fullmatch: `$` alone would accept a trailing newline. ".." is refused because
    # ids name files and revisions; the pattern already excludes path separators.
    if not ID_PATTERN.fullmatch(value) or ".." in value:
        raise _Invalid(f"id {_show(value)} is not allowed: {ID_RULE}")
    return value


@dataclass(frozen=True)
class Probe:
    """A prompt and the answer it is scored against (the first of several aliases)."""
    prompt: str
    answer: str

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "ground_truth": self.answer}


@dataclass(frozen=True)
class Fact:
    """One fact to teach, and the probes that evaluate it.

    The scalar fields `rephrase_prompt`, `locality_prompt` and
    `locality_ground_truth` are the first entries of `rephrase_prompts` and
    `locality`; either form may be given, and the other is filled in.
    """
    id: str
    prompt: str
    subject: str
    target_new: str
    ground_truth: str | None = None
    rephrase_prompt: str | None = None
    locality_prompt: str | None = None
    locality_ground_truth: str | None = None
    rephrase_prompts: tuple[str, ...] = ()
    locality: tuple[Probe, ...] = ()  # other subjects: their answers must not change
    portability: tuple[Probe, ...] = ()  # consequences of the edit (multi-hop, aliases): answer must follow
    subject_locality: tuple[Probe, ...] = ()  # the same subject through another relation: must not change

    def __post_init__(self):
        # Validate here too, so a Fact built anywhere (CLI flags, the log) is sound.
        _check_id(self.id)
        for name in REQUIRED + OPTIONAL:
            _check_text(getattr(self, name), name, name in REQUIRED)
        _sync(self, "rephrase_prompts", "rephrase_prompt", self.rephrase_prompt)
        first = (Probe(self.locality_prompt, self.locality_ground_truth)
                 if self.locality_prompt and self.locality_ground_truth else None)
        _sync(self, "locality", None, first)
        if self.locality and self.locality_prompt is None:
            object.__setattr__(self, "locality_prompt", self.locality[0].prompt)
            object.__setattr__(self, "locality_ground_truth", self.locality[0].answer)
        for i, text in enumerate(self.rephrase_prompts):
            _check_text(text, f"rephrase_prompts[{i}]", True)
        for key in PROBE_LISTS:
            for i, probe in enumerate(getattr(self, key)):
                if not isinstance(probe, Probe):
                    raise _Invalid(f"{key}[{i}] must be a Probe")
                _check_text(probe.prompt, f"{key}[{i}].prompt", True)
                _check_text(probe.answer, f"{key}[{i}].ground_truth", True)

    def to_json(self) -> dict:
        """The stored form: a fact with one rephrase and one locality probe keeps the eight plain keys."""
        d = {k: getattr(self, k) for k in ("id",) + REQUIRED + OPTIONAL}
        if len(self.rephrase_prompts) > 1:
            d["rephrase_prompt"] = list(self.rephrase_prompts)
        lone = len(self.locality) == 1 and self.locality[0].prompt == self.locality_prompt
        if self.locality and not lone:
            d["locality_prompt"] = d["locality_ground_truth"] = None
        for key in PROBE_LISTS:
            probes = getattr(self, key)
            if probes and not (key == "locality" and lone):
                d[key] = [p.to_json() for p in probes]
        return {k: d[k] for k in sorted(d) if d[k] is not None}

    @classmethod
    def from_json(cls, d: dict) -> "Fact":
        """Read a fact back from the log: exactly the to_json form, nothing else."""
        if not isinstance(d, dict):
            raise _Invalid(f"a fact must be a JSON object, found {_json_type(d)}")
        extra = sorted(set(d) - set(EASYEDIT_FIELDS) - set(PROBE_LISTS))
        if extra:
            raise _Invalid(f"unknown field {extra[0]!r} in a stored fact")
        missing = [k for k in ("id",) + REQUIRED if k not in d]
        if missing:  # checked here: the constructor would raise TypeError instead
            raise _Invalid(f"missing required field {missing[0]!r} in a stored fact")
        fields = dict(d)
        if isinstance(fields.get("rephrase_prompt"), list):
            fields["rephrase_prompts"] = tuple(fields.pop("rephrase_prompt"))
        for key in PROBE_LISTS:
            if key in fields:
                fields[key] = tuple(Probe(p["prompt"], p["ground_truth"]) for p in fields[key])
        return cls(**fields)


def _sync(fact, many: str, one: str | None, first) -> None:
    """Fill the list field `many` from its first entry `first`, or check they agree."""
    items = tuple(getattr(fact, many))
    if first is not None and not items:
        items = (first,)
    elif first is not None and items[0] != first:
        # the scalar form names the first entry; given both ways, they must agree
        raise _Invalid(f"{one or many + '[0]'} differs from the first entry of {many}")
    object.__setattr__(fact, many, items)
    if one and items and getattr(fact, one) is None:
        object.__setattr__(fact, one, items[0])


def fact_id(prompt: str, subject: str, target_new: str) -> str:
    """Content id: the same triple always gets the same id, on any machine."""
    data = json.dumps([prompt, subject, target_new], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:12]


def _first(d: dict, key: str):
    """The value of `key`; for answer keys a list means its first entry, [] means absent."""
    value = d.get(key, _ABSENT)
    if key in LIST_OK and isinstance(value, list):
        if value and not isinstance(value[0], str):
            raise _Invalid(f"field {key!r} must be a string or a list of strings, "
                           f"found a list holding {_json_type(value[0])}")
        return value[0] if value else None
    return value


def _prompts(d: dict, key: str) -> tuple[str, ...]:
    """A list of prompts (CounterFact's `paraphrase_prompts`, ...), each checked."""
    value = d.get(key, [])
    if not isinstance(value, list):
        raise _Invalid(f"field {key!r} must be a list of strings, found {_json_type(value)}")
    for p in value:
        if not isinstance(p, str):
            raise _Invalid(f"field {key!r} must be a list of strings, found a list holding {_json_type(p)}")
    return tuple(_check_text(p, f"{key}[{i}]", True) for i, p in enumerate(value))


def _answer(value, where: str) -> str:
    """A probe's answer: a string, or aliases (a list, or KnowEdit's list of lists) whose first is used."""
    while isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, list) or value is None:
        raise _Invalid(f"{where} has no answer; give it a non-empty ground_truth")
    return _check_text(value, where, True)


def _probes(value, key: str) -> list[Probe]:
    """Probes from a list of {"prompt", "ground_truth"} objects; an object whose
    `prompt` is a list pairs it with a list of answers (EasyEdit's *_inputs form)."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise _Invalid(f"field {key!r} must be a list of {{\"prompt\", \"ground_truth\"}} objects, "
                       f"found {_json_type(value)}")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or "prompt" not in item:
            raise _Invalid(f"{where} must be an object with \"prompt\" and \"ground_truth\"")
        prompts, answers = item["prompt"], item.get("ground_truth")
        if isinstance(prompts, list):
            if not isinstance(answers, list) or len(answers) != len(prompts):
                raise _Invalid(f"{where}: a list of prompts needs a list of as many ground_truth answers")
            pairs = list(zip(prompts, answers))
        else:
            pairs = [(prompts, answers)]
        for j, (prompt, answer) in enumerate(pairs):
            at = where if len(pairs) == 1 else f"{where}[{j}]"
            out.append(Probe(_check_text(prompt, f"{at}.prompt", True), _answer(answer, f"{at}.ground_truth")))
    return out


def _probe_groups(item: dict) -> dict:
    """`locality`, `portability` and `subject_locality` of an EasyEdit item, as tuples of Probes.

    KnowEdit gives `locality` and `portability` as dicts of named groups; its
    `Relation_Specificity` locality group asks about the edited subject, so it
    is a same-subject probe (subject_locality), the other groups are locality.
    """
    out = {k: [] for k in PROBE_LISTS}
    for key in PROBE_LISTS:
        value = item.get(key)
        if value is None:
            continue
        groups = value if isinstance(value, dict) and "prompt" not in value else {None: value}
        for name, group in groups.items():
            dest = "subject_locality" if key == "locality" and name == SAME_SUBJECT_GROUP else key
            out[dest] += _probes(group, f"{key}.{name}" if name else key)
    return {k: tuple(v) for k, v in out.items()}


def _easyedit(item: dict) -> dict:
    fields = {f: _check_text(_first(item, f), f, f in REQUIRED) for f in REQUIRED + ("ground_truth",)}
    groups = _probe_groups(item)
    reph = item.get("rephrase_prompt")
    if isinstance(reph, list):
        fields["rephrase_prompts"] = _prompts(item, "rephrase_prompt")
    else:
        fields["rephrase_prompt"] = _check_text(_first(item, "rephrase_prompt"), "rephrase_prompt", False)
    loc = item.get("locality_prompt")
    if isinstance(loc, list):  # parallel lists: prompt i is answered by locality_ground_truth[i]
        answers = item.get("locality_ground_truth")
        if not isinstance(answers, list) or len(answers) != len(loc):
            raise _Invalid("a list 'locality_prompt' needs a list 'locality_ground_truth' of the same length")
        pairs = [Probe(_check_text(q, f"locality_prompt[{i}]", True), _answer(a, f"locality_ground_truth[{i}]"))
                 for i, (q, a) in enumerate(zip(loc, answers))]
        groups["locality"] = tuple(pairs) + groups["locality"]
    else:
        fields["locality_prompt"] = _check_text(_first(item, "locality_prompt"), "locality_prompt", False)
        fields["locality_ground_truth"] = _check_text(_first(item, "locality_ground_truth"),
                                                      "locality_ground_truth", False)
        if fields["locality_prompt"] and fields["locality_ground_truth"] and groups["locality"]:
            groups["locality"] = (Probe(fields["locality_prompt"], fields["locality_ground_truth"]),) \
                + groups["locality"]
    return {**fields, **groups}


def _counterfact(d: dict) -> dict:
    rw = d["requested_rewrite"]
    if not isinstance(rw, dict):
        raise _Invalid(f"field 'requested_rewrite' must be an object, found {_json_type(rw)}")
    subject = _check_text(rw.get("subject", _ABSENT), "requested_rewrite.subject", True)
    template = _check_text(rw.get("prompt", _ABSENT), "requested_rewrite.prompt", True)
    # str.format would choke on other braces in the text; "{}" marks the subject.
    if template.count("{}") != 1:
        raise _Invalid("field 'requested_rewrite.prompt' must contain '{}' exactly once, where the subject goes")
    answers = {}
    for key in ("target_new", "target_true"):
        obj = rw.get(key)
        if obj is None and key == "target_true":
            continue  # optional: without it there is just no ground truth
        if obj is None:
            raise _Invalid(f"missing required field 'requested_rewrite.{key}'")
        if not isinstance(obj, dict):
            raise _Invalid(f"field 'requested_rewrite.{key}' must be an object like "
                           f"{{\"str\": \"...\"}}, found {_json_type(obj)}")
        answers[key] = _check_text(obj.get("str", _ABSENT), f"requested_rewrite.{key}.str", True)
    # neighbours are other subjects that share the true answer: it must stay theirs
    true = answers.get("target_true")
    neighbours = _prompts(d, "neighborhood_prompts") if true else ()
    return dict(prompt=template.replace("{}", subject), subject=subject,
                target_new=answers["target_new"], ground_truth=true,
                rephrase_prompts=_prompts(d, "paraphrase_prompts"),
                locality=tuple(Probe(q, true) for q in neighbours))


# ZsRE raw key -> Fact field.
ZSRE = {"src": "prompt", "subject": "subject", "alt": "target_new", "answers": "ground_truth",
        "rephrase": "rephrase_prompt", "loc": "locality_prompt", "loc_ans": "locality_ground_truth"}


def _to_fact(item) -> Fact:
    """Map one parsed item of any layout to a validated Fact."""
    if not isinstance(item, dict):
        raise _Invalid(f"expected a JSON object, found {_json_type(item)}")
    # Typos first: "target_nwe" should say so, not that target_new is missing.
    for key in item:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, EASYEDIT_FIELDS, n=1, cutoff=0.8)
            if close:
                raise _Invalid(f"unknown field {_show(key)} (did you mean {close[0]!r}?)")
    if "prompt" not in item and "requested_rewrite" in item:
        fields = _counterfact(item)
    elif "prompt" not in item and ("src" in item or "alt" in item):
        # Check under the user's own key names, so the message names what they wrote.
        fields = {f: _check_text(_first(item, k), k, f in REQUIRED) for k, f in ZSRE.items()}
    else:
        fields = _easyedit(item)
    if "id" in item:
        fid = _check_id(item["id"])
    elif "case_id" in item:
        case_id = item["case_id"]
        if isinstance(case_id, bool) or not isinstance(case_id, (int, str)):
            raise _Invalid(f"field 'case_id' must be an integer or a string, found {_json_type(case_id)}")
        fid = _check_id(str(case_id))
    else:
        fid = fact_id(fields["prompt"], fields["subject"], fields["target_new"])
    return Fact(id=fid, **fields)


def parse_facts(text: bytes, name: str) -> list[Fact]:
    """Parse a whole facts file; raise FactsError on the first problem found."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        line = text[:e.start].count(b"\n") + 1
        raise FactsError(f"{name}:{line}: not valid UTF-8 (byte 0x{text[e.start]:02x}); "
                         "save the file as UTF-8") from None
    decoded = decoded.removeprefix("\ufeff")  # a BOM from Windows editors is harmless
    items = []  # (message prefix, "line n" or "record n", parsed item)
    if decoded.lstrip(" \t\r\n").startswith("["):
        try:
            records = json.loads(decoded)
        except json.JSONDecodeError as e:
            raise FactsError(f"{name}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # e.g. absurdly long integers or nesting
            raise FactsError(f"{name}: malformed JSON: {type(e).__name__}; "
                             "check the file is a JSON array of objects") from None
        items = [(f"{name}: record {n}", f"record {n}", item) for n, item in enumerate(records, 1)]
    else:
        # Split on "\n" only: physical lines as editors number them.
        for n, line in enumerate(decoded.split("\n"), 1):
            if not line.strip(" \t\r"):
                continue
            try:
                items.append((f"{name}:{n}", f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise FactsError(f"{name}:{n}: malformed JSON: {e.msg} (column {e.colno}); "
                                 "each line must be one complete JSON object") from None
            except (ValueError, RecursionError) as e:
                raise FactsError(f"{name}:{n}: malformed JSON: {type(e).__name__}") from None
    if not items:
        raise FactsError(f"{name}: no facts in this file; write one JSON object per line, or a JSON array of objects")
    facts, seen = [], {}
    for where, label, item in items:
        try:
            fact = _to_fact(item)
        except _Invalid as e:
            raise FactsError(f"{where}: {e}") from None
        if fact.id in seen:
            # Content ids collide when the same fact appears twice; say both places.
            raise FactsError(f"{where}: duplicate id {fact.id!r}, first used by {seen[fact.id]}; "
                             "give each fact a unique id (or remove the repeated fact)")
        seen[fact.id] = label
        facts.append(fact)
    return facts


def load_facts(path: str | os.PathLike) -> list[Fact]:
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FactsError(f"{name}: cannot read facts file: {e.strerror}") from None
    return parse_facts(data, name)


def check_subjects(facts: list[Fact], name: str = "facts") -> None:
    """Methods that locate the subject's tokens need it verbatim inside the prompt."""
    for fact in facts:
        if fact.subject not in fact.prompt:
            raise FactsError(f"{name}: fact {fact.id}: subject {_show(fact.subject)} does not occur in prompt "
                             f"{_show(fact.prompt)}; make the subject appear in the prompt exactly (case matters)")
