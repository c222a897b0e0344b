"""`duquant serve`: vLLM's OpenAI-compatible server with the DuQuant plugin (launch.py)."""
