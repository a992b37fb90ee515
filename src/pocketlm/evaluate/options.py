"""The options of `pocketlm eval --task` and `pocketlm compare` (one field = one flag = one YAML key)."""

from __future__ import annotations

from dataclasses import dataclass

from pocketlm.config import field
from pocketlm.evaluate import metrics


@dataclass(kw_only=True)
class TaskOptions:
    task: str | None = field(None, "score a task instead of perplexity", choices=list(metrics.TASKS))
    prompt_field: str = field("prompt", "record field (or CSV column) holding the prompt")
    completion_field: str = field("completion", "record field (or CSV column) holding the expected output")
    prompt_template: str | None = field(None, "build the prompt from fields, e.g. 'Translate to German: {en}'")
    completion_template: str | None = field(None, "build the expected output from fields")
    system: str | None = field(None, "system prompt added to every example")
    columns: list[str] | None = field(None, "column names for a CSV/TSV file without a header row")
    key_field: str = field("key", "facts task: the field holding the string a correct answer must contain")
    labels: list[str] | None = field(None, "classification: the label set, or a .json/.txt file of labels "
                                     "(default: the labels seen in --data)")
    constrain: bool = field(True, "constrain decoding to the label set (classification) or valid JSON (commands)")
    rank_labels: bool = field(True, "classification: score every label in full and answer the most likely one "
                                    "(off: greedy decoding through the label set, which can commit early to a "
                                    "shared first token)")
    copy_slots: bool = field(False, "commands: slot values (strings inside nested objects) must be whole-word "
                                    "spans of the request that do not overlap, each slot once, as in SNIPS; the "
                                    "model picks spans instead of spelling values")
    schema: str | None = field(None, "commands: a JSON file {\"intents\": [...], \"slots\": [...]} (the snips "
                                     "step writes one); the intent and the slot names must come from it")
    ground: bool = field(True, "answer with the model's grounding when it has one (a model fine-tuned with "
                               "--ground-field): the closest known answer goes into the prompt")
    limit: int | None = field(None, "score only the first N examples (translation: N source sentences)")
    max_new_tokens: int = field(128, "most tokens to generate per answer")
    worst: int = field(10, "how many of the worst examples to list")
    save: str | None = field(None, "write the results as JSON here (default: RUN/evals/TASK-DATA.json for a run)")
