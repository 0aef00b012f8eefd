#!/usr/bin/env bash
# The GPU calls behind docs/results.md's Qwen matrix and docs/performance.md's real-model rows (one lease, H200).
# Each step runs on the device machine after its model is staged (bash ../shared/tools/stage_for_device.sh ...):
#   bash experiments/gpu_session.sh q05      # Qwen2.5-Coder-0.5B: calibrate, then evaluate until the call's deadline
#   bash experiments/gpu_session.sh q15      # 1.5B: calibrate, prefill/eager speed, then evaluate until the deadline
#   bash experiments/gpu_session.sh more05   # 0.5B: continue the evaluation (finished rows are skipped)
#   bash experiments/gpu_session.sh eval05   # 0.5B: evaluate, one unpadded prompt per forward, with the recorded plans
#                                            # and scores; rows in docs/results/qwen/matrix.jsonl are skipped
#   bash experiments/gpu_session.sh bench8b  # random-weight Llama-3-8B shape: per-layer cost JSON (layer_cost.py),
#                                            # throughput at the memory limit and host time (throughput.py)
#   bash experiments/gpu_session.sh frontier05   # issue #16 part 3, 0.5B: compiled decode of zigzag@0.5, the
#                                                # hybrids at 0.5, duo@0.5 and full interleaved at 8k/32k B=1
#                                                # (bench_plans.py, 3 stages), then the hybrids' accuracy (4 tasks x
#                                                # 4k..32k, n=48) until the deadline
#   bash experiments/gpu_session.sh frontier05b  # the same at 0.25 (timing), then the accuracy rows still missing
#   bash experiments/gpu_session.sh frontier05e  # only the accuracy rows still missing
#   [R=0.25] bash experiments/gpu_session.sh frontier15  # issue #16, 1.5B: compiled decode of zigzag@R, hybrid-m2/m4@R,
#                                                       # duo@R and full at 8k/32k B=1 (bench_plans.py), alone
#   [JOBS="q15 ..."] BG_END=<epoch s> bash experiments/gpu_session.sh launch   # start the background jobs
#                                            # of experiments/gpu_jobs.sh (1.5B calibration then evaluation; 0.5B
#                                            # evaluation rows), which run across calls until BG_END, then watch
#   bash experiments/gpu_session.sh watch    # later calls: follow the jobs until the call's budget, collect
#   bash experiments/gpu_session.sh timing15 # after the jobs: 1.5B prefill / eager / compiled decode (bench.py);
#                                            # PARTS=compiled CONTEXTS=32768,8192 BATCHES=1: the compiled part alone
#   bash experiments/gpu_session.sh throughput15 # issue #17 on the real 1.5B: throughput.py at the memory limit
#   bash experiments/gpu_session.sh fp8bench     # the 1.5B at 32k: FP8 retrieval KV against bf16, B = 1 and at the
#                                                # memory limit (after jobs q15f/q15w made its bf16 copy)
#   bash experiments/gpu_session.sh frontiersm   # issue #16 on SmolLM2 (after JOBS="sm sm2 sm3"): compiled decode of
#                                                # its 50% / 25% zigzag, hybrid and duo plans and full, interleaved
# State (plans, scores, finished rows) stays under /root/zz-state while the machine is held; results go to $OUT.
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
M=${ZZ_MODELS:-/root/zz-models} S=${ZZ_STATE:-/root/zz-state}
end=$(( $(date +%s) + ${BUDGET:-555} ))
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
q05=(--model $M/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --name qwen2.5-coder-0.5b --state $S/q05 --out $OUT/q05)
q15=(--model $M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --name qwen2.5-coder-1.5b --state $S/q15 --out $OUT/q15)
mkdir -p $OUT/q05 $OUT/q15
q15w() {  # the 1.5B's weights: a bf16 copy (q15-bf16, else an evaluation job's), which loads faster than the GGUF
  local w; w=$(ls $M/q15*-bf16/config.json 2>/dev/null | head -1)
  [ -n "$w" ] && dirname $w || echo $M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
}
case $1 in
  q05)
    python experiments/gpu_accuracy.py calibrate "${q05[@]}" 2>&1 | grep -v Warning | tee -a $OUT/q05/log.txt
    python experiments/gpu_accuracy.py eval "${q05[@]}" --deadline $end 2>&1 | grep -v Warning | tee -a $OUT/q05/log.txt ;;
  more05)  # on a fresh machine, the state comes from the recorded results
    [ -f $S/q05/head_scores.json ] || { mkdir -p $S/q05 && cp docs/results/qwen/*.json docs/results/qwen/matrix.jsonl $S/q05/; }
    cp $S/q05/*.json $OUT/q05/ 2>/dev/null; rm -f $OUT/q05/ablation_*.json
    python experiments/gpu_accuracy.py eval "${q05[@]}" --deadline $end 2>&1 | grep -v Warning | tee -a $OUT/q05/log.txt ;;
  q15)
    python experiments/gpu_accuracy.py calibrate "${q15[@]}" --candidates 4 2>&1 | grep -v Warning | tee -a $OUT/q15/log.txt
    python benchmarks/bench.py --model $M/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
      --zigzag-plan $S/q15/qwen2.5-coder-1.5b_0.5.json --parts prefill,eager --contexts 8192,32768 --batches 1,8 \
      --prefill-max-tokens 262144 --policies full,mixed,zigzag --out $OUT/q15bench 2>&1 | tail -40 | tee -a $OUT/q15/log.txt
    python experiments/gpu_accuracy.py eval "${q15[@]}" --deadline $end 2>&1 | grep -v Warning | tee -a $OUT/q15/log.txt ;;
  eval05)  # on a fresh machine, plans, scores and finished rows come from the recorded results
    [ -f $S/q05/head_scores.json ] || { mkdir -p $S/q05 && cp docs/results/qwen/*.json docs/results/qwen/matrix.jsonl $S/q05/; }
    python experiments/gpu_accuracy.py eval "${q05[@]}" --cache $M/q05-bf16 --deadline $end 2>&1 | grep -v Warning \
      | tee -a $OUT/q05/log.txt ;;
  bench8b)
    timeout 115 python benchmarks/layer_cost.py --out $OUT --max-seconds 75 2>&1 | grep -vi warning | tail -70
    timeout 345 python benchmarks/throughput.py --contexts 32768,8192,131072 --compiled-contexts 32768 \
      --policies zigzag,mixed,full --host-time --budget-s 285 --compile-limit-s 170 --compile-min-s 45 --out $OUT \
      > $OUT/throughput_log.txt 2>&1; echo "throughput rc=$?"
    grep -v '^{' $OUT/throughput_log.txt | grep -E "Traceback|Error" | tail -8
    python benchmarks/throughput.py --report $OUT/throughput.jsonl --png $OUT/throughput.png ;;
  frontier05|frontier05b|frontier05e)  # $OUT: q05/matrix.jsonl, q05/log.txt, t$r/bench_plans.jsonl, t$r/log.txt
    mkdir -p $S/q05
    [ -f $S/q05/head_scores.json ] || cp docs/results/qwen/*.json $S/q05/
    [ -f $S/q05/matrix.jsonl ] || cp docs/results/qwen/matrix.jsonl $S/q05/  # zigzag/duo rows; m1 copies zigzag's
    r=0.5; [ $1 = frontier05b ] && r=0.25
    python experiments/gpu_accuracy.py plans --state $S/q05 --out $S/q05f | tail -12
    P=$S/q05f/plans; w=$M/q05-bf16; [ -f $w/config.json ] || w=$M/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    left=$(( end - $(date +%s) - 150 ))  # the timing may use all but 150 s; the accuracy chunks fill the rest
    f() { for p in "$@"; do [ $p = full ] && printf 'full=full,' || printf '%s@%s=%s/%s_%s.json,' $p $r $P $p $r; done; }
    plans="$(f zigzag hybrid-m1 hybrid-m2);$(f duo full hybrid-m4);$(f hybrid-m2-s8 hybrid-m4-s8)"
    plans=${plans//,;/;}; plans=${plans%,}  # groups (stages): the target pair first, each later one adds compiles
    if [ $1 != frontier05e ]; then
      mkdir -p $OUT/t$r
      timeout -k 15 $left python benchmarks/bench_plans.py --model $w --out $OUT/t$r --contexts 8192,32768 --batches 1 \
        --plans "$plans" --reference zigzag@$r --steps 24 --rounds 6 --budget-s $(( left - 45 )) > $OUT/t$r/log.txt 2>&1
      echo "bench_plans rc=$?"; grep -v '^{' $OUT/t$r/log.txt | grep -vi warning | tail -24
    fi
    pol=$(for n in hybrid-m1 hybrid-m2 hybrid-m4 hybrid-m2-s8 hybrid-m4-s8; do printf '%s@0.5,%s@0.25,' $n $n; done)
    python experiments/gpu_accuracy.py eval "${q05[@]}" --cache $M/q05-bf16 --workers 16 --deadline $end \
      --tasks multikey,multivalue,niah,passkey --policies ${pol%,} 2>&1 | grep -v Warning | tee -a $OUT/q05/log.txt ;;
  frontier15)  # issue #16 on the 1.5B: compiled decode of zigzag@R, its hybrids and duo@R (R=0.25 by default, where
               # the 4-layer hybrid beat the head plan: docs/results.md) and full, 8k/32k B=1, interleaved; a last
               # stage adds zigzag@0.5, hybrid-m2@0.5 and duo@0.5 where the budget leaves room
    pkill -f "[g]pu_jobs.sh [qs]"; pkill -f "[g]pu_accuracy.py"; sleep 3  # alone on the GPU
    mkdir -p $S/q15; [ -f $S/q15/head_scores.json ] || cp docs/results/qwen15/*.json $S/q15/
    r=${R:-0.25}; P=$S/q15f/plans; t=$OUT/t15_$r; mkdir -p $t
    python experiments/gpu_accuracy.py plans --state $S/q15 --out $S/q15f \
      --policies zigzag@$r,hybrid-m2@$r,hybrid-m4@$r,duo@$r,zigzag@0.5,hybrid-m2@0.5,duo@0.5 | tail -4
    w=$(q15w)
    plans="zigzag@$r=$P/zigzag_$r.json,hybrid-m4@$r=$P/hybrid-m4_$r.json;duo@$r=$P/duo_$r.json,full=full"
    plans="$plans;hybrid-m2@$r=$P/hybrid-m2_$r.json"  # groups (stages): the target pair first
    [ $r = 0.5 ] || plans="$plans;zigzag@0.5=$P/zigzag_0.5.json,hybrid-m2@0.5=$P/hybrid-m2_0.5.json,duo@0.5=$P/duo_0.5.json"
    timeout -k 15 $(( end - $(date +%s) - 30 )) python benchmarks/bench_plans.py --model $w --out $t \
      --contexts 8192,32768 --batches 1 --plans "$plans" --reference zigzag@$r --steps 24 --rounds 6 \
      --budget-s $(( end - $(date +%s) - 75 )) > $t/log.txt 2>&1
    echo "bench_plans rc=$?"; grep -v '^{' $t/log.txt | grep -vi warning | tail -24 ;;
  frontiersm)  # issue #16 on SmolLM2, after gpu_jobs.sh sm: compiled decode of zigzag@r, hybrid-m2/m4@r and duo@r
               # (r = 0.5, then 0.25) and full at 8k, B = 1 and 32 (a 135M model's step at B = 1 is mostly host
               # time), interleaved; plans from sm's state, duo@r at the matrix's KV (its lengths: 2k-8k)
    pkill -f "[g]pu_jobs.sh [qs]"; pkill -f "[g]pu_accuracy.py"; sleep 3
    P=$S/smf/plans; t=$OUT/tsm; mkdir -p $t
    python experiments/gpu_accuracy.py plans --state $S/sm --out $S/smf --lengths 2048,4096,8000 \
      --policies zigzag@0.5,hybrid-m2@0.5,hybrid-m4@0.5,duo@0.5,zigzag@0.25,hybrid-m2@0.25,hybrid-m4@0.25,duo@0.25 \
      | tail -8
    f() { for p in "$@"; do [ $p = full ] && printf 'full=full,' || printf '%s=%s/%s.json,' $p $P ${p/@/_}; done; }
    plans="$(f zigzag@0.5 hybrid-m2@0.5 duo@0.5 full);$(f zigzag@0.25 hybrid-m2@0.25 duo@0.25);$(f hybrid-m4@0.5 hybrid-m4@0.25)"
    plans=${plans//,;/;}; plans=${plans%,}  # groups (stages): the 50% target pair and its baselines first
    timeout -k 15 $(( end - $(date +%s) - 30 )) python benchmarks/bench_plans.py --model $M/SmolLM2-135M-Instruct.Q4_1.gguf \
      --out $t --contexts 8192 --batches 1,32 --plans "$plans" --reference zigzag@0.5 --steps 24 --rounds 6 \
      --budget-s $(( end - $(date +%s) - 75 )) > $t/log.txt 2>&1
    echo "bench_plans rc=$?"; grep -v '^{' $t/log.txt | grep -vi warning | tail -24 ;;
  launch)  # detached (setsid) jobs outlive this call; the machine stays held while calls keep coming
    : "${BG_END:?BG_END (seconds since the epoch) ends the background evaluation}"
    mkdir -p $S/jobs $S/code
    # a snapshot (later calls may replace this tree), taken once: jobs already running keep reading it
    [ -d $S/code/zigzag_attn ] || cp -r benchmarks experiments zigzag_attn docs tests $S/code/
    for j in ${JOBS:-q15 q05a q05b}; do  # JOBS="q15": the 1.5B alone (sharing the GPU bought no throughput)
      (cd $S/code && setsid nohup bash experiments/gpu_jobs.sh $j "$BG_END" > $S/jobs/$j.log 2>&1 < /dev/null &)
    done
    sleep 5; bash experiments/gpu_jobs.sh watch "$end" ;;
  watch) bash experiments/gpu_jobs.sh watch "$end" ;;
  timing15)  # alone on the GPU: stop whatever job is left first
    pkill -f "[g]pu_jobs.sh [qs]"; pkill -f "[g]pu_accuracy.py"; sleep 3
    p=$S/q15/qwen2.5-coder-1.5b_0.5.json; [ -f $p ] || p=qwen2.5-coder-1.5b@0.5; w=$(q15w)  # else the shipped plan
    timeout -k 15 $(( end - $(date +%s) - 25 )) python benchmarks/bench.py --model $w --zigzag-plan $p \
      --parts ${PARTS:-prefill,eager,compiled} --contexts ${CONTEXTS:-8192,32768} --batches ${BATCHES:-1,8} \
      --prefill-max-tokens 262144 \
      --policies full,mixed,zigzag --dynamic true --budget-s $(( end - $(date +%s) - 60 )) --out $OUT/q15bench 2>&1 \
      | grep -vi warning | tee $OUT/q15bench_log.txt | tail -60 ;;
  throughput15)  # issue #17 on the real 1.5B, alone: the largest batch, decode tokens/s and prefill. Two calls:
                 # the defaults (32k compiled, host time), then CONTEXTS=32768,8192,131072 POLICIES=fullk,zigzag,mixed,full
                 # TAG=b (fullk compiled at 32k, every policy eager at 8k and 128k; 32k rows of the first call stay)
    pkill -f "[g]pu_jobs.sh [qs]"; pkill -f "[g]pu_accuracy.py"; sleep 3
    t=$OUT/tp15${TAG:-}; mkdir -p $t
    timeout -k 15 $(( end - $(date +%s) - 25 )) python benchmarks/throughput.py --model $(q15w) \
      --zigzag-plan qwen2.5-coder-1.5b@0.5 --contexts ${CONTEXTS:-32768} --compiled-contexts 32768 \
      --policies ${POLICIES:-zigzag,mixed,full} --host-time --skip "${SKIP:-}" \
      --budget-s $(( end - $(date +%s) - 70 )) --compile-limit-s 170 --compile-min-s 45 --out $t \
      > $t/log.txt 2>&1; echo "throughput rc=$?"
    python benchmarks/throughput.py --report $OUT/tp15*/throughput.jsonl --png $t/throughput.png ;;
  fp8bench)  # alone on the GPU, the 1.5B at 32k: FP8 retrieval KV against bf16. B = 1 compiled decode of zigzag,
             # zigzag-fp8 (the fused kernel) and zigzag-fp8-dq (dequantise + SDPA) interleaved (bench.py); then the
             # largest batch and tokens/s at the memory limit of zigzag-fp8 and zigzag, compiled (throughput.py)
    pkill -f "[g]pu_jobs.sh [qsc]"; pkill -f "[g]pu_accuracy.py"; pkill -f "[b]udget_choice.py"; sleep 3
    w=$(q15w); mkdir -p $OUT/fp8b1 $OUT/fp8tp
    timeout -k 10 ${B1_S:-230} python benchmarks/bench.py --model $w --zigzag-plan qwen2.5-coder-1.5b@0.5 \
      --parts compiled --contexts 32768 --batches 1 --policies ${B1_POLICIES:-zigzag,zigzag-fp8,zigzag-fp8-dq} \
      --rounds 6 --steps 24 --out $OUT/fp8b1 > $OUT/fp8b1/log.txt 2>&1
    echo "bench rc=$?"; grep -v '^{' $OUT/fp8b1/log.txt | grep -vi warning | tail -24
    timeout -k 15 $(( end - $(date +%s) - 25 )) python benchmarks/throughput.py --model $w \
      --zigzag-plan qwen2.5-coder-1.5b@0.5 --contexts 32768 --compiled-contexts 32768 \
      --policies ${TP_POLICIES:-zigzag-fp8,zigzag} --budget-s $(( end - $(date +%s) - 70 )) --compile-limit-s 150 \
      --compile-min-s 45 --out $OUT/fp8tp > $OUT/fp8tp/log.txt 2>&1; echo "throughput rc=$?"
    python benchmarks/throughput.py --report $OUT/fp8tp/throughput.jsonl --png $OUT/fp8tp/throughput.png ;;
  *) echo "usage: gpu_session.sh q05|q15|more05|eval05|bench8b|frontier05|frontier05b|frontier05e|frontier15|frontiersm|launch|watch|timing15|throughput15|fp8bench" >&2
     exit 2 ;;
esac
