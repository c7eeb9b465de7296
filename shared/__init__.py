"""`shared`: the finished components of the course, one concept per module.

Later chapters import from here instead of copying code:

==============================  ===================================================================================
module                          what it holds (chapter)
==============================  ===================================================================================
``shared.runtime``              the run profile switch, device choice, seeding (all)
``shared.tokenizer``            byte-level BPE, GPT-2's tokenizer offline (1)
``shared.data``                 the Shakespeare corpus, sliding-window datasets, token files (1, 2)
``shared.wordpiece``            WordPiece (BERT's tokenizer) next to BPE (1b)
``shared.cleaning``             Unicode normalisation, quality filters (2b)
``shared.dedup``                exact and MinHash/LSH near-duplicate detection (2b)
``shared.packing``              ``<|endoftext|>`` boundaries, per-document windows, source mixing (2b)
``shared.kjv``                  the King James Bible, a second corpus (2b)
``shared.attention``            causal multi-head attention and the KV cache (3, 6)
``shared.efficient_attention``  FlashAttention tiling, sliding-window, sparse and linear attention (3b)
``shared.model``                GPTConfig, GPTModel, parameter and FLOP counts (4)
``shared.weights``              GPT-2 weights from/to the Hugging Face layout (4)
``shared.llama``                the Llama block (RMSNorm, RoPE, GQA, SwiGLU), HF/GGUF loading (4b)
``shared.gguf_io``              GGUF files: dequantisation, tensors, the GGUF tokenizer (4b)
``shared.hardware``             peak FLOP/s per device, MFU (4, 5)
``shared.train``                loss, schedule, AdamW groups, the training loop (5)
``shared.checkpoint``           atomic, validated checkpoints (5)
``shared.distributed``          DDP/FSDP set-up for ``ch05_pretraining/pretrain.py`` (5)
``shared.parallel``             tensor and pipeline parallelism, ZeRO arithmetic, a planner (5b)
``shared.pretrained``           the Chapter 5 course model, loaded or trained on the spot (5-7)
``shared.generate``             sampling, streaming, cached and batched generation (6)
``shared.decoding``             repetition penalties, min-p, beam search (6b)
``shared.quantize``             int8/int4 weight quantization (6b)
``shared.prune``                magnitude and structured pruning (6b)
``shared.speculative``          speculative decoding (6b)
``shared.finetune``             genre classification finetuning (7)
``shared.instruct``             instruction data, Alpaca format, loss masking, exact match (7)
``shared.lora``                 LoRA from scratch (7)
``shared.chat``                 ChatML role tokens, multi-turn data, assistant-only loss (7b)
``shared.dpo``                  DPO: sequence log-probs, the loss, preference pairs (7c)
``shared.distill``              knowledge distillation loss (7d)
``shared.adapters``             bottleneck adapters (7d)
``shared.stats``                Wilson intervals for rates (7)
``shared.gpucheck``             one command that checks the course on a GPU
``shared.checks``               self-checks, hints and hidden parameters in exercise notebooks (learners import it)
``shared.course``               instructor/maintainer tooling: the grader, exercise generator, notebook tools
==============================  ===================================================================================

Each notebook cell that shows one of these components is tagged ``# shared: shared.x.y``,
and the test suite checks that it matches the code in this package character for character.
"""

__version__ = "0.1.0"
