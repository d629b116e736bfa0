#!/bin/bash
# Evidence: fine-grained at 20 % params (one-shot / iterative / rewind) and 2:4.
D=../shared/data/cifar10/cifar10-jpg.tar.gz
C=runs/ev17/dense2/model.pt
amc search --checkpoint $C --mode finegrained --target params=0.2 --dataset folder --data $D --threads 1 \
    --max-sparsity 0.9 --episodes 150 --runs-dir runs/ev17 --name fg_search --no-progress
P=runs/ev17/fg_search/best_policy.json
COMMON="--checkpoint $C --policy $P --dataset folder --data $D --threads 1 --finetune-epochs 3"
amc apply $COMMON --out runs/ev17/fg_oneshot
amc apply $COMMON --steps 3 --out runs/ev17/fg_iter3
amc apply $COMMON --steps 3 --rewind 1 --out runs/ev17/fg_iter3_rewind
amc search --mode nm --nm 2:4 --target params=0.6 --dataset folder --data $D --threads 1 \
    --episodes 100 --runs-dir runs/ev17 --name nm_search --no-progress
N=runs/ev17/nm_search/best_policy.json
amc apply --policy $N --dataset folder --data $D --threads 1 --out runs/ev17/nm_noft
amc apply --policy $N --dataset folder --data $D --threads 1 --finetune-epochs 3 --out runs/ev17/nm_ft3
