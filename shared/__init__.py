"""`shared`: the finished components of the course, one concept per module.

Later chapters import from here instead of copying code::

    from shared.tokenizer import BPETokenizer        # Chapter 1
    from shared.data import load_shakespeare, GPTDataset, create_dataloader   # Chapters 1-2
    from shared.attention import MultiHeadAttention  # Chapter 3
    from shared.model import GPTConfig, GPTModel     # Chapter 4
    from shared.weights import load_gpt2             # Chapter 4
    from shared.train import ...                     # Chapter 5
    from shared.generate import generate             # Chapter 6
    from shared.lora import LoRALinear, apply_lora   # Chapter 7

Each notebook cell that shows one of these components is tagged ``# shared: shared.x.y``
and the test-suite checks that it is character-for-character the code in this package.
"""

__version__ = "0.1.0"
