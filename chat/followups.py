"""Whether a question leans on the conversation before it, and the query a turn retrieves with.

A question that stands on its own is searched as asked. A follow-up ("and how do I undo it?",
"那硬链接呢") names its subject only in an earlier turn, so it is searched together with the
user's previous question. No model call: on our follow-up sets (bench/questions) the previous
question and the follow-up searched together retrieve as well as the same question asked
standalone (hybrid recall@5 1.0 for both, English and Chinese), and a rewrite by the model cost a
whole model call before every follow-up's search, whether the question needed it or not."""

from __future__ import annotations

import re

# Words that point back at something said before. A follow-up points back early ("is that good
# enough...", "那硬链接呢"); the same words later in a question mostly point inside it ("...a
# decorator to memoize it"): on our English set, counting them anywhere took 117 of 321
# standalone questions for follow-ups, within the first five words 39, and still found 14 of 16
# follow-ups.
ENGLISH_REFERENCES = re.compile(
    r"\b(it|its|it's|that|this|those|these|them|they|their|one|ones|same|instead|also|too|then|afterwards|"
    r"there|either|other|another|such|former|latter)\b",
    re.IGNORECASE,
)
ENGLISH_OPENINGS = re.compile(r"^\s*(and|now|so|but|or|ok|okay|also|what about|how about|what if|then)\b", re.I)
CHINESE_REFERENCES = re.compile(
    r"它|这个|那个|这样|那样|这些|那些|这种|那种|其|该|上面|刚才|之前|反过来|以后|之后|^那|^还"
)
CHINESE_ELLIPSIS = re.compile(r"呢\s*[？?]?\s*$")  # "那硬链接呢": the rest of the question is in the last one
LEADING_WORDS = 5
LEADING_CHINESE_CHARACTERS = 6
SHORT_QUESTION_WORDS = 3  # "why?", "which one?": too short to stand alone
MAX_PREVIOUS_CHARS = 500


def depends_on_history(question: str) -> bool:
    words = re.findall(r"[\w']+", question)
    if re.search(r"[\u3400-\u9fff]", question):
        head = "".join(question.split())[:LEADING_CHINESE_CHARACTERS]
        return bool(CHINESE_REFERENCES.search(head) or CHINESE_ELLIPSIS.search(question))
    leading = " ".join(words[:LEADING_WORDS])
    return bool(
        ENGLISH_OPENINGS.search(question) or ENGLISH_REFERENCES.search(leading) or len(words) <= SHORT_QUESTION_WORDS
    )


def retrieval_query(previous_questions: list[str], question: str) -> str:
    """What to search for: the question, or, for a follow-up, the user's previous question and it."""
    if not previous_questions or not depends_on_history(question):
        return question
    return f"{previous_questions[-1][:MAX_PREVIOUS_CHARS]} {question}"
