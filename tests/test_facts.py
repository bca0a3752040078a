"""Facts files: each layout, stable ids, one-line errors with the right location."""

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memedit_cli.errors import FactsError
from memedit_cli.facts import ID_PATTERN, Fact, Probe, check_subjects, fact_id, load_facts, parse_facts

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def expected_id(prompt, subject, target_new):
    """The content id, computed independently of the module under test."""
    blob = json.dumps([prompt, subject, target_new], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:12]


def jsonl(*items):
    return ("\n".join(json.dumps(i) for i in items) + "\n").encode()


def write(tmp_path, data, name="facts.jsonl"):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def error(tmp_path, data, name="facts.jsonl"):
    """Load a bad file; return its one-line error message."""
    path = write(tmp_path, data, name)
    with pytest.raises(FactsError) as info:
        load_facts(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message.removeprefix(str(path))


EASY = {"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": "Rome"}


# --- layouts -----------------------------------------------------------------

def test_jsonl_easyedit_all_fields_kept_verbatim(tmp_path):
    full = {"id": "tower-1", "prompt": "  The Eiffel Tower is in ", "subject": "Eiffel Tower",
            "target_new": " Rome ", "ground_truth": "Paris", "rephrase_prompt": "Where is the Eiffel Tower?",
            "locality_prompt": "The Colosseum is in", "locality_ground_truth": ["Rome", "Roma"], "extra": 1}
    path = write(tmp_path, "\n" + json.dumps(full) + "\n\n" + json.dumps(EASY) + "\n   \n")
    assert load_facts(path) == [
        Fact(id="tower-1", prompt="  The Eiffel Tower is in ", subject="Eiffel Tower", target_new=" Rome ",
             ground_truth="Paris", rephrase_prompt="Where is the Eiffel Tower?",
             locality_prompt="The Colosseum is in", locality_ground_truth="Rome"),
        Fact(id=expected_id(EASY["prompt"], "Eiffel Tower", "Rome"), **EASY),
    ]


def test_array_easyedit_with_case_id(tmp_path):
    items = [dict(EASY, case_id=3087, locality_ground_truth=[]), dict(EASY, target_new="Oslo", case_id="cf-7")]
    facts = load_facts(write(tmp_path, json.dumps(items, indent=2), "cf.json"))
    assert [f.id for f in facts] == ["3087", "cf-7"]
    assert facts[0].locality_ground_truth is None
    assert facts[1].target_new == "Oslo"


def test_id_wins_over_case_id(tmp_path):
    (fact,) = parse_facts(jsonl(dict(EASY, id="mine", case_id=5)), "f")
    assert fact.id == "mine"


ZSRE_ITEM = {"subject": "UniFirst", "src": "What is the product made by UniFirst?", "pred": "uniform",
             "rephrase": "What will be the product of UniFirst?", "alt": "unmanned aircraft",
             "answers": ["uniform", "uniforms"], "loc": "nq question: who plays walter", "loc_ans": "John Goodman",
             "cond": "uniform >> unmanned aircraft || ..."}


def test_array_zsre(tmp_path):
    (fact,) = load_facts(write(tmp_path, json.dumps([ZSRE_ITEM]), "zsre.json"))
    assert fact == Fact(id=expected_id(ZSRE_ITEM["src"], "UniFirst", "unmanned aircraft"),
                        prompt="What is the product made by UniFirst?", subject="UniFirst",
                        target_new="unmanned aircraft", ground_truth="uniform",
                        rephrase_prompt="What will be the product of UniFirst?",
                        locality_prompt="nq question: who plays walter", locality_ground_truth="John Goodman")


def test_zsre_empty_answers_is_absent(tmp_path):
    item = {"subject": "A", "src": "Who is A?", "alt": "B", "answers": [], "loc_ans": ["x"]}
    (fact,) = parse_facts(jsonl(item), "f")
    assert fact.ground_truth is None and fact.locality_ground_truth == "x" and fact.rephrase_prompt is None


CF_ITEM = {"case_id": 0, "pararel_idx": 1,
           "requested_rewrite": {"prompt": "{} plays the sport", "subject": "David Robinson",
                                 "target_new": {"str": "baseball", "id": "Q1"},
                                 "target_true": {"str": "basketball"}, "relation_id": "P641"},
           "paraphrase_prompts": ["David Robinson's sport is", "Robinson plays"],
           "neighborhood_prompts": ["Shaquille O'Neal plays"], "generation_prompts": ["x"]}


def test_array_original_counterfact(tmp_path):
    (fact,) = load_facts(write(tmp_path, json.dumps([CF_ITEM]), "cf.json"))
    assert fact == Fact(id="0", prompt="David Robinson plays the sport", subject="David Robinson",
                        target_new="baseball", ground_truth="basketball",
                        rephrase_prompts=("David Robinson's sport is", "Robinson plays"),
                        locality_prompt="Shaquille O'Neal plays", locality_ground_truth="basketball")
    assert fact.rephrase_prompt == "David Robinson's sport is"  # every paraphrase is kept, the first is the scalar


def test_counterfact_without_neighbours_has_no_locality(tmp_path):
    item = dict(CF_ITEM, paraphrase_prompts=[], neighborhood_prompts=[])
    (fact,) = parse_facts(jsonl(item), "f")  # JSONL of CounterFact items is fine too
    assert fact.rephrase_prompt is None and fact.locality_prompt is None and fact.locality_ground_truth is None
    assert fact.ground_truth == "basketball"


def test_mixed_layouts_in_one_jsonl_file():
    facts = parse_facts(jsonl(EASY, ZSRE_ITEM, CF_ITEM), "f")
    assert [f.target_new for f in facts] == ["Rome", "unmanned aircraft", "baseball"]


def test_utf8_bom_and_non_ascii_text():
    facts = parse_facts("\ufeff".encode() + jsonl(dict(EASY, target_new="Zürich 東京")), "f")
    assert facts[0].target_new == "Zürich 東京"
    assert facts[0].id == expected_id(EASY["prompt"], "Eiffel Tower", "Zürich 東京")


# --- ids ---------------------------------------------------------------------

def test_fact_id_is_stable():
    assert fact_id("The Eiffel Tower is in", "Eiffel Tower", "Rome") == expected_id(
        "The Eiffel Tower is in", "Eiffel Tower", "Rome")
    assert fact_id("a", "b", "Zürich") == hashlib.sha256('["a", "b", "Zürich"]'.encode()).hexdigest()[:12]
    assert fact_id("a", "b", "c") != fact_id("a", "b", "d")


@pytest.mark.parametrize("good", ["a", "A1", "x" * 64, "3087", "a.b_c-d", "a-"])
def test_good_ids(good):
    assert parse_facts(jsonl(dict(EASY, id=good)), "f")[0].id == good


@pytest.mark.parametrize("bad", ["", "-a", ".a", "x" * 65, "a..b", "a/b", "a\\b", "a b", "é", "a\n"])
def test_bad_ids(tmp_path, bad):
    message = error(tmp_path, jsonl(EASY, dict(EASY, target_new="Oslo", id=bad)))
    assert message.startswith(":2: id ")
    assert "A-Z a-z 0-9 . _ -" in message
    assert not ID_PATTERN.fullmatch(bad) or ".." in bad


def test_bad_case_id(tmp_path):
    assert "id '-1' is not allowed" in error(tmp_path, jsonl(dict(EASY, case_id=-1)))
    assert error(tmp_path, jsonl(dict(EASY, case_id=True))).startswith(":1: field 'case_id' must be")
    assert "found number" in error(tmp_path, jsonl(dict(EASY, case_id=1.5)))


# --- errors ------------------------------------------------------------------

def test_non_utf8(tmp_path):
    message = error(tmp_path, jsonl(EASY) + b'{"prompt": "caf\xe9"}\n')
    assert message.startswith(":2: not valid UTF-8")


def test_malformed_jsonl_line(tmp_path):
    message = error(tmp_path, jsonl(EASY) + b"\n" + b'{"prompt": "x",}\n')
    assert message.startswith(":3: malformed JSON")


def test_malformed_array_reports_json_line(tmp_path):
    text = json.dumps([EASY, dict(EASY, target_new="Oslo")], indent=2).replace('"Rome"\n  },', '"Rome"\n  }')
    assert text.split("\n")[6] == "  {"  # the comma after record 1 is gone: line 7 is where it breaks
    assert error(tmp_path, text, "f.json").startswith(":7: malformed JSON: Expecting ','")


def test_trailing_garbage_after_array(tmp_path):
    assert error(tmp_path, json.dumps([EASY]) + "\n\n]", "f.json").startswith(":3: malformed JSON")


@pytest.mark.parametrize("item, found", [([1], "array"), ("x", "string"), (None, "null"), (3, "number")])
def test_item_not_an_object(tmp_path, item, found):
    assert error(tmp_path, jsonl(EASY, item)) == f":2: expected a JSON object, found {found}"
    assert error(tmp_path, json.dumps([EASY, dict(EASY, target_new="Oslo"), item]), "f.json") == (
        f": record 3: expected a JSON object, found {found}")


@pytest.mark.parametrize("field", ["prompt", "subject", "target_new"])
def test_required_field_missing(tmp_path, field):
    item = {k: v for k, v in EASY.items() if k != field}
    assert error(tmp_path, jsonl(EASY, item)).startswith(f":2: missing required field '{field}'")
    assert error(tmp_path, json.dumps([item]), "f.json").startswith(f": record 1: missing required field '{field}'")


@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_required_field_empty(tmp_path, value):
    assert error(tmp_path, jsonl(dict(EASY, subject=value))).startswith(":1: field 'subject' is empty")


@pytest.mark.parametrize("value, found", [(1, "number"), (None, "null"), (["Rome"], "array"),
                                          ({"str": "Rome"}, "object"), (False, "boolean")])
def test_required_field_wrong_type(tmp_path, value, found):
    assert error(tmp_path, jsonl(dict(EASY, target_new=value))) == (
        f":1: field 'target_new' must be a string, found {found}")


@pytest.mark.parametrize("field, value, found", [
    ("ground_truth", {"str": "Paris"}, "object"), ("rephrase_prompt", 7, "number"),
    ("locality_prompt", {}, "object"), ("locality_ground_truth", True, "boolean")])
def test_optional_field_wrong_type(tmp_path, field, value, found):
    assert error(tmp_path, jsonl(EASY, dict(EASY, target_new="Oslo", **{field: value}))) == (
        f":2: field '{field}' must be a string, found {found}")


def test_answer_list_of_non_strings(tmp_path):
    message = error(tmp_path, jsonl(dict(EASY, locality_ground_truth=[1])))
    assert message.startswith(":1: field 'locality_ground_truth' must be a string or a list of strings")


def test_zsre_errors_name_the_zsre_key(tmp_path):
    item = dict(ZSRE_ITEM, alt="")
    assert error(tmp_path, json.dumps([ZSRE_ITEM, item]), "z.json").startswith(": record 2: field 'alt' is empty")
    item = {k: v for k, v in ZSRE_ITEM.items() if k != "src"}
    assert error(tmp_path, jsonl(item)).startswith(":1: missing required field 'src'")


def test_counterfact_errors(tmp_path):
    bad_template = json.loads(json.dumps(CF_ITEM))
    bad_template["requested_rewrite"]["prompt"] = "David Robinson plays"
    assert "must contain '{}' exactly once" in error(tmp_path, jsonl(bad_template))
    no_target = json.loads(json.dumps(CF_ITEM))
    no_target["requested_rewrite"]["target_new"] = "baseball"
    assert error(tmp_path, jsonl(EASY, no_target)).startswith(":2: field 'requested_rewrite.target_new' must be")
    assert "found string" in error(tmp_path, jsonl(dict(CF_ITEM, neighborhood_prompts="x")))


def test_near_miss_field(tmp_path):
    item = {"prompt": "p", "subject": "s", "target_nwe": "t"}
    assert error(tmp_path, jsonl(EASY, item)) == ":2: unknown field 'target_nwe' (did you mean 'target_new'?)"
    item = dict(EASY, Rephrase_prompt="x")
    assert "did you mean 'rephrase_prompt'?" in error(tmp_path, json.dumps([item]), "f.json")


def test_unrelated_extra_fields_ignored():
    extras = {"ood_rephrase": "x", "target_true": "y", "notes": None}
    assert parse_facts(jsonl(dict(EASY, **extras)), "f")[0] == parse_facts(jsonl(EASY), "f")[0]


def test_malformed_portability_is_refused_not_ignored():
    # portability is read now (docs/facts.md), so a group that is not a list of probes is an error
    with pytest.raises(FactsError, match=r"f:1: field 'portability.a' must be a list of"):
        parse_facts(jsonl(dict(EASY, portability={"a": 1})), "f")


def test_duplicate_ids_name_both_places(tmp_path):
    message = error(tmp_path, jsonl(dict(EASY, id="a"), dict(EASY, target_new="Oslo", id="b"),
                                    dict(EASY, target_new="Bern", id="a")))
    assert message.startswith(":3: duplicate id 'a', first used by line 1")
    message = error(tmp_path, json.dumps([EASY, ZSRE_ITEM, EASY]), "f.json")
    assert message.startswith(": record 3: duplicate id") and "first used by record 1" in message


@pytest.mark.parametrize("field", ["prompt", "subject", "target_new", "ground_truth", "locality_ground_truth"])
def test_nul_character(tmp_path, field):
    message = error(tmp_path, jsonl(EASY, dict(EASY, **{field: "Ro\u0000me"})))
    assert message.startswith(f":2: field '{field}' contains a NUL")


def test_lone_surrogate_rejected(tmp_path):
    message = error(tmp_path, b'{"prompt": "p \\ud800", "subject": "p", "target_new": "t"}\n')
    assert message.startswith(":1: field 'prompt' contains an unpaired surrogate")


@pytest.mark.parametrize("text, name", [("", "f.jsonl"), ("\n  \n\r\n", "f.jsonl"), ("[]", "f.json"),
                                        ("  \n [ \n ] \n", "f.json")])
def test_empty_file(tmp_path, text, name):
    assert error(tmp_path, text, name).startswith(": no facts in")


def test_top_level_not_array_of_objects(tmp_path):
    message = error(tmp_path, "[1e999999999999999999999999999]", "f.json")
    assert message == ": record 1: expected a JSON object, found number"


@pytest.mark.parametrize("text, name, where", [
    ("[" + "9" * 5000 + "]", "f.json", ":"), ("[" * 100000, "f.json", ":"),   # int limit, nesting limit
    ("\n" + "9" * 5000, "f.jsonl", ":2:"), ("\n\n{\"a\": " + "[" * 100000, "f.jsonl", ":3:")])
def test_pathological_json_is_a_facts_error(tmp_path, text, name, where):
    assert error(tmp_path, text, name).startswith(f"{where} malformed JSON")


def test_unreadable_path(tmp_path):
    with pytest.raises(FactsError, match="cannot read facts file"):
        load_facts(tmp_path / "missing.jsonl")


def test_check_subjects():
    ok = parse_facts(jsonl(EASY), "f")
    check_subjects(ok)
    bad = parse_facts(jsonl(EASY, dict(EASY, subject="eiffel tower", id="lower")), "f")
    with pytest.raises(FactsError, match=r"^facts\.jsonl: fact lower: subject 'eiffel tower' does not occur"):
        check_subjects(bad, "facts.jsonl")


# --- serialisation -------------------------------------------------------------

def test_to_json_from_json_round_trip():
    full = Fact(id="x", prompt="p", subject="s", target_new="t", ground_truth="g",
                rephrase_prompt="r", locality_prompt="lp", locality_ground_truth="lg")
    small = Fact(id="y", prompt="p s", subject="s", target_new="t")
    assert list(full.to_json()) == sorted(full.to_json())
    assert small.to_json() == {"id": "y", "prompt": "p s", "subject": "s", "target_new": "t"}
    for fact in (full, small):
        assert Fact.from_json(json.loads(json.dumps(fact.to_json()))) == fact


@pytest.mark.parametrize("data", [
    {"prompt": "p", "subject": "s", "target_new": "t"},                       # no id
    {"id": "x", "prompt": "p", "subject": "s"},                                # no target_new
    {"id": "x", "prompt": "p", "subject": "s", "target_new": ""},              # empty
    {"id": "x", "prompt": "p", "subject": "s", "target_new": 3},               # wrong type
    {"id": "a..b", "prompt": "p", "subject": "s", "target_new": "t"},          # bad id
    {"id": "x", "prompt": "p", "subject": "s", "target_new": "t", "case_id": 1},  # not our form
    {"id": "x", "prompt": "p", "subject": "s", "target_new": "t", "ground_truth": ["g"]},
    ["not", "a", "dict"],
])
def test_from_json_rejects_bad_data(data):
    with pytest.raises(ValueError):
        Fact.from_json(data)


# --- robustness ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["prompt", "subject", "target_new", "{} x", "x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["prompt", "subject", "target_new", "src", "alt", "answers", "loc_ans", "id", "case_id",
                         "requested_rewrite", "str", "target_true", "neighborhood_prompts", "target_nwe"])
        | st.text(max_size=5),
        inner, max_size=6),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.lists(json_values, max_size=3).map(lambda xs: json.dumps(xs).encode()),
                 st.lists(json_values, max_size=3).map(lambda xs: "\n".join(map(json.dumps, xs)).encode())))
