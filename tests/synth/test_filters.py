"""The synth filters on hand-made candidates: length, self-containment, lexical grounding, dedup."""

from __future__ import annotations

from tunelab.config import SynthFilterConfig
from tunelab.data.records import Record
from tunelab.documents.chunk import Chunk
from tunelab.synth.filters import (
    FilterReport,
    apply_cheap_filters,
    cites_source,
    content_terms,
    dedup_filter,
    grounding_filter,
    length_filter,
    numbers,
    rouge_1_f,
    rouge_l_f,
    self_containment_filter,
    words,
)
from tunelab.synth.generate import Candidate

CHUNK = Chunk(
    id="c1", doc="03-leave.md", heading=("Leave and Holidays", "Annual leave"),
    text="Full-time employees get 27 days of paid annual leave per year, plus public holidays. "
         "Requests go through the HR portal at least two weeks ahead; up to 5 unused days carry over. "
         "The office opens at 09:00 and the budget is £1,500 per person.",
    n_tokens=50, start=0, end=200,
)
CFG = SynthFilterConfig()


def qa(question: str, answer: str, chunk: Chunk = CHUNK) -> Candidate:
    rec = Record("chat", messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                 meta={"chunk_id": chunk.id})
    return Candidate(rec, chunk, [question], [answer], question)


def pref(question: str, chosen: str, rejected: str) -> Candidate:
    rec = Record("preference", messages=[{"role": "user", "content": question}], chosen=chosen, rejected=rejected)
    return Candidate(rec, CHUNK, [question], [chosen], question, rejected=rejected)


GOOD = qa("How many days of annual leave do full-time employees get?",
          "Full-time employees get 27 days of paid annual leave per year.")


def test_terms_and_numbers():
    assert words("Don't panic, Café!") == ["don", "t", "panic", "café"]
    assert content_terms("The employees are getting paid leave") == {"employe", "get", "paid", "leav"}
    assert numbers("£1,500 at 09:00, 27 days, version 2.5") == {"1500", "9:00", "27", "2.5"}


def test_length_bounds_on_questions_and_replies():
    cfg = SynthFilterConfig(min_prompt_chars=12, max_prompt_chars=80, min_answer_chars=3, max_answer_chars=40)
    short_q = qa("Leave?", "27 days.")
    long_q = qa("How many days " * 10 + "?", "27 days.")
    short_a = qa("How many days of leave?", "27")
    long_a = qa("How many days of leave?", "Full-time employees get 27 days of paid annual leave per year.")
    kept, dropped = length_filter([short_q, long_q, short_a, long_a, qa("How many days of leave?", "27 days.")], cfg)
    assert [d.reason for d in dropped] == ["prompt_too_short", "prompt_too_long", "answer_too_short", "answer_too_long"]
    assert len(kept) == 1
    # a preference's rejected reply is held to the same bounds
    _, dropped = length_filter([pref("How many days of leave?", "27 days.", "x")], cfg)
    assert [d.reason for d in dropped] == ["answer_too_short"]


def test_self_containment_catches_references_to_the_source_only():
    for text in ("What does this document say about leave?", "According to the text, how many days?",
                 "Summarise the above.", "What is mentioned in the passage about holidays?",
                 "Based on the provided information, who approves leave?", "As mentioned above, what applies?"):
        assert cites_source(text), text
    for text in ("How many days of annual leave do I get?", "Which document do I sign on my first day?",
                 "Can I send the text message to my manager?", "What is the context switch cost?",
                 "Bring the following documents: a passport and a payslip."):
        assert cites_source(text) is None, text
    cands = [GOOD, qa("What does this document say about leave?", "27 days of paid annual leave."),
             qa("How many days of leave?", "According to the text, employees get 27 days.")]
    kept, dropped = self_containment_filter(cands)
    assert kept == [GOOD]
    assert [d.reason for d in dropped] == ["question_cites_source", "answer_cites_source"]
    assert "this document" in dropped[0].detail


