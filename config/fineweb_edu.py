# Web text: FineWeb-Edu (Hugging Face hub; the 10B-token sample, needs network and ~30 GB of disk
# once), annotated by the keywords annotator (top TF-IDF terms: no labels needed). The SFT set is the
# documents whose keywords include one of the two most common keywords.
#   python annotate.py config/fineweb_edu.py
#   torchrun --standalone --nproc_per_node=8 pretrain.py config/fineweb_edu.py config/gpt2_small.py
dataset = 'HuggingFaceFW/fineweb-edu'
hf_config = 'sample-10BT'
hf_split = 'train[:2000000]'  # 2M documents, ~2B tokens: enough for gpt2_small's 1.76B
text_column = 'text'
annotator = 'keywords'
keywords_per_chunk = 3
sft_key = 'keyword'
sft_values = 'top:2'
sft_docs = 20000
sft_val_docs = 1000
heldout_docs = 5000
vocab_size = 8192
name = 'fineweb_edu'
data_dir = 'data/fineweb_edu'
