#!/usr/bin/env bash
# The main job on the bundled default: the Harbor & Pine shop handbook and FAQ (examples/shop).
# prepare -> pretrain -> eval -> generate -> GGUF export -> the same prompts through llama.cpp.
# Override the training time with DEMO_TIME=5m, the model with DEMO_MODEL=small-30m.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
OUT=${DEMO_OUT:-runs/demo}
TIME=${DEMO_TIME:-150s}
MODEL=${DEMO_MODEL:-micro-5m}
SHOP=examples/shop
PROMPTS=(
  "Question: What time do you open on Saturdays?
Answer:"
  "Question: How long do I have to return something?
Answer:"
  "Question: Is shipping free?
Answer:"
  "Question: My Tidewater kettle won't turn on. What should I do?
Answer:"
)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
t0=$(date +%s)

step "1/6 prepare: clean, de-duplicate, train a tokenizer, write token shards"
pocketlm prepare "$SHOP/handbook.md" "$SHOP/faq.jsonl" --out "$OUT/data" --vocab-size 2048 \
  --template $'Question: {question}\nAnswer: {answer}'

step "2/6 pretrain: $MODEL from scratch for $TIME"
rm -rf "$OUT/run"
pocketlm pretrain --data "$OUT/data" --model "$MODEL" --out "$OUT/run" --max-time "$TIME" \
  --context 256 --batch-size 16 --lr 2e-3 --warmup-steps 50 --eval-interval 100

step "3/6 eval: loss, perplexity, bits per byte, size and speed on the validation split"
pocketlm eval "$OUT/run" --data "$OUT/data"

step "4/6 generate with PyTorch (greedy)"
args=()
for p in "${PROMPTS[@]}"; do args+=(--prompt "$p"); done
pocketlm generate "$OUT/run" "${args[@]}" --temperature 0 --max-new-tokens 48 --stop $'\nQuestion:'

step "5/6 export to GGUF for llama.cpp and Ollama"
pocketlm export "$OUT/run" --quant q8_0 --out "$OUT/shop-q8_0.gguf"

step "6/6 the same prompts through llama.cpp"
pocketlm generate "$OUT/shop-q8_0.gguf" "${args[@]}" --temperature 0 --max-new-tokens 48 --stop $'\nQuestion:'

step "done in $(( $(date +%s) - t0 )) s"
cat <<MSG
data:        $OUT/data            (meta.json, stats.json, tokenizer/, train.bin, val.bin)
model:       $OUT/run/model       (a Hugging Face directory: transformers loads it as is)
loss curve:  $OUT/run/loss.png
metrics:     $OUT/run/metrics.jsonl
GGUF:        $OUT/shop-q8_0.gguf  (llama.cpp, Ollama)
try it:      .venv/bin/pocketlm generate $OUT/run --temperature 0 --prompt \$'Question: Do you price match?\\nAnswer:'
MSG
