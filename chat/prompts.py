"""Prompts as named constants."""

ANSWER_WITH_SOURCES = (
    "Answer from the numbered sources below. Cite the sources you use as [1], [2] right after the "
    "sentence they support. If the sources do not contain the answer, say that you do not know.\n\n"
    "Sources:\n{sources}"
)

SUMMARY_SYSTEM = (
    "You keep a running summary of a conversation. Merge the existing summary and the new turns into one "
    "short summary in the conversation's language: facts, decisions, names, numbers, open questions. "
    "At most {words} words. Answer with the summary only."
)

SUMMARY_IN_PROMPT = "Summary of the earlier conversation:\n{summary}"

TITLE_SYSTEM = "Give this conversation a title of at most six words, in its language. Answer with the title only."

NOTHING_FOUND = (
    "I found nothing relevant to this question in the knowledge base, so I cannot answer it from there. "
    "Try other words, or ask without the knowledge base."
)
