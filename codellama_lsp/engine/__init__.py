"""The local engine (torch): the Llama-family model, checkpoint loading, tokenizers, the resident KV-cached generator.

Nothing is re-exported here, so that importing the torch-free modules of this package
(``config``, ``tokenizer``) does not import torch.
"""
