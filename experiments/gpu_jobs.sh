#!/usr/bin/env bash
# Background jobs on the GPU machine, started detached by `gpu_session.sh launch` so that they run across several
# device calls (each at most 10 minutes) and share the H200: the Qwen2.5-Coder-1.5B calibration and evaluation,
# and two streams of Qwen2.5-Coder-0.5B evaluation rows. Produced docs/results/qwen15/ and the rows added to
# docs/results/qwen/matrix.jsonl in the session of 2026-12-02 (evening: ablation, common words and hybrid rows, with
# q05a then running ablation@0.5, common words for every policy, ablation@0.25 and the rest, in that order).
# q15b (session of 2026-12-02, night) produced the rest of docs/results/qwen15/matrix.jsonl (eval_log_2/3.txt).
# q15c + q15d (session of 2026-12-03): the 1,000-step head gates and their duo@r rows; more random, 33% and
# variable-tracking / common-words rows.
# q15e + q15g + q05c (session of 2026-12-03, morning; the machine was lost after 9 minutes): the 1.5B's duo@r rows on
# multi-key and multi-value with the 1,000-step gates, and docs/results/qwen/head_scores_1000steps.json with its
# duo@0.5 multi-key rows.
# q15e + q15g again (session of 2026-12-03, 06:00 UTC; run twice, the machine lost once): the 1.5B's hybrids with those
# gates, issue #14's gate candidates (docs/results/qwen15/layer_gates.json, 383 s; layergates@r and gatemean@r on
# multi-key and multi-value), random sets 1-4 at 25%, duo@0.5 and hybrid-m2@0.5 on NIAH.
# q15h + q15j + q05c (session of 2026-12-03, 09:15 UTC): the 1.5B's duo@r and zigzag@0.33 on NIAH and pass key,
# variable tracking and common words for full, zigzag@0.5/0.25, duo@0.5 and streaming, random sets 4-5 at 25%; the
# 0.5B's duo@r on every task with its 1,000-step gates (docs/results/qwen/head_scores.json since then).
# q15k + q15l + q05d (session of 2026-12-04, 16:37 UTC): the matrix's core cells (eval_log_8_*.txt): the 1.5B's
# variable tracking for duo@0.25 and the 33% plans, the 25% hybrids and random sets on NIAH / pass key, random sets
# at 50% on variable tracking; the 0.5B's 33% rows on NIAH / pass key / variable tracking and random sets at 25%.
# Ready for the next session (none of them run yet): sm + sm2 + sm3, SmolLM2's matrix on held-out genres (issue #14's
# SmolLM2 targets, the best of 20 random sets; issue #16's frontier); q15m, the 1.5B's hybrids at 50% and gatemax@r
# beyond multi-key / multi-value; q05d again (it goes on where it stopped; finished rows are skipped). sm, q15m and
# q05d first measure the candidate plans on a validation split (validate_plans.py: does it predict the matrix?).
#   bash experiments/gpu_jobs.sh q15|...|q15m|q05a|q05b|q05c|q05d|sm|sm2|sm3 BG_END   # one job; evaluation chunks end before BG_END (epoch s)
#   bash experiments/gpu_jobs.sh watch END              # follow the jobs until END or until they all ended;
#                                                       # then pack $S/out into $OUT/results.tgz
# Each job keeps its own --state (no two processes append to one file); the 0.5B jobs start from the recorded
# plans, scores and rows in docs/results/qwen/, so finished rows are skipped.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
M=${ZZ_MODELS:-/root/zz-models} S=${ZZ_STATE:-/root/zz-state}
A="experiments/gpu_accuracy.py ${ZZ_EXTRA:-}"  # ZZ_EXTRA="--smoke --device cpu": the logic on a CPU
job=$1 until=$2
q05=(--model $M/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --name qwen2.5-coder-0.5b)
q15=(--model $M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --name qwen2.5-coder-1.5b --state $S/q15 --out $S/out/q15)
SM=${ZZ_SMOLLM2:-$M/SmolLM2-135M-Instruct.Q4_1.gguf}  # 8k context: 2k-8k prompts, calibration at 8000 tokens
sm=(--model $SM --name smollm2-135m --lengths 2048,4096,8000 --calib-length 8000 --randoms 20)
SMT=multikey,multivalue,vartrack,niah,passkey  # SmolLM2's tasks: common words is at the floor for every model
KEY=multikey,multivalue,niah,passkey
log() { echo "[$(date +%H:%M:%S)] $job: $*"; }
default_plans() {  # issue #14: `zigzag-attn calibrate`'s device default (method "attention" + refine) beside robust
  mkdir -p $S/$1/default
  for r in 0.5 0.25; do
    [ -f $S/$1/default/plan_$r.json ] || { python -m zigzag_attn.cli calibrate "$2" --retrieval-ratio $r \
      --out $S/$1/default/plan_$r.json 2>&1 | grep -v Warning | grep -v "it/s\]" | tail -3  # the plan records its time
      cp $S/$1/default/plan_$r.json $S/out/$1/default_plan_$r.json 2>/dev/null; }
  done
}
seed() {  # seed STATE SRC: a state of its own, from the recorded results in SRC (plans, scores, rows, default/)
  mkdir -p $S/$1 $S/out/$1
  [ -f $S/$1/head_scores.json ] || cp $2/*.json $2/matrix.jsonl $S/$1/ 2>/dev/null
  [ -d $2/default ] && cp -r $2/default $S/$1/
}
shared_prompts() {  # the prompts q05a builds (one tokenizer for both Qwen models); else the evaluation builds its own
  while pgrep -f "gpu_jobs.sh q05a" > /dev/null && [ ! -f $S/q05a/prompts.done ] && [ $(date +%s) -lt $until ]; do
    sleep 5
  done
  [ -f $S/$1/prompts.pt ] || cp $S/q05a/prompts.pt $S/$1/ 2>/dev/null
}
r20() { seq -s, -f "random-%g@$1" 1 20; }  # r20 R: random-1@R,...,random-20@R
sm_seed() {  # sm_seed NAME: a state of its own, from sm's calibration (waits until sm has made it)
  while [ ! -f $S/sm/calibrated.done ] && [ $(date +%s) -lt $until ]; do sleep 10; done
  mkdir -p $S/$1 $S/out/$1
  [ -f $S/$1/head_scores.json ] || cp -r $S/sm/*.json $S/sm/prompts.pt $S/sm/default $S/sm/cpu $S/$1/
}
q15s() {  # q15s NAME: into the array a, the 1.5B's arguments with a state, output and bf16 copy of its own
  a=(--model $M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --name qwen2.5-coder-1.5b --state $S/$1 --out $S/out/$1
     --cache $M/$1-bf16)
}
gate_run() {  # gate_run PART LOG ARGS...: gates trained 1,000 steps on 16 prompts a task (--part gates|layergates)
  local part=$1 logf=$2; shift 2
  log "$part: 1000 steps"
  python $A calibrate "$@" --part $part --gate-steps 1000 --gate-samples 16 > $logf 2>&1
  grep -v Warning $logf | grep -v "it/s\]" | tail -3
}
chunks() {  # chunks ARRAY "TASKS POLICIES"...: one eval call per pair, with the named array's arguments
  local -n args=$1; shift
  for tp in "$@"; do
    set -- $tp
    python $A eval "${args[@]}" --workers 8 --deadline $until --tasks $1 --policies $2 2>&1 \
      | grep --line-buffered -v Warning
  done
}
validate() {  # validate LENGTH ARGS...: the candidate plans' worst-task loss rise on a split neither calibration
              # nor the matrix reads (experiments/validate_plans.py; issue #14), before the job's matrix chunks
  local n=$1; shift
  log "validation at $n tokens"
  python experiments/validate_plans.py run "$@" --length $n ${ZZ_EXTRA:-} 2>&1 | grep -v Warning | tail -40
}
case $job in
  q15)
    seed q15 docs/results/qwen15  # on a fresh machine, the recorded calibration and rows: no recalibration
    if [ ! -f $S/q15/head_scores.json ]; then
      log "calibrate: robust profile and head gates, two processes"
      python $A calibrate "${q15[@]}" --part robust --candidates 4 --cache $M/q15-bf16 > $S/out/q15/robust_log.txt 2>&1 &
      python $A calibrate "${q15[@]}" --part gates > $S/out/q15/gates_log.txt 2>&1 &
      wait
      grep -v Warning $S/out/q15/robust_log.txt $S/out/q15/gates_log.txt | grep -v "it/s\]" | tail -12
    fi
    shared_prompts q15
    for t in $KEY vartrack,commonwords; do
      python $A eval "${q15[@]}" --cache $M/q15-bf16 --workers 8 --deadline $until --tasks $t 2>&1 | grep --line-buffered -v Warning
    done ;;
  q15b)  # the 1.5B matrix in the order the claims need it: main policies, then five random sets and the 33% plans
          # on the two tasks that separate plans, then the random sets on NIAH and pass key
    seed q15 docs/results/qwen15
    shared_prompts q15
    rnd=random-1@0.5,random-2@0.5,random-3@0.5,random-4@0.5,random-5@0.5
    a=("${q15[@]}" --cache $M/q15-bf16)
    chunks a "$KEY full,zigzag@0.5,duo@0.5,streaming,zigzag@0.25,duo@0.25" "multikey,multivalue $rnd" \
      "multikey,multivalue zigzag@0.33,duo@0.33" "niah,passkey $rnd" ;;
  q15c)  # a fair DuoAttention baseline: head gates trained 1,000 steps on 48 prompts (the 100-step gates barely
          # moved: docs/results.md), then every duo@r row again with them; the 100-step gates and rows stay recorded
    seed q15 docs/results/qwen15
    a=("${q15[@]}" --cache $M/q15-bf16)
    gate_run gates $S/out/q15/gates_log_1000.txt "${a[@]}"
    grep -v '"policy": "duo@' $S/q15/matrix.jsonl > $S/q15/m && mv $S/q15/m $S/q15/matrix.jsonl
    while [ ! -f $S/q15d/prompts.done ] && [ $(date +%s) -lt $until ]; do sleep 5; done
    cp $S/q15d/prompts.pt $S/q15/ 2>/dev/null
    chunks a "$KEY duo@0.5,duo@0.33,duo@0.25" ;;
  q15d)  # beside q15c on the same GPU (gate training leaves it mostly idle): the rows the matrix still lacks
    seed q15d docs/results/qwen15
    q15s q15d
    python $A prompts "${a[@]}" --workers 12 2>&1 | grep --line-buffered -v Warning
    touch $S/q15d/prompts.done
    r5=random-1@0.25,random-2@0.25,random-3@0.25,random-4@0.25,random-5@0.25
    chunks a "niah,passkey random-3@0.5,random-4@0.5,random-5@0.5" "multikey,multivalue $r5" \
      "niah,passkey zigzag@0.33" "vartrack,commonwords full,zigzag@0.5,streaming" "niah,passkey $r5" ;;
  q15e)  # the recorded 1,000-step head gates (docs/results/qwen15/head_scores.json): duo@r, then the hybrids
    seed q15 docs/results/qwen15
    shared_prompts q15
    a=("${q15[@]}" --cache $M/q15-bf16)
    chunks a "multikey,multivalue duo@0.5,duo@0.25,duo@0.33" \
      "multikey,multivalue hybrid-m2@0.5,hybrid-m4@0.5,gatemean@0.5" \
      "multikey,multivalue hybrid-m2@0.25,hybrid-m2-s8@0.25,hybrid-m4@0.25,hybrid-m4-s8@0.25,gatemean@0.25" \
      "niah,passkey hybrid-m2@0.5,hybrid-m4@0.5" "niah,passkey duo@0.5,duo@0.25,duo@0.33" ;;
  q15h)  # issue #13's NIAH / pass key rows still missing (duo@r, zigzag@0.33), random sets 4-5 at 25%, then the
         # layer-gate and hybrid plans on NIAH and pass key, and gatemax@r
    seed q15h docs/results/qwen15
    q15s q15h
    chunks a "niah,passkey duo@0.5,duo@0.25,duo@0.33,zigzag@0.33" "multikey,multivalue random-4@0.25,random-5@0.25" \
      "niah,passkey hybrid-m4@0.25,layergates@0.5,layergates@0.25" "multikey,multivalue gatemax@0.5,gatemax@0.25" ;;
  q15j)  # beside q15h: variable tracking and common words (issue #13's last two tasks) for the matrix's policies
    seed q15j docs/results/qwen15
    q15s q15j
    chunks a "vartrack,commonwords full,zigzag@0.5,duo@0.5,streaming,zigzag@0.25,duo@0.25" \
      "vartrack,commonwords zigzag@0.33,duo@0.33" \
      "vartrack,commonwords random-1@0.5,random-2@0.5,random-3@0.5,random-4@0.5,random-5@0.5" ;;
  q15g)  # beside q15e: layer gates (DuoAttention's objective, one gate per layer, 1,000 steps), their plans, then
          # the random 25% sets and the 33% plan rows still missing
    seed q15g docs/results/qwen15
    q15s q15g
    [ -f $S/q15g/layer_gates.json ] || gate_run layergates $S/out/q15g/layer_gates_log.txt "${a[@]}"  # recorded: reuse
    r5=random-1@0.25,random-2@0.25,random-3@0.25,random-4@0.25,random-5@0.25
    chunks a "multikey,multivalue layergates@0.5,layergates@0.25,layergates@0.33" "multikey,multivalue $r5" \
      "niah,passkey layergates@0.5,layergates@0.25,zigzag@0.33" ;;
  q15k)  # the core cells issue #13's matrix still lacks, then issue #16's: variable tracking for duo@0.25 and the
         # 33% plans; NIAH / pass key for the 25% hybrids (the frontier's "every task"), random sets 1-3 at 25%,
         # layer gates. Common words is left: full scores 0.00-0.01 there on both models (docs/results.md)
    seed q15k docs/results/qwen15
    q15s q15k
    chunks a "vartrack duo@0.25,zigzag@0.33,duo@0.33" "niah,passkey hybrid-m2@0.25,hybrid-m4@0.25" \
      "niah,passkey random-1@0.25,random-2@0.25,random-3@0.25" "niah,passkey layergates@0.5,layergates@0.25" ;;
  q15l)  # beside q15k: random set 5's multi-value and sets 4-5 on NIAH / pass key at 25%, the random sets'
         # variable tracking at 50%, then gatemax@r
    seed q15l docs/results/qwen15
    q15s q15l
    chunks a "multivalue random-5@0.25" "niah,passkey random-4@0.25,random-5@0.25" \
      "vartrack random-1@0.5,random-2@0.5,random-3@0.5,random-4@0.5,random-5@0.5" \
      "multikey,multivalue gatemax@0.5,gatemax@0.25" ;;
  q15m)  # issue #16's 50% hybrids on NIAH, pass key and variable tracking, then gatemax@r beyond multi-key and
         # multi-value (issue #14) and the hybrids' variable tracking at 25%
    seed q15m docs/results/qwen15
    q15s q15m
    validate 16384 "${a[@]}"
    chunks a "niah,passkey,vartrack hybrid-m2@0.5,hybrid-m4@0.5" "niah,passkey,vartrack gatemax@0.5,gatemax@0.25" \
      "vartrack hybrid-m2@0.25,hybrid-m4@0.25" ;;
  sm)  # SmolLM2 (issues #14 and #16): prompts; the robust profile (alone: its time is reported), then head and
       # layer gates side by side; `zigzag-attn calibrate`'s device-default plans; the CPU robust plan of docs/results.md as cpu@0.5; then the
       # matrix's main policies, the shipped and other-device plans, the hybrids and the gate candidates
    a=("${sm[@]}" --state $S/sm --out $S/out/sm)
    mkdir -p $S/sm/cpu $S/out/sm
    cp docs/results/smollm2_robust_cpu_plan.json $S/sm/cpu/plan_0.5.json
    python $A prompts "${a[@]}" --workers 12 2>&1 | grep --line-buffered -v Warning
    if [ ! -f $S/sm/layer_gates.json ]; then
      log "calibrate: the robust profile alone (its time is the calibration cost), then both gates beside each other"
      python $A calibrate "${a[@]}" --part robust > $S/out/sm/robust_log.txt 2>&1
      grep -v Warning $S/out/sm/robust_log.txt | grep -v "it/s\]" | tail -6
      gate_run gates $S/out/sm/gates_log.txt "${a[@]}" &
      gate_run layergates $S/out/sm/layer_gates_log.txt "${a[@]}" &
      wait
    fi
    default_plans sm $SM
    touch $S/sm/calibrated.done
    validate 8000 --model $SM --name smollm2-135m --state $S/sm --out $S/out/sm --lengths 2048,4096,8000
    chunks a "$SMT full,zigzag@0.5,duo@0.5,streaming,zigzag@0.25,duo@0.25" "$SMT zigzag@0.33,duo@0.33" \
      "$SMT shipped@0.5,shipped@0.33,shipped@0.25,cpu@0.5,default@0.5,default@0.25" \
      "$SMT hybrid-m2@0.5,hybrid-m4@0.5,hybrid-m2@0.25,hybrid-m4@0.25" \
      "$SMT layergates@0.5,layergates@0.33,layergates@0.25,gatemax@0.5,gatemax@0.25,ablation@0.5,ablation@0.25" ;;
  sm2)  # beside sm: the best of 20 random layer sets at 50% (issue #14: never below the best random set)
    sm_seed sm2
    a=("${sm[@]}" --state $S/sm2 --out $S/out/sm2)
    chunks a "$SMT $(r20 0.5)" ;;
  sm3)  # beside sm: the best of 20 random sets at 25% and 33%
    sm_seed sm3
    a=("${sm[@]}" --state $S/sm3 --out $S/out/sm3)
    chunks a "$SMT $(r20 0.25)" "$SMT $(r20 0.33)" ;;
  q05d)  # the 0.5B's core cells still missing: the 33% plans on NIAH, pass key and variable tracking, random sets
         # at 25%, then the hybrids whose plans changed with the 1,000-step gates
    seed q05d docs/results/qwen
    a=("${q05[@]}" --state $S/q05d --out $S/out/q05d --cache $M/q05-bf16)
    validate 16384 "${a[@]}"
    r5=random-1@0.25,random-2@0.25,random-3@0.25,random-4@0.25,random-5@0.25
    chunks a "niah,passkey,vartrack zigzag@0.33,duo@0.33" "multikey,multivalue $r5" "niah,passkey $r5" \
      "multikey,multivalue,niah,passkey hybrid-m2@0.5,hybrid-m4@0.5,hybrid-m4-s8@0.5,hybrid-m4-s8@0.25" ;;
  q05c)  # the 0.5B's rows issue #13's matrix still lacks: 33% on NIAH, pass key, variable tracking and common words;
         # the hybrids whose plans changed with the 1,000-step gates (their 100-step rows: matrix_hybrids_100steps.jsonl);
         # random sets at 25%. The recorded state holds the 1,000-step gates as head_scores.json since 2026-12-03.
    seed q05c docs/results/qwen
    a=("${q05[@]}" --state $S/q05c --out $S/out/q05c --cache $M/q05-bf16)
    r5=random-1@0.25,random-2@0.25,random-3@0.25,random-4@0.25,random-5@0.25
    chunks a "niah,passkey,vartrack,commonwords duo@0.33,zigzag@0.33" \
      "multikey,multivalue,niah,passkey hybrid-m2@0.5,hybrid-m4@0.5,hybrid-m4-s8@0.5,hybrid-m4-s8@0.25" \
      "multikey,multivalue $r5" ;;
  q05a)  # prompts for everyone, then the 0.5B rows still missing on the tasks that separate policies (common
         # words and variable tracking are at the 0.5B's floor: docs/results.md)
    seed q05a docs/results/qwen
    python $A prompts "${q05[@]}" --state $S/q05a --out $S/out/q05a --workers 16 2>&1 | grep --line-buffered -v Warning
    touch $S/q05a/prompts.done
    default_plans q05a $M/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    python $A eval "${q05[@]}" --state $S/q05a --out $S/out/q05a --cache $M/q05-bf16 --deadline $until --tasks $KEY \
      2>&1 | grep --line-buffered -v Warning ;;
  q05b)  # the frontier's hybrids (issue #16), at 0.5 then 0.25
    seed q05b docs/results/qwen
    shared_prompts q05b
    a=("${q05[@]}" --state $S/q05b --out $S/out/q05b --cache $M/q05b-bf16 --deadline $until --tasks $KEY)
    for r in 0.5 0.25; do
      python $A eval "${a[@]}" --policies hybrid-m1@$r,hybrid-m2@$r,hybrid-m4@$r,hybrid-m2-s8@$r,hybrid-m4-s8@$r \
        2>&1 | grep --line-buffered -v Warning
    done ;;
  q15f|q05f)  # FP8 retrieval KV and budget choice (window, sink, KV dtype): zz.choose's pick at 50% and 25% of full's
              # KV at 32k (budget_choice.py), then the accuracy that decides whether it pays, the equal-bytes baselines
              # (the head plan with the same freedom, the best of random layer sets) first
    if [ $job = q15f ]; then seed q15f docs/results/qwen15; q15s q15f; a=("${a[@]:0:8}" --cache $M/q15-bf16)
    else seed q05f docs/results/qwen; a=("${q05[@]}" --state $S/q05f --out $S/out/q05f --cache $M/q05f-bf16); fi
    log "budget choice at 32768 tokens"
    python experiments/budget_choice.py "${a[@]}" --budgets 0.25,0.5 --length ${CHOICE_LEN:-32768} 2>&1 | grep -v Warning | tail -20
    r5=$(for i in 1 2 3 4 5; do printf 'random-%s~b0.25~fp8,' $i; done)
    R4=multikey,multivalue,multiquery,vartrack
    chunks a "$R4,niah,passkey full+fp8,choice~b0.25" "multiquery full,duo@0.25,zigzag@0.5,duo@0.5" \
      "$R4 duo~b0.25~fp8" "multikey,multivalue,niah,passkey,vartrack zigzag@0.5+fp8,zigzag@0.25+fp8" \
      "multikey,multivalue ${r5%,}" "$R4 choice~b0.5,duo~b0.5~fp8" ;;
  q15w)  # beside q15f: the other candidates of the 25% budget (does validation pick the matrix's best?)
    seed q15w docs/results/qwen15; q15s q15w; a=("${a[@]:0:8}" --cache $M/q15-bf16)  # q15f's copy, made first
    while [ ! -f $S/q15f/choice-b0.5.json ] && [ $(date +%s) -lt $until ]; do sleep 10; done
    cp $S/q15f/choice-b*.json $S/q15w/ 2>/dev/null
    c=$(for w in 256 1024 4096; do printf 'zigzag~b0.25~w%s~s64,zigzag~b0.25~w%s~s64~fp8,' $w $w; done)
    chunks a "multikey,multivalue,multiquery,vartrack ${c%,}" "multikey,multivalue,multiquery,vartrack duo~b0.25~w4096" ;;
  conf)  # FP8 on the GPU: the fused kernel's tests, and conformance against the float32 reference
    mkdir -p $S/out/conf
    python -m pytest -q tests/test_fp8.py 2>&1 | tail -5
    python benchmarks/gpu_conformance.py --fp8-only --smollm2 $SM --out $S/out/conf/gpu_conformance_fp8.json 2>&1 \
      | grep -v Warning | tee $S/out/conf/conformance_fp8.log | tail -40 ;;
  watch)
    jobs=$(cd $S/jobs && ls *.log 2>/dev/null | sed 's/\.log$//')
    pack() { cp $S/jobs/*.log $S/out/ 2>/dev/null; tar czf $OUT/results.tgz -C $S out; }
    while [ $(date +%s) -lt $(( until - 20 )) ] && pgrep -f "gpu_jobs.sh [qsc]" > /dev/null; do
      sleep 60
      for j in $jobs; do echo "$j: $(grep -a '^\[' $S/jobs/$j.log 2>/dev/null | tail -1 | cut -c1-150)"; done
      pack  # every minute: a call cut off by its time limit still brings back what was done
    done
    pgrep -f "gpu_jobs.sh [qsc]" > /dev/null || echo "all jobs ended"
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    pack && ls -la $OUT/results.tgz
    for j in $jobs; do echo "== $j"; grep -v "it/s\]" $S/jobs/$j.log | tail -8 | cut -c1-200; done ;;
  *) echo "usage: gpu_jobs.sh q15|q15b|q15c|q15d|q15e|q15g|q15h|q15j|q15k|q15l|q15m|q15f|q15w|q05a|q05b|q05c|q05d|q05f|sm|sm2|sm3|conf BG_END | watch END" >&2
     exit 2 ;;
esac
log "ended"
