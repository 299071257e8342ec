# A shortened laptop study, after config/small.py: every arm and stage of the study and its
# decomposition at 2 seeds, 1/5 of the training, 8 samples per prompt (about 11 minutes on 2 cores).
# Not a result: a check that a change to the code leaves what the study writes the same, e.g.
#   python study.py config/small.py config/quick.py --out_root=out/quick-before    (old commit)
#   python study.py config/small.py config/quick.py --out_root=out/quick-after     (new commit)
#   then cmp every file under out/quick-*/samples
max_iters = 200
eval_interval = 100
sft_iters = 40
sft_eval_interval = 20
seeds = 2
num_samples = 8
decomposition = True