def test_grounding_keeps_supported_answers_and_says_why_it_drops_the_rest():
    cands = [
        GOOD,
        qa("How many days of annual leave do full-time employees get?", "Full-time employees get 30 days of annual leave."),
        qa("How many days of annual leave do full-time employees get?",
           "Employees receive generous sabbaticals, pension matching and gym memberships."),
        qa("What is the capital city of France, in Europe?", "Paris is the capital of France."),
        qa("Do full-time employees get annual leave?", "Yes."),
        qa("When does the office open?", "The office opens at 9:00."),  # 09:00 in the chunk
        qa("What is the budget per person?", "The budget is £1500 per person."),  # £1,500 in the chunk
    ]
    kept, dropped = grounding_filter(cands, CFG)
    assert [d.reason for d in dropped] == ["unsupported_number", "low_overlap", "off_topic", "no_content_words"]
    assert "30" in dropped[0].detail and "sabbat" in dropped[1].detail
    assert kept == [GOOD, cands[5], cands[6]]
    assert GOOD.checks["overlap"] == 1.0 and GOOD.checks["topic_overlap"] > 0.5
    # the heading path counts as source: "Holidays" is only in the heading here
    heading_only = qa("Which section covers leave and holidays?", "Leave and Holidays covers annual leave.")
    assert grounding_filter([heading_only], CFG)[0] == [heading_only]
    # thresholds are the config's
    loose = SynthFilterConfig(min_overlap=0.0, check_numbers=False)
    unsupported = [qa("How many days off?", "Employees get 30 days of paid leave."),
                   qa("How many days off?", "Employees get 27 days, generous sabbaticals and gym memberships.")]
    assert [d.reason for d in grounding_filter(unsupported, CFG)[1]] == ["unsupported_number", "low_overlap"]
    assert len(grounding_filter(unsupported, loose)[0]) == 2


def test_grounding_wants_an_answer_that_says_more_than_its_question():
    tautologies = [qa("What is the difference between annual leave and paid leave?",
                      "The difference is that annual leave is paid leave, while paid leave is annual leave."),
                   qa("Do full-time employees get paid annual leave?", "Yes, full-time employees get paid annual leave.")]
    kept, dropped = grounding_filter(tautologies, CFG)
    assert kept == [] and [d.reason for d in dropped] == ["answer_adds_nothing"] * 2
    informative = qa("Do full-time employees get paid annual leave?", "Yes, 27 days per year, plus public holidays.")
    assert grounding_filter([informative], CFG)[0] == [informative]


def test_grounding_wants_a_rejected_reply_that_the_chunk_does_not_support():
    q = "How many days of annual leave do full-time employees get?"
    chosen = "Full-time employees get 27 days of paid annual leave per year."
    good = pref(q, chosen, "Full-time employees get 25 days of paid annual leave per year.")
    novel_word = pref(q, chosen, "Full-time employees get 27 days of annual leave, including public holidays and sick days.")
    same = pref(q, chosen, "Full-time employees get 27 days of paid annual leave per year!")
    grounded = pref(q, chosen, "Full-time employees get paid annual leave plus public holidays per year.")
    off_topic = pref(q, chosen, "Penguins migrate across Antarctic glaciers during winter storms.")
    kept, dropped = grounding_filter([good, novel_word, same, grounded, off_topic], CFG)
    assert kept == [good, novel_word]
    assert good.checks["rejected_unsupported"] == ["25"]
    assert [d.reason for d in dropped] == ["rejected_same_as_chosen", "rejected_looks_grounded", "rejected_off_topic"]


def test_rouge():
    assert rouge_1_f(["a", "b", "c", "a"], ["c", "a", "b", "x"]) == 0.75 and rouge_1_f([], ["a"]) == 0.0
    assert rouge_l_f(["a", "b", "c"], ["a", "b", "c"]) == 1.0
    assert rouge_l_f(["a", "b", "c", "d"], ["a", "x", "c", "d"]) == 0.75
    assert rouge_l_f([], ["a"]) == 0.0


