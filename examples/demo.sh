#!/usr/bin/env bash
# The main job on the bundled default: the Harbor & Pine shop handbook and FAQ (examples/shop).
# prepare -> pretrain -> eval -> fine-tune into a grounded support bot -> score it on questions it never
# saw -> GGUF export -> chat with the bot through llama.cpp -> the same FAQ as a retrieval bot (no training).
# Override the training times with DEMO_TIME=5m / DEMO_BOT_TIME=3m, the model with DEMO_MODEL=small-30m.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
OUT=${DEMO_OUT:-runs/demo}
TIME=${DEMO_TIME:-120s}
BOT_TIME=${DEMO_BOT_TIME:-100s}
MODEL=${DEMO_MODEL:-micro-5m}
SHOP=examples/shop
# three questions from the held-out set: worded differently from every training question
QUESTIONS=$'When do you shut on Saturday evenings?\n/reset\nHow many days do I get to bring something back?\n/reset\nAt what order value does delivery become free?\n'
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
t0=$(date +%s)

step "1/8 prepare: clean, de-duplicate, train a tokenizer, write token shards"
pocketlm prepare "$SHOP/handbook.md" "$SHOP/faq.jsonl" --out "$OUT/data" --vocab-size 2048 \
  --template $'Question: {question}\nAnswer: {answer}'

step "2/8 pretrain: $MODEL from scratch for $TIME"
rm -rf "$OUT/run" "$OUT/bot"
pocketlm pretrain --data "$OUT/data" --model "$MODEL" --out "$OUT/run" --max-time "$TIME" \
  --context 256 --batch-size 16 --lr 2e-3 --warmup-steps 50 --eval-interval 100

step "3/8 eval: loss, perplexity, bits per byte, size and speed on the validation split"
pocketlm eval "$OUT/run" --data "$OUT/data"

step "4/8 fine-tune it into a support bot (chat form, answers only, grounded in known answers) for $BOT_TIME"
pocketlm finetune --base "$OUT/run" --data "$SHOP/faq.jsonl" --out "$OUT/bot" \
  --prompt-field question --completion-field answer --ground-field fact --augment 4 --no-keep-best \
  --max-time "$BOT_TIME" --lr 2e-3 --ema 0.99 --context 256 --batch-size 16 --val-fraction 0.05 --eval-interval 50

step "5/8 score the bot on 116 paraphrased questions it never saw"
pocketlm eval "$OUT/bot" --task facts --data "$SHOP/faq_heldout.jsonl" \
  --prompt-field question --completion-field answer --max-new-tokens 64

step "6/8 export the bot to GGUF for llama.cpp and Ollama (its grounding goes beside the file)"
pocketlm export "$OUT/bot" --quant q8_0 --out "$OUT/shop-bot-q8_0.gguf"

step "7/8 chat with the grounded bot through llama.cpp"
printf '%s' "$QUESTIONS" | pocketlm chat "$OUT/shop-bot-q8_0.gguf" --temperature 0 --max-new-tokens 64 2>/dev/null

step "8/8 the same FAQ as a retrieval bot: no training, answers cite their entry, declines what it does not cover"
pocketlm bot --faq "$SHOP/faq.jsonl" --group-field fact --out "$OUT/faqbot"
printf '%s' $'Is Amex OK at the till?\nWhat is the capital of Peru?\n' | pocketlm chat "$OUT/faqbot" 2>/dev/null

step "done in $(( $(date +%s) - t0 )) s"
cat <<MSG
data:        $OUT/data                (meta.json, stats.json, tokenizer/, train.bin, val.bin)
base model:  $OUT/run/model           (a Hugging Face directory: transformers loads it as is)
bot:         $OUT/bot/model           (loss curves: $OUT/bot/loss.png)
GGUF:        $OUT/shop-bot-q8_0.gguf  (llama.cpp, Ollama; pocketlm chat grounds it with $OUT/shop-bot-q8_0.grounding/)
FAQ bot:     $OUT/faqbot              (pocketlm chat $OUT/faqbot; your own FAQ: pocketlm bot --faq FILE, docs/bot.md)
try it:      .venv/bin/pocketlm chat $OUT/bot
better bot:  .venv/bin/pocketlm run recipes/shop-faq.yaml   (longer training, ~9 minutes, ~94% right facts)
MSG
