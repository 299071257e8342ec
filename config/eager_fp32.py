# Training without the two speed levers of config/small.py: eager (no torch.compile) and fp32 on any
# CPU. The check that the levers change only the digits a seed changes, not the results:
#   python study.py config/small.py config/eager_fp32.py --out_root=out/small_eager_fp32
compile = False
dtype = 'float32'