def test_arbitrary_bytes_never_crash(data):
    try:
        facts = parse_facts(data, "f")
    except FactsError as e:
        assert str(e).startswith("f") and "\n" not in str(e)
    else:
        assert facts and all(isinstance(f, Fact) for f in facts)
        assert len({f.id for f in facts}) == len(facts)


# --- real benchmark files ------------------------------------------------------

def shared(name):
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"../shared/data not present: {path}")
    return path


def test_shared_counterfact_edit_file():
    facts = load_facts(shared("counterfact-edit-1k.json"))
    assert len(facts) == 1000 and len({f.id for f in facts}) == 1000
    assert facts[0] == Fact(id="3087", prompt="David Robinson professionally plays the sport",
                            subject="David Robinson", target_new="baseball", ground_truth="basketball",
                            rephrase_prompt="David Robinson's greatest weakness is",
                            locality_prompt="Shaquille O'Neal plays", locality_ground_truth="basketball")
    check_subjects(facts)


def test_shared_zsre_file():
    path = shared("zsre-mend-train-1k.json")
    raw = json.loads(path.read_bytes())
    assert len(raw) == 1000
    # Records 535 and 724 of this file have an empty "alt" (target_new): the file as a
    # whole is refused, naming the first of them, and the other 998 load.
    with pytest.raises(FactsError, match=r"record 535: field 'alt' is empty"):
        load_facts(path)
    usable = [r for r in raw if r["alt"].strip()]
    facts = parse_facts(json.dumps(usable).encode(), "zsre")
    assert len(facts) == len(usable) == 998 and len({f.id for f in facts}) == 998
    first = raw[0]
    assert facts[0] == Fact(id=expected_id(first["src"], first["subject"], first["alt"]), prompt=first["src"],
                            subject="UniFirst", target_new="unmanned aircraft", ground_truth="uniform",
                            rephrase_prompt="What will be the product of UniFirst?",
                            locality_prompt="nq question: john goodman's character in the big lebowski",
                            locality_ground_truth="Walter Sobchak")
    check_subjects(facts)


