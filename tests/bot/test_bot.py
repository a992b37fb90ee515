"""`pocketlm bot` end to end with real models: build, answer with citations, decline, score, chat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.bot.answer import EXCERPT_CHARS, Bot
from pocketlm.bot.build import BotBuildConfig, build_bot
from pocketlm.cli import main
from pocketlm.errors import UserError

FAQ = [
    {"id": "password", "q": "How do I reset my password?",
     "a": "Click 'Forgot password' on the sign-in page. We email you a reset link that works for 24 hours."},
    {"id": "hours", "q": "What are your opening hours?", "a": "We are open 9 am to 5 pm, Monday to Friday."},
    {"id": "returns", "q": "Can I return an item?", "a": "Returns are accepted within 30 days with the receipt."},
    {"id": "shipping", "q": "Do you ship abroad?",
     "a": "We ship to 40 countries. International delivery takes 5-10 working days."},
    {"id": "cancel", "q": "How do I cancel my subscription?",
     "a": "Go to Account > Plan and choose Cancel. You keep access until the end of the billing period."},
    {"id": "invoice", "q": "Where can I find my invoices?", "a": "Invoices are under Account > Billing as PDFs."},
]
LONG = {"id": "care", "q": "How should I care for the wooden table?",
        "a": "\n\n".join([f"Section {i}: wipe the table with a dry cloth and keep it out of direct sunlight." for i in
                          range(40)] + ["Oil the table with linseed oil twice a year."])}


def write_faq(path: Path, entries) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bot_run(tmp_path_factory, embedder):
    tmp = tmp_path_factory.mktemp("bot")
    faq = write_faq(tmp / "faq.jsonl", FAQ + [LONG])
    build_bot(BotBuildConfig(faq=[str(faq)], out=str(tmp / "run"), question_field="q", answer_field="a",
                             model="none"), progress=False)
    return tmp / "run"


def test_answers_carry_the_fact_and_the_citation(bot_run):
    bot = Bot(bot_run)
    a = bot.answer("i forgot my login, how long is the reset email valid")
    assert not a.declined and "24 hours" in a.text and a.citations == ["password"]  # the entry's own id
    assert "(source: " in a.shown()
    deep = bot.answer("what oil do i use on the wooden table")  # the detail is 3,000 characters in
    assert "linseed oil" in deep.text and len(deep.text) <= EXCERPT_CHARS  # the excerpt, not the whole answer


def test_off_topic_questions_are_declined_with_nearest_topics(bot_run):
    bot = Bot(bot_run)
    for q in ["what's the capital of peru", "how do I bake sourdough bread"]:
        a = bot.answer(q)
        assert a.declined and a.text.startswith("I don't know") and "Topics I can help with:" in a.text
        assert not a.citations
    info = json.loads((bot_run / "bot.json").read_text())
    assert 0 < info["threshold"]["threshold"] < 1 and info["threshold"]["questions"] == 7  # chosen on the data


def test_eval_reports_facts_and_abstention(bot_run, tmp_path, capsys):
    questions = write_faq(tmp_path / "q.jsonl", [
        {"question": "how many days do i have to send something back", "answer": "30 days", "key": "30 days"},
        {"question": "r u open on monday mornings?", "answer": "from 9 am", "key": "9 am"},
        {"question": "which countries do you deliver to? how long does it take", "answer": "5-10", "key": "5-10"},
        {"question": "how do I train a dragon", "answer": "", "key": ""},
    ])
    rc = main(["eval", str(bot_run), "--task", "facts", "--data", str(questions), "--prompt-field", "question",
               "--completion-field", "answer", "--key-field", "key", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["answerable"] == 3 and result["unanswerable"] == 1
    assert result["metrics"]["abstention"] == 1.0
    assert result["metrics"]["fact_accuracy"] >= 2 / 3
    assert "retrieval_fact_accuracy" in result["metrics"] and result["latency"]["p50_s"] > 0
    assert (bot_run / "evals" / "facts-q.json").is_file()


def test_bad_faq_and_missing_inputs_are_named(tmp_path):
    faq = write_faq(tmp_path / "faq.jsonl", [{"question": "Hi?", "answer": "Hello."}, {"question": "Empty?"}])
    with pytest.raises(UserError, match=r"faq.jsonl:2: no text in field 'answer'"):
        build_bot(BotBuildConfig(faq=[str(faq)], out=str(tmp_path / "r"), model="none"), progress=False)
    with pytest.raises(UserError, match="--faq FILE and/or --docs"):
        build_bot(BotBuildConfig(out=str(tmp_path / "r"), model="none"), progress=False)


def test_cli_build_and_chat_with_documents(tmp_path, embedder):
    """The verb as a user runs it: an FAQ plus a Markdown manual, then a piped chat that cites a section."""
    faq = write_faq(tmp_path / "faq.jsonl", [{"question": e["q"], "answer": e["a"]} for e in FAQ])
    docs = tmp_path / "manual"
    docs.mkdir()
    (docs / "setup.md").write_text("# Router manual\n\n## Wi-Fi\n\n### Changing the channel\n\nOpen 192.168.1.1, "
                                   "then Wireless > Channel, and pick channel 6 or 11.\n", encoding="utf-8")
    run = tmp_path / "run"
    env = {"HF_HUB_OFFLINE": "1", "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run([sys.executable, "-m", "pocketlm", "bot", "--faq", str(faq), "--docs", str(docs),
                          "--out", str(run), "--model", "none"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "1 document passages" in out.stdout and "pocketlm chat" in out.stdout
    chat = subprocess.run([sys.executable, "-m", "pocketlm", "chat", str(run)], input="how do i change the wifi "
                          "channel on the router\n/exit\n", capture_output=True, text=True, env=env, timeout=300)
    assert chat.returncode == 0, chat.stderr
    assert "channel 6 or 11" in chat.stdout and "setup.md > Wi-Fi > Changing the channel" in chat.stdout
    assert "Warning" not in chat.stderr and "Traceback" not in chat.stderr


def test_a_tiny_faq_still_declines_off_topic_questions(tmp_path, embedder):
    faq = write_faq(tmp_path / "faq.jsonl", [{"question": e["q"], "answer": e["a"]} for e in FAQ[:2]])
    build_bot(BotBuildConfig(faq=[str(faq)], out=str(tmp_path / "run"), model="none"), progress=False)
    bot = Bot(tmp_path / "run")
    assert bot.answer("what's the capital of peru").declined
    assert "9 am" in bot.answer("when do you open").text


def test_phrasings_of_one_answer_are_left_out_together(tmp_path, embedder):
    """An FAQ that states each answer under several phrasings: leaving one phrasing out still finds its
    siblings, so the threshold would decline answerable questions; --group-field leaves the group out."""
    rows = []
    for group, phrasings, answer in [
        ("hours", ["When do you open?", "What are your opening times?", "What time do you open in the morning?"],
         "We open at 9 am."),
        ("pay", ["Can I pay by card?", "Do you take credit cards?", "Is card payment accepted?"], "Cards are fine."),
        ("ship", ["Do you ship abroad?", "Can you deliver overseas?", "Do you send parcels to other countries?"],
         "We ship to 40 countries."),
        ("return", ["Can I return an item?", "How do I send something back?", "What is your returns policy?"],
         "Within 30 days."),
    ]:
        rows += [{"question": q, "answer": answer, "topic": group} for q in phrasings]
    faq = write_faq(tmp_path / "faq.jsonl", rows)
    plain = build_bot(BotBuildConfig(faq=[str(faq)], out=str(tmp_path / "a"), model="none"), progress=False)
    grouped = build_bot(BotBuildConfig(faq=[str(faq)], out=str(tmp_path / "b"), model="none", group_field="topic"),
                        progress=False)
    assert grouped["threshold"]["threshold"] < plain["threshold"]["threshold"]
    assert Bot(tmp_path / "b").index.passages[0].group == "hours"
    with pytest.raises(UserError, match=r"faq.jsonl:1: no value in field 'fact' \(--group-field\)"):
        build_bot(BotBuildConfig(faq=[str(faq)], out=str(tmp_path / "c"), model="none", group_field="fact"),
                  progress=False)


def test_a_documents_only_bot_leaves_whole_sections_out_when_choosing_its_threshold(tmp_path, embedder):
    """Passages of one section share its heading: leaving one out alone would find its siblings and set a
    threshold that declines answerable questions."""
    docs = tmp_path / "manual"
    docs.mkdir()
    sections = {"Installing on Linux": "Run sudo apt install widget, then widget --init.",
                "Changing the colour": "Set colour = blue in widget.conf and restart.",
                "Backing up": "widget backup --to /mnt/usb copies every setting.",
                "Licences": "Widget is free software under the MIT licence.",
                "Uninstalling": "Run sudo apt remove widget; your settings stay in ~/.widget."}
    text = "# Widget manual\n\n" + "".join(
        f"## {h}\n\n" + "\n\n".join(f"{body} (note {n}: " + "more words about it " * 20 + ")" for n in range(3)) + "\n\n"
        for h, body in sections.items())
    (docs / "manual.md").write_text(text, encoding="utf-8")
    summary = build_bot(BotBuildConfig(docs=[str(docs)], out=str(tmp_path / "run"), model="none", passage_chars=500),
                        progress=False)
    assert summary["passages"] > len(sections) and summary["threshold"]["questions"] == len(sections)
    bot = Bot(tmp_path / "run")
    a = bot.answer("how do I make a backup of my widget settings")
    assert not a.declined and "/mnt/usb" in a.text and a.citations == ["manual.md > Backing up"]
    assert bot.answer("what's the capital of peru").declined


def test_served_bot_answers_with_citations_and_declines(bot_run, start_server):
    """`pocketlm serve BOT_RUN`: the OpenAI API answers as the bot does, sources in `citations`."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from pocketlm.bot.backend import BotBackend
    from pocketlm.serve.server import create_app
    with start_server(create_app(BotBackend(bot_run, "faq-bot"))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="faq-bot", messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "i forgot my login, how long is the reset email valid"}])
        assert "24 hours" in r.choices[0].message.content and r.model_extra["citations"] == ["password"]
        chunks = list(client.chat.completions.create(model="faq-bot", stream=True, messages=[
            {"role": "user", "content": "i forgot my login, how long is the reset email valid"}]))
        assert "24 hours" in "".join(c.choices[0].delta.content or "" for c in chunks)
        assert chunks[-1].model_extra["citations"] == ["password"]
        declined = client.chat.completions.create(model="faq-bot", messages=[
            {"role": "user", "content": "what's the capital of peru"}])
        assert declined.choices[0].message.content.startswith("I don't know")
        assert "citations" not in (declined.model_extra or {})
        with pytest.raises(openai.BadRequestError, match="a bot answers in text"):
            client.chat.completions.create(model="faq-bot", response_format={"type": "json_object"},
                                           messages=[{"role": "user", "content": "hours?"}])
