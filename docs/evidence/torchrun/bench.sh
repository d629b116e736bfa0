#!/bin/bash
# Fine-tune one epoch of the shipped ResNet-20 pruned by the committed DDPG policy, three ways.
cd /work/main
. /work/venv/bin/activate
B=runs/torchrun_bench
POLICY=docs/evidence/search/resnet20_ddpg_s0/best_policy.json
COMMON="--model resnet20 --policy $POLICY --dataset folder --data ../shared/data/cifar10/cifar10-jpg.tar.gz --finetune-epochs 1"
run() {  # name, launcher..., extra args
  name=$1; shift
  echo "== $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $B/bench.log
  start=$(date +%s.%N)
  "$@" >> $B/$name.log 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "$name rc=$rc wall=$(echo "$end - $start" | bc) load_after $(cut -d' ' -f1-3 /proc/loadavg)" >> $B/bench.log
}
for rep in ${REPS:-1}; do
  run 1proc_1thread_r$rep amc apply $COMMON --threads 1 --out $B/1proc_1thread_r$rep
  run torchrun2_1thread_r$rep torchrun --nproc_per_node 2 -m amc.cli apply $COMMON --threads 1 --out $B/torchrun2_1thread_r$rep
  run 1proc_2threads_r$rep amc apply $COMMON --threads 2 --out $B/1proc_2threads_r$rep
done