# --- lists of probes (docs/facts.md, "Probes") ----------------------------------

KNOWEDIT_ITEM = {  # the shape of a KnowEdit record (wiki_counterfact / ZsRE test files)
    "subject": "Eiffel Tower", "prompt": "The Eiffel Tower is in", "target_new": "Rome", "ground_truth": ["Paris"],
    "rephrase_prompt": "Where is the Eiffel Tower? In",
    "portability": {"Reasoning": [{"prompt": "The Eiffel Tower's country is", "ground_truth": [["Italy", "IT"]]}],
                    "Subject_Aliasing": [{"prompt": "La tour Eiffel is in", "ground_truth": ["Rome"]}]},
    "locality": {"Relation_Specificity": [{"prompt": "The Eiffel Tower was designed by",
                                           "ground_truth": ["Gustave Eiffel"]}],
                 "Forgetfulness": [{"prompt": "The Eiffel Tower is in the city of", "ground_truth": "Paris"}]},
}


def test_knowedit_groups_map_onto_probes():
    (fact,) = parse_facts(jsonl(KNOWEDIT_ITEM), "f")
    assert fact.ground_truth == "Paris" and fact.rephrase_prompts == ("Where is the Eiffel Tower? In",)
    # Relation_Specificity asks about the edited subject itself: a same-subject probe
    assert fact.subject_locality == (Probe("The Eiffel Tower was designed by", "Gustave Eiffel"),)
    # every other locality group is locality; every portability group is portability, first alias kept
    assert fact.locality == (Probe("The Eiffel Tower is in the city of", "Paris"),)
    assert fact.locality_prompt == "The Eiffel Tower is in the city of" and fact.locality_ground_truth == "Paris"
    assert fact.portability == (Probe("The Eiffel Tower's country is", "Italy"), Probe("La tour Eiffel is in", "Rome"))


