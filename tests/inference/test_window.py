"""One rule keeps a chat within the context window, whatever renders and counts the prompt."""

from __future__ import annotations

from pocketlm.inference.window import fit_turns

SYSTEM = {"role": "system", "content": "be brief"}


def chat(n_pairs: int) -> list[dict]:
    messages = [SYSTEM]
    for i in range(n_pairs):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    return messages + [{"role": "user", "content": "last question"}]


def words(messages: list[dict]) -> tuple[str, int]:
    """A stand-in chat template: one line per message; a token per word."""
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return text, len(text.split())


def test_oldest_pairs_go_first_and_the_system_prompt_stays():
    messages = chat(5)  # 3 words of system prompt, 5 pairs of 6, 3 for the last question: 36
    prompt, tokens, dropped = fit_turns(messages, words, context=30, reserve=10)
    assert (tokens, dropped) == (18, 6)  # 36, 30 and 24 leave no room for 10 more in 30; three pairs went
    assert prompt.startswith("system: be brief\nuser: question 3\n") and prompt.endswith("user: last question")
    assert fit_turns(messages, words, context=100, reserve=10) == (words(messages)[0], 36, 0)


def test_the_last_turn_is_never_dropped_and_the_caller_decides():
    prompt, tokens, dropped = fit_turns(chat(3), words, context=8, reserve=4)
    assert prompt == "system: be brief\nuser: last question" and tokens == 6 and dropped == 6
    _, tokens, _ = fit_turns(chat(3), words, context=5, reserve=4)
    assert tokens + 4 > 5  # still too long: fit_conversation cuts it, fit_chat refuses


def test_without_keep_system_the_system_prompt_is_a_turn_like_any_other():
    _, _, dropped = fit_turns(chat(1), words, context=8, reserve=4, keep_system=False)
    assert dropped == 3  # the system prompt, then the user/assistant pair
    first = [{"role": "user", "content": "hi"}, {"role": "system", "content": "grounding"}]
    assert fit_turns(first + [{"role": "user", "content": "x y z"}], words, context=5, reserve=0)[2] == 2
