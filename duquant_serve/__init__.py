"""duquant-serve: DuQuant W4A4 checkpoints served by vLLM.

`import duquant_serve` stays light: it never imports vllm, triton or the CUDA extension.
"""

__version__ = "0.1.0"