def test_easyedit_lists_and_our_own_probe_lists():
    item = dict(EASY, rephrase_prompt=["Where is the Eiffel Tower?", "The Eiffel Tower stands in"],
                locality_prompt=["The Colosseum is in", "The Space Needle is in"],
                locality_ground_truth=["Rome", ["Seattle", "Seattle, WA"]],
                subject_locality=[{"prompt": "The Eiffel Tower is made of", "ground_truth": "iron"}],
                portability=[{"prompt": ["The tower's country is", "Its mayor is"], "ground_truth": ["Italy", "X"]}])
    (fact,) = parse_facts(jsonl(item), "f")
    assert fact.rephrase_prompts == ("Where is the Eiffel Tower?", "The Eiffel Tower stands in")
    assert fact.rephrase_prompt == "Where is the Eiffel Tower?"
    assert fact.locality == (Probe("The Colosseum is in", "Rome"), Probe("The Space Needle is in", "Seattle"))
    assert fact.subject_locality == (Probe("The Eiffel Tower is made of", "iron"),)
    assert fact.portability == (Probe("The tower's country is", "Italy"), Probe("Its mayor is", "X"))


def test_probe_lists_round_trip_through_the_stored_form():
    (fact,) = parse_facts(jsonl(dict(KNOWEDIT_ITEM, rephrase_prompt=["a b", "c d"], id="k")), "f")
    stored = fact.to_json()
    assert stored["rephrase_prompt"] == ["a b", "c d"] and "locality" not in stored  # one locality: plain keys
    assert stored["subject_locality"] == [{"prompt": "The Eiffel Tower was designed by",
                                           "ground_truth": "Gustave Eiffel"}]
    assert Fact.from_json(stored) == fact
    assert parse_facts(jsonl(stored), "f")[0] == fact  # the stored form is also a facts file
    # a plain fact keeps the eight keys it always had (content ids and old logs unchanged)
    (plain,) = parse_facts(jsonl(dict(EASY, rephrase_prompt="r", locality_prompt="l", locality_ground_truth="a")), "f")
    assert sorted(plain.to_json()) == ["id", "locality_ground_truth", "locality_prompt", "prompt",
                                       "rephrase_prompt", "subject", "target_new"]