def test_dedup_exact_near_and_similar_against_batch_and_pool():
    other = Chunk("c2", "03-leave.md", ("Leave and Holidays", "Annual leave"), CHUNK.text, 50, 0, 200)
    pool = [Record("chat", messages=[{"role": "user", "content": "When must leave requests be made?"},
                                     {"role": "assistant", "content": "At least two weeks ahead, in the HR portal."}])]
    cands = [
        GOOD,
        qa("how many days of annual leave do full-time employees get", "27 days."),  # same question, other case
        qa("How many days of annual leave do full time employees receive?",
           "Full time employees receive 27 days of paid annual leave per year.", other),
        qa("When must leave requests be made?", "At least two weeks ahead."),  # the pool's question
        qa("When should leave requests be made?", "At least two weeks ahead, in the HR portal."),  # similar to pool
        # a similar question with a different answer asks for another fact: kept
        qa("How many days of annual leave do part-time employees get?", "Part-time employees get 13 days."),
        qa("Where do leave requests go?", "Requests go through the HR portal at least two weeks ahead."),
    ]
    kept, dropped = dedup_filter(cands, pool, CFG)
    assert kept == [GOOD, cands[5], cands[6]]
    reasons = {d.candidate.prompt_text: d.reason for d in dropped}
    assert reasons[cands[1].prompt_text] == "duplicate"
    assert reasons[cands[2].prompt_text] == "similar"
    assert reasons[cands[3].prompt_text] == "duplicate"
    assert reasons[cands[4].prompt_text] == "similar"
    assert "pool" in next(d.detail for d in dropped if d.candidate is cands[4])
    # a dropped record does not knock out a later one that only resembles the dropped one
    a = qa("one two three four five six seven eight nine ten", "x")
    b = qa("one two three four five six seven eight alpha beta", "x")  # ROUGE-1 0.8 with a
    c = qa("one two three four five six alpha beta gamma delta", "x")  # 0.6 with a, 0.8 with b
    kept, dropped = dedup_filter([a, b, c], [], SynthFilterConfig(similar_threshold=0.8))
    assert kept == [a, c] and [d.candidate for d in dropped] == [b]
    # word order does not make a question new
    answer = "Facilities is led by Gwen Tattersall in Leeds and Callum Rennie in Edinburgh."
    first, second = (qa("What is the Facilities team's current position?", answer),
                     qa("What is the current position of the Facilities team?", answer))
    kept, dropped = dedup_filter([first, second], [], CFG)
    assert kept == [first] and dropped[0].reason == "similar" and "ROUGE-1 1.00" in dropped[0].detail


def test_near_duplicates_of_whole_records_are_removed_as_prepare_would():
    long_answer = ("Full-time employees get 27 days of paid annual leave per year, plus public holidays, and "
                   "requests go through the HR portal at least two weeks ahead, with up to 5 unused days carried over.")
    a = qa("Tell me about annual leave for full-time staff.", long_answer)
    b = qa("Tell me about annual leave for full-time staff, please.", long_answer)
    kept, dropped = dedup_filter([a, b], [], SynthFilterConfig(similar_threshold=1.0))
    assert kept == [a] and dropped[0].reason == "near_duplicate"
    pool = [a.record]
    kept, dropped = dedup_filter([b], pool, SynthFilterConfig(similar_threshold=1.0))
    assert kept == [] and dropped[0].reason == "near_duplicate" and "pool" in dropped[0].detail


def test_filters_run_in_order_and_report_every_drop():
    cands = [GOOD, qa("Leave?", "27 days."), qa("What does this document say?", "27 days of leave."),
             qa("How many days of paid annual leave do full-time employees get?", "40 days."),
             qa("How many days of annual leave do full-time employees get?", "27 days of leave.")]
    report = FilterReport()
    kept = apply_cheap_filters(cands, CFG, [], report)
    assert kept == [GOOD]
    assert list(report.steps) == ["length", "self_containment", "grounding", "dedup"]
    assert {k: v["dropped"] for k, v in report.steps.items()} == {
        "length": 1, "self_containment": 1, "grounding": 1, "dedup": 1}
    assert report.steps["grounding"]["in"] == 3 and report.steps["grounding"]["reasons"] == {"unsupported_number": 1}
    assert len(report.dropped) == 4
    row = report.dropped[0].to_row()
    assert row["filter"] == "length" and row["messages"][0]["content"] == "Leave?"
