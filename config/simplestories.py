# SimpleStories (Hugging Face hub; needs network once): the paper's controlled study. Its label
# columns are the annotation fields; the SFT set is the stories of the two most common topics.
#   python annotate.py config/simplestories.py
#   torchrun --standalone --nproc_per_node=8 pretrain.py config/simplestories.py config/gpt_l6.py
dataset = 'SimpleStories/SimpleStories'
hf_split = 'train'
text_column = 'story'
fields = 'topic:topic,theme:theme,style:style,feature:feature,grammar:grammar,persona:persona'
max_categories = 200  # its label sets are larger than the wiki's 12 topics
sft_key = 'topic'
sft_values = 'top:2'
sft_docs = 20000
sft_val_docs = 1000
heldout_docs = 5000
assistant_opening = 'Here is a story for you.'
vocab_size = 4096
name = 'simplestories'
data_dir = 'data/simplestories'