def test_original_counterfact_keeps_every_paraphrase_and_neighbour():
    item = dict(CF_ITEM, neighborhood_prompts=["Shaquille O'Neal plays", "Michael Jordan plays"])
    (fact,) = parse_facts(jsonl(item), "f")
    assert fact.rephrase_prompts == ("David Robinson's sport is", "Robinson plays")
    assert fact.locality == (Probe("Shaquille O'Neal plays", "basketball"), Probe("Michael Jordan plays", "basketball"))


@pytest.mark.parametrize("item, message", [
    (dict(EASY, locality_prompt=["a", "b"], locality_ground_truth=["x"]), "of the same length"),
    (dict(EASY, portability=[{"prompt": "p"}]), "portability[0].ground_truth has no answer"),
    (dict(EASY, portability=[{"ground_truth": "x"}]), "portability[0] must be an object with"),
    (dict(EASY, subject_locality=[{"prompt": "", "ground_truth": "x"}]), "subject_locality[0].prompt' is empty"),
    (dict(EASY, rephrase_prompt=["ok", 3]), "must be a list of strings"),
    (dict(EASY, locality={"Forgetfulness": [{"prompt": ["a"], "ground_truth": "x"}]}), "needs a list of as many"),
])
def test_bad_probes_are_one_line_errors(item, message):
    with pytest.raises(FactsError) as info:
        parse_facts(jsonl(item), "f")
    assert str(info.value).startswith("f:1: ") and message in str(info.value) and "\n" not in str(info.value)
