"""Training backtracking models: (prompt, response) data in, a servable checkpoint out.

config.py      the YAML config as dataclasses, with command-line overrides
tasks.py       the bundled synthetic task (addition), fixed splits
data.py        JSONL loaders, tokenisation into Examples
errors.py      error injection on token ids (random / in_distribution)
objectives.py  the masked and rewind layouts of a corrupted example
collator.py    injection + layout + padding + the 4-D attention mask
token_init.py  BT's embedding from words that mean "delete"
curriculum.py  phases over the number of errors, a Trainer callback
modeling.py    the starting model: a tiny Llama from scratch or a local pretrained one
train.py       the entry point (`make train`)
evaluate.py    held-out figures with the server's decoder (`make eval`)
"""

from backtrack.threads import bound_spin_waits

bound_spin_waits()  # before torch loads OpenMP: idle threads do not spin for long
