#!/bin/bash
# 15-epoch fine-tunes at 50 % FLOPs, one `amc apply` per method (the same recipe), run side by side
D=../shared/data/cifar10/cifar10-jpg.tar.gz
P=docs/evidence/compare_plot/policies
declare -A POL=([search]=docs/evidence/search/resnet20_ddpg_s0/best_policy.json [sensitivity]=$P/sensitivity@0.5.json
                [random]=$P/random@0.5@300_trials.json [uniform]=$P/uniform@0.5.json)
for m in search sensitivity random uniform; do
  amc apply --policy ${POL[$m]} --dataset folder --data $D --finetune-epochs 15 --threads 1 --out runs/ft15/$m &
done
wait
